#!/usr/bin/env python3
"""Pairs tp_bench_gpu_layers' JSON (Google Benchmark) with torch_layers.py's JSON and writes the
markdown table for BENCHMARKS.md: per dtype, shape and operation, tp's time, the bare cuBLASLt
time (the same GEMMs with the bias, its gradient and the MLP's GELU fused as cuBLASLt epilogues;
tp / bare: goal <= 1.05) and PyTorch eager's (bias included; tp / torch: goal <= 1.0), plus the
headline bf16 MLP TFLOP/s against the bare bf16 GEMM. Benchmarks that failed are listed with
their message rather than dropped silently.

  python3 bench/gpu/summarize.py gpu_layers.json torch_layers.json > summary.md
"""
import json
import sys

ERRORS = []


def load_tp(path):
    try:
        data = json.load(open(path))
    except (OSError, ValueError) as e:
        ERRORS.append(f"{path}: not readable ({e})")
        return "unknown GPU", {}
    rows = {}
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            ERRORS.append(f"{b.get('name')}: {b.get('error_message', '')}")
            continue
        if "label" not in b:
            continue
        ms = b["real_time"] * {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b.get("time_unit", "ms")]
        rows[b["label"]] = {"ms": ms, "tflops": b.get("TFLOP/s", 0.0)}
    return data.get("context", {}).get("gpu", "unknown GPU"), rows


def load_torch(path):
    try:
        data = json.load(open(path))
    except (OSError, ValueError):
        return None, {}
    return data.get("torch"), {r["name"].removeprefix("torch/"): r for r in data["results"]}


def main():
    gpu, tp = load_tp(sys.argv[1])
    torch_version, torch = load_torch(sys.argv[2]) if len(sys.argv) > 2 else (None, {})
    print(f"GPU: {gpu}; PyTorch {torch_version or 'not measured'}\n")
    print("| dtype | tokens x hidden | operation | tp ms | bare cuBLASLt ms | tp / bare | PyTorch ms | tp / torch | tp TFLOP/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for label, r in sorted(tp.items()):
        if label.count("/") != 3:
            continue  # the NCCL rows, below
        dtype, what, tokens, hidden = label.split("/")
        if what.startswith("bare_"):
            continue
        bare = tp.get(f"{dtype}/bare_{what}/{tokens}/{hidden}") if what != "gemm" else None
        th = torch.get(label)
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        ratio = lambda a, b: f"{a / b:.3f}" if a and b else "-"
        print(f"| {dtype} | {tokens} x {hidden} | {what} | {fmt(r['ms'])} | {fmt(bare and bare['ms'])} | "
              f"{ratio(r['ms'], bare and bare['ms'])} | {fmt(th and th['ms'])} | {ratio(r['ms'], th and th['ms'])} | "
              f"{r['tflops']:.1f} |")
    nccl = sorted((int(label.split("/")[2]), r) for label, r in tp.items() if "/nccl_all_reduce/" in label)
    if nccl:
        print("\n| NCCL all-reduce, world 1, bytes | time us | algbw GB/s |\n|---:|---:|---:|")
        for size, r in nccl:
            print(f"| {size} | {1e3 * r['ms']:.1f} | {size / (r['ms'] * 1e6):.1f} |")
    if ERRORS:
        by_message = {}
        for e in ERRORS:
            name, _, message = e.partition(": ")
            by_message.setdefault(message, []).append(name)
        print(f"\n{len(ERRORS)} benchmark(s) reported an error:\n")
        for message, names in by_message.items():
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            print(f"- {len(names)} x \"{message}\": {', '.join(names[:3])}{more}")
    mlp, gemm = tp.get("bf16/mlp_forward/4096/8192"), tp.get("bf16/gemm/4096/8192")
    mlp_b = tp.get("bf16/mlp_fwdbwd/4096/8192")
    if mlp and gemm:
        print(f"\nHeadline, bf16 MLP, 4096 tokens, hidden 8192, ffn 32768, world 1 on {gpu}: forward "
              f"{mlp['tflops']:.0f} TFLOP/s, forward+backward {mlp_b['tflops'] if mlp_b else 0:.0f} TFLOP/s; bare bf16 GEMM "
              f"[4096x8192]x[8192x32768] {gemm['tflops']:.0f} TFLOP/s "
              f"(forward at {100 * mlp['tflops'] / gemm['tflops']:.0f}% of it).")


if __name__ == "__main__":
    main()
