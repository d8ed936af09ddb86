"""``python -m lora_kernels bench``: the options, and the run they ask for."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import torch

from .cases import DTYPES, default_cases, full_cases
from .correctness import CorrectnessError
from .harness import RATE_KEYS, _progress_default, run
from .plot import slices_plot_path, write_plot, write_slices_plot
from .report import SLICES_TITLE, format_table, write_json
from .slices import run_slices, slices_cases


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--full", action="store_true",
                   help="the GPU sweep (decode T x n x r x H_out, prefill, bf16 and fp16, "
                        "shrink / expand / add_lora); CUDA only unless --dry-run")
    p.add_argument("--json", metavar="PATH", help="write the rows (and device, versions, date) as JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when torch sees a GPU, else cpu")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes, 1 repetition: exercises every case's construction, correctness "
                        "check and row layout, measures nothing")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="timed repetitions per candidate (default 20 on CPU, 100 graph replays on CUDA)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                   help="default workload dtype (default bf16 on CUDA, fp32 on CPU); --full runs bf16 and fp16")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop starting new cases after S seconds (they are listed under not_run)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG plot (needs matplotlib)")
    p.add_argument("--slices", action="store_true",
                   help="also time add_lora_slices on Llama-3-8B's qkv and gate_up against add_lora per "
                        "slice, torch._grouped_mm, the torch reference and torch.mm for one adapter "
                        "(bf16 unless --dtype; CUDA only unless --dry-run); rows under 'slices' in the "
                        "JSON, plot in PATH-slices.png")
    p.add_argument("--slices-budget", type=float, default=None, metavar="S",
                   help="stop starting new add_lora_slices cases after S seconds")
    return p


def run_from_args(args: argparse.Namespace, *, ops: Any = None, extra_baselines=None,
                  progress: Callable[[str], None] = _progress_default,
                  out: Callable[[str], None] = print) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device here.", file=sys.stderr)
        return 2
    if args.full and device == "cpu" and not args.dry_run:
        print("error: --full is the GPU sweep: 624 shapes in bf16/fp16 that would take hours "
              "on a CPU and measure nothing useful. Run it on a CUDA machine (benchmarks/gpu_check.sh), "
              "or add --dry-run to check the harness on CPU. `bench` without --full runs the default "
              "CPU workload.", file=sys.stderr)
        return 2
    if args.slices and device == "cpu" and not args.dry_run:
        print("error: --slices times Llama-3-8B-sized bf16 projections: a GPU benchmark. Run it on a "
              "CUDA machine (benchmarks/gpu_check.sh), or add --dry-run to check the harness on CPU; "
              "benchmarks/bench_slices_cpu.py times add_lora_slices on CPU.", file=sys.stderr)
        return 2
    if args.repeat is not None and args.repeat < 1:
        print(f"error: --repeat must be >= 1, got {args.repeat}", file=sys.stderr)
        return 2
    if args.full:
        dtypes = (DTYPES[args.dtype],) if args.dtype else (torch.bfloat16, torch.float16)
        cases = full_cases(dtypes, dry_run=args.dry_run)
    else:
        cases = default_cases(device, DTYPES[args.dtype] if args.dtype else None, dry_run=args.dry_run)
    try:
        result = run(cases, device, ops=ops, repeat=args.repeat, dry_run=args.dry_run,
                     time_budget_s=args.time_budget, extra_baselines=extra_baselines, progress=progress,
                     keep_going=args.full)
    except CorrectnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.slices:
        dtype = DTYPES[args.dtype] if args.dtype else torch.bfloat16
        result["slices"] = run_slices(slices_cases(dtype, dry_run=args.dry_run), device, ops=ops,
                                      repeat=args.repeat, dry_run=args.dry_run,
                                      time_budget_s=args.slices_budget, progress=progress, keep_going=True,
                                      rates={k: result[k] for k in RATE_KEYS})
    out(format_table(result))
    for e in result["errors"]:
        out(f"FAILED: {e['name']}: {e['error'].splitlines()[0][:300]}")
    slices = result.get("slices")
    if slices:
        out(f"\n{SLICES_TITLE}:")
        out(format_table(slices))
        for e in slices["errors"]:
            out(f"FAILED: {e['name']}: {e['error'].splitlines()[0][:300]}")
    if args.json:
        write_json(result, args.json)
        out(f"wrote {args.json}")
    if args.plot:
        if write_plot(result, args.plot):
            out(f"wrote {args.plot}")
        if slices and write_slices_plot(slices, slices_plot_path(args.plot)):
            out(f"wrote {slices_plot_path(args.plot)}")
    if not args.json and not args.plot:
        out("(no file written: --json PATH writes the rows, --plot PATH the PNG plot; "
            "`make bench` writes both to benchmarks/results/local/)")
    return 1 if result["errors"] or (slices and slices["errors"]) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lora_kernels.bench", description="Benchmark engine: our ops against the plain-torch compositions a user would write.")
    add_arguments(p)
    return run_from_args(p.parse_args(argv))
