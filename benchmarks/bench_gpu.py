"""The GPU sweep: ``python -m lora_kernels bench --full`` with its outputs filed.

    python benchmarks/bench_gpu.py [--outdir DIR] [--time-budget S] [--slices-budget S] [--repeat N]
    python benchmarks/bench_gpu.py --summary DIR/h200.json     # the short table of a result
    python benchmarks/bench_gpu.py --device cpu --dry-run      # harness check, no GPU needed

Writes, for a GPU named e.g. "NVIDIA H200" (stem "h200"):
    DIR/h200.json   rows (name, bytes, us, gbps, pct_copy, baselines, rel_err, ...) + GPU, torch,
                    CUDA versions and the date
    DIR/h200.png    latency against the number of distinct adapters (needs matplotlib)
    DIR/h200-slices.png   the same for add_lora_slices on Llama-3-8B's qkv / gate_up (rows under
                    "slices" in the JSON: against add_lora per slice, torch._grouped_mm, the
                    torch reference, torch.mm for one adapter; --slices-budget 0 leaves them out)
    DIR/h200.log    progress lines, the full tables, the targets
and prints the short table and the targets on stdout. A dry run writes <stem>-dry-run.*.
The sweep itself (cases, baselines, timing method) lives in the lora_kernels/bench/ package.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def gpu_stem(name: str) -> str:
    """'NVIDIA H200' -> 'h200'; 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    name = re.sub(r"^(nvidia)\s+", "", name.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop starting new cases after S seconds (most important cases run first)")
    p.add_argument("--slices-budget", type=float, default=60.0, metavar="S",
                   help="after the sweep, time add_lora_slices cases for at most S seconds "
                        "(cases not started by then are listed as not run; 0: none)")
    p.add_argument("--repeat", type=int, default=None, metavar="N", help="most graph replays per candidate")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, 1 repetition (harness check)")
    p.add_argument("--summary", metavar="JSON", help="print the short table of a written result and exit")
    args = p.parse_args(argv)

    import torch

    from lora_kernels import bench

    if args.summary:
        with open(args.summary) as f:
            print(bench.format_summary(json.load(f)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: torch sees no CUDA device: the sweep needs a GPU (or use --device cpu --dry-run).",
              file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.dry_run:
        print("error: the sweep is a GPU benchmark; on CPU only --dry-run (a harness check) is allowed.",
              file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    stem = gpu_stem(name) + ("-dry-run" if args.dry_run else "")
    os.makedirs(args.outdir, exist_ok=True)
    paths = {ext: os.path.join(args.outdir, f"{stem}.{ext}") for ext in ("json", "png", "log")}
    if args.slices_budget > 0:
        paths["slices_png"] = bench.slices_plot_path(paths["png"])

    with open(paths["log"], "w") as log:
        def progress(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
            log.write(msg + "\n")
            log.flush()

        def to_log(msg: str) -> None:  # the full table goes to the log only
            log.write(msg + "\n")
            log.flush()

        cli = ["--full", "--device", args.device, "--json", paths["json"], "--plot", paths["png"]]
        if args.dry_run:
            cli.append("--dry-run")
        if args.time_budget is not None:
            cli += ["--time-budget", str(args.time_budget)]
        if args.repeat is not None:
            cli += ["--repeat", str(args.repeat)]
        if args.slices_budget > 0:
            cli += ["--slices", "--slices-budget", str(args.slices_budget)]
        progress(f"bench --full {' '.join(cli[1:])}")
        rc = bench.run_from_args(bench.add_arguments(argparse.ArgumentParser()).parse_args(cli),
                                 progress=progress, out=to_log)
        if os.path.exists(paths["json"]):
            with open(paths["json"]) as f:
                summary = bench.format_summary(json.load(f))
            to_log(summary)
            print(summary)
        print(f"wrote {', '.join(v for v in paths.values() if os.path.exists(v))}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
