"""The benchmark shapes: :class:`Case`, the default workload, the full GPU sweep, and the
minimum bytes and FLOPs of one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

OPS = ("add_lora", "shrink", "expand")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Case:
    """One benchmark shape.

    ``kind`` is ``decode`` (per-token ``indices``, BGMV) or ``prefill`` (``n`` segments of
    ``T / n`` tokens, each its own adapter, SGMV). ``n`` is the number of distinct adapters.
    """

    kind: str
    op: str
    T: int
    n: int
    r: int
    H_in: int
    H_out: int
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @property
    def name(self) -> str:
        what = "segs" if self.kind == "prefill" else "adapters"
        return (
            f"{self.kind} T={self.T} {what}={self.n} r={self.r} "
            f"{self.H_in}->{self.H_out} {self.op} {self.dtype_name}"
        )


def default_cases(device: str, dtype: torch.dtype | None = None, dry_run: bool = False) -> list[Case]:
    """The default workload: add_lora, decode 64 tokens over 64, 8 and 1
    adapters, prefill 2048 tokens in 8 segments; H_in = H_out = 4096, r = 16; bf16 on CUDA,
    fp32 on CPU. ``dry_run`` shrinks the sizes (same structure) for a fast harness check."""
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    H, T_pre, r = (4096, 2048, 16) if not dry_run else (32, 32, 4)
    T_dec = 64 if not dry_run else 8
    cases = [Case("decode", "add_lora", T_dec, n, r, H, H, dtype) for n in (T_dec, 8 if not dry_run else 4, 1)]
    cases.append(Case("prefill", "add_lora", T_pre, 8 if not dry_run else 4, r, H, H, dtype))
    return cases


def full_cases(dtypes: Iterable[torch.dtype] = (torch.bfloat16, torch.float16),
               dry_run: bool = False) -> list[Case]:
    """The GPU sweep (``--full``), most important first (so a time budget cuts the tail):
    decode T in {1, 16, 64, 256}, n in {1, 8, T}, r in {8, 16, 64, 128}, H_in = 4096,
    H_out in {4096, 14336}; prefill T = 4096 in {1, 8, 32} segments (same r, H_out);
    bf16 then fp16; add_lora, then shrink, then expand. ``dry_run`` divides the hidden sizes by
    128 and the prefill length by 64 (T, n and r are kept)."""
    hs = 128 if dry_run else 1
    H_in = 4096 // hs
    T_pre = 4096 // (64 if dry_run else 1)
    cases = []
    for dtype in dtypes:
        for op in OPS:
            for r in (16, 8, 64, 128):
                for H_out in (4096 // hs, 14336 // hs):
                    for T in (64, 256, 16, 1):
                        for n in sorted({1, min(8, T), T}):
                            cases.append(Case("decode", op, T, n, r, H_in, H_out, dtype))
                    for S in (1, 8, 32):
                        cases.append(Case("prefill", op, T_pre, S, r, H_in, H_out, dtype))
    return cases


def min_bytes(case: Case) -> int:
    """Minimum bytes one call must move (see the module docstring)."""
    e = torch.empty((), dtype=case.dtype).element_size()
    T, n, R, Hi, Ho = case.T, case.n, case.r, case.H_in, case.H_out
    if case.op == "add_lora":
        return e * (T * Hi + n * R * (Hi + Ho) + 2 * T * Ho)
    if case.op == "shrink":
        return e * (T * Hi + n * R * Hi) + 4 * T * R
    if case.op == "expand":
        return e * (n * R * Ho + 2 * T * Ho) + 4 * T * R
    raise ValueError(f"unknown op {case.op!r}")


def flops(case: Case) -> int:
    T, R = case.T, case.r
    if case.op == "add_lora":
        return 2 * T * R * (case.H_in + case.H_out)
    return 2 * T * R * (case.H_in if case.op == "shrink" else case.H_out)
