"""Random data for one case (:class:`Workload`) plus the host-side metadata the baselines
precompute once per batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import reference as ref
from .cases import Case


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


def token_slots(kind: str, T: int, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The slot of every token of a benchmark batch, on the host: (slots [T], seg_indptr
    [S+1] int32 or None, seg_adapter [S] or None). ``decode``: ``arange(T) % n`` in a random
    order (every adapter gets T/n tokens, unsorted); ``prefill``: ``n`` equal segments, adapters
    in a random order. The same ``seed`` gives the same batch."""
    host = torch.Generator()
    host.manual_seed(seed + 1)
    if kind == "decode":
        slots = torch.arange(T) % n
        return slots[torch.randperm(T, generator=host)], None, None
    if kind == "prefill":
        bounds = [(T * s) // n for s in range(n + 1)]
        seg_adapter = torch.randperm(n, generator=host)
        seg_indptr = torch.tensor(bounds, dtype=torch.int32)
        return ref.segments_to_indices(seg_indptr, seg_adapter), seg_indptr, seg_adapter
    raise ValueError(f"unknown kind {kind!r}")


def make_workload(case: Case, device: str | torch.device, seed: int = 0) -> Workload:
    """Random data for ``case``: decode tokens spread evenly over the ``n`` adapters in a
    random (unsorted) order; prefill ``n`` equal segments, adapters in a random order."""
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    T, N = case.T, case.n
    if N < 1 or N > max(T, 1):
        raise ValueError(f"{case.name}: need 1 <= n <= T, got n={N}, T={T}")
    slots, seg_indptr_h, seg_adapter_h = token_slots(case.kind, T, N, seed)
    seg_indptr = seg_adapter = None
    if seg_indptr_h is not None:
        seg_indptr = seg_indptr_h.to(device)
        seg_adapter = seg_adapter_h.to(torch.int32).to(device)
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
