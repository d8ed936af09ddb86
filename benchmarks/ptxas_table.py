#!/usr/bin/env python3
"""Per-kernel `ptxas -v` resources of csrc/kernels/*.cu as a Markdown table (benchmarks/RESULTS.md).

Compiles each .cu file for each arch with `nvcc -Xptxas -v` and csrc/build.json's flags (no GPU needed) and
prints, per kernel instantiation: registers, spill stores / loads, stack frame, static shared
memory. Usage: python benchmarks/ptxas_table.py [--src csrc] [--arch 80 90] [--files decode.cu ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


def demangle(names: list[str]) -> list[str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    short = []
    for line in out.splitlines():
        line = line.replace("(anonymous namespace)::", "")  # before the parameter list is cut at "("
        line = line.replace("lora_kernels::cuda::detail::", "").replace("lora_kernels::", "")
        line = re.sub(r"^void ", "", line)
        line = re.sub(r"\(.*\)$", "", line)  # the parameter list
        short.append(line.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
                     .replace("<double", "<fp64").replace("<float", "<fp32"))
    return short


def build_flags(root: str) -> list[str]:
    """nvcc flags of the extension build (csrc/build.json: C++ standard, include dirs, cuda_flags)."""
    with open(os.path.join(root, "csrc", "build.json")) as f:
        build = json.load(f)
    flags = [f"-std=c++{build['cxx_standard']}"] + [f"-I{os.path.join(root, d)}" for d in build["include_dirs"]]
    return flags + [f for f in build["cuda_flags"] if f != "-lineinfo"]


def compile_one(src: str, cu: str, arch: str) -> list[tuple]:
    root = os.path.dirname(os.path.abspath(src))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["nvcc", *build_flags(root), f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
               "-c", os.path.join(src, "kernels", cu), "-o", os.path.join(tmp, "k.o")]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"ptxas_table: {' '.join(cmd)} failed:\n{res.stderr}")
    rows, cur = [], None
    for line in res.stderr.splitlines():
        if m := ENTRY.search(line):
            cur = [m.group(1), m.group(2), None, None, None, None, 0]
        elif cur and (m := FRAME.search(line)):
            cur[2:5] = [int(m.group(1)), int(m.group(2)), int(m.group(3))]
        elif cur and (m := USED.search(line)):
            cur[5] = int(m.group(1))
            cur[6] = int(m.group(2) or 0)
            rows.append(tuple(cur))
            cur = None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "csrc"))
    ap.add_argument("--arch", nargs="+", default=["80", "90"])
    ap.add_argument("--files", nargs="+", help="the .cu files of SRC/kernels to compile (default: all)")
    args = ap.parse_args()
    rows = []
    files = args.files or sorted(f for f in os.listdir(os.path.join(args.src, "kernels")) if f.endswith(".cu"))
    for cu in files:
        for arch in args.arch:
            rows += compile_one(args.src, cu, arch)
    names = demangle([r[0] for r in rows])
    table = {}
    for name, r in zip(names, rows):
        table.setdefault(name, {})[r[1]] = r
    archs = [f"sm_{a}" for a in args.arch]
    head = "| kernel | " + " | ".join(f"{a} regs | {a} spill st/ld | {a} stack | {a} smem" for a in archs) + " |"
    print(head)
    print("|" + "---|" * (1 + 4 * len(archs)))
    for name in sorted(table):
        cells = []
        for a in archs:
            r = table[name].get(a)
            cells += ["-"] * 4 if r is None else [str(r[5]), f"{r[3]} / {r[4]}", f"{r[2]} B", f"{r[6]} B"]
        print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
