#!/usr/bin/env python3
"""The PyTorch peer of tp's MLP benchmark: the same Megatron-style block, written the way a PyTorch
user would, so that BENCHMARKS.md compares tp with what users would otherwise pick.

Column-parallel h -> 4h (each rank holds 4h / world rows of W1), exact GELU, row-parallel 4h -> h
(each rank holds the matching columns of W2) whose partial outputs are summed by an all-reduce over
torch.distributed's gloo backend; backward all-reduces the input gradient (Megatron's f and g).
No biases, float32. One process per rank, each with one intra-op thread (OMP/MKL threads 1), as
tp's ranks run one BLAS thread each.

Prints one line (rank 0):
  torch-gloo source=pypi|debian torch=VERSION world=W tokens=T hidden=H fwd_ms=.. fwdbwd_ms=.. rel_err=..
fwd_ms and fwdbwd_ms are medians over the iterations of the slowest rank's time; rel_err is the
largest of ||got - want|| / ||want|| over the output and the input gradient, against the unsharded
block in float64.

usage: torch_mlp_peer.py WORLD TOKENS HIDDEN ITERS
"""
import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"  # before torch loads its BLAS

import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def source_of_torch():
    return "debian" if torch.__file__.startswith("/usr/lib/python3/") else "pypi"


class CopyToRanks(torch.autograd.Function):
    """Megatron's f: identity forward, all-reduce of the gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad


class SumOverRanks(torch.autograd.Function):
    """Megatron's g: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, y):
        y = y.contiguous()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad


def full_tensors(tokens, hidden):
    g = torch.Generator().manual_seed(1234)
    ffn = 4 * hidden
    x = torch.randn(tokens, hidden, generator=g)
    w1 = torch.randn(ffn, hidden, generator=g) / hidden**0.5
    w2 = torch.randn(hidden, ffn, generator=g) / ffn**0.5
    dy = torch.randn(tokens, hidden, generator=g)
    return x, w1, w2, dy


def rel(got, want):
    return (got.double() - want).norm().item() / max(want.norm().item(), 1e-300)


def rank_main(rank, world, port, tokens, hidden, iters, queue):
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x_full, w1_full, w2_full, dy = full_tensors(tokens, hidden)
    shard = 4 * hidden // world
    w1 = w1_full[rank * shard:(rank + 1) * shard].clone().requires_grad_(True)
    w2 = w2_full[:, rank * shard:(rank + 1) * shard].clone().requires_grad_(True)

    def step(backward):
        x = x_full.clone().requires_grad_(backward)
        h = torch.nn.functional.gelu(CopyToRanks.apply(x) @ w1.t())
        y = SumOverRanks.apply(h @ w2.t())
        if backward:
            y.backward(dy)
        return x, y

    def timed(backward):
        times = []
        for i in range(iters + 2):  # two warm-up iterations
            w1.grad = w2.grad = None
            dist.barrier()
            start = time.perf_counter()
            step(backward)
            elapsed = torch.tensor([time.perf_counter() - start])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank's time
            if i >= 2:
                times.append(elapsed.item())
        return statistics.median(times) * 1e3

    fwd_ms = timed(False)
    fwdbwd_ms = timed(True)
    w1.grad = w2.grad = None
    x, y = step(True)
    if rank == 0:
        xd, w1d, w2d = x_full.double().requires_grad_(True), w1_full.double(), w2_full.double()
        want = torch.nn.functional.gelu(xd @ w1d.t()) @ w2d.t()
        want.backward(dy.double())
        err = max(rel(y.detach(), want.detach()), rel(x.grad, xd.grad))
        queue.put(f"torch-gloo source={source_of_torch()} torch={torch.__version__} world={world} tokens={tokens} "
                  f"hidden={hidden} fwd_ms={fwd_ms:.4f} fwdbwd_ms={fwdbwd_ms:.4f} rel_err={err:.3e}")
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__.split("usage: ")[1].strip())
    world, tokens, hidden, iters = (int(a) for a in sys.argv[1:])
    if (4 * hidden) % world:
        sys.exit(f"torch_mlp_peer: 4 * hidden = {4 * hidden} does not split over {world} ranks")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(rank_main, args=(world, free_port(), tokens, hidden, iters, queue), nprocs=world,
                       start_method="spawn")
    print(queue.get(), flush=True)


if __name__ == "__main__":
    main()
