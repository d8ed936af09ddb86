#!/usr/bin/env python3
"""Per-kernel SASS instruction counts of csrc/kernels/*.cu as a Markdown table (benchmarks/RESULTS.md).

Compiles each .cu file for each arch with nvcc and csrc/build.json's CUDA flags (C++ standard,
include dirs, cuda_flags; no GPU needed), disassembles the object with `cuobjdump -sass` and
counts, per kernel instantiation, the static (not executed) instructions:
  HMMA       tensor-core matrix multiply-accumulate (any shape; the shapes seen are listed),
  LDG.128    128-bit global loads (LDG.E.128 and its variants),
  LDG        all global loads.
Usage: python benchmarks/sass_table.py [--src csrc] [--arch 80 90] [--cuobjdump PATH]
cuobjdump: --cuobjdump, else on PATH, else next to nvcc, else the one in triton's nvidia backend
of the running Python (the CUDA 13.0 toolkit here ships without it).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from ptxas_table import build_flags, demangle

FUNCTION = re.compile(r"^\s*Function : (\S+)")
HMMA = re.compile(r"\bHMMA\.(\w+)((?:\.\w+)*)")
LDG128 = re.compile(r"\bLDG\.E(?:\.\w+)*\.128\b")
LDG = re.compile(r"\bLDG\.")


def find_cuobjdump(given: str | None) -> str:
    candidates = [given] if given else []
    candidates.append(shutil.which("cuobjdump"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), "cuobjdump"))
    try:
        import triton  # noqa: PLC0415

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    sys.exit("sass_table: cuobjdump not found: pass --cuobjdump PATH (CUDA toolkit, or triton's nvidia backend)")


def compile_one(src: str, flags: list[str], cu: str, arch: str, cuobjdump: str) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "k.o")
        cmd = ["nvcc", *flags, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-c", cu, "-o", obj]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"sass_table: {' '.join(cmd)} failed:\n{res.stderr}")
        sass = subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True, check=True).stdout
    kernels: dict[str, dict] = {}
    cur = None
    for line in sass.splitlines():
        if m := FUNCTION.match(line):
            cur = kernels.setdefault(m.group(1), {"hmma": 0, "shapes": set(), "ldg128": 0, "ldg": 0})
        elif cur is not None:
            if m := HMMA.search(line):
                cur["hmma"] += 1
                cur["shapes"].add(m.group(1) + m.group(2))
            if LDG128.search(line):
                cur["ldg128"] += 1
            if LDG.search(line):
                cur["ldg"] += 1
    return kernels


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(here, "..", "csrc"))
    ap.add_argument("--arch", nargs="+", default=["80", "90"])
    ap.add_argument("--cuobjdump")
    args = ap.parse_args()
    src = os.path.abspath(args.src)
    flags = build_flags(os.path.dirname(src))
    cuobjdump = find_cuobjdump(args.cuobjdump)
    per_arch: dict[str, dict[str, dict]] = {}
    for cu in sorted(glob.glob(os.path.join(src, "kernels", "*.cu"))):
        for arch in args.arch:
            per_arch.setdefault(f"sm_{arch}", {}).update(compile_one(src, flags, cu, arch, cuobjdump))
    mangled = sorted({k for table in per_arch.values() for k in table})
    names = dict(zip(mangled, demangle(mangled)))
    archs = [f"sm_{a}" for a in args.arch]
    print("| kernel | " + " | ".join(f"{a} HMMA | {a} LDG.128 / LDG" for a in archs) + " | HMMA shapes |")
    print("|" + "---|" * (2 + 2 * len(archs)))
    for k in sorted(mangled, key=lambda k: names[k]):
        cells, shapes = [], set()
        for a in archs:
            r = per_arch[a].get(k)
            if r is None:
                cells += ["-", "-"]
                continue
            cells += [str(r["hmma"]), f"{r['ldg128']} / {r['ldg']}"]
            shapes |= r["shapes"]
        print(f"| `{names[k]}` | " + " | ".join(cells) + f" | {', '.join(sorted(shapes)) or '-'} |")


if __name__ == "__main__":
    main()
