#!/usr/bin/env python3
"""Turns the JSON of tp_bench_comm / tp_bench_layers and the PyTorch peer's lines into BENCHMARKS.md
and PNG plots. Called by scripts/bench.sh; needs only the standard library (plots need matplotlib)."""
import argparse, glob, json, os, platform, re, subprocess, sys, datetime


def load(results):
    rows, context = [], {}
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"bench_report: skipping {path}: {e}", file=sys.stderr)
            continue
        for k, v in data.get("context", {}).items():
            if k.startswith("tp_") and k not in ("tp_backend", "tp_world"):
                context.setdefault(k, v)
        # With --benchmark_repetitions, a case's median stands for it (not each repetition).
        benchmarks = data.get("benchmarks", [])
        medians = {b["run_name"] for b in benchmarks
                   if b.get("run_type") == "aggregate" and b.get("aggregate_name") == "median"}
        for b in benchmarks:
            if b.get("error_occurred"):
                continue
            if b.get("run_type", "iteration") == "aggregate":
                if b.get("aggregate_name") != "median":
                    continue
                b = dict(b, name=b["run_name"])
            elif b.get("run_name", b["name"]) in medians:
                continue
            parts = b["name"].replace("/manual_time", "").split("/")
            row = {"kind": parts[0], "name": b["name"], "us": to_us(b["real_time"], b.get("time_unit", "us")),
                   "cpu_us": to_us(b["cpu_time"], b.get("time_unit", "us")), "file": os.path.basename(path)}
            pos = [p for p in parts[1:] if ":" not in p]
            for p in parts[1:]:
                if ":" in p:
                    k, v = p.split(":", 1)
                    row[k] = v if k == "isa" else int(v)
            if row["kind"] in ("all_reduce", "all_gather", "reduce_scatter"):
                row["backend"], row["impl"] = pos[0], pos[1]
            elif row["kind"] in ("sgemm", "triad"):
                row["backend"] = pos[0]
                if row["kind"] == "sgemm":  # the GEMM library: sgemm/<backend>/<openblas|onednn>/...
                    row["lib"] = pos[1] if len(pos) > 1 else "tp::Cpu"
            else:
                row["mode"], row["backend"] = pos[0], pos[1]
            if row.get("streaming") == 0:  # tp_bench_layers --compare-gemm: the same case on GEMMs only
                row["kind"] += "_gemm"
            # bench.sh's per-instruction-set runs (isa-<isa>-<rep>-<backend>-<world>.json): kept apart
            # from the other sections' rows, which they would otherwise shadow
            m = re.match(r"isa-(\w+)-(\d+)-", os.path.basename(path))
            if m:
                row["kind"] = "isa_" + row["kind"]
                row["isa_run"], row["rep"] = m.group(1), int(m.group(2))
            for k in ("algbw_GBps", "busbw_GBps", "wrong", "GFLOPs", "GFLOPs_per_rank", "tp_over_raw",
                      "tp_unverified_over_raw", "tp_over_raw_median", "tp_unverified_over_raw_median", "GBps",
                      "GBps_per_rank"):
                if k in b:
                    row[k] = b[k]
            rows.append(row)
    return rows, context


def to_us(t, unit):
    return t * {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[unit]


def load_peer(results):
    peer = {}
    path = os.path.join(results, "peer.txt")
    if not os.path.exists(path):
        return peer
    for line in open(path):
        if not line.startswith("torch-gloo"):
            continue
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        # (source, world, tokens, hidden); source: "pypi" (PyTorch 2.x in bench.sh's venv) or "debian"
        key = (kv.get("source", "debian"), int(kv["world"]), int(kv["tokens"]), int(kv["hidden"]))
        peer[key] = {"fwd": float(kv["fwd_ms"]) * 1e3, "fwdbwd": float(kv["fwdbwd_ms"]) * 1e3,
                     "rel_err": float(kv["rel_err"]), "version": kv.get("torch", "?")}
    return peer


def peer_versions(peer):
    """{source: version} of the PyTorch builds that ran."""
    return {k[0]: v["version"] for k, v in peer.items()}


def preferred_peer(peer):
    """The peer the targets compare with: PyTorch 2.x from PyPI when it ran, else Debian's."""
    sources = {k[0] for k in peer}
    return "pypi" if "pypi" in sources else "debian" if "debian" in sources else None


def find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def human_bytes(n):
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def fmt_us(us):
    if us is None:
        return "–"
    return f"{us / 1e3:.2f} ms" if us >= 1e3 else f"{us:.1f} us"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(r, goal=None, at_most=True):
    if r is None:
        return "–"
    s = f"{r:.3f}"
    if goal is not None:
        ok = r <= goal if at_most else r >= goal
        s += " ✓" if ok else " ✗"
    return s


def machine(args, context):
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        info = open("/proc/cpuinfo").read()
        flags = "AVX-512" if " avx512f " in info else "AVX2" if " avx2 " in info else "no AVX2"
    except OSError:
        pass
    versions = peer_versions(load_peer(args.results))
    torch = ", ".join(f"torch {v} ({'PyPI, bench.sh venv' if s == 'pypi' else 'Debian python3-torch'})"
                      for s, v in sorted(versions.items(), key=lambda x: x[0] != "pypi")) or "did not run"
    return [
        ("CPU", f"{cpu} ({flags}), {os.cpu_count()} logical CPUs"),
        ("BLAS", context.get("tp_blas", "?") + (f", OPENBLAS_CORETYPE={args.openblas_coretype}" if args.openblas_coretype else "")),
        ("MPI", context.get("tp_mpi", "?")),
        ("Gloo", context.get("tp_gloo", "?") + " (Debian libgloo, TCP transport over loopback)"),
        ("PyTorch peer", f"`bench/peers/torch_mlp_peer.py` under {torch}; gloo backend, 1 intra-op thread per rank"),
        ("Command", f"`{args.command}` ({args.elapsed} s of benchmarks)"),
        ("Date", datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")),
        ("Load average before the run", args.load + " (anything near or above the CPU count means the figures are noisy)"),
    ]


def paired_ratio(raw, key):
    """A raw row's ratio `key` as "median (ratio of sums)"; – where there is none."""
    if not raw or raw.get(key) is None:
        return "–"
    med = raw.get(key + "_median")
    return f"{med:.3f} ({raw[key]:.3f})" if med is not None else f"{raw[key]:.3f}"


def comm_section(rows, out):
    colls = [c for c in ("all_reduce", "all_gather", "reduce_scatter") if find(rows, kind=c)]
    out.append("## Collectives\n")
    out.append("float32 buffers; size is the larger buffer (nccl-tests' convention); time is the slowest rank's, "
               "per iteration. `raw` calls the library directly (MPI_Allreduce / MPI_Allgather / "
               "MPI_Reduce_scatter_block, gloo::allreduce / gloo::allgather); `tp/raw` is tp's time over the raw "
               "time, measured by the raw row itself, which runs tp's call, tp's call with collective verification off and the "
               "library's every iteration, in turn, so that all three see the same machine load: the median of the "
               "per-iteration ratios, and in brackets the ratio of the summed times (which one slow round trip can "
               "move); `unverified/raw` is "
               "tp with verification off over the library (– where there is no library row: local, gloo's reduce_scatter). busbw in GB/s. `wrong` counts mismatching elements in a check after the timed loop (0 everywhere "
               "unless listed below).\n")
    wrong = [r for r in rows if r.get("wrong")]
    if wrong:
        out.append("**Wrong results:** " + ", ".join(f"{r['name']} ({int(r['wrong'])})" for r in wrong) + "\n")
    for c in colls:
        sel = [r for r in rows if r["kind"] == c]
        combos = sorted({(r["backend"], r["world"]) for r in sel}, key=lambda x: (["local", "mpi", "gloo"].index(x[0]) if x[0] in ("local", "mpi", "gloo") else 9, x[1]))
        combos = [x for x in combos if x[1] > 1]
        if not combos:
            continue
        sizes = sorted({r["bytes"] for r in sel})
        out.append(f"### {c}\n")
        header = "| size |" + "".join(f" {b} n={w} time | busbw | tp/raw | unverified/raw |" for b, w in combos)
        out.append(header)
        out.append("|---:|" + "---:|---:|---:|---:|" * len(combos))
        for s in sizes:
            line = f"| {human_bytes(s)} |"
            for b, w in combos:
                tp = next((r for r in sel if r["backend"] == b and r["world"] == w and r["impl"] == "tp"
                           and abs(r["bytes"] - s) <= 16 * w), None)
                raw = next((r for r in sel if r["backend"] == b and r["world"] == w and r["impl"] == b
                            and abs(r["bytes"] - s) <= 16 * w), None)
                line += (f" {fmt_us(tp['us']) if tp else '–'} | {tp['busbw_GBps']:.3f} |" if tp else " – | – |")
                for key in ("tp_over_raw", "tp_unverified_over_raw"):
                    line += f" {paired_ratio(raw, key)} |"
            out.append(line)
        out.append("")


def layer_section(rows, peer, out):
    mlp = [r for r in rows if r["kind"] == "mlp"]
    if mlp:
        out.append("## MLP block (column h->4h, GELU, row 4h->h), float32, no biases\n")
        out.append("Time per step (slowest rank) and GFLOP/s of the whole block (summed over ranks). `fwdbwd` is a "
                   "training step's forward and backward (input gradient and both weight gradients). The peer is "
                   "`bench/peers/torch_mlp_peer.py` (median of its iterations), `pypi` PyTorch 2.x from PyPI, "
                   "`debian` Debian's python3-torch.\n")
        hidden = sorted({r["hidden"] for r in mlp})
        for h in hidden:
            combos = sorted({(r["backend"], r["world"]) for r in mlp if r["hidden"] == h},
                            key=lambda x: (["local", "mpi", "gloo"].index(x[0]) if x[0] in ("local", "mpi", "gloo") else 9, x[1]))
            peers = sorted({(src, w) for (src, w, t, hh) in peer if hh == h}, key=lambda x: (x[0] != "pypi", x[1]))
            for mode in ("fwd", "fwdbwd"):
                out.append(f"### hidden {h}, {mode}\n")
                out.append("| tokens |" + "".join(f" tp {b} n={w} |" for b, w in combos) +
                           "".join(f" torch {src} n={w} |" for src, w in peers))
                out.append("|---:|" + "---:|" * (len(combos) + len(peers)))
                for t in sorted({r["tokens"] for r in mlp if r["hidden"] == h}):
                    line = f"| {t} |"
                    for b, w in combos:
                        r = find(mlp, backend=b, world=w, hidden=h, tokens=t, mode=mode)
                        line += f" {fmt_us(r['us'])} ({r['GFLOPs']:.0f} GF/s) |" if r else " – |"
                    for src, w in peers:
                        p = peer.get((src, w, t, h))
                        line += f" {fmt_us(p[mode])} |" if p else " – |"
                    out.append(line)
                out.append("")
    lin = [r for r in rows if r["kind"] in ("column", "row")]
    if lin:
        out.append("## Column- and row-parallel linear layers alone (column h->4h, row 4h->h), float32\n")
        out.append("| layer | mode | hidden | tokens | backend | n | time | GFLOP/s (sum over ranks) |")
        out.append("|---|---|---:|---:|---|---:|---:|---:|")
        for r in sorted(lin, key=lambda r: (r["kind"], r["mode"], r["hidden"], r["tokens"], r["backend"], r["world"])):
            out.append(f"| {r['kind']} | {r['mode']} | {r['hidden']} | {r['tokens']} | {r['backend']} | {r['world']} | "
                       f"{fmt_us(r['us'])} | {r['GFLOPs']:.1f} |")
        out.append("")
    gemm = [r for r in rows if r["kind"] == "sgemm" and r["file"] != LONG_ATTENTION]
    if gemm:
        out.append("## Bare single-thread sgemm, every rank at once (the machine's GEMM rate in this run)\n")
        out.append("| backend | n | library | M x N x K | time | GFLOP/s per rank | GFLOP/s summed |")
        out.append("|---|---:|---|---|---:|---:|---:|")
        for r in sorted(gemm, key=lambda r: (r["backend"], r["world"], r["m"], r["lib"])):
            out.append(f"| {r['backend']} | {r['world']} | {r['lib']} | {r['m']}x{r['n']}x{r['k']} | {fmt_us(r['us'])} | "
                       f"{r['GFLOPs_per_rank']:.1f} | {r['GFLOPs']:.1f} |")
        out.append("")
    triad = [r for r in rows if r["kind"] == "triad"]
    if triad:
        out.append("## Memory bandwidth: triad a = b + s c on every rank at once (the memory limit in this run)\n")
        out.append("Three float arrays of the given size each, per rank (the last-level cache's size by default, so "
                   "the data comes from memory); bytes counted as STREAM does (three arrays, no write-allocate).\n")
        out.append("| backend | n | MiB per array | time | GB/s per rank | GB/s summed |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in sorted(triad, key=lambda r: (r["backend"], r["world"], r["mib"])):
            out.append(f"| {r['backend']} | {r['world']} | {r['mib']} | {fmt_us(r['us'])} | {r['GBps_per_rank']:.1f} | "
                       f"{r['GBps']:.1f} |")
        out.append("")


def mlp_weight_traffic(hidden, ffn=None):
    """Bytes a float32 MLP step (column h->ffn, row ffn->h, no biases) must move at few tokens, over
    all ranks: the weights read in forward, read again in backward, and the weight gradients read
    and written (accumulated) in backward. Activations are tokens x width, negligible here."""
    ffn = ffn or 4 * hidden
    weights = 2 * hidden * ffn * 4
    return 4 * weights


def triad_row(rows, backend, world):
    """The largest-array triad of this backend and world (arrays beyond the last-level cache)."""
    sel = [r for r in rows if r["kind"] == "triad" and r["backend"] == backend and r["world"] == world]
    return max(sel, key=lambda r: r.get("mib", 0)) if sel else None


LONG_ATTENTION = "attention-long.json"  # bench.sh's run of long-sequence attention and its own sgemm rows


def best_sgemm(rows, backend, world, file=None):
    """The fastest library's 2048^3 single-thread sgemm row of this backend and world (every rank at once)."""
    sel = [r for r in rows if r["kind"] == "sgemm" and r["backend"] == backend and r["world"] == world and r["m"] == 2048
           and (file is None or r["file"] == file) and (file is not None or r["file"] != LONG_ATTENTION)]
    return max(sel, key=lambda r: r["GFLOPs_per_rank"]) if sel else None


def attention_gemm_flops(tokens, hidden, head_dim=64):
    """The GEMM FLOPs of causal ParallelAttention forward + backward over one sequence (tp_bench_layers'
    shape: hidden / 64 heads, a quarter as many kv heads): q, k, v and output projections three times
    (forward, input and weight gradients), and the score and context GEMMs over the causal half,
    two in forward and five in backward (flash attention recomputes the scores), returned with and
    without that recomputation."""
    heads = hidden // head_dim
    kv = max(heads // 4, 1)
    projections = 2 * tokens * hidden * (2 * hidden + 2 * kv * head_dim)
    tile_pass = tokens * tokens * hidden  # 2 t^2 h over the causal half
    return 3 * projections + 7 * tile_pass, 3 * projections + 6 * tile_pass


def targets(rows, peer, out):
    out.append("## The issue's targets, as ratios measured side by side in this run\n")
    out.append("| target | measured | goal |")
    out.append("|---|---|---|")
    for b in ("mpi", "gloo"):
        for w in sorted({r["world"] for r in rows if r["kind"] == "all_reduce" and r["backend"] == b and r["world"] > 1}):
            raws = [r for r in rows if r["kind"] == "all_reduce" and r["backend"] == b and r["world"] == w and r["impl"] == b]
            for key, what in (("tp_over_raw", "verification on"), ("tp_unverified_over_raw", "verification off")):
                # per size, the median of the per-iteration ratios; the ratio of the sums beside it
                qs = [(r.get(key + "_median", r[key]), r["bytes"], r[key]) for r in raws if r.get(key) is not None]
                if qs:
                    worst, at, sums = max(qs)
                    worst_sums, at_sums = max((q[2], q[1]) for q in qs)
                    out.append(f"| tp {b} all_reduce / raw, {what}, n={w}: the worst size's median of per-iteration "
                               f"ratios (calls interleaved; {len(qs)} sizes) | {fmt_ratio(worst, 1.05)} (at "
                               f"{human_bytes(at)}; ratio of summed times there {sums:.3f}, worst {worst_sums:.3f} at "
                               f"{human_bytes(at_sums)}) | ≤ 1.05 at every size |")
    ref = best_sgemm(rows, "mpi", 2) or best_sgemm(rows, "mpi", 1)
    r = find(rows, kind="mlp", backend="mpi", world=2, hidden=1024, tokens=512, mode="fwdbwd")
    if ref and r:
        # the compute limit: the step's FLOPs over two ranks at the best single-thread sgemm rate
        out.append(f"| MLP h1024 fwdbwd 512 tokens, MPI n=2 / compute limit (FLOPs / (2 x {ref['GFLOPs_per_rank']:.1f} "
                   f"GF/s, {ref['lib']}'s sgemm 2048³ on both ranks at once)) | "
                   f"{fmt_ratio(ratio(2 * ref['GFLOPs_per_rank'], r['GFLOPs']), 1.10)} ({fmt_us(r['us'])}) | ≤ 1.10 |")
    tri = triad_row(rows, "mpi", 2)
    r = find(rows, kind="mlp", backend="mpi", world=2, hidden=1024, tokens=8, mode="fwdbwd")
    if tri and r:
        limit_us = mlp_weight_traffic(1024) / (tri["GBps"] * 1e9) * 1e6
        out.append(f"| MLP h1024 fwdbwd 8 tokens, MPI n=2 / memory limit ({mlp_weight_traffic(1024) / 1e6:.0f} MB "
                   f"of weights and weight gradients / triad {tri['GBps']:.1f} GB/s over both ranks = "
                   f"{fmt_us(limit_us)}) | {fmt_ratio(ratio(r['us'], limit_us), 1.2)} ({fmt_us(r['us'])}) | ≤ 1.2 |")
    for t, goal in ((512, 0.5), (8, 0.3)):
        two = find(rows, kind="mlp", backend="mpi", world=2, hidden=1024, tokens=t, mode="fwdbwd")
        for src in sorted({k[0] for k in peer}, key=lambda x: x != "pypi"):
            p = peer.get((src, 2, t, 1024))
            if two and p:
                out.append(f"| MLP h1024 fwdbwd {t} tokens, tp MPI n=2 / torch {p['version']} ({src}) gloo n=2 | "
                           f"{fmt_ratio(ratio(two['us'], p['fwdbwd']), goal if src == 'pypi' else None)} "
                           f"({fmt_us(two['us'])} / {fmt_us(p['fwdbwd'])}) | {f'≤ {goal}' if src == 'pypi' else '–'} |")
    att = find(rows, kind="attention", backend="local", world=1, hidden=512, tokens=4096, mode="fwdbwd")
    ref = best_sgemm(rows, "local", 1, file=LONG_ATTENTION)
    if att and ref:
        executed, without = attention_gemm_flops(4096, 512)
        limit_us = executed / (ref["GFLOPs_per_rank"] * 1e9) * 1e6
        out.append(f"| Causal attention, 8 heads of 64 (2 kv heads), seq 4096, fwdbwd, one rank / its GEMM FLOPs "
                   f"({executed / 1e9:.1f} GFLOP with the recomputed scores) at {ref['lib']}'s sgemm rate "
                   f"({ref['GFLOPs_per_rank']:.1f} GF/s) = {fmt_us(limit_us)} | {fmt_ratio(ratio(att['us'], limit_us), 1.3)} "
                   f"({fmt_us(att['us'])}; {ratio(att['us'], without / (ref['GFLOPs_per_rank'] * 1e9) * 1e6):.3f} "
                   f"counting no recomputation) | ≤ 1.3 |")
    out.append("")


def long_attention_section(rows, out):
    att = [r for r in rows if r["kind"] == "attention" and r["backend"] == "local" and r["world"] == 1]
    if not att:
        return
    out.append("## Long-sequence attention (one rank)\n")
    out.append("Causal `ParallelAttention` over one sequence, 8 heads of 64 over 2 kv heads (hidden 512), projections "
               "included, through the CPU's flash attention: tiles of 128 queries of every head of a kv group by 256 "
               "keys (128 in backward) with an online softmax, so memory is O(seq x head_dim) per head (the scores "
               "of one tile per group, not seq²). GFLOP/s count the layer's FLOPs with the scores as if not causal, as the other "
               "rows do; the target row above counts the GEMMs the layer runs.\n")
    out.append("| mode | tokens | time | GFLOP/s |")
    out.append("|---|---:|---:|---:|")
    for r in sorted(att, key=lambda r: (r["tokens"], r["mode"])):
        out.append(f"| {r['mode']} | {r['tokens']} | {fmt_us(r['us'])} | {r['GFLOPs']:.1f} |")
    gemm = [r for r in rows if r["kind"] == "sgemm" and r["file"] == LONG_ATTENTION]
    if gemm:
        out.append("\nThe same process's bare single-thread sgemm 2048³: " +
                   ", ".join(f"{r['lib']} {r['GFLOPs_per_rank']:.1f} GFLOP/s" for r in sorted(gemm, key=lambda r: r["lib"])) + ".")
    out.append("")


def small_token_section(rows, out):
    """The MLP at few tokens with tp::Cpu's streaming linear kernels beside the same case on GEMMs
    only (tp_bench_layers --compare-gemm), and both over the memory limit of the same run's triad."""
    pairs = []
    for r in rows:
        if r["kind"] != "mlp" or r["tokens"] > 16:
            continue
        g = find(rows, kind="mlp_gemm", file=r["file"], backend=r["backend"], world=r["world"], hidden=r["hidden"], tokens=r["tokens"],
                 mode=r["mode"])
        if g:
            pairs.append((r, g))
    if not pairs:
        return
    out.append("## Few tokens: streaming kernels against GEMMs, and the memory limit\n")
    out.append("The MLP block (float32) with `tp::Cpu`'s streaming linear kernels (one pass over each weight, and "
               "over weight and gradient together in backward) and the same case with `CpuOptions::streaming_linear = "
               "false` (the BLAS's GEMMs), run one after the other in this run. The memory limit is the bytes a "
               "step must move (fwd: the weights; fwdbwd: the weights twice and the weight gradients read and written) "
               "over the triad bandwidth of the same backend and world.\n")
    out.append("| backend | n | hidden | tokens | mode | streaming | GEMMs | streaming / GEMMs | streaming / memory limit | GEMMs / memory limit |")
    out.append("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r, g in sorted(pairs, key=lambda p: (p[0]["backend"], p[0]["world"], p[0]["hidden"], p[0]["mode"], p[0]["tokens"])):
        tri = triad_row(rows, r["backend"], r["world"])
        limit = None
        if tri:
            traffic = mlp_weight_traffic(r["hidden"]) * (1 if r["mode"] == "fwdbwd" else 0.25)
            limit = traffic / (tri["GBps"] * 1e9) * 1e6
        out.append(f"| {r['backend']} | {r['world']} | {r['hidden']} | {r['tokens']} | {r['mode']} | {fmt_us(r['us'])} | "
                   f"{fmt_us(g['us'])} | {fmt_ratio(ratio(r['us'], g['us']))} | {fmt_ratio(ratio(r['us'], limit))} | "
                   f"{fmt_ratio(ratio(g['us'], limit))} |")
    out.append("")


def isa_section(rows, out):
    """bench.sh's runs of the MLP with tp's loops forced to each instruction set (TP_CPU_ISA, with the
    BLAS capped to the same: OPENBLAS_CORETYPE, ONEDNN_MAX_CPU_ISA), one process per instruction set,
    the instruction sets alternating (A B A B): few tokens on the streaming kernels beside the same
    case on GEMMs, each over the memory limit of the same process's triad, and 512 tokens over the
    compute limit of the same process's best sgemm."""
    runs = sorted({(r["isa_run"], r["rep"], r["backend"], r["world"]) for r in rows if r["kind"].startswith("isa_")},
                  key=lambda k: (k[2], k[3], k[1], ["avx512", "avx2", "baseline"].index(k[0]) if k[0] in ("avx512", "avx2", "baseline") else 9))
    if not runs:
        return
    out.append("## Per instruction set: the MLP at few tokens against the memory limit, at 512 against the compute limit\n")
    out.append("MLP h1024 (column 1024 -> 4096, exact GELU, row 4096 -> 1024, float32), one process per instruction set "
               "with `TP_CPU_ISA=<isa>` (tp's vectorized loops on that instruction set's code) and the BLAS capped to the "
               "same (`OPENBLAS_CORETYPE=Haswell` and `ONEDNN_MAX_CPU_ISA=AVX2` for avx2; `Prescott` and `SSE41` for "
               "baseline), which makes `tp::Cpu` choose as on such a CPU (OpenBLAS below AVX-512). The processes "
               "alternate (A B A B: rep 1 of each, then rep 2). Memory limit: the weights read twice and the weight "
               "gradients read and written (fwdbwd; the weights once for fwd) over the same process's triad. Compute "
               "limit: the step's FLOPs at the same process's best single-thread sgemm 2048³ rate, per rank. Times, rates and "
               "ratios here are from the process's CPU time (rank 0's), not wall time, so that other work on a shared "
               "machine (the load is in the header) stretches neither side; the triad's and sgemm's rates too.\n")
    out.append("| isa | rep | backend | n | tokens | mode | streaming | GEMMs | streaming / GEMMs | streaming / memory limit | GEMMs / memory limit | / compute limit |")
    out.append("|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for isa, rep, backend, world in runs:
        sel = [r for r in rows if r.get("isa_run") == isa and r.get("rep") == rep and r["backend"] == backend
               and r["world"] == world]
        # CPU-time rates: the counters are from wall time; scale them by wall / CPU
        for r in sel:
            for k in ("GBps", "GFLOPs_per_rank"):
                if k in r and r["cpu_us"] > 0:
                    r[k + "_cpu"] = r[k] * r["us"] / r["cpu_us"]
        tri = [r for r in sel if r["kind"] == "isa_triad"]
        tri = max(tri, key=lambda r: r.get("mib", 0)) if tri else None
        gemm = [r for r in sel if r["kind"] == "isa_sgemm" and r["m"] == 2048]
        gemm = max(gemm, key=lambda r: r["GFLOPs_per_rank_cpu"]) if gemm else None
        for r in sorted((r for r in sel if r["kind"] == "isa_mlp"), key=lambda r: (r["hidden"], r["mode"], r["tokens"])):
            g = find(sel, kind="isa_mlp_gemm", hidden=r["hidden"], tokens=r["tokens"], mode=r["mode"])
            mem = comp = None
            if tri and r["tokens"] <= 16:
                traffic = mlp_weight_traffic(r["hidden"]) * (1 if r["mode"] == "fwdbwd" else 0.25)
                mem = traffic / (tri["GBps_cpu"] * 1e9) * 1e6
            if gemm and r["tokens"] >= 64:
                flops = 2 * r["tokens"] * r["hidden"] * 4 * r["hidden"] * 2 * (3 if r["mode"] == "fwdbwd" else 1)
                comp = flops / (world * gemm["GFLOPs_per_rank_cpu"] * 1e9) * 1e6
            out.append(f"| {isa} | {rep} | {backend} | {world} | {r['tokens']} | {r['mode']} | {fmt_us(r['cpu_us'])} | "
                       f"{fmt_us(g['cpu_us']) if g else '–'} | {fmt_ratio(ratio(r['cpu_us'], g['cpu_us'])) if g else '–'} | "
                       f"{fmt_ratio(ratio(r['cpu_us'], mem), 1.1) if mem else '–'} | "
                       f"{fmt_ratio(ratio(g['cpu_us'], mem)) if g and mem else '–'} | "
                       f"{fmt_ratio(ratio(r['cpu_us'], comp), 1.05) if comp else '–'} |")
        if tri or gemm:
            out.append(f"| {isa} | {rep} | {backend} | {world} | limits | | triad {tri['GBps_cpu']:.1f} GB/s over all ranks |"
                       f" sgemm {gemm['GFLOPs_per_rank_cpu']:.1f} GF/s per rank ({gemm['lib']}) | | | | |"
                       if tri and gemm else f"| {isa} | {rep} | {backend} | {world} | limits | | | | | | | |")
    out.append("")


def plots(rows, peer, directory, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out.append("_(plots skipped: no matplotlib)_\n")
        return
    os.makedirs(directory, exist_ok=True)
    rel = os.path.relpath(directory, os.path.dirname(os.path.abspath(out_path)))
    colls = [c for c in ("all_reduce", "all_gather", "reduce_scatter") if find(rows, kind=c)]
    if colls:
        fig, axes = plt.subplots(1, len(colls), figsize=(5.5 * len(colls), 4.5), squeeze=False)
        colors = {"local": "tab:green", "mpi": "tab:blue", "gloo": "tab:orange"}
        for ax, c in zip(axes[0], colls):
            for b in ("local", "mpi", "gloo"):
                for w in sorted({r["world"] for r in rows if r["kind"] == c and r["backend"] == b and r["world"] > 1}):
                    for impl, style in (("tp", "-"), (b, ":")):
                        sel = sorted([r for r in rows if r["kind"] == c and r["backend"] == b and r["world"] == w and r["impl"] == impl],
                                     key=lambda r: r["bytes"])
                        if sel:
                            ax.plot([r["bytes"] for r in sel], [r["busbw_GBps"] for r in sel], style,
                                    marker="o" if w == 2 else "s", markersize=3, color=colors[b],
                                    alpha=1.0 if w == 2 else 0.6,
                                    label=f"{'tp' if impl == 'tp' else 'raw'} {b} n={w}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("message size (bytes)")
            ax.set_ylabel("busbw (GB/s)")
            ax.set_title(c)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "busbw.png"), dpi=110)
        plt.close(fig)
        out.append(f"![busbw against message size]({rel}/busbw.png)\n")
    mlp = [r for r in rows if r["kind"] == "mlp" and r["hidden"] == 1024]
    if mlp:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, mode in zip(axes, ("fwd", "fwdbwd")):
            for b, color in (("mpi", "tab:blue"), ("gloo", "tab:orange"), ("local", "tab:green")):
                for w, style in ((1, "--"), (2, "-")):
                    sel = sorted([r for r in mlp if r["backend"] == b and r["world"] == w and r["mode"] == mode],
                                 key=lambda r: r["tokens"])
                    if sel:
                        ax.plot([r["tokens"] for r in sel], [r["us"] / 1e3 for r in sel], style, marker="o", markersize=3,
                                color=color, label=f"tp {b} n={w}")
            for w, style in ((1, "--"), (2, "-")):
                for src, color in (("pypi", "tab:red"), ("debian", "tab:purple")):
                    pts = sorted((t, v[mode]) for (s, ww, t, h), v in peer.items() if s == src and ww == w and h == 1024)
                    if pts:
                        ax.plot([t for t, _ in pts], [v / 1e3 for _, v in pts], style, marker="x", color=color,
                                label=f"torch {src} gloo n={w}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens")
            ax.set_ylabel("ms per step")
            ax.set_title(f"MLP h=1024 ffn=4096, {mode}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "mlp.png"), dpi=110)
        plt.close(fig)
        out.append(f"![MLP time against tokens]({rel}/mlp.png)\n")


def main():
    global out_path
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plots", required=True)
    ap.add_argument("--command", default="scripts/bench.sh")
    ap.add_argument("--load", default="?")
    ap.add_argument("--elapsed", default="?")
    ap.add_argument("--openblas-coretype", default="")
    args = ap.parse_args()
    out_path = args.out
    rows, context = load(args.results)
    peer = load_peer(args.results)
    out = ["# Benchmarks\n",
           "Written by `scripts/bench.sh` (do not edit by hand). Each backend runs at world sizes 1, 2 and 4 on this "
           "one machine: `local` is threads in one process, `mpi` and `gloo` are processes under mpirun "
           "(Gloo meets over MPI, then talks TCP over loopback). Every rank uses one BLAS thread; Open MPI runs with "
           "`OMPI_MCA_mpi_yield_when_idle=1`, since a rank spinning in MPI slows its sibling on a shared core.\n"]
    try:
        if float(args.load.split()[0]) >= (os.cpu_count() or 1):
            out.append(f"> **This run was made on a loaded machine** (load average {args.load} on {os.cpu_count()} CPUs): "
                       "absolute times are several times slower than on a quiet one and vary from row to row. Only the "
                       "interleaved tp/raw ratios compare like with like; re-run `scripts/bench.sh` on a quiet machine "
                       "for figures to quote.\n")
    except ValueError:
        pass
    out.append("| | |\n|---|---|")
    for k, v in machine(args, context):
        out.append(f"| {k} | {v} |")
    out.append("")
    targets(rows, peer, out)
    plots(rows, peer, args.plots, out)
    comm_section(rows, out)
    layer_section(rows, peer, out)
    small_token_section(rows, out)
    isa_section(rows, out)
    long_attention_section(rows, out)
    with open(args.out, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
