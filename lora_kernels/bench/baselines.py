"""The candidates: our op for a case, and the plain-torch compositions a user would write.

A candidate is ``fn(w) -> Tensor``: ``y`` (add_lora, expand; updated in place) or ``v`` (shrink).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .cases import Case
from .workload import Workload

# Largest per-call gather (lora_a[idx] + lora_b[idx]) the gather_bmm baseline may allocate.
GATHER_LIMIT = {"cpu": 2 << 30, "cuda": 8 << 30}


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
