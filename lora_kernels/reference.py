"""Plain-torch reference of every op: the oracle of the test suite.

Same names, arguments and semantics as :mod:`lora_kernels.ops` (DESIGN §1), written for
clarity, not speed, and for any floating dtype (float64 included). For every token ``t`` with
adapter slot ``a = indices[t]``::

    v[t]  = x[t] @ lora_a[a, :r_a].T                       (fp32, or float64 for float64 input)
    y[t] += scaling[a] * (v[t, :r_a] @ lora_b[a, :, :r_a].T + lora_bias[a])

``a == -1`` or ``r_a == 0`` leaves ``y[t]`` untouched; ``v[t]`` is zero past ``r_a`` and for
``a == -1``, whatever ``x[t]`` holds (NaN or Inf included): those entries are set, never
computed, and padding past ``r_a`` is never read. ``N = 0`` (every token ``-1``) works.
No argument checking happens here beyond what torch itself does.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "bgmv_shrink",
    "bgmv_expand",
    "sgmv_shrink",
    "sgmv_expand",
    "add_lora",
    "add_lora_embedding",
    "add_lora_slices",
    "segments_to_indices",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for fp16/bf16/fp32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _slot_ranks(ranks: Tensor | None, indices: Tensor, max_rank: int) -> Tensor:
    """Per-token rank r_a (0 for a == -1); reads ranks only at real slots (N may be 0)."""
    idx = indices.long()
    r = torch.zeros_like(idx)
    valid = idx >= 0
    r[valid] = max_rank if ranks is None else ranks.long().to(idx.device)[idx[valid]]
    return r


def segments_to_indices(seg_indptr: Tensor, seg_adapter: Tensor) -> Tensor:
    """Per-token adapter slots from segments: token t in [indptr[s], indptr[s+1]) -> adapter[s]."""
    lengths = (seg_indptr[1:] - seg_indptr[:-1]).long()
    return torch.repeat_interleave(seg_adapter.long(), lengths)


def bgmv_shrink(x: Tensor, lora_a: Tensor, indices: Tensor, ranks: Tensor | None = None) -> Tensor:
    """v[t, j] = x[t] . lora_a[a, j] for j < r_a, else 0.  Shapes: x [T, H_in], lora_a [N, R, H_in]."""
    acc = _acc_dtype(x.dtype)
    R = lora_a.shape[1]
    idx = indices.long().to(x.device)
    v = torch.zeros(x.shape[0], R, dtype=acc, device=x.device)
    rows = torch.nonzero(idx >= 0).flatten()
    if rows.numel() == 0:
        return v
    # Every product is computed, then the ones past the rank are replaced (not multiplied) by
    # zeros: whatever the padding rows or x hold never reaches them, NaN and Inf included.
    full = torch.einsum("tk,trk->tr", x[rows].to(acc), lora_a[idx[rows]].to(acc))  # [T', R]
    keep = torch.arange(R, device=x.device)[None, :] < _slot_ranks(ranks, idx, R)[rows, None]
    v[rows] = torch.where(keep, full, 0.0)
    return v


def bgmv_expand(
    y: Tensor,
    v: Tensor,
    lora_b: Tensor,
    indices: Tensor,
    scaling: Tensor,
    ranks: Tensor | None = None,
    lora_bias: Tensor | None = None,
) -> Tensor:
    """y[t] += scaling[a] * (v[t, :r_a] @ lora_b[a, :, :r_a].T + lora_bias[a]); in place, returns y."""
    acc = _acc_dtype(y.dtype)
    R = lora_b.shape[2]
    idx = indices.long().to(y.device)
    r = _slot_ranks(ranks, idx, R)
    rows = torch.nonzero(r > 0).flatten()
    if rows.numel() == 0:
        return y
    a = idx[rows]
    keep = torch.arange(R, device=y.device)[None, :] < r[rows, None]  # [T', R]
    vv = torch.where(keep, v[rows].to(acc), 0.0)
    weights = torch.where(keep[:, None, :], lora_b[a].to(acc), 0.0)  # [T', H_out, R], padding zeroed
    delta = torch.einsum("tr,tor->to", vv, weights)
    if lora_bias is not None:
        delta = delta + lora_bias[a].to(acc)
    delta = delta * scaling.to(device=y.device, dtype=acc)[a, None]
    y[rows] = (y[rows].to(acc) + delta).to(y.dtype)
    return y


def sgmv_shrink(
    x: Tensor, lora_a: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, ranks: Tensor | None = None
) -> Tensor:
    """bgmv_shrink with the per-token slots given as segments."""
    return bgmv_shrink(x, lora_a, segments_to_indices(seg_indptr, seg_adapter), ranks)


def sgmv_expand(
    y: Tensor,
    v: Tensor,
    lora_b: Tensor,
    seg_indptr: Tensor,
    seg_adapter: Tensor,
    scaling: Tensor,
    ranks: Tensor | None = None,
    lora_bias: Tensor | None = None,
) -> Tensor:
    """bgmv_expand with the per-token slots given as segments."""
    indices = segments_to_indices(seg_indptr, seg_adapter)
    return bgmv_expand(y, v, lora_b, indices, scaling, ranks, lora_bias)


def add_lora(
    y: Tensor,
    x: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: Tensor,
    indices: Tensor | None = None,
    *,
    seg_indptr: Tensor | None = None,
    seg_adapter: Tensor | None = None,
    ranks: Tensor | None = None,
    lora_bias: Tensor | None = None,
) -> Tensor:
    """y[t] += scaling[a] * ((x[t] @ A[a,:r].T) @ B[a,:,:r].T + bias[a]); per-token or segments."""
    if indices is None:
        indices = segments_to_indices(seg_indptr, seg_adapter)
    v = bgmv_shrink(x, lora_a, indices, ranks)
    return bgmv_expand(y, v, lora_b, indices, scaling, ranks, lora_bias)


def add_lora_embedding(
    y: Tensor,
    token_ids: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: Tensor,
    indices: Tensor,
    ranks: Tensor | None = None,
) -> Tensor:
    """y[t] += scaling[a] * lora_b[a, :, :r] @ lora_a[a, :r, token_ids[t]].

    Shapes: y [T, dim], token_ids [T], lora_a [N, R, vocab], lora_b [N, dim, R].
    """
    acc = _acc_dtype(y.dtype)
    R = lora_a.shape[1]
    idx = indices.long().to(y.device)
    v = torch.zeros(y.shape[0], R, dtype=acc, device=y.device)
    rows = torch.nonzero(idx >= 0).flatten()
    if rows.numel() > 0:
        cols = lora_a[idx[rows], :, token_ids.long().to(y.device)[rows]].to(acc)  # [T', R]
        keep = torch.arange(R, device=y.device)[None, :] < _slot_ranks(ranks, idx, R)[rows, None]
        v[rows] = torch.where(keep, cols, 0.0)
    return bgmv_expand(y, v, lora_b, idx, scaling, ranks)


def add_lora_slices(
    y: Tensor,
    x: Tensor,
    lora_a: list[Tensor],
    lora_b: list[Tensor],
    scaling: list[Tensor],
    indices: Tensor | None = None,
    *,
    seg_indptr: Tensor | None = None,
    seg_adapter: Tensor | None = None,
    ranks: list[Tensor] | None = None,
    lora_bias: list[Tensor] | None = None,
) -> Tensor:
    """add_lora on each column slice: slice i updates y[:, o_i : o_i + H_out_i] with its own
    lora_a[i] [N, R_i, H_in], lora_b[i] [N, H_out_i, R_i], scaling[i], ranks[i], lora_bias[i],
    where o_i is the sum of the earlier slices' H_out. In place, returns y."""
    if indices is None:
        indices = segments_to_indices(seg_indptr, seg_adapter)
    offset = 0
    for i, (a, b, s) in enumerate(zip(lora_a, lora_b, scaling)):
        width = b.shape[1]
        add_lora(y[:, offset : offset + width], x, a, b, s, indices,
                 ranks=None if ranks is None else ranks[i],
                 lora_bias=None if lora_bias is None else lora_bias[i])
        offset += width
    return y
