"""CPU: add_lora_slices against add_lora called once per column slice (what a server without
add_lora_slices does for a fused qkv / gate_up layer). Both give bit-for-bit the same y
(checked before timing); medians of interleaved runs, so machine load hits both alike.

    .venv/bin/python benchmarks/bench_slices_cpu.py            # Llama-3-8B projections, fp32
    .venv/bin/python benchmarks/bench_slices_cpu.py --quick    # smaller sizes, a few seconds
    .venv/bin/python benchmarks/bench_slices_cpu.py --threads 1 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

import lora_kernels as lk

# name: T tokens, H_in, slice widths, N adapters, ranks per slice, segments (0 = per-token indices)
FULL = {
    "qkv decode 64 tok / 64 adapters": (64, 4096, (4096, 1024, 1024), 64, (16, 8, 8), 0),
    "qkv decode 8 tok / 8 adapters": (8, 4096, (4096, 1024, 1024), 8, (16, 16, 16), 0),
    "qkv prefill 512 tok / 8 segments": (512, 4096, (4096, 1024, 1024), 8, (16, 8, 8), 8),
    "gate_up decode 16 tok / 16 adapters": (16, 4096, (14336, 14336), 16, (16, 16), 0),
}
QUICK = {
    "qkv decode 32 tok / 32 adapters": (32, 1024, (1024, 256, 256), 32, (16, 8, 8), 0),
    "qkv decode 4 tok / 4 adapters": (4, 1024, (1024, 256, 256), 4, (16, 16, 16), 0),
    "qkv prefill 256 tok / 4 segments": (256, 1024, (1024, 256, 256), 4, (16, 8, 8), 4),
}


def workload(T, H_in, widths, N, ranks, segments, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, H_in, generator=gen).to(dtype)
    y = torch.randn(T, sum(widths), generator=gen).to(dtype)
    lora_a = [(torch.randn(N, r, H_in, generator=gen) / H_in**0.5).to(dtype) for r in ranks]
    lora_b = [torch.randn(N, w, r, generator=gen).to(dtype) for w, r in zip(widths, ranks)]
    scaling = [torch.rand(N, generator=gen) + 0.1 for _ in ranks]
    if segments:
        bounds = torch.linspace(0, T, segments + 1).round().to(torch.int32)
        where = dict(seg_indptr=bounds, seg_adapter=torch.arange(segments, dtype=torch.int32) % N)
        indices = None
    else:
        where = {}
        indices = torch.randint(-1, N, (T,), generator=gen, dtype=torch.int32)
    return x, y, lora_a, lora_b, scaling, indices, where


def per_slice(y, x, lora_a, lora_b, scaling, indices, where):
    offset = 0
    for a, b, s in zip(lora_a, lora_b, scaling):
        lk.add_lora(y[:, offset : offset + b.shape[1]], x, a, b, s, indices, **where)
        offset += b.shape[1]


def fused(y, x, lora_a, lora_b, scaling, indices, where):
    lk.add_lora_slices(y, x, lora_a, lora_b, scaling, indices, **where)


def median_us(candidates, y0, runs):
    """Interleaved runs of each candidate on a fresh copy of y; median microseconds of each."""
    times = {name: [] for name in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            y = y0.clone()
            start = time.perf_counter()
            fn(y)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] * 1e6 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", default="", help="run the workloads whose name contains this")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, median of {args.runs}")
    print(f"{'workload':40s} {'per-slice add_lora':>19s} {'add_lora_slices':>16s} {'speedup':>8s}")
    for name, shape in (QUICK if args.quick else FULL).items():
        if args.only not in name:
            continue
        x, y0, lora_a, lora_b, scaling, indices, where = workload(*shape, dtype)
        candidates = {
            "per_slice": lambda y: per_slice(y, x, lora_a, lora_b, scaling, indices, where),
            "fused": lambda y: fused(y, x, lora_a, lora_b, scaling, indices, where),
        }
        outs = {}
        for key, fn in candidates.items():
            outs[key] = y0.clone()
            fn(outs[key])
        assert torch.equal(outs["per_slice"], outs["fused"]), f"{name}: results differ"
        t = median_us(candidates, y0, args.runs)
        print(f"{name:40s} {t['per_slice']:16.0f} us {t['fused']:13.0f} us {t['per_slice'] / t['fused']:7.2f}x")


if __name__ == "__main__":
    main()
