"""Typed wrappers of the compiled ops, and their fake (meta) implementations.

Each function here is also ``torch.ops.lora_kernels.<name>`` with the same arguments and
defaults; the in-place ops return nothing at the op level and ``y`` here. Vocabulary:
``T`` tokens, ``H_in`` / ``H_out`` features, ``N`` adapter slots, ``R`` max rank, ``S`` segments.

For every token ``t`` with slot ``a`` (``-1`` = no adapter) and rank ``r = ranks[a]``::

    v[t]  = x[t] @ lora_a[a, :r].T                  # shrink: [T, R], fp32 (fp64 for fp64 data)
    y[t] += scaling[a] * (v[t, :r] @ lora_b[a, :, :r].T + lora_bias[a])   # expand, in place

Rows of ``y`` whose slot is ``-1`` or whose rank is 0 are left bit-for-bit untouched; padding
past ``r`` is never used. x, y, weights (and bias) share one dtype: float16, bfloat16, float32
or float64. Inference only: under grad mode an argument that requires grad is refused by name.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _build  # noqa: F401  (loads the compiled ops)

__all__ = ["bgmv_shrink", "bgmv_expand", "sgmv_shrink", "sgmv_expand", "add_lora", "add_lora_embedding"]

_ops = torch.ops.lora_kernels


def bgmv_shrink(x: Tensor, lora_a: Tensor, indices: Tensor, ranks: Tensor | None = None) -> Tensor:
    """v[t, j] = x[t] . lora_a[indices[t], j] for j < r, else 0 (decode: one slot per token).

    Args:
        x: [T, H_in] activations (row-strided views allowed).
        lora_a: [N, R, H_in] stacked ``lora_A.weight`` of each slot, zero-padded to R.
        indices: [T] int32/int64 slot per token, -1 = none.
        ranks: optional [N] int32/int64 rank per slot (0 <= r <= R); default R for every slot.

    Returns:
        v: [T, R] float32 (float64 for float64 x), unscaled, zero past r and for -1 tokens.

    Example:
        >>> v = lk.bgmv_shrink(x, pool.lora_a, meta.indices, pool.ranks)
    """
    return _ops.bgmv_shrink(x, lora_a, indices, ranks)


def bgmv_expand(
    y: Tensor,
    v: Tensor,
    lora_b: Tensor,
    indices: Tensor,
    scaling: Tensor,
    ranks: Tensor | None = None,
    lora_bias: Tensor | None = None,
) -> Tensor:
    """y[t] += scaling[a] * (v[t, :r] @ lora_b[a, :, :r].T + lora_bias[a]), a = indices[t]; in place.

    Args:
        y: [T, H_out] output accumulated into (row-strided views allowed, e.g. a column slice
            of a fused qkv output).
        v: [T, R] float32 (float64 for float64 y), as returned by :func:`bgmv_shrink`.
        lora_b: [N, H_out, R] stacked ``lora_B.weight``, zero-padded to R.
        indices: [T] int32/int64 slot per token, -1 = none (row untouched).
        scaling: [N] float32 per-slot scale (``lora_scaling(alpha, r, use_rslora)``).
        ranks: optional [N] rank per slot; rank 0 leaves the row untouched.
        lora_bias: optional [N, H_out] ``lora_B.bias`` (PEFT ``lora_bias=True``), scaled too.

    Returns:
        y.
    """
    _ops.bgmv_expand(y, v, lora_b, indices, scaling, ranks, lora_bias)
    return y


def sgmv_shrink(
    x: Tensor, lora_a: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, ranks: Tensor | None = None
) -> Tensor:
    """v[t, j] = x[t] . lora_a[seg_adapter[s], j] for t in segment s (prefill).

    Segment s holds tokens ``seg_indptr[s] <= t < seg_indptr[s+1]``; ``seg_indptr`` is [S+1]
    int32/int64, starts at 0, ends at T, non-decreasing (empty segments allowed);
    ``seg_adapter`` is [S], -1 = none. Otherwise as :func:`bgmv_shrink`.
    """
    return _ops.sgmv_shrink(x, lora_a, seg_indptr, seg_adapter, ranks)


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
    """y[t] += scaling[a] * (v[t, :r] @ lora_b[a, :, :r].T + lora_bias[a]), a = seg_adapter[s]; in place.

    Segments as in :func:`sgmv_shrink`; everything else as :func:`bgmv_expand`.
    """
    _ops.sgmv_expand(y, v, lora_b, seg_indptr, seg_adapter, scaling, ranks, lora_bias)
    return y


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
    """y[t] += scaling[a] * ((x[t] @ lora_a[a, :r].T) @ lora_b[a, :, :r].T + lora_bias[a]); in place.

    Shrink then expand, with the slot of each token given by ``indices`` [T] (BGMV) or by
    ``seg_indptr`` / ``seg_adapter`` (SGMV). Every argument is checked before anything is
    written. Shapes as in :func:`bgmv_shrink` / :func:`bgmv_expand`.

    Example:
        >>> meta = lk.BatchMetadata.from_requests([0, -1, 2], [5, 3, 1], device=x.device)
        >>> lk.add_lora(y, x, pool.lora_a, pool.lora_b, pool.scaling,
        ...             seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter, ranks=pool.ranks)
    """
    _ops.add_lora(
        y, x, lora_a, lora_b, scaling, indices,
        seg_indptr=seg_indptr, seg_adapter=seg_adapter, ranks=ranks, lora_bias=lora_bias,
    )
    return y


def add_lora_embedding(
    y: Tensor,
    token_ids: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: Tensor,
    indices: Tensor,
    ranks: Tensor | None = None,
) -> Tensor:
    """y[t] += scaling[a] * lora_b[a, :, :r] @ lora_a[a, :r, token_ids[t]], a = indices[t]; in place.

    Embedding LoRA (PEFT ``lora_embedding_A`` [r, vocab], ``lora_embedding_B`` [dim, r]).

    Args:
        y: [T, dim] embedding output accumulated into.
        token_ids: [T] int32/int64, 0 <= id < vocab.
        lora_a: [N, R, vocab]; lora_b: [N, dim, R]; scaling: [N] float32; indices: [T];
        ranks: optional [N].
    """
    _ops.add_lora_embedding(y, token_ids, lora_a, lora_b, scaling, indices, ranks)
    return y


# Fake implementations, for torch.compile / FakeTensor tracing and for the Meta dispatch key: a
# call with any tensor on the meta device lands here, not in C++, so the device rule is checked
# here too, in the words C++ uses: every tensor argument on y's device (x's for the shrinks).
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_check_devices(op: str, lead_name: str, lead: Tensor, **args: Tensor | None) -> None:
    for name, t in args.items():
        if t is not None and t.device != lead.device:
            raise RuntimeError(
                f"{op}: {name} must be on the same device as {lead_name} ({lead.device}), got {t.device}."
            )


def _fake_shrink_check(op: str, x: Tensor, lora_a: Tensor) -> None:
    torch._check(x.dim() == 2, lambda: f"{op}: x must be 2-D [T, H_in], got {x.dim()}-D.")
    torch._check(lora_a.dim() == 3, lambda: f"{op}: lora_a must be 3-D [N, R, H_in], got {lora_a.dim()}-D.")
    torch._check(
        lora_a.shape[2] == x.shape[1],
        lambda: f"{op}: lora_a must have shape [N, R, H_in] with H_in = {x.shape[1]} (from x), "
        f"got shape {list(lora_a.shape)}.",
    )


@torch.library.register_fake("lora_kernels::bgmv_shrink")
def _bgmv_shrink_fake(x, lora_a, indices, ranks=None):
    _fake_check_devices("bgmv_shrink", "x", x, lora_a=lora_a, indices=indices, ranks=ranks)
    _fake_shrink_check("bgmv_shrink", x, lora_a)
    return x.new_empty((x.shape[0], lora_a.shape[1]), dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("lora_kernels::sgmv_shrink")
def _sgmv_shrink_fake(x, lora_a, seg_indptr, seg_adapter, ranks=None):
    _fake_check_devices(
        "sgmv_shrink", "x", x, lora_a=lora_a, seg_indptr=seg_indptr, seg_adapter=seg_adapter, ranks=ranks
    )
    _fake_shrink_check("sgmv_shrink", x, lora_a)
    return x.new_empty((x.shape[0], lora_a.shape[1]), dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("lora_kernels::bgmv_expand")
def _bgmv_expand_fake(y, v, lora_b, indices, scaling, ranks=None, lora_bias=None):
    _fake_check_devices(
        "bgmv_expand", "y", y, v=v, lora_b=lora_b, indices=indices, scaling=scaling, ranks=ranks, lora_bias=lora_bias
    )
    return None


@torch.library.register_fake("lora_kernels::sgmv_expand")
def _sgmv_expand_fake(y, v, lora_b, seg_indptr, seg_adapter, scaling, ranks=None, lora_bias=None):
    _fake_check_devices(
        "sgmv_expand", "y", y, v=v, lora_b=lora_b, seg_indptr=seg_indptr, seg_adapter=seg_adapter,
        scaling=scaling, ranks=ranks, lora_bias=lora_bias,
    )
    return None


@torch.library.register_fake("lora_kernels::add_lora")
def _add_lora_fake(
    y, x, lora_a, lora_b, scaling, indices=None, *, seg_indptr=None, seg_adapter=None, ranks=None, lora_bias=None
):
    _fake_check_devices(
        "add_lora", "y", y, x=x, lora_a=lora_a, lora_b=lora_b, scaling=scaling, indices=indices,
        seg_indptr=seg_indptr, seg_adapter=seg_adapter, ranks=ranks, lora_bias=lora_bias,
    )
    return None


@torch.library.register_fake("lora_kernels::add_lora_embedding")
def _add_lora_embedding_fake(y, token_ids, lora_a, lora_b, scaling, indices, ranks=None):
    _fake_check_devices(
        "add_lora_embedding", "y", y, token_ids=token_ids, lora_a=lora_a, lora_b=lora_b, scaling=scaling,
        indices=indices, ranks=ranks,
    )
    return None
