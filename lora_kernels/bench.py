"""Benchmark engine: our ops against the plain-torch compositions a user would write.

Every call of a multi-LoRA op is memory-bound, so each case reports the minimum bytes the call
must move (each input read once, ``y`` read and written once; ``e`` bytes per element, ``n``
distinct adapters, ``R`` the rank)::

    add_lora (fused)  e*(T*H_in + n*R*(H_in + H_out) + 2*T*H_out)
    shrink            e*(T*H_in + n*R*H_in) + 4*T*R          (v is fp32)
    expand            e*(n*R*H_out + 2*T*H_out) + 4*T*R

and the achieved GB/s. Baselines run in the same process, on the same data:

    sorted_mm    (a) tokens sorted by adapter + one mm pair per adapter + index_add_ (for
                 prefill the tokens are already grouped: a loop over segments with addmm_)
    gather_bmm   (b) per-token gather of the weights + bmm (skipped when the gather is too big)
    peft_loop    (c) PEFT's loop: for each adapter, its rows, (x[m] @ A.T) @ B.T * s, add back
    mm           one torch.mm pair, when every token uses the same adapter
    grouped_mm   torch._grouped_mm (CUDA only, where the torch build has it)

Every candidate is checked first against the float64 reference (:mod:`lora_kernels.reference`)
on the update itself, ``d = y_out - y_in``: a wrong ``ours`` stops the run
(:class:`CorrectnessError`), a wrong baseline is left out of the timing and listed under
``rejected``. Timing: on CPU the median (and the minimum) of repeated ``time.perf_counter``
runs after a warmup, candidates interleaved run by run; on CUDA CUDA events around CUDA-graph
replays (eager when capture fails), median, over input sets rotated so that together they
exceed the L2 cache, plus a device-to-device copy measured in the same run (``pct_copy``: our
GB/s as a percentage of that copy's).

Entry points: ``python -m lora_kernels bench`` (:func:`main`), ``benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference as ref

__all__ = [
    "Case",
    "Workload",
    "CorrectnessError",
    "default_cases",
    "full_cases",
    "make_workload",
    "min_bytes",
    "baseline_candidates",
    "ours_candidate",
    "check_candidate",
    "run",
    "format_table",
    "format_summary",
    "targets",
    "write_plot",
    "add_arguments",
    "run_from_args",
    "main",
]

OPS = ("add_lora", "shrink", "expand")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# Largest per-call gather (lora_a[idx] + lora_b[idx]) the gather_bmm baseline may allocate.
GATHER_LIMIT = {"cpu": 2 << 30, "cuda": 8 << 30}
# Float64 working set of one chunk of the reference computation.
REF_CHUNK_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}


class CorrectnessError(AssertionError):
    """Our op's result differs from the float64 reference by more than the tolerance."""


class BenchUsageError(ValueError):
    """A combination of options the benchmark refuses (e.g. --full on CPU without --dry-run)."""


# ----------------------------------------------------------------------------- cases


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
    """The default workload (issue 2 item 8): add_lora, decode 64 tokens over 64, 8 and 1
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
    """The issue-4 sweep, most important first (so a time budget cuts the tail):
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


# ----------------------------------------------------------------------------- data


@dataclass
class Workload:
    """The tensors of one case plus the host-side metadata the baselines precompute once per
    batch (as a server builds its batch metadata once per forward and shares it by all layers).
    """

    case: Case
    x: Tensor  # [T, H_in]
    y: Tensor  # [T, H_out]
    v: Tensor  # [T, R] fp32 (expand input)
    lora_a: Tensor  # [N, R, H_in]
    lora_b: Tensor  # [N, H_out, R]
    scaling: Tensor  # [N] fp32
    ranks: Tensor  # [N] int32
    indices: Tensor  # [T] int32
    seg_indptr: Tensor | None  # [S+1] int32 (prefill)
    seg_adapter: Tensor | None  # [S] int32 (prefill)
    meta: dict = field(default_factory=dict)

    def with_fresh_buffers(self, gen: torch.Generator) -> "Workload":
        """Same metadata, new random tensors (for buffer rotation on CUDA)."""
        fresh = _random_tensors(self.case, self.x.device, gen)
        fresh["scaling"] = self.scaling  # the baselines' host-side scales stay valid
        return Workload(self.case, **fresh, ranks=self.ranks, indices=self.indices,
                        seg_indptr=self.seg_indptr, seg_adapter=self.seg_adapter, meta=self.meta)


def _random_tensors(case: Case, device: torch.device, gen: torch.Generator) -> dict:
    T, N, R, Hi, Ho, dt = case.T, case.n, case.r, case.H_in, case.H_out, case.dtype

    def rnd(*shape, scale=1.0, dtype=dt):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)

    return dict(
        x=rnd(T, Hi),
        y=rnd(T, Ho),
        v=rnd(T, R, dtype=torch.float32),
        lora_a=rnd(N, R, Hi, scale=Hi ** -0.5),
        lora_b=rnd(N, Ho, R, scale=R ** -0.5),
        scaling=(torch.rand(N, generator=gen, device=device) * 1.5 + 0.5),
    )


def make_workload(case: Case, device: str | torch.device, seed: int = 0) -> Workload:
    """Random data for ``case``: decode tokens spread evenly over the ``n`` adapters in a
    random (unsorted) order; prefill ``n`` equal segments, adapters in a random order."""
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    host = torch.Generator()
    host.manual_seed(seed + 1)
    T, N = case.T, case.n
    if N < 1 or N > max(T, 1):
        raise ValueError(f"{case.name}: need 1 <= n <= T, got n={N}, T={T}")
    seg_indptr = seg_adapter = None
    if case.kind == "decode":
        slots = torch.arange(T) % N
        slots = slots[torch.randperm(T, generator=host)]
    elif case.kind == "prefill":
        bounds = [(T * s) // N for s in range(N + 1)]
        seg_adapter_h = torch.randperm(N, generator=host)
        seg_indptr_h = torch.tensor(bounds, dtype=torch.int32)
        slots = ref.segments_to_indices(seg_indptr_h, seg_adapter_h)
        seg_indptr = seg_indptr_h.to(device)
        seg_adapter = seg_adapter_h.to(torch.int32).to(device)
    else:
        raise ValueError(f"unknown kind {case.kind!r}")
    tensors = _random_tensors(case, device, gen)
    w = Workload(case, **tensors,
                 ranks=torch.full((N,), case.r, dtype=torch.int32, device=device),
                 indices=slots.to(torch.int32).to(device),
                 seg_indptr=seg_indptr, seg_adapter=seg_adapter)
    w.meta = _metadata(case, slots, seg_indptr, seg_adapter, w.scaling, device)
    return w


def _metadata(case: Case, slots: Tensor, seg_indptr, seg_adapter, scaling: Tensor,
              device: torch.device) -> dict:
    """Host-side per-batch metadata for the baselines (built once, outside the timed calls)."""
    slots = slots.long().cpu()
    scale_host = scaling.float().cpu().tolist()
    valid = slots >= 0
    meta: dict[str, Any] = {"scale_host": scale_host}
    # PEFT: per adapter, the positions of its rows (host lists turned into index tensors).
    present = sorted(set(slots[valid].tolist()))
    meta["peft_groups"] = [
        (a, torch.nonzero(slots == a).flatten().to(device), scale_host[a]) for a in present
    ]
    # (a): tokens sorted by adapter.
    if case.kind == "prefill":
        ind = seg_indptr.cpu().tolist()
        sa = seg_adapter.cpu().tolist()
        meta["perm"] = None
        meta["groups"] = [(sa[s], ind[s], ind[s + 1], scale_host[sa[s]])
                          for s in range(len(sa)) if ind[s + 1] > ind[s]]
    else:
        order = torch.argsort(slots, stable=True)
        order = order[slots[order] >= 0]
        counts = torch.bincount(slots[order], minlength=case.n).tolist()
        groups, start = [], 0
        for a, c in enumerate(counts):
            if c:
                groups.append((a, start, start + c, scale_host[a]))
                start += c
        meta["perm"] = order.to(device)
        meta["groups"] = groups
    meta["group_adapters"] = [g[0] for g in meta["groups"]]
    meta["group_adapters_t"] = torch.tensor(meta["group_adapters"], dtype=torch.long, device=device)
    ends = [g[2] for g in meta["groups"]]  # decode groups start at 0 in sorted order
    meta["offs"] = torch.tensor(ends, dtype=torch.int32, device=device)
    # (b): per-token slot (clamped) and per-token scale (0 for no adapter).
    meta["idx_long"] = slots.clamp(min=0).to(device)
    meta["s_tok"] = torch.where(valid, scaling.cpu()[slots.clamp(min=0)],
                                torch.zeros(())).to(torch.float32).to(device)
    meta["valid"] = valid.to(torch.float32).to(device)
    meta["single"] = present[0] if (len(present) == 1 and bool(valid.all())) else None
    return meta


# ----------------------------------------------------------------------------- candidates
# A candidate is fn(w) -> Tensor: y (add_lora, expand; updated in place) or v (shrink).


def ours_candidate(case: Case, ops: Any) -> Callable[[Workload], Tensor]:
    """Our op for the case: BGMV entry points for decode, SGMV (segments) for prefill;
    ``add_lora`` is called with ``indices`` for decode and ``seg_indptr``/``seg_adapter``
    for prefill. ``ops`` is anything with the five functions (``lora_kernels`` by default)."""
    if case.kind == "decode":
        if case.op == "add_lora":
            return lambda w: ops.add_lora(w.y, w.x, w.lora_a, w.lora_b, w.scaling, w.indices,
                                          ranks=w.ranks)
        if case.op == "shrink":
            return lambda w: ops.bgmv_shrink(w.x, w.lora_a, w.indices, w.ranks)
        return lambda w: ops.bgmv_expand(w.y, w.v, w.lora_b, w.indices, w.scaling, w.ranks)
    if case.op == "add_lora":
        return lambda w: ops.add_lora(w.y, w.x, w.lora_a, w.lora_b, w.scaling,
                                      seg_indptr=w.seg_indptr, seg_adapter=w.seg_adapter,
                                      ranks=w.ranks)
    if case.op == "shrink":
        return lambda w: ops.sgmv_shrink(w.x, w.lora_a, w.seg_indptr, w.seg_adapter, w.ranks)
    return lambda w: ops.sgmv_expand(w.y, w.v, w.lora_b, w.seg_indptr, w.seg_adapter,
                                     w.scaling, w.ranks)


# (a) sort by adapter + one mm pair per adapter + index_add_ --------------------------------

def _sorted_mm(w: Workload) -> Tensor:
    op, m, dt = w.case.op, w.meta, w.case.dtype
    perm = m["perm"]
    if perm is None:  # prefill: already grouped by segment
        if op == "shrink":
            v = torch.zeros(w.case.T, w.case.r, dtype=torch.float32, device=w.x.device)
            for a, st, en, _ in m["groups"]:
                v[st:en] = torch.mm(w.x[st:en], w.lora_a[a].t())
            return v
        for a, st, en, s in m["groups"]:
            h = torch.mm(w.x[st:en], w.lora_a[a].t()) if op == "add_lora" else w.v[st:en].to(dt)
            w.y[st:en].addmm_(h, w.lora_b[a].t(), alpha=s)
        return w.y
    if op == "shrink":
        xs = w.x.index_select(0, perm)
        vs = torch.empty(xs.shape[0], w.case.r, dtype=dt, device=w.x.device)
        for a, st, en, _ in m["groups"]:
            torch.mm(xs[st:en], w.lora_a[a].t(), out=vs[st:en])
        v = torch.zeros(w.case.T, w.case.r, dtype=torch.float32, device=w.x.device)
        return v.index_copy_(0, perm, vs.float())
    hs = w.x.index_select(0, perm) if op == "add_lora" else w.v.index_select(0, perm).to(dt)
    out = torch.empty(hs.shape[0], w.case.H_out, dtype=dt, device=w.y.device)
    for a, st, en, s in m["groups"]:
        h = torch.mm(hs[st:en], w.lora_a[a].t()) if op == "add_lora" else hs[st:en]
        torch.mm(h, w.lora_b[a].t(), out=out[st:en])
        out[st:en].mul_(s)
    return w.y.index_add_(0, perm, out)


# (b) gather + bmm -------------------------------------------------------------------------

def _gather_bmm(w: Workload) -> Tensor:
    op, m, dt = w.case.op, w.meta, w.case.dtype
    idx = m["idx_long"]
    if op in ("add_lora", "shrink"):
        a_g = w.lora_a.index_select(0, idx)  # [T, R, H_in]
        h = torch.bmm(a_g, w.x.unsqueeze(2))  # [T, R, 1]
        if op == "shrink":
            return h.squeeze(2).float() * m["valid"].unsqueeze(1)
    else:
        h = w.v.to(dt).unsqueeze(2)
    b_g = w.lora_b.index_select(0, idx)  # [T, H_out, R]
    d = torch.bmm(b_g, h).squeeze(2)  # [T, H_out]
    return w.y.addcmul_(d, m["s_tok"].to(dt).unsqueeze(1))


def _gather_bytes(case: Case) -> int:
    e = torch.empty((), dtype=case.dtype).element_size()
    per_token = {"add_lora": case.H_in + case.H_out, "shrink": case.H_in, "expand": case.H_out}
    return e * case.T * case.r * per_token[case.op]


# (c) PEFT's per-adapter loop --------------------------------------------------------------

def _peft_loop(w: Workload) -> Tensor:
    op, dt = w.case.op, w.case.dtype
    if op == "shrink":
        v = torch.zeros(w.case.T, w.case.r, dtype=torch.float32, device=w.x.device)
        for a, rows, _ in w.meta["peft_groups"]:
            v[rows] = F.linear(w.x[rows], w.lora_a[a]).float()
        return v
    for a, rows, s in w.meta["peft_groups"]:
        h = F.linear(w.x[rows], w.lora_a[a]) if op == "add_lora" else w.v[rows].to(dt)
        w.y[rows] += F.linear(h, w.lora_b[a]) * s
    return w.y


# one torch.mm pair (one adapter for every token) -------------------------------------------

def _single_mm(w: Workload) -> Tensor:
    a = w.meta["single"]
    s = w.meta["scale_host"][a]
    if w.case.op == "shrink":
        return torch.mm(w.x, w.lora_a[a].t()).float()
    h = torch.mm(w.x, w.lora_a[a].t()) if w.case.op == "add_lora" else w.v.to(w.case.dtype)
    return w.y.addmm_(h, w.lora_b[a].t(), alpha=s)


# torch._grouped_mm --------------------------------------------------------------------------

def _grouped_mm(w: Workload) -> Tensor:
    op, m, dt = w.case.op, w.meta, w.case.dtype
    perm, offs = m["perm"], m["offs"]
    ga = m["group_adapters"]
    same = ga == list(range(w.case.n))
    if op in ("add_lora", "shrink"):
        A = w.lora_a if same else w.lora_a.index_select(0, m["group_adapters_t"])
        xs = w.x if perm is None else w.x.index_select(0, perm)
        h = torch._grouped_mm(xs, A.transpose(1, 2), offs=offs)  # [T, R]
        if op == "shrink":
            if perm is None:
                return h.float()
            v = torch.zeros(w.case.T, w.case.r, dtype=torch.float32, device=w.x.device)
            return v.index_copy_(0, perm, h.float())
    else:
        h = (w.v if perm is None else w.v.index_select(0, perm)).to(dt)
    B = w.lora_b if same else w.lora_b.index_select(0, m["group_adapters_t"])
    d = torch._grouped_mm(h, B.transpose(1, 2), offs=offs)  # [T, H_out]
    s_tok = m["s_tok"] if perm is None else m["s_tok"].index_select(0, perm)
    d = d * s_tok.to(dt).unsqueeze(1)
    if perm is None:
        return w.y.add_(d)
    return w.y.index_add_(0, perm, d)


def baseline_candidates(case: Case, device: str) -> tuple[dict, dict]:
    """The plain-torch compositions that apply to ``case`` on ``device``:
    ({name: fn}, {name: reason it is skipped})."""
    cands: dict[str, Callable] = {"sorted_mm": _sorted_mm}
    skipped: dict[str, str] = {}
    need = _gather_bytes(case)
    if need <= GATHER_LIMIT[device]:
        cands["gather_bmm"] = _gather_bmm
    else:
        skipped["gather_bmm"] = f"gather needs {need / 2**30:.1f} GiB > {GATHER_LIMIT[device] / 2**30:.0f} GiB"
    cands["peft_loop"] = _peft_loop
    if case.n == 1:
        cands["mm"] = _single_mm
    if device == "cuda":
        if hasattr(torch, "_grouped_mm"):
            cands["grouped_mm"] = _grouped_mm
        else:
            skipped["grouped_mm"] = f"torch {torch.__version__} has no torch._grouped_mm"
    return cands, skipped


# ----------------------------------------------------------------------------- correctness


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


# ----------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_cpu_interleaved(fns: dict[str, Callable], w: Workload, reps: int, warmup: int,
                          budget_s: float, skipped: dict[str, str]) -> dict[str, tuple[float, float, int]]:
    """CPU timing, candidates interleaved round by round (so a burst of load from elsewhere on a
    shared machine hits all of them alike): {name: (median us, min us, runs)}. A candidate stops
    after ``reps`` runs, or after 3 once its runs add up to ``budget_s``. A baseline that raises
    is moved to ``skipped``; ``ours`` raising propagates."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(w)
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    active = list(fns)
    while active:
        for name in list(active):
            t0 = time.perf_counter()
            try:
                fns[name](w)
            except Exception as exc:
                if name == "ours":
                    raise
                skipped[name] = f"{type(exc).__name__} while timing: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                active.remove(name)
                del times[name]
                continue
            dt = time.perf_counter() - t0
            times[name].append(dt)
            spent[name] += dt
            n = len(times[name])
            if n >= reps or (n >= min(3, reps) and spent[name] > budget_s):
                active.remove(name)
    return {name: (statistics.median(t) * 1e6, min(t) * 1e6, len(t)) for name, t in times.items()}


def _time_cuda(fn: Callable, sets: list, reps: int, warmup: int,
               target_s: float = 0.03) -> tuple[float, int, str]:
    """Median µs per call: CUDA events around replays of a graph that runs fn over every
    rotated input set once (eager launches when capture fails). ``reps`` is the most replays
    timed; fewer (at least 5) when one replay is long, so each candidate costs ~``target_s``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            for w in sets:
                fn(w)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    mode = "graph"
    try:
        with torch.cuda.graph(graph):
            for w in sets:
                fn(w)
        runner = graph.replay
    except Exception:  # capture unsupported by this candidate: time eager launches instead
        torch.cuda.synchronize()
        graph = None
        mode = "eager"

        def runner():
            for w in sets:
                fn(w)
    for _ in range(warmup):
        runner()
    if reps > 5:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        runner()
        e1.record()
        e1.synchronize()
        one_s = max(e0.elapsed_time(e1) * 1e-3, 1e-7)
        reps = int(min(reps, max(5, target_s / one_s)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for e0, e1 in events:
        e0.record()
        runner()
        e1.record()
    torch.cuda.synchronize()
    times = [e0.elapsed_time(e1) * 1e3 / len(sets) for e0, e1 in events]
    del graph
    return statistics.median(times), reps, mode


def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or getattr(props, "l2_cache_size", 0) or 50 << 20)


def _rotation(nbytes: int, l2: int, dry_run: bool) -> int:
    """How many input sets to rotate through so that together they exceed the L2 cache 2x
    (at least 2, at most 1024)."""
    if dry_run:
        return 2
    return int(min(1024, max(2, math.ceil(2 * l2 / max(nbytes, 1)))))


def _copy_us(nbytes: int, reps: int, warmup: int, l2: int, dry_run: bool) -> float:
    """A device-to-device copy moving ``nbytes`` (half read, half written), timed the same way."""
    numel = max(1, nbytes // 2 // 4)
    k = _rotation(nbytes, l2, dry_run)
    bufs = [(torch.empty(numel, dtype=torch.float32, device="cuda").normal_(),
             torch.empty(numel, dtype=torch.float32, device="cuda")) for _ in range(k)]
    sets = [_CopySet(src, dst) for src, dst in bufs]
    us, _, _ = _time_cuda(lambda s: s.dst.copy_(s.src), sets, reps, warmup)
    return us


@dataclass
class _CopySet:
    src: Tensor
    dst: Tensor


def copy_bandwidth(reps: int = 20, warmup: int = 3, nbytes: int = 1 << 30, dry_run: bool = False) -> float:
    """GB/s of a large device-to-device copy (bytes read + written)."""
    if dry_run:
        nbytes = 1 << 20
    us = _copy_us(nbytes, reps, warmup, _l2_bytes(), dry_run)
    return nbytes / us / 1e3


# ----------------------------------------------------------------------------- the run


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _lk_version() -> str | None:
    try:
        from . import __version__
        return str(__version__)
    except Exception:
        return None


def _progress_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    cases: list[Case],
    device: str,
    *,
    ops: Any = None,
    repeat: int | None = None,
    dry_run: bool = False,
    time_budget_s: float | None = None,
    extra_baselines: dict[str, Callable] | None = None,
    progress: Callable[[str], None] = _progress_default,
    cpu_budget_s: float = 2.0,
    keep_going: bool = False,
) -> dict:
    """Check then time every candidate of every case; return the JSON-ready result.

    ``ops`` supplies our functions (default: the ``lora_kernels`` package). ``extra_baselines``
    ({name: fn(w)}) joins the plain-torch compositions (the tests inject a wrong one).
    ``time_budget_s`` stops starting new cases once exceeded; their names go to ``not_run``.
    Raises :class:`CorrectnessError` when our op is wrong; with ``keep_going`` (the sweep)
    a case that fails in any way is listed under ``errors`` and the run goes on.
    """
    if ops is None:
        import lora_kernels as ops  # the compiled ops
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchUsageError("--device cuda: torch sees no CUDA device here.")
    if repeat is None:
        repeat = 1 if dry_run else (100 if device == "cuda" else 20)
    warmup = 0 if dry_run else (3 if device == "cuda" else 1)
    threads = torch.get_num_threads()
    if dry_run and device == "cpu":
        # Tiny shapes measure nothing; one thread keeps them fast on a loaded machine.
        torch.set_num_threads(1)
    try:
        return _run(cases, device, ops, repeat, warmup, dry_run, time_budget_s, extra_baselines,
                    progress, cpu_budget_s, keep_going)
    finally:
        torch.set_num_threads(threads)


def _run(cases, device, ops, repeat, warmup, dry_run, time_budget_s, extra_baselines, progress,
         cpu_budget_s, keep_going) -> dict:
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": _device_name(device),
        "device_type": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lora_kernels": _lk_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": dry_run,
        "threads": torch.get_num_threads(),
        "repeat": repeat,
        "command": " ".join(sys.argv),
        "copy_gbps": None,
        "l2_bytes": None,
        "rows": [],
        "not_run": [],
        "errors": [],
    }
    l2 = 0
    if device == "cuda":
        l2 = _l2_bytes()
        result["l2_bytes"] = l2
        result["copy_gbps"] = copy_bandwidth(reps=max(3, min(repeat, 20)), dry_run=dry_run)
        progress(f"device-to-device copy: {result['copy_gbps']:.0f} GB/s, L2 {l2 / 2**20:.0f} MiB")
    with torch.inference_mode():
        for i, case in enumerate(cases):
            if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
                result["not_run"] = [c.name for c in cases[i:]]
                progress(f"time budget of {time_budget_s:.0f} s spent: {len(cases) - i} cases not run")
                break
            try:
                row = _run_case(case, device, ops, repeat, warmup, dry_run, l2, result["copy_gbps"],
                                extra_baselines, cpu_budget_s, seed=1000 + i)
            except Exception as exc:
                if not keep_going:
                    raise
                msg = f"{type(exc).__name__}: {exc}"
                result["errors"].append({"name": case.name, "error": msg})
                progress(f"[{i + 1}/{len(cases)}] {case.name}: FAILED: {msg.splitlines()[0][:300]}")
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                continue
            result["rows"].append(row)
            progress(f"[{i + 1}/{len(cases)}] {_progress_line(row)}")
            if device == "cuda":
                torch.cuda.empty_cache()
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    return result


def _run_case(case, device, ops, repeat, warmup, dry_run, l2, copy_gbps, extra, cpu_budget_s, seed) -> dict:
    w = make_workload(case, device, seed=seed)
    expected = _reference(w, REF_CHUNK_BYTES[device])
    cands, skipped = baseline_candidates(case, device)
    if extra:
        cands.update(extra)
    rejected: dict[str, str] = {}
    errs: dict[str, float] = {}

    ours = ours_candidate(case, ops)
    err, tol = check_candidate(ours, w, expected)
    if not err <= tol:
        raise CorrectnessError(
            f"{case.name}: our op differs from the float64 reference: relative error of the "
            f"update {err:.3g} > tolerance {tol:.3g}"
        )
    our_err = err
    for name, fn in list(cands.items()):
        try:
            e, t = check_candidate(fn, w, expected)
        except Exception as exc:  # e.g. grouped_mm without a kernel for this dtype / GPU
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            del cands[name]
            continue
        errs[name] = e
        if not e <= t:
            rejected[name] = f"relative error {e:.3g} > tolerance {t:.3g}"
            del cands[name]
    _sync(device)

    timing: dict[str, str] = {}
    rotate = 1
    mins: dict[str, float] = {}
    base_us: dict[str, float] = {}
    if device == "cuda":
        rotate = _rotation(min_bytes(case), l2, dry_run)
        sets = [w] + [w.with_fresh_buffers(_gen(device, seed + 7 + k)) for k in range(rotate - 1)]
        us, _, timing["ours"] = _time_cuda(ours, sets, repeat, warmup)
        for name, fn in cands.items():
            try:
                base_us[name], _, timing[name] = _time_cuda(fn, sets, repeat, warmup)
            except Exception as exc:
                skipped[name] = f"{type(exc).__name__} while timing: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    else:
        stats = _time_cpu_interleaved({"ours": ours, **cands}, w, repeat, warmup, cpu_budget_s, skipped)
        us, mins["ours"], _ = stats.pop("ours")
        for name, (med, mn, _) in stats.items():
            base_us[name], mins[name] = med, mn
        timing = {name: "perf_counter" for name in ("ours", *base_us)}
    nbytes = min_bytes(case)
    gbps = nbytes / us / 1e3
    best = min(base_us, key=base_us.get) if base_us else None
    row = {
        "name": case.name,
        "kind": case.kind,
        "op": case.op,
        "dtype": case.dtype_name,
        "T": case.T,
        "n": case.n,
        "S": case.n if case.kind == "prefill" else None,
        "r": case.r,
        "H_in": case.H_in,
        "H_out": case.H_out,
        "bytes": nbytes,
        "flops": flops(case),
        "us": us,
        "gbps": gbps,
        "pct_copy": (100.0 * gbps / copy_gbps) if (device == "cuda" and copy_gbps) else None,
        "copy_us": None,
        "baselines": base_us,
        "best_baseline": best,
        "best_baseline_us": base_us[best] if best else None,
        "speedup": (base_us[best] / us) if best else None,
        # CPU only: the fastest run of each candidate, and the speedup they give (on a machine
        # shared with other work the minimum is the steadier statistic)
        "us_min": mins.get("ours"),
        "baselines_min": {k: v for k, v in mins.items() if k != "ours"} or None,
        "speedup_min": (min(v for k, v in mins.items() if k != "ours") / mins["ours"])
                       if len(mins) > 1 else None,
        "rel_err": our_err,
        "baseline_rel_err": errs,
        "skipped": skipped,
        "rejected": rejected,
        "timing": timing,
        "rotate": rotate,
    }
    if device == "cuda":
        row["copy_us"] = _copy_us(nbytes, repeat, warmup, l2, dry_run)
    return row


def _gen(device: str, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _progress_line(row: dict) -> str:
    s = f"{row['name']}: ours {row['us']:.1f} us ({row['gbps']:.1f} GB/s)"
    if row["best_baseline"]:
        s += f", best baseline {row['best_baseline']} {row['best_baseline_us']:.1f} us, {row['speedup']:.2f}x"
    if row["rejected"]:
        s += f"; REJECTED (wrong): {', '.join(row['rejected'])}"
    return s


# ----------------------------------------------------------------------------- output

BASELINE_ORDER = ("sorted_mm", "gather_bmm", "peft_loop", "mm", "grouped_mm")


def format_table(result: dict) -> str:
    rows = result["rows"]
    names = [b for b in BASELINE_ORDER
             if any(b in r["baselines"] or b in r["skipped"] or b in r["rejected"] for r in rows)]
    names += sorted({b for r in rows for b in (*r["baselines"], *r["rejected"])} - set(names))
    cuda = result.get("device_type") == "cuda"
    header = ["case", "ours us"] + [f"{b} us" for b in names] + ["best baseline", "speedup", "GB/s"]
    with_min = any(r.get("speedup_min") for r in rows)
    if with_min:
        header += ["speedup (min runs)"]
    if cuda:
        header += ["% copy"]
    lines = []
    for r in rows:
        cells = [r["name"], f"{r['us']:.1f}"]
        for b in names:
            if b in r["baselines"]:
                cells.append(f"{r['baselines'][b]:.1f}")
            elif b in r["rejected"]:
                cells.append("WRONG")
            elif b in r["skipped"]:
                cells.append("skip")
            else:
                cells.append("-")
        cells += [r["best_baseline"] or "-", f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                  f"{r['gbps']:.1f}"]
        if with_min:
            cells.append(f"{r['speedup_min']:.2f}x" if r.get("speedup_min") else "-")
        if cuda:
            cells.append(f"{r['pct_copy']:.0f}%" if r["pct_copy"] is not None else "-")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(wd) if i == 0 else c.rjust(wd)
                                 for i, (c, wd) in enumerate(zip(cells, widths))) + " |"

    out = [fmt(header), "|" + "|".join(("-" * (wd + 2)) if i == 0 else ("-" * (wd + 1) + ":")
                                        for i, wd in enumerate(widths)) + "|"]
    out += [fmt(c) for c in lines]
    notes = sorted({f"{b}: {why}" for r in rows for b, why in r["skipped"].items()})
    head = (f"device: {result['device']} ({result['device_type']}), torch {result['torch']}"
            f"{', CUDA ' + str(result['cuda']) if cuda else ''}, threads {result['threads']}"
            f"{', copy ' + format(result['copy_gbps'], '.0f') + ' GB/s' if result.get('copy_gbps') else ''}"
            f"{', DRY RUN (tiny sizes, 1 repetition: not a measurement)' if result['dry_run'] else ''}")
    tail = [f"skipped: {n}" for n in notes[:8]] + (["..."] if len(notes) > 8 else [])
    if result.get("not_run"):
        tail.append(f"not run (time budget): {len(result['not_run'])} cases")
    return "\n".join([head, *out, *tail])


def targets(result: dict) -> list[dict]:
    """The issue-4 targets evaluated on a result: [{target, status, detail}], status in
    {"met", "missed", "n/a"}. They are GPU targets: on a CPU or dry run every one is "n/a"."""
    rows = result["rows"]
    out = []
    if result.get("device_type") != "cuda" or result.get("dry_run"):
        why = "dry run: nothing measured" if result.get("dry_run") else "GPU target; this is a CPU run"
        names = ["every shape faster than every baseline",
                 "calls moving >= 30 MB: >= 80% of copy bandwidth",
                 "calls moving 4-30 MB: >= 50% of copy bandwidth",
                 "calls under 4 MB: <= 1.5x a same-bytes copy",
                 "decode 64/64 r16 4096->4096 add_lora bf16 <= 8 us"]
        return [{"target": t, "status": "n/a", "detail": why} for t in names]
    judged = [r for r in rows if r["speedup"] is not None]
    slower = [r for r in judged if r["speedup"] < 1.0]
    out.append({"target": "every shape faster than every baseline",
                "status": "n/a" if not judged else ("met" if not slower else "missed"),
                "detail": f"{len(judged) - len(slower)}/{len(judged)} cases faster"
                          + (f"; slowest ratio {min(r['speedup'] for r in judged):.2f}x"
                             f" ({min(judged, key=lambda r: r['speedup'])['name']})" if judged else "")})
    for lo, hi, need in ((30e6, math.inf, 80.0), (4e6, 30e6, 50.0)):
        sel = [r for r in rows if lo <= r["bytes"] < hi and r["pct_copy"] is not None]
        bad = [r for r in sel if r["pct_copy"] < need]
        label = f">= {lo / 1e6:.0f} MB" if hi == math.inf else f"{lo / 1e6:.0f}-{hi / 1e6:.0f} MB"
        out.append({"target": f"calls moving {label}: >= {need:.0f}% of copy bandwidth",
                    "status": "n/a" if not sel else ("met" if not bad else "missed"),
                    "detail": f"{len(sel) - len(bad)}/{len(sel)} cases" +
                              (f"; worst {min(r['pct_copy'] for r in sel):.0f}%" if sel else "")})
    sel = [r for r in rows if r["bytes"] < 4e6 and r.get("copy_us")]
    bad = [r for r in sel if r["us"] > 1.5 * r["copy_us"]]
    out.append({"target": "calls under 4 MB: <= 1.5x a same-bytes copy",
                "status": "n/a" if not sel else ("met" if not bad else "missed"),
                "detail": f"{len(sel) - len(bad)}/{len(sel)} cases" +
                          (f"; worst {max(r['us'] / r['copy_us'] for r in sel):.2f}x" if sel else "")})
    key = [r for r in rows if r["kind"] == "decode" and r["op"] == "add_lora" and r["T"] == 64
           and r["n"] == 64 and r["r"] == 16 and r["H_in"] == 4096 and r["H_out"] == 4096
           and r["dtype"] == "bf16"]
    if key and result.get("device_type") == "cuda" and not result.get("dry_run"):
        us = key[0]["us"]
        out.append({"target": "decode 64/64 r16 4096->4096 add_lora bf16 <= 8 us",
                    "status": "met" if us <= 8.0 else "missed", "detail": f"{us:.1f} us"})
    else:
        out.append({"target": "decode 64/64 r16 4096->4096 add_lora bf16 <= 8 us",
                    "status": "n/a", "detail": "not in this run (needs a CUDA run of the sweep)"})
    return out


def format_targets(result: dict) -> str:
    return "\n".join(f"[{t['status']:>6}] {t['target']}: {t['detail']}" for t in targets(result))


def format_summary(result: dict) -> str:
    """A short table (add_lora, first dtype, r = 16 or the smallest r, H_out = the smallest),
    a one-line census of the whole run, and the issue-4 targets."""
    rows = result["rows"]
    sel = [r for r in rows if r["op"] == "add_lora"] or list(rows)
    if sel:
        dt = sel[0]["dtype"]
        rs = {r["r"] for r in sel}
        rp = 16 if 16 in rs else min(rs)
        hp = min(r["H_out"] for r in sel)
        sel = [r for r in sel if r["dtype"] == dt and r["r"] == rp and r["H_out"] == hp]
        sel.sort(key=lambda r: (r["kind"] != "decode", r["T"], r["n"]))
    cuda = result.get("device_type") == "cuda"
    head = ["case", "ours us", "best baseline", "baseline us", "speedup", "GB/s"]
    if cuda:
        head += ["% copy", "x copy"]
    body = []
    for r in sel:
        cells = [r["name"], f"{r['us']:.1f}", r["best_baseline"] or "-",
                 f"{r['best_baseline_us']:.1f}" if r["best_baseline_us"] else "-",
                 f"{r['speedup']:.2f}x" if r["speedup"] else "-", f"{r['gbps']:.1f}"]
        if cuda:
            cells += [f"{r['pct_copy']:.0f}%" if r["pct_copy"] is not None else "-",
                      f"{r['us'] / r['copy_us']:.2f}" if r.get("copy_us") else "-"]
        body.append(cells)
    widths = [max([len(h)] + [len(c[i]) for c in body]) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    judged = [r["speedup"] for r in rows if r["speedup"]]
    census = (f"{len(rows)} cases measured, {len(result.get('not_run', []))} not run (time budget), "
              f"{len(result.get('errors', []))} failed")
    if judged:
        geo = math.exp(sum(math.log(x) for x in judged) / len(judged))
        census += f"; speedup over the best baseline: min {min(judged):.2f}x, geomean {geo:.2f}x"
    lines = [f"{result['device']}, torch {result['torch']}"
             + (f", CUDA {result['cuda']}, copy {result['copy_gbps']:.0f} GB/s" if cuda and result.get("copy_gbps") else "")
             + (" [DRY RUN: not a measurement]" if result.get("dry_run") else ""),
             fmt(head), fmt(["-" * w for w in widths]), *(fmt(c) for c in body), census,
             format_targets(result)]
    return "\n".join(lines)


def write_plot(result: dict, path: str) -> str | None:
    """Punica-style plot: add_lora latency against the number of distinct adapters, one panel
    per token count, ours against each baseline. Returns the path, or None (with a printed
    note) when matplotlib is not installed or nothing fits."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return None
    rows = [r for r in result["rows"] if r["op"] == "add_lora"]
    if not rows:
        rows = list(result["rows"])
    if not rows:
        print("note: no rows to plot", file=sys.stderr)
        return None
    dtype = rows[0]["dtype"]
    rs = sorted({r["r"] for r in rows})
    r_pick = 16 if 16 in rs else rs[0]
    h_pick = min(r["H_out"] for r in rows)
    rows = [r for r in rows if r["dtype"] == dtype and r["r"] == r_pick and r["H_out"] == h_pick]
    panels = sorted({(r["kind"], r["T"]) for r in rows}, key=lambda k: (k[0] != "decode", k[1]))
    multi = [p for p in panels if len({r["n"] for r in rows if (r["kind"], r["T"]) == p}) > 1]
    panels = multi or panels  # a panel with a single point (T = 1) says nothing about n
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (kind, T) in zip(axes[0], panels):
        sel = sorted((r for r in rows if r["kind"] == kind and r["T"] == T), key=lambda r: r["n"])
        ns = [r["n"] for r in sel]
        ax.plot(ns, [r["us"] for r in sel], "o-", lw=2, label="lora_kernels")
        for b in BASELINE_ORDER + tuple(sorted({b for r in sel for b in r["baselines"]} - set(BASELINE_ORDER))):
            pts = [(r["n"], r["baselines"][b]) for r in sel if b in r["baselines"]]
            if pts:
                ax.plot(*zip(*pts), "s--", lw=1, label=b)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("distinct adapters" if kind == "decode" else "segments (one adapter each)")
        ax.set_ylabel("latency (us)")
        ax.set_title(f"{kind} T={T}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"add_lora, r={r_pick}, {rows[0]['H_in'] if rows else ''}->{h_pick}, {dtype}, "
                 f"{result['device']}{' (DRY RUN)' if result['dry_run'] else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--full", action="store_true",
                   help="the GPU sweep of issue 4 (decode T x n x r x H_out, prefill, bf16 and fp16, "
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
    return p


def run_from_args(args: argparse.Namespace, *, ops: Any = None, extra_baselines=None,
                  progress: Callable[[str], None] = _progress_default,
                  out: Callable[[str], None] = print) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device here.", file=sys.stderr)
        return 2
    if args.full and device == "cpu" and not args.dry_run:
        print("error: --full is the GPU sweep (issue 4): 624 shapes in bf16/fp16 that would take hours "
              "on a CPU and measure nothing useful. Run it on a CUDA machine (benchmarks/gpu_check.sh), "
              "or add --dry-run to check the harness on CPU. `bench` without --full runs the default "
              "CPU workload.", file=sys.stderr)
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
    out(format_table(result))
    for e in result["errors"]:
        out(f"FAILED: {e['name']}: {e['error'].splitlines()[0][:300]}")
    if args.json:
        write_json(result, args.json)
        out(f"wrote {args.json}")
    if args.plot:
        if write_plot(result, args.plot):
            out(f"wrote {args.plot}")
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lora_kernels.bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
