#!/usr/bin/env python3
"""`make test-simt`: the kernel cases on the executor, then the proof that they can fail.

First runs the test binary built from the real kernels (test_kernels.cpp: the executor's own
checks, then every kernel case). Then bugs planted in copies of the kernels must be caught. Each bug is one small textual edit of csrc/ (the edit must apply exactly once, so a change of
the kernels that moves the code fails here loudly instead of planting nothing). The patched copy
is built like the real kernels (tests/simt/Makefile, ASan + UBSan) and run on a few cases; the
output names what caught the bug: a wrong result, an AddressSanitizer / UBSan report, or the
executor's deadlock / protocol report. A bug that passes, or is caught by something other than
what it is expected to trip, fails `make test-simt`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Bug:
    name: str
    path: str  # relative to csrc/
    old: str
    new: str
    expect: tuple[str, ...]  # mechanisms that may catch it


BUGS = [
    Bug("warp sum skips lanes (no xor-1 step: odd lanes never added)",
        "include/lora_kernels/kernels.cuh",
        "for (int offset = 16; offset > 0; offset >>= 1)",
        "for (int offset = 16; offset > 1; offset >>= 1)",
        ("wrong result",)),
    Bug("warp sum leaves lane 31 out (of its mask and its shuffles; lane 30 reads an absent lane)",
        "include/lora_kernels/kernels.cuh",
        "v += __shfl_xor_sync(0xffffffffu, v, offset);",
        "if ((threadIdx.x & 31) != 31) v += __shfl_xor_sync(0x7fffffffu, v, offset);",
        ("wrong result",)),
    Bug("missing __syncthreads before the shrink reads the per-warp partial sums (shared memory)",
        "include/lora_kernels/kernels.cuh",
        "      if (lane == 0) partial[warp][m * kRows + j] = s;\n    }\n  __syncthreads();\n",
        "      if (lane == 0) partial[warp][m * kRows + j] = s;\n    }\n",
        ("wrong result",)),
    Bug("rank clamp off by one (a rank above R is clamped to R + 1)",
        "include/lora_kernels/params.h",
        "(r > max_rank ? max_rank : r)",
        "(r > max_rank ? max_rank + 1 : r)",
        ("wrong result", "AddressSanitizer")),
    Bug("shrink reads one step past its range of H_in (k <= k1)",
        "include/lora_kernels/kernels.cuh",
        "k < k1; k += kThreads * VEC",
        "k <= k1; k += kThreads * VEC",
        ("wrong result", "AddressSanitizer")),
    Bug("one thread skips a warp shuffle of the plan's scan (its lanes wait for it forever)",
        "kernels/plan.cu",
        "const int32_t y = __shfl_up_sync(0xffffffffu, x, offset);",
        "const int32_t y = threadIdx.x == 37 ? 0 : __shfl_up_sync(0xffffffffu, x, offset);",
        ("deadlock report",)),
    Bug("plan: off-by-one in the warp scan of the slot counts (lane k skips lane k - offset's sum when k == offset)",
        "kernels/plan.cu",
        "if (lane >= offset) x += y;",
        "if (lane > offset) x += y;",
        ("wrong result", "AddressSanitizer")),
    Bug("find_group: a group that ends before its slot's end takes one row past it (another slot's token)",
        "include/lora_kernels/kernels.cuh",
        "g.count = end - first < G ? end - first : G;",
        "g.count = end - first < G ? end - first + 1 : G;",
        ("wrong result", "AddressSanitizer")),
    Bug("expand reads v without the barrier after staging it in shared memory",
        "include/lora_kernels/kernels.cuh",
        "      vs[m][j] = j < cn ? v[g.rows[m] * p.v_stride + c0 + j] : Acc(0);\n    }\n    __syncthreads();\n",
        "      vs[m][j] = j < cn ? v[g.rows[m] * p.v_stride + c0 + j] : Acc(0);\n    }\n",
        ("wrong result",)),
    Bug("add_lora_slices: a block on a slice's first column takes the slice before it",
        "include/lora_kernels/kernels.cuh",
        "while (i + 1 < p.num_slices && col >= p.first_block[i + 1]) ++i;",
        "while (i + 1 < p.num_slices && col > p.first_block[i + 1]) ++i;",
        ("wrong result", "AddressSanitizer")),
    Bug("add_lora_slices: the expand takes the vector path for every slice, not each slice's own choice",
        "include/lora_kernels/kernels.cuh",
        "  if (VEC > 1 && p.vectorized[i])\n    expand_block",
        "  if (VEC > 1)\n    expand_block",
        ("misaligned load report",)),
    Bug("decode: the last-block compare off by one (the second-to-last block of a group reduces)",
        "include/lora_kernels/decode.cuh",
        "sh.last = ticket == arrivals - 1u;",
        "sh.last = ticket == arrivals - 2u;",
        ("wrong result",)),
    Bug("decode: the last block leaves its group's counter set (the next launch on that workspace never reduces)",
        "include/lora_kernels/decode.cuh",
        "    if (sh.last) d.counters[group] = 0;",
        "",
        ("wrong result",)),
    Bug("add_lora_slices decode path: every slice's partials at the first one's offset (the slices overwrite each other's)",
        "kernels/decode.cu",
        "        offset += partial_bytes(sp[i], splits);\n",
        "",
        ("wrong result",)),
    Bug("tensor-core twin: rows g and g + 8 of A's m16n8k16 fragment swapped",
        "include/lora_kernels/mma.cuh",
        "      A[g][2 * t + h] = half_of<T>(r.a[0], h);\n      A[g + 8][2 * t + h] = half_of<T>(r.a[1], h);",
        "      A[g][2 * t + h] = half_of<T>(r.a[1], h);\n      A[g + 8][2 * t + h] = half_of<T>(r.a[0], h);",
        ("wrong result",)),
    Bug("tensor-core shrink reads its shared-memory tiles without the barrier after staging them",
        "include/lora_kernels/tc_kernels.cuh",
        "      __syncthreads();\n      if (!m_live) continue;\n      const int r0 = wm * 16 + gq;\n      for (int kk = 0; kk < KC",
        "      if (!m_live) continue;\n      const int r0 = wm * 16 + gq;\n      for (int kk = 0; kk < KC",
        ("wrong result",)),
    Bug("tensor-core expand: the tf32 low part of v is v itself (v counted twice)",
        "include/lora_kernels/tc_kernels.cuh",
        "lo[i] = to_tf32(av[i] - tc_f32(hi[i]));",
        "lo[i] = to_tf32(av[i]);",
        ("wrong result",)),
    Bug("tensor-core expand writes one feature past H_out",
        "include/lora_kernels/tc_kernels.cuh",
        "if (m < count && o < p.h_out) {",
        "if (m < count && o <= p.h_out) {",
        ("wrong result", "AddressSanitizer")),
    Bug("add_lora_slices on tensor cores: the expand takes the vector path for every slice",
        "include/lora_kernels/tc_kernels.cuh",
        "  if (p.vectorized[i])\n    tc_expand_block<T, 8>",
        "  if (true)\n    tc_expand_block<T, 8>",
        ("misaligned load report",)),
]


def caught_by(output: str, returncode: int) -> tuple[str, str] | None:
    """(mechanism, the line that shows it), or None when the run passed."""
    checks = [
        ("AddressSanitizer", r"ERROR: AddressSanitizer: .*"),
        ("UBSan", r".*runtime error: .*"),
        ("deadlock report", r"lk_simt: deadlock.*(\n  .*)*"),
        ("protocol error report", r"lk_simt: protocol error.*(\n  .*)*"),
        ("misaligned load report", r"lk_simt: misaligned 16-byte load.*"),
        ("wrong result", r"FAIL .*"),
    ]
    for name, pattern in checks:
        m = re.search(pattern, output)
        if m:
            return name, m.group(0).strip()
    if returncode != 0:
        return "crash", f"exit status {returncode}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--main", help="the test binary of the real kernels, run first")
    ap.add_argument("--cuda-include", default="", help="the folder of cuda_fp16.h (as the Makefile found it)")
    args = ap.parse_args()
    root, build = os.path.abspath(args.root), os.path.abspath(args.build)
    jobs = os.environ.get("MAX_JOBS", "2")
    passed = failed = 0
    if args.main:
        t0 = time.time()
        lines = []
        with subprocess.Popen([args.main], stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:  # stream it: the cases take a while
                print(line, end="", flush=True)
                lines.append(line)
        m = re.fullmatch(r"(\d+) passed, (\d+) failed\n?", lines[-1] if lines else "")
        if m and proc.returncode in (0, 1):
            passed, failed = int(m.group(1)), int(m.group(2))
        else:
            print(f"{args.main} ended with exit status {proc.returncode} before its summary")
            failed += 1
        print(f"kernel cases took {time.time() - t0:.0f}s; now the planted bugs", flush=True)
    failures = 0
    for i, bug in enumerate(BUGS, 1):
        t0 = time.time()
        out = os.path.join(build, "bugs", str(i))
        src = os.path.join(out, "csrc")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(os.path.join(root, "csrc"), src)
        target = os.path.join(src, bug.path)
        text = open(target).read()
        if text.count(bug.old) != 1:
            print(f"planted bug {i} ({bug.name}): its edit matches {text.count(bug.old)} places in "
                  f"csrc/{bug.path}, expected exactly 1; update tests/simt/run.py")
            failures += 1
            continue
        with open(target, "w") as f:
            f.write(text.replace(bug.old, bug.new))
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        make = subprocess.run(["make", "-s", "-C", os.path.join(root, "tests", "simt"), f"-j{jobs}",
                               f"BUILD={build}", f"SRC={src}", f"OUT={out}", os.path.join(out, "test_kernels")]
                              + ([f"CUDA_INCLUDE={args.cuda_include}"] if args.cuda_include else []),
                              capture_output=True, text=True, env=env)
        if make.returncode != 0:
            print(f"planted bug {i} ({bug.name}): the patched copy does not build:\n{make.stdout}{make.stderr}")
            failures += 1
            continue
        try:
            run = subprocess.run([os.path.join(out, "test_kernels"), "--quick", "--stop-on-fail"],
                                 capture_output=True, text=True, timeout=300)
            output, code = run.stdout + run.stderr, run.returncode
        except subprocess.TimeoutExpired:
            output, code = "", None
        found = caught_by(output, code) if code is not None else ("timeout", "ran past 300 s")
        secs = time.time() - t0
        if found and found[0] in bug.expect:
            shown = found[1][:1200].replace("\n", "\n    ")
            print(f"planted bug {i} caught by {found[0]} ({secs:.0f}s): {bug.name}\n    {shown}")
        else:
            failures += 1
            what = f"caught by {found[0]}, expected {' or '.join(bug.expect)}" if found else "NOT caught"
            print(f"planted bug {i} {what}: {bug.name}\n{output[-3000:]}")
        sys.stdout.flush()
    print(f"planted bugs: {len(BUGS) - failures} of {len(BUGS)} caught as expected")
    passed += len(BUGS) - failures
    failed += failures
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
