#!/usr/bin/env python3
"""The bf16-against-fp32 section of BENCHMARKS.md from Google Benchmark JSON files.

    bf16_report.py BLAS_JSON LAYERS_JSON

BLAS_JSON: tp_bench_blas --benchmark_filter='tp_cpu_dtype|cpu_peak' (rows tp_cpu_dtype/.../kind:0
fp32, kind:1 bf16 on oneDNN, kind:2 bf16 widened to fp32; cpu_peak/kind:K the core's multiply-add
ceiling per instruction, where the CPU runs it). LAYERS_JSON: tp_bench_layers --dtypes=fp32,bf16,bf16_fp32
(rows .../dtype:D). With repetitions, each row's median is used. Prints a markdown table of the
rates and the bf16/fp32 ratios, shape by shape.
"""
import json
import re
import statistics
import sys


def medians(path, counter, scale=1.0):
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    rates = {}
    for r in runs:
        if r.get("run_type", "iteration") != "iteration" or counter not in r:
            continue
        rates.setdefault(r.get("run_name", r["name"]), []).append(r[counter] * scale)
    return {name: statistics.median(v) for name, v in rates.items()}


def table(rows, label, fp32_key, variants):
    """rows: name -> rate; groups by the name without the variant part, fp32 first."""
    groups = {}
    for name, rate in rows.items():
        for key in [fp32_key] + [v for v, _ in variants]:
            if name.endswith(key) or f"{key}/" in name:
                groups.setdefault(name.replace(key, ""), {})[key] = rate
    out = [f"| {label} | fp32 GFLOP/s | " + " | ".join(f"{title} GFLOP/s | {title} / fp32" for _, title in variants) + " |",
           "|---|---|" + "---|---|" * len(variants)]
    for shape, r in groups.items():
        if fp32_key not in r:
            continue
        cells = [f"{r[fp32_key]:.1f}"]
        for key, _ in variants:
            cells += [f"{r[key]:.1f}", f"**{r[key] / r[fp32_key]:.2f}**"] if key in r else ["-", "-"]
        out.append(f"| {re.sub(r'/+(manual_time)?$', '', shape.replace('//', '/'))} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def labels(path):
    with open(path) as f:
        return {r.get("run_name", r["name"]): r.get("label", "") for r in json.load(f)["benchmarks"]}


def peak_table(blas, names):
    """The cpu_peak rows: each instruction's GFLOP/s over the widest float FMA's."""
    peaks = {name: rate for name, rate in blas.items() if name.startswith("cpu_peak/")}
    if not peaks:
        return ""
    fp32 = peaks.get("cpu_peak/kind:1") or peaks.get("cpu_peak/kind:0")
    out = ["| instruction (1 thread, independent multiply-adds) | GFLOP/s | / widest fp32 FMA |", "|---|---|---|"]
    for name in sorted(peaks):
        out.append(f"| {names.get(name, name)} | {peaks[name]:.1f} | **{peaks[name] / fp32:.2f}** |")
    return "\n".join(out)


def main():
    blas = medians(sys.argv[1], "GFLOP/s", 1e-9)  # a kIs1000 rate, in FLOP/s in the JSON
    peak = peak_table(blas, labels(sys.argv[1]))
    if peak:
        print(peak)
        print()
    blas = {name: rate for name, rate in blas.items() if not name.startswith("cpu_peak/")}
    layers = medians(sys.argv[2], "GFLOPs")
    print(table(blas, "GEMM (tp::Cpu::gemm, 1 thread)", "kind:0",
                [("kind:1", "bf16 oneDNN"), ("kind:2", "bf16 widened")]))
    print()
    print(table(layers, "layer", "dtype:fp32", [("dtype:bf16", "bf16"), ("dtype:bf16_fp32", "bf16 widened")]))


if __name__ == "__main__":
    main()
