"""Every candidate is checked against the float64 reference before it is timed."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .. import reference as ref
from .cases import Case
from .workload import Workload

# Float64 working set of one chunk of the reference computation.
REF_CHUNK_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}


class CorrectnessError(AssertionError):
    """Our op's result differs from the float64 reference by more than the tolerance."""


def _reference(w: Workload, chunk_bytes: int) -> Tensor:
    """float64 reference: the expected update ``d`` (add_lora, expand) or ``v`` (shrink),
    computed by :mod:`lora_kernels.reference` in chunks of tokens (tokens are independent)."""
    c = w.case
    A64 = w.lora_a.double() if c.op != "expand" else None
    B64 = w.lora_b.double() if c.op != "shrink" else None
    per_token = 8 * c.r * (c.H_in + c.H_out) * 2
    step = max(1, chunk_bytes // max(per_token, 1))
    outs = []
    y64 = w.y.double() if c.op != "shrink" else None
    for t0 in range(0, c.T, step):
        sl = slice(t0, min(c.T, t0 + step))
        idx = w.indices[sl]
        if c.op == "shrink":
            outs.append(ref.bgmv_shrink(w.x[sl].double(), A64, idx, w.ranks))
        elif c.op == "add_lora":
            yc = y64[sl].clone()
            ref.add_lora(yc, w.x[sl].double(), A64, B64, w.scaling, idx, ranks=w.ranks)
            outs.append(yc - y64[sl])
        else:
            yc = y64[sl].clone()
            ref.bgmv_expand(yc, w.v[sl].double(), B64, idx, w.scaling, w.ranks)
            outs.append(yc - y64[sl])
    return torch.cat(outs)


def _tolerance(case: Case, y_out_norm: float, ref_norm: float) -> float:
    """fp32: 1e-5; fp16/bf16: 1e-2 plus one rounding of y (eps * ||y_out|| / ||d_ref||)."""
    base = 1e-5 if case.dtype == torch.float32 else 1e-2
    if case.op == "shrink":
        return base
    return base + torch.finfo(case.dtype).eps * y_out_norm / max(ref_norm, 1e-300)


def check_candidate(fn: Callable, w: Workload, expected: Tensor) -> tuple[float, float]:
    """Run ``fn`` once (``w.y`` is restored afterwards); return (relative error of the update
    ``d = y_out - y_in``, or of ``v`` for shrink, against ``expected``; the tolerance)."""
    c = w.case
    y_save = w.y.clone()
    y_in64 = y_save.double() if c.op != "shrink" else None
    try:
        out = fn(w)
        if c.op == "shrink":
            got = out.double()
            y_norm = 0.0
            if tuple(got.shape) != (c.T, c.r):
                return math.inf, 0.0
        else:
            if out is not None and out.data_ptr() != w.y.data_ptr():
                w.y.copy_(out)  # a candidate that returns a new y instead of writing in place
            got = w.y.double() - y_in64
            y_norm = float(w.y.double().norm())
    finally:
        w.y.copy_(y_save)
    ref_norm = float(expected.norm())
    err = float((got - expected).norm()) / max(ref_norm, 1e-300)
    if not math.isfinite(err):
        err = math.inf
    return err, _tolerance(c, y_norm, ref_norm)
