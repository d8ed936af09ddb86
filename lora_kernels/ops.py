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
    items. On CUDA each phase is one launch for up to 8 slices (more slices: one launch per 8),
    bit-equal to :func:`add_lora` on each slice.

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


# Fake implementations, for torch.compile / FakeTensor tracing and for the Meta dispatch key (a
# call with any tensor on the meta device lands here, not in C++). They check what C++ checks
# before reading any value (devices, dtypes, shapes, strides), in the same order and the same
# words (csrc/torch/op_impl.h, prepare.cpp), so a bad call fails at trace time as it would at run
# time. Index values are on the device and are checked by the kernels' hosts only.
_DTYPE_NAMES = {
    torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double",
    torch.int8: "Char", torch.uint8: "Byte", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dt(dtype: torch.dtype) -> str:
    """A dtype as C++ prints an at::ScalarType."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _fail(message: str) -> None:
    raise RuntimeError(message)


class _FakeChecks:
    """The checks of csrc/torch/prepare.cpp for one op, on fake (or meta) tensors."""

    def __init__(self, op: str):
        self.op = op

    def require(self, ok, message) -> None:
        torch._check(ok, lambda: f"{self.op}: {message()}")

    def devices(self, lead_name: str, lead: Tensor, **args: Tensor | None) -> None:
        for name, t in args.items():
            if t is not None and t.device != lead.device:
                _fail(f"{self.op}: {name} must be on the same device as {lead_name} ({lead.device}), got {t.device}.")

    def num_tokens(self, name: str, t: Tensor, layout: str):
        self.require(t.dim() == 2, lambda: f"{name} must be 2-D {layout}, got {t.dim()}-D.")
        return t.shape[0]

    def dim(self, name: str, t: Tensor, dim: int, layout: str) -> None:
        self.require(t.dim() == dim,
                     lambda: f"{name} must be {dim}-D {layout}, got {t.dim()}-D with shape {_shape(t)}.")

    def size(self, name: str, t: Tensor, d: int, expected, layout: str, what: str) -> None:
        symbol, _, source = what.partition(" (")
        source = f" ({source}" if source else ""
        self.require(t.shape[d] == expected,
                     lambda: f"{name} must have shape {layout} with {symbol} = {expected}{source}, "
                     f"got shape {_shape(t)}.")

    def same_dtype(self, name: str, t: Tensor, ref: Tensor, ref_name: str) -> None:
        self.require(t.dtype == ref.dtype,
                     lambda: f"{name} must have the same dtype as {ref_name} ({_dt(ref.dtype)}), got {_dt(t.dtype)}.")

    def contiguous(self, name: str, t: Tensor) -> None:
        self.require(t.is_contiguous(), lambda: f"{name} must be contiguous, got strides {list(t.stride())}.")

    def rows(self, name: str, t: Tensor) -> None:
        self.require(t.shape[1] <= 1 or t.stride(1) == 1,
                     lambda: f"{name} must have unit stride along its last dimension (row-strided views are fine), "
                     f"got strides {list(t.stride())}.")

    def floating(self, name: str, t: Tensor) -> None:
        self.require(t.dtype in _FLOATS,
                     lambda: f"{name} must be float16, bfloat16, float32 or float64, got {_dt(t.dtype)}.")

    def index_vec(self, name: str, t: Tensor, size, layout: str) -> None:
        self.require(t.dtype in (torch.int32, torch.int64),
                     lambda: f"{name} must be int32 or int64, got {_dt(t.dtype)}.")
        self.dim(name, t, 1, layout)
        self.require(t.shape[0] == size, lambda: f"{name} must have shape {layout} = [{size}], got shape {_shape(t)}.")
        self.contiguous(name, t)

    def token_map(self, T, indices, seg_indptr, seg_adapter) -> None:
        if indices is not None:
            if seg_indptr is not None or seg_adapter is not None:
                _fail(f"{self.op}: pass either indices or (seg_indptr, seg_adapter), not both.")
            self.index_vec("indices", indices, T, "[T]")
            return
        if seg_indptr is None or seg_adapter is None:
            got = ("seg_indptr without seg_adapter." if seg_indptr is not None
                   else "seg_adapter without seg_indptr." if seg_adapter is not None else "none of them.")
            _fail(f"{self.op}: pass either indices, or both seg_indptr and seg_adapter; got {got}")
        self.require(seg_adapter.dim() == 1,
                     lambda: f"seg_adapter must be 1-D [S], got {seg_adapter.dim()}-D "
                     f"with shape {_shape(seg_adapter)}.")
        S = seg_adapter.shape[0]
        self.index_vec("seg_adapter", seg_adapter, S, "[S]")
        self.index_vec("seg_indptr", seg_indptr, S + 1, "[S+1]")

    def pair(self, lora_a: Tensor, lora_b: Tensor, b_layout: str) -> None:
        self.require(lora_a.dim() == 3 and lora_b.dim() == 3,
                     lambda: f"lora_a and lora_b must be 3-D, got {lora_a.dim()}-D and {lora_b.dim()}-D.")
        self.require(lora_b.shape[0] == lora_a.shape[0] and lora_b.shape[2] == lora_a.shape[1],
                     lambda: f"lora_b must have shape {b_layout} with N = {lora_a.shape[0]} and R = {lora_a.shape[1]} "
                     f"(from lora_a), got shape {_shape(lora_b)}.")

    def shrink(self, x: Tensor, lora_a: Tensor, ranks) -> None:
        self.floating("x", x)
        self.dim("x", x, 2, "[T, H_in]")
        self.rows("x", x)
        self.dim("lora_a", lora_a, 3, "[N, R, H_in]")
        self.same_dtype("lora_a", lora_a, x, "x")
        self.size("lora_a", lora_a, 2, x.shape[1], "[N, R, H_in]", "H_in (from x)")
        self.contiguous("lora_a", lora_a)
        if ranks is not None:
            self.index_vec("ranks", ranks, lora_a.shape[0], "[N]")

    def expand(self, y: Tensor, v, lora_b: Tensor, scaling: Tensor, lora_bias, ranks) -> None:
        """v is None where the op makes it (add_lora, add_lora_embedding): then it is right."""
        self.floating("y", y)
        self.dim("y", y, 2, "[T, H_out]")
        self.rows("y", y)
        self.dim("lora_b", lora_b, 3, "[N, H_out, R]")
        self.same_dtype("lora_b", lora_b, y, "y")
        self.size("lora_b", lora_b, 1, y.shape[1], "[N, H_out, R]", "H_out (from y)")
        self.contiguous("lora_b", lora_b)
        N, R, T = lora_b.shape[0], lora_b.shape[2], y.shape[0]
        if v is not None:
            acc = _acc_dtype(y.dtype)
            self.require(v.dtype == acc,
                         lambda: f"v must be {_dt(acc)} (the accumulator dtype for y's {_dt(y.dtype)}), "
                         f"got {_dt(v.dtype)}.")
            self.dim("v", v, 2, "[T, R]")
            self.size("v", v, 0, T, "[T, R]", "T (from y)")
            self.size("v", v, 1, R, "[T, R]", "R (from lora_b)")
            self.rows("v", v)
        self.require(scaling.dtype in (torch.float32, torch.float64),
                     lambda: f"scaling must be float32 (or float64), got {_dt(scaling.dtype)}.")
        self.dim("scaling", scaling, 1, "[N]")
        self.size("scaling", scaling, 0, N, "[N]", "N (from lora_b)")
        if lora_bias is not None:
            self.dim("lora_bias", lora_bias, 2, "[N, H_out]")
            self.same_dtype("lora_bias", lora_bias, y, "y")
            self.size("lora_bias", lora_bias, 0, N, "[N, H_out]", "N (from lora_b)")
            self.size("lora_bias", lora_bias, 1, y.shape[1], "[N, H_out]", "H_out (from y)")
            self.contiguous("lora_bias", lora_bias)
        if ranks is not None:
            self.index_vec("ranks", ranks, N, "[N]")


def _shrink_fake(op, x, lora_a, indices, seg_indptr, seg_adapter, ranks):
    c = _FakeChecks(op)
    c.devices("x", x, lora_a=lora_a, indices=indices, seg_indptr=seg_indptr, seg_adapter=seg_adapter, ranks=ranks)
    c.token_map(c.num_tokens("x", x, "[T, H_in]"), indices, seg_indptr, seg_adapter)
    c.shrink(x, lora_a, ranks)
    return x.new_empty((x.shape[0], lora_a.shape[1]), dtype=_acc_dtype(x.dtype))


def _expand_fake(op, y, v, lora_b, indices, seg_indptr, seg_adapter, scaling, ranks, lora_bias):
    c = _FakeChecks(op)
    c.devices("y", y, v=v, lora_b=lora_b, indices=indices, seg_indptr=seg_indptr, seg_adapter=seg_adapter,
              scaling=scaling, ranks=ranks, lora_bias=lora_bias)
    c.token_map(c.num_tokens("y", y, "[T, H_out]"), indices, seg_indptr, seg_adapter)
    c.expand(y, v, lora_b, scaling, lora_bias, ranks)


@torch.library.register_fake("lora_kernels::bgmv_shrink")
def _bgmv_shrink_fake(x, lora_a, indices, ranks=None):
    return _shrink_fake("bgmv_shrink", x, lora_a, indices, None, None, ranks)


@torch.library.register_fake("lora_kernels::sgmv_shrink")
def _sgmv_shrink_fake(x, lora_a, seg_indptr, seg_adapter, ranks=None):
    return _shrink_fake("sgmv_shrink", x, lora_a, None, seg_indptr, seg_adapter, ranks)


@torch.library.register_fake("lora_kernels::bgmv_expand")
def _bgmv_expand_fake(y, v, lora_b, indices, scaling, ranks=None, lora_bias=None):
    _expand_fake("bgmv_expand", y, v, lora_b, indices, None, None, scaling, ranks, lora_bias)


@torch.library.register_fake("lora_kernels::sgmv_expand")
def _sgmv_expand_fake(y, v, lora_b, seg_indptr, seg_adapter, scaling, ranks=None, lora_bias=None):
    _expand_fake("sgmv_expand", y, v, lora_b, None, seg_indptr, seg_adapter, scaling, ranks, lora_bias)


@torch.library.register_fake("lora_kernels::add_lora")
def _add_lora_fake(
    y, x, lora_a, lora_b, scaling, indices=None, *, seg_indptr=None, seg_adapter=None, ranks=None, lora_bias=None
):
    c = _FakeChecks("add_lora")
    c.devices("y", y, x=x, lora_a=lora_a, lora_b=lora_b, scaling=scaling, indices=indices, seg_indptr=seg_indptr,
              seg_adapter=seg_adapter, ranks=ranks, lora_bias=lora_bias)
    T = c.num_tokens("x", x, "[T, H_in]")
    y_tokens = c.num_tokens("y", y, "[T, H_out]")
    c.require(y_tokens == T, lambda: f"y must have shape [T, H_out] with T = {T} (from x), got shape {_shape(y)}.")
    c.pair(lora_a, lora_b, "[N, H_out, R]")
    c.token_map(T, indices, seg_indptr, seg_adapter)
    c.shrink(x, lora_a, ranks)
    c.require(y.dtype == x.dtype, lambda: f"y must have the same dtype as x ({_dt(x.dtype)}), got {_dt(y.dtype)}.")
    c.expand(y, None, lora_b, scaling, lora_bias, ranks)


@torch.library.register_fake("lora_kernels::add_lora_embedding")
def _add_lora_embedding_fake(y, token_ids, lora_a, lora_b, scaling, indices, ranks=None):
    c = _FakeChecks("add_lora_embedding")
    c.devices("y", y, token_ids=token_ids, lora_a=lora_a, lora_b=lora_b, scaling=scaling, indices=indices,
              ranks=ranks)
    c.pair(lora_a, lora_b, "[N, dim, R]")
    c.token_map(c.num_tokens("y", y, "[T, dim]"), indices, None, None)
    c.floating("y", y)
    c.dim("y", y, 2, "[T, dim]")
    c.dim("lora_a", lora_a, 3, "[N, R, vocab]")
    c.same_dtype("lora_a", lora_a, y, "y")
    c.contiguous("lora_a", lora_a)
    c.index_vec("token_ids", token_ids, y.shape[0], "[T]")
    if ranks is not None:
        c.index_vec("ranks", ranks, lora_a.shape[0], "[N]")
    c.expand(y, None, lora_b, scaling, None, ranks)


@torch.library.register_fake("lora_kernels::add_lora_slices")
def _add_lora_slices_fake(
    y, x, lora_a, lora_b, scaling, indices=None, *, seg_indptr=None, seg_adapter=None, ranks=None, lora_bias=None
):
    op = "add_lora_slices"
    c = _FakeChecks(op)

    def each(name, items):  # a per-slice list's tensors, named like lora_a[1]
        return {} if items is None else {f"{name}[{i}]": t for i, t in enumerate(items)}

    c.devices("y", y, x=x, **each("lora_a", lora_a), **each("lora_b", lora_b), **each("scaling", scaling),
              indices=indices, seg_indptr=seg_indptr, seg_adapter=seg_adapter, **each("ranks", ranks),
              **each("lora_bias", lora_bias))
    T = c.num_tokens("x", x, "[T, H_in]")
    y_tokens = c.num_tokens("y", y, "[T, H_out]")
    c.require(y_tokens == T, lambda: f"y must have shape [T, H_out] with T = {T} (from x), got shape {_shape(y)}.")
    c.require(y.dtype == x.dtype, lambda: f"y must have the same dtype as x ({_dt(x.dtype)}), got {_dt(y.dtype)}.")
    n = len(lora_a)
    c.require(n > 0, lambda: "lora_a must be a list of at least one slice's [N, R, H_in] stack, got an empty list.")
    for name, given in (("lora_b", lora_b), ("scaling", scaling), ("ranks", ranks), ("lora_bias", lora_bias)):
        if given is not None:
            c.require(len(given) == n,
                      lambda: f"{name} must be a list of {n} tensors (one per slice, as lora_a), got {len(given)}.")
    slices = [_FakeChecks(f"{op} (slice {i})") for i in range(n)]
    N = None  # from lora_a[0], once the first pair is checked
    for i, s in enumerate(slices):
        s.pair(lora_a[i], lora_b[i], "[N, H_out, R]")
        if i == 0:
            N = lora_a[0].shape[0]
        c.require(lora_a[i].shape[0] == N,
                  lambda: f"every slice must have the same number of slots N = {N} (from lora_a[0]), "
                  f"got lora_a[{i}] with shape {_shape(lora_a[i])}.")
        if lora_bias is not None:
            bias, h_out = lora_bias[i], lora_b[i].shape[1]
            s.require(bias.dim() == 2 and bias.shape[0] == N and bias.shape[1] == h_out,
                      lambda: f"lora_bias must have shape [N, H_out] with N = {N} and H_out = {h_out} "
                      f"(from lora_b), got shape {_shape(bias)}.")
    widths = [b.shape[1] for b in lora_b]
    c.require(y.shape[1] == sum(widths),
              lambda: f"y must have shape [T, H_out] with H_out = {' + '.join(map(str, widths))} = {sum(widths)} "
              f"(the slices' H_out side by side), got shape {_shape(y)}.")
    c.token_map(T, indices, seg_indptr, seg_adapter)
    offset = 0
    for i, s in enumerate(slices):
        ranks_i = None if ranks is None else ranks[i]
        s.shrink(x, lora_a[i], ranks_i)
        s.expand(y[:, offset : offset + widths[i]], None, lora_b[i], scaling[i],
                 None if lora_bias is None else lora_bias[i], ranks_i)
        offset += widths[i]
