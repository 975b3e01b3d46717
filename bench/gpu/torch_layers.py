#!/usr/bin/env python3
"""PyTorch eager on the shapes of tp_bench_gpu_layers: a linear layer y = x w^T + b (tp's Column is
hidden -> 4 hidden, Row is 4 hidden -> hidden) and the MLP (linear, GELU tanh, linear), forward and
forward+backward ("fwdbwd"), timed with CUDA events; the backward computes the same gradients as tp
(dx, dw, db) through torch.autograd.grad.

  python3 bench/gpu/torch_layers.py --out torch_layers.json [--max-seconds 90]

Each result is printed as it is measured and the JSON rewritten after every shape, so a run that
is stopped (or that stops itself at --max-seconds) still leaves what it measured.
"""
import time

START = time.monotonic()  # --max-seconds counts from here: importing torch takes seconds on a cold machine

import argparse
import json
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the GPU machines have PyTorch; a dev machine may not
    print("torch_layers.py: PyTorch is not installed; nothing to measure", file=sys.stderr)
    sys.exit(0)

SHAPES = {"bf16": [(4096, 8192), (2048, 4096), (512, 4096)], "fp16": [(2048, 4096)], "fp32-tf32": [(2048, 4096)]}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32-tf32": torch.float32}


def time_ms(fn, min_time=0.5, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times, total = [], 0.0
    while total < min_time * 1e3 or len(times) < 10:
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
        total += times[-1]
    times.sort()
    return times[len(times) // 2]  # median


def rand(*shape, dtype, grad=False):
    return (torch.rand(*shape, device="cuda", dtype=dtype) - 0.5).requires_grad_(grad)


def run(name, tokens, hidden):
    dtype, ffn = DTYPES[name], 4 * hidden
    results = []

    def record(what, ms, flops):
        results.append({"name": f"torch/{name}/{what}/{tokens}/{hidden}", "ms": ms, "tflops": flops / ms / 1e9})
        r = results[-1]
        print(f"{r['name']:<40} {r['ms']:9.3f} ms {r['tflops']:8.1f} TFLOP/s", flush=True)

    x = rand(tokens, hidden, dtype=dtype)
    w = rand(ffn, hidden, dtype=dtype)
    with torch.no_grad():
        record("gemm", time_ms(lambda: torch.matmul(x, w.t())), 2.0 * tokens * hidden * ffn)

    for which, (inp, out) in {"column": (hidden, ffn), "row": (ffn, hidden)}.items():
        x = rand(tokens, inp, dtype=dtype, grad=True)
        w, b = rand(out, inp, dtype=dtype, grad=True), rand(out, dtype=dtype, grad=True)
        dy = rand(tokens, out, dtype=dtype)
        with torch.no_grad():
            record(f"{which}_forward", time_ms(lambda: F.linear(x, w, b)), 2.0 * tokens * inp * out)
        record(f"{which}_fwdbwd", time_ms(lambda: torch.autograd.grad(F.linear(x, w, b), (x, w, b), dy)),
               6.0 * tokens * inp * out)

    x = rand(tokens, hidden, dtype=dtype, grad=True)
    w1, b1 = rand(ffn, hidden, dtype=dtype, grad=True), rand(ffn, dtype=dtype, grad=True)
    w2, b2 = rand(hidden, ffn, dtype=dtype, grad=True), rand(hidden, dtype=dtype, grad=True)
    dy = rand(tokens, hidden, dtype=dtype)
    mlp = lambda: F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)
    with torch.no_grad():
        record("mlp_forward", time_ms(mlp), 4.0 * tokens * hidden * ffn)
    record("mlp_fwdbwd", time_ms(lambda: torch.autograd.grad(mlp(), (x, w1, b1, w2, b2), dy)),
           12.0 * tokens * hidden * ffn)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--max-seconds", type=float, default=0, help="start no new shape after this many seconds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("torch_layers.py: no CUDA device; nothing to measure", file=sys.stderr)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows compare with tp's TF32 option
    gpu = torch.cuda.get_device_name()
    print(f"PyTorch {torch.__version__} eager on {gpu}", flush=True)
    results = []
    for name, shapes in SHAPES.items():
        for tokens, hidden in shapes:
            if args.max_seconds and time.monotonic() - START > args.max_seconds:
                print(f"torch_layers.py: stopping at {args.max_seconds:.0f} s before {name} {tokens}x{hidden}", flush=True)
                return 0
            results += run(name, tokens, hidden)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"gpu": gpu, "torch": torch.__version__, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
