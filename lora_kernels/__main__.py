"""Command line: ``python -m lora_kernels <command>`` (also the ``lora-kernels`` script).

Commands:
    bench      the default benchmark (CUDA when present, else CPU); ``--full`` is the GPU sweep

    inspect    per-module r, alpha, rsLoRA and effective scale of PEFT adapters (cli_peft.py)
    check      PEFT against lora_kernels on one mixed batch (cli_peft.py)

Each command sets ``func=handler`` with ``handler(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import sys

from . import cli_peft


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    from . import bench

    parser = argparse.ArgumentParser(
        prog="lora-kernels",
        description="lora_kernels: multi-LoRA batched matmul (SGMV / BGMV) whose outputs equal PEFT's.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True

    p = subparsers.add_parser(
        "bench",
        help="benchmark our ops against plain-torch compositions",
        description=(
            "Default workload: add_lora, decode 64 tokens over 64, 8 and 1 adapters and prefill "
            "2048 tokens in 8 segments, H_in = H_out = 4096, r = 16; on CUDA (bf16) when present, "
            "else on CPU (fp32). Prints a progress line per case, then a table."
        ),
    )
    bench.add_arguments(p)
    p.set_defaults(func=_bench)

    cli_peft.add_subcommands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
