"""``add_lora_slices`` on Llama-3-8B's fused projections against vLLM-style baselines.

A fused qkv layer (4096 -> 4096 + 1024 + 1024 under GQA) or gate_up layer (4096 -> 14336 +
14336) carries one LoRA per slice; ``add_lora_slices`` serves all of them in one call. The
minimum bytes of one call: ``x`` read once for every slice, each slice's ``A`` and ``B`` of the
``n`` distinct adapters once, ``y`` (all slices' columns) read and written once::

    e*(T*H_in + sum_i n*R_i*(H_in + H_out_i) + 2*T*sum_i H_out_i)

Candidates, each checked against the float64 reference (:func:`lora_kernels.reference.add_lora_slices`
in float64, on the update ``d = y_out - y_in``) before it is timed:

    ours                 lk.add_lora_slices: one call for every slice
    add_lora_per_slice   lk.add_lora on each column slice of y (what a server's per-slice loop
                         does, e.g. vLLM's punica wrapper looping over the slices)
    grouped_mm           torch._grouped_mm, vLLM-style on plain torch: tokens sorted by adapter
                         (decode), one grouped shrink for every slice at once (the slices' A
                         stacked along the rank at load time), then per slice the scaled
                         intermediate through one grouped expand and an index_add_ (decode) or
                         add_ (prefill) into y's column slice; left out (``skipped``, with the
                         reason) where torch has no ``_grouped_mm`` or it raises for the dtype
    reference            lk.reference.add_lora_slices in the working dtype (gather + einsum;
                         skipped when its per-call gather would pass GATHER_LIMIT)
    mm                   one adapter for every token (n = 1): one torch.mm for every slice's
                         shrink (the stacked A), then one addmm_ per slice into y's columns

Timing, input rotation and the same-run copy / read rate are the sweep's (:mod:`.harness`,
:mod:`.timing`); the rows have the sweep's layout plus ``proj``, ``widths`` and ``ranks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .. import reference as ref
from .baselines import GATHER_LIMIT
from .cases import DTYPE_NAMES
from .correctness import REF_CHUNK_BYTES
from .harness import measure, run
from .workload import _metadata, token_slots

# Llama-3-8B: hidden 4096, 32 query heads and 8 KV heads of 128, intermediate 14336.
LLAMA3_8B = {"qkv": (4096, (4096, 1024, 1024)), "gate_up": (4096, (14336, 14336))}


@dataclass(frozen=True)
class SliceCase:
    """One ``add_lora_slices`` shape: projection ``proj`` (H_in -> the slices' ``widths``),
    ``kind`` ``decode`` (per-token indices over ``n`` adapters) or ``prefill`` (``n``
    segments, one adapter each), one rank per slice."""

    proj: str
    kind: str
    T: int
    n: int
    H_in: int
    widths: tuple[int, ...]
    ranks: tuple[int, ...]
    dtype: torch.dtype
    op: str = field(default="add_lora_slices", init=False)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @property
    def H_out(self) -> int:
        return sum(self.widths)

    @property
    def r(self) -> int:
        return max(self.ranks)

    @property
    def name(self) -> str:
        what = "segs" if self.kind == "prefill" else "adapters"
        return (f"{self.proj} {self.kind} T={self.T} {what}={self.n} r={'/'.join(map(str, self.ranks))} "
                f"{self.H_in}->{'+'.join(map(str, self.widths))} {self.op} {self.dtype_name}")


def slices_cases(dtype: torch.dtype = torch.bfloat16, dry_run: bool = False) -> list[SliceCase]:
    """Llama-3-8B's qkv and gate_up, r 16 on every slice, most important first: decode 64
    tokens over 64, 8 and 1 adapters, then prefill 2048 tokens in 8 segments. ``dry_run``
    divides the hidden sizes by 128, decode to 8 tokens over 8 / 4 / 1 adapters, prefill to 32
    tokens in 4 segments (the same structure)."""
    hs = 128 if dry_run else 1
    T_dec, T_pre, S = (8, 32, 4) if dry_run else (64, 2048, 8)
    cases = []
    for kind, T, ns in (("decode", T_dec, (T_dec, 4 if dry_run else 8, 1)), ("prefill", T_pre, (S,))):
        for n in ns:
            for proj, (H_in, widths) in LLAMA3_8B.items():
                w = tuple(x // hs for x in widths)
                cases.append(SliceCase(proj, kind, T, n, H_in // hs, w, (16,) * len(w), dtype))
    return cases


def slices_min_bytes(case: SliceCase) -> int:
    """Minimum bytes of one call (see the module docstring)."""
    e = torch.empty((), dtype=case.dtype).element_size()
    T, n, Hi = case.T, case.n, case.H_in
    weights = sum(n * R * (Hi + Ho) for R, Ho in zip(case.ranks, case.widths))
    return e * (T * Hi + weights + 2 * T * case.H_out)


def slices_flops(case: SliceCase) -> int:
    return sum(2 * case.T * R * (case.H_in + Ho) for R, Ho in zip(case.ranks, case.widths))


@dataclass
class SlicesWorkload:
    """The tensors of one slices case and the baselines' per-batch metadata (one dict per slice,
    as :func:`.workload._metadata` builds it)."""

    case: SliceCase
    x: Tensor  # [T, H_in]
    y: Tensor  # [T, sum H_out_i]
    lora_a: list[Tensor]  # [N, R_i, H_in]
    lora_b: list[Tensor]  # [N, H_out_i, R_i]
    scaling: list[Tensor]  # [N] fp32
    a_cat: Tensor  # [N, sum R_i, H_in]: the slices' A stacked (grouped_mm's one shrink)
    ranks: list[Tensor]
    indices: Tensor
    seg_indptr: Tensor | None
    seg_adapter: Tensor | None
    meta: list[dict]

    def with_fresh_buffers(self, gen: torch.Generator) -> "SlicesWorkload":
        """Same metadata and scales, new random x, y and weights (buffer rotation)."""
        fresh = _random_tensors(self.case, self.x.device, gen)
        fresh["scaling"] = self.scaling
        return SlicesWorkload(self.case, **fresh, ranks=self.ranks, indices=self.indices,
                              seg_indptr=self.seg_indptr, seg_adapter=self.seg_adapter, meta=self.meta)

    def set_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, *self.lora_a, *self.lora_b))


def _random_tensors(case: SliceCase, device: torch.device, gen: torch.Generator) -> dict:
    T, N, Hi, dt = case.T, case.n, case.H_in, case.dtype

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dt)

    lora_a = [rnd(N, R, Hi, scale=Hi ** -0.5) for R in case.ranks]
    return dict(
        x=rnd(T, Hi),
        y=rnd(T, case.H_out),
        lora_a=lora_a,
        lora_b=[rnd(N, Ho, R, scale=R ** -0.5) for R, Ho in zip(case.ranks, case.widths)],
        scaling=[torch.rand(N, generator=gen, device=device) * 1.5 + 0.5 for _ in case.ranks],
        a_cat=torch.cat(lora_a, dim=1),
    )


def make_slices_workload(case: SliceCase, device: str | torch.device, seed: int = 0) -> SlicesWorkload:
    """Random data for ``case``, the tokens laid out as in the sweep (:func:`.workload.token_slots`)."""
    device = torch.device(device)
    if case.n < 1 or case.n > max(case.T, 1):
        raise ValueError(f"{case.name}: need 1 <= n <= T, got n={case.n}, T={case.T}")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    slots, seg_indptr_h, seg_adapter_h = token_slots(case.kind, case.T, case.n, seed)
    seg_indptr = seg_adapter = None
    if seg_indptr_h is not None:
        seg_indptr = seg_indptr_h.to(device)
        seg_adapter = seg_adapter_h.to(torch.int32).to(device)
    tensors = _random_tensors(case, device, gen)
    meta = []
    for s in tensors["scaling"]:
        m = _metadata(case, slots, seg_indptr, seg_adapter, s, device)
        m["s_sorted"] = m["s_tok"] if m["perm"] is None else m["s_tok"].index_select(0, m["perm"])
        meta.append(m)
    return SlicesWorkload(case, **tensors,
                          ranks=[torch.full((case.n,), R, dtype=torch.int32, device=device) for R in case.ranks],
                          indices=slots.to(torch.int32).to(device), seg_indptr=seg_indptr,
                          seg_adapter=seg_adapter, meta=meta)


# --- candidates: fn(w) -> y -----------------------------------------------------------------

def _where(w: SlicesWorkload) -> tuple[Tensor | None, dict]:
    """(indices, keywords) as our ops take them: per-token indices for decode, segments for prefill."""
    if w.case.kind == "decode":
        return w.indices, {}
    return None, {"seg_indptr": w.seg_indptr, "seg_adapter": w.seg_adapter}


def ours_slices(ops: Any) -> Callable[[SlicesWorkload], Tensor]:
    def fn(w: SlicesWorkload) -> Tensor:
        indices, kw = _where(w)
        return ops.add_lora_slices(w.y, w.x, w.lora_a, w.lora_b, w.scaling, indices, ranks=w.ranks, **kw)
    return fn


def add_lora_per_slice(ops: Any) -> Callable[[SlicesWorkload], Tensor]:
    """One ``add_lora`` per column slice of ``y``."""
    def fn(w: SlicesWorkload) -> Tensor:
        indices, kw = _where(w)
        o = 0
        for a, b, s, r in zip(w.lora_a, w.lora_b, w.scaling, w.ranks):
            ops.add_lora(w.y[:, o:o + b.shape[1]], w.x, a, b, s, indices, ranks=r, **kw)
            o += b.shape[1]
        return w.y
    return fn


def _grouped_mm_slices(w: SlicesWorkload) -> Tensor:
    m0 = w.meta[0]
    perm, offs, dt = m0["perm"], m0["offs"], w.case.dtype
    same = m0["group_adapters"] == list(range(w.case.n))
    pick = (lambda t: t) if same else (lambda t: t.index_select(0, m0["group_adapters_t"]))
    xs = w.x if perm is None else w.x.index_select(0, perm)
    h = torch._grouped_mm(xs, pick(w.a_cat).transpose(1, 2), offs=offs)  # [T', sum R_i], every slice
    o = r0 = 0
    for b, m in zip(w.lora_b, w.meta):
        R, width = b.shape[2], b.shape[1]
        hs = (h[:, r0:r0 + R].float() * m["s_sorted"].unsqueeze(1)).to(dt)  # scale folded into h
        d = torch._grouped_mm(hs, pick(b).transpose(1, 2), offs=offs)  # [T', H_out_i]
        ys = w.y[:, o:o + width]
        if perm is None:
            ys.add_(d)
        else:
            ys.index_add_(0, perm, d)
        o += width
        r0 += R
    return w.y


def _single_mm_slices(w: SlicesWorkload) -> Tensor:
    a = w.meta[0]["single"]
    h = torch.mm(w.x, w.a_cat[a].t())  # [T, sum R_i], every slice
    o = r0 = 0
    for b, m in zip(w.lora_b, w.meta):
        R, width = b.shape[2], b.shape[1]
        w.y[:, o:o + width].addmm_(h[:, r0:r0 + R], b[a].t(), alpha=m["scale_host"][a])
        o += width
        r0 += R
    return w.y


def _reference_slices(w: SlicesWorkload) -> Tensor:
    indices, kw = _where(w)
    return ref.add_lora_slices(w.y, w.x, w.lora_a, w.lora_b, w.scaling, indices, ranks=w.ranks, **kw)


# torch.nonzero syncs the host: timed as eager launches, no CUDA-graph capture attempted
_reference_slices.graph_safe = False


def _reference_gather_bytes(case: SliceCase) -> int:
    """What the reference allocates per call at most: per slice the gathered A and B rows of
    every token in the accumulator dtype, twice (the gather and the masked copy)."""
    return max(2 * 4 * case.T * R * (case.H_in + Ho) for R, Ho in zip(case.ranks, case.widths))


def slices_baselines(case: SliceCase, device: str, ops: Any) -> tuple[dict, dict]:
    """({name: fn}, {name: why it is left out}) for ``case`` on ``device``."""
    cands: dict[str, Callable] = {"add_lora_per_slice": add_lora_per_slice(ops)}
    skipped: dict[str, str] = {}
    if hasattr(torch, "_grouped_mm"):
        cands["grouped_mm"] = _grouped_mm_slices
    else:
        skipped["grouped_mm"] = f"torch {torch.__version__} has no torch._grouped_mm"
    if case.n == 1:
        cands["mm"] = _single_mm_slices
    need = _reference_gather_bytes(case)
    if need <= GATHER_LIMIT[device]:
        cands["reference"] = _reference_slices
    else:
        skipped["reference"] = f"gather needs {need / 2**30:.1f} GiB > {GATHER_LIMIT[device] / 2**30:.0f} GiB"
    return cands, skipped


def expected_update(w: SlicesWorkload, chunk_bytes: int) -> Tensor:
    """The float64 reference update ``d`` of every column of ``y``, in chunks of tokens."""
    c = w.case
    A64 = [a.double() for a in w.lora_a]
    B64 = [b.double() for b in w.lora_b]
    per_token = 8 * sum(R * (c.H_in + Ho) for R, Ho in zip(c.ranks, c.widths)) * 2
    step = max(1, chunk_bytes // max(per_token, 1))
    outs = []
    for t0 in range(0, c.T, step):
        sl = slice(t0, min(c.T, t0 + step))
        y64 = w.y[sl].double()
        yc = y64.clone()
        ref.add_lora_slices(yc, w.x[sl].double(), A64, B64, w.scaling, w.indices[sl], ranks=w.ranks)
        outs.append(yc - y64)
    return torch.cat(outs)


def _run_slices_case(case, device, ops, repeat, warmup, dry_run, l2, ref_gbps, extra, cpu_budget_s, seed) -> dict:
    """One slices case for :func:`.harness.run`: check, then time (the sweep's method)."""
    w = make_slices_workload(case, device, seed=seed)
    expected = expected_update(w, REF_CHUNK_BYTES[device])
    cands, skipped = slices_baselines(case, device, ops)
    if extra:
        cands.update(extra)
    nbytes = slices_min_bytes(case)
    return {
        "name": case.name,
        "kind": case.kind,
        "op": case.op,
        "proj": case.proj,
        "dtype": case.dtype_name,
        "T": case.T,
        "n": case.n,
        "S": case.n if case.kind == "prefill" else None,
        "r": case.r,
        "ranks": list(case.ranks),
        "H_in": case.H_in,
        "H_out": case.H_out,
        "widths": list(case.widths),
        "bytes": nbytes,
        "flops": slices_flops(case),
        **measure(case.name, w, expected, ours_slices(ops), cands, skipped, device, nbytes, w.set_bytes(),
                  repeat, warmup, dry_run, l2, ref_gbps, cpu_budget_s, seed),
    }


def run_slices(cases: list[SliceCase], device: str, *, ops: Any = None, **kwargs) -> dict:
    """:func:`.harness.run` over slices cases (same options: ``repeat``, ``dry_run``,
    ``time_budget_s``, ``rates``, ``keep_going``, ``extra_baselines``, ``progress``...)."""
    if ops is None:
        import lora_kernels as ops
    return run(cases, device, ops=ops, run_case=_run_slices_case, **kwargs)
