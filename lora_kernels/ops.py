"""Typed wrappers of the compiled ops, and their fake (meta) implementations.

Each function here is also ``torch.ops.lora_kernels.<name>`` with the same arguments and
defaults; the in-place ops return nothing at the op level and ``y`` here. Vocabulary:
``T`` tokens, ``H_in`` / ``H_out`` features, ``N`` adapter slots, ``R`` max rank, ``S`` segments.

For every token ``t`` with slot ``a`` (``-1`` = no adapter) and rank ``r = ranks[a]``::

    v[t]  = x[t] @ lora_a[a, :r].T                  # shrink: [T, R], fp32 (fp64 for fp64 data)
    y[t] += scaling[a] * (v[t, :r] @ lora_b[a, :, :r].T + lora_bias[a])   # expand, in place

Rows of ``y`` whose slot is ``-1`` or whose rank is 0 are left bit-for-bit untouched; padding
past ``r`` is never used. x, y, weights (and bias) share one dtype: float16, bfloat16, float32
or float64. Inference only: no autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _build  # noqa: F401  (loads the compiled ops)

__all__ = [
    "bgmv_shrink", "bgmv_expand", "sgmv_shrink", "sgmv_expand", "add_lora", "add_lora_embedding", "add_lora_slices",
]

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
    """y[t, o_i : o_i + H_out_i] += scaling[i][a] * ((x[t] @ lora_a[i][a, :r].T) @ lora_b[i][a, :, :r].T
    + lora_bias[i][a]) for every slice i, with a the slot of token t and r = ranks[i][a]; in place.

    Several LoRA slices side by side in the columns of one ``y``: a fused qkv output (q, k and v
    of different widths under GQA, each with its own rank and scale through PEFT's
    ``rank_pattern`` / ``alpha_pattern``) or a fused gate_up output. Slice i covers columns
    ``o_i = H_out_0 + ... + H_out_{i-1}`` to ``o_i + H_out_i``; the result equals
    :func:`add_lora` on each column slice ``y[:, o_i : o_i + H_out_i]``. Every argument of every
    slice is checked before anything is written. On CPU the grouping of tokens by slot is built
    once for every slice and both phases, and each phase is one parallel loop over slices x work
    items. On CUDA this build still launches the :func:`add_lora` kernels once per slice.

    Args:
        y: [T, H_out_0 + ... + H_out_{n-1}] output accumulated into (row-strided views allowed).
        x: [T, H_in] activations, shared by every slice.
        lora_a: n tensors, lora_a[i] [N, R_i, H_in] (the same N for every slice).
        lora_b: n tensors, lora_b[i] [N, H_out_i, R_i].
        scaling: n float32 tensors, scaling[i] [N].
        indices: [T] int32/int64 slot per token (-1 = none), or give ``seg_indptr`` [S+1] and
            ``seg_adapter`` [S] instead, as in :func:`add_lora`.
        ranks: optional n int32/int64 tensors, ranks[i] [N] with 0 <= ranks[i][a] <= R_i.
        lora_bias: optional n tensors, lora_bias[i] [N, H_out_i].

    Returns:
        y.

    Example:
        >>> qkv = x @ w_qkv.T                          # [T, 4096 + 1024 + 1024]
        >>> lk.add_lora_slices(qkv, x, [q.lora_a, k.lora_a, v.lora_a], [q.lora_b, k.lora_b, v.lora_b],
        ...                    [q.scaling, k.scaling, v.scaling], meta.indices,
        ...                    ranks=[q.ranks, k.ranks, v.ranks])   # q, k, v: one LoRAPool each
    """
    _ops.add_lora_slices(
        y, x, _slice_list("lora_a", lora_a), _slice_list("lora_b", lora_b), _slice_list("scaling", scaling), indices,
        seg_indptr=seg_indptr, seg_adapter=seg_adapter,
        ranks=None if ranks is None else _slice_list("ranks", ranks),
        lora_bias=None if lora_bias is None else _slice_list("lora_bias", lora_bias),
    )
    return y


def _slice_list(name: str, value) -> list[Tensor]:
    """A per-slice argument of add_lora_slices as a list of tensors; a lone tensor is refused
    (iterating it would silently split its first dimension into slices)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"add_lora_slices: {name} must be a list of tensors (one per slice), "
                        f"got {type(value).__name__}.")
    for i, item in enumerate(value):
        if not isinstance(item, Tensor):
            raise TypeError(f"add_lora_slices: {name}[{i}] must be a Tensor, got {type(item).__name__}.")
    return list(value)


# Fake implementations: shapes and dtypes only, for torch.compile / FakeTensor tracing.
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    _fake_shrink_check("bgmv_shrink", x, lora_a)
    return x.new_empty((x.shape[0], lora_a.shape[1]), dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("lora_kernels::sgmv_shrink")
def _sgmv_shrink_fake(x, lora_a, seg_indptr, seg_adapter, ranks=None):
    _fake_shrink_check("sgmv_shrink", x, lora_a)
    return x.new_empty((x.shape[0], lora_a.shape[1]), dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("lora_kernels::bgmv_expand")
def _bgmv_expand_fake(y, v, lora_b, indices, scaling, ranks=None, lora_bias=None):
    return None


@torch.library.register_fake("lora_kernels::sgmv_expand")
def _sgmv_expand_fake(y, v, lora_b, seg_indptr, seg_adapter, scaling, ranks=None, lora_bias=None):
    return None


@torch.library.register_fake("lora_kernels::add_lora")
def _add_lora_fake(
    y, x, lora_a, lora_b, scaling, indices=None, *, seg_indptr=None, seg_adapter=None, ranks=None, lora_bias=None
):
    return None


@torch.library.register_fake("lora_kernels::add_lora_embedding")
def _add_lora_embedding_fake(y, token_ids, lora_a, lora_b, scaling, indices, ranks=None):
    return None


@torch.library.register_fake("lora_kernels::add_lora_slices")
def _add_lora_slices_fake(
    y, x, lora_a, lora_b, scaling, indices=None, *, seg_indptr=None, seg_adapter=None, ranks=None, lora_bias=None
):
    op = "add_lora_slices"
    n = len(lora_a)
    torch._check(n > 0, lambda: f"{op}: lora_a must be a list of at least one slice's [N, R, H_in] stack, "
                 "got an empty list.")
    for name, given in (("lora_b", lora_b), ("scaling", scaling), ("ranks", ranks), ("lora_bias", lora_bias)):
        if given is not None:
            torch._check(len(given) == n, lambda: f"{op}: {name} must be a list of {n} tensors (one per slice, "
                         f"as lora_a), got {len(given)}.")
    for a, b in zip(lora_a, lora_b):
        torch._check(a.dim() == 3 and b.dim() == 3,
                     lambda: f"{op}: lora_a and lora_b must be 3-D, got {a.dim()}-D and {b.dim()}-D.")
    widths = [b.shape[1] for b in lora_b]
    torch._check(
        y.shape[1] == sum(widths),
        lambda: f"{op}: y must have shape [T, H_out] with H_out = {' + '.join(map(str, widths))} = {sum(widths)} "
        f"(the slices' H_out side by side), got shape {list(y.shape)}.",
    )
    return None
