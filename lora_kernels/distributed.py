"""Tensor-parallel multi-LoRA: shard adapters the way Megatron / vLLM shard the base layers.

A model served over ``tp_size`` ranks splits each linear layer one of two ways, and its LoRA
follows without moving adapter weights across the wire (every rank loads the adapter from disk
and keeps only its own shard):

- **column-parallel** base layer (output split: ``qkv_proj``, ``gate_up_proj``, ``lm_head``):
  ``lora_A`` whole, ``lora_B`` rows and ``lora_bias`` split along ``H_out``. Each rank adds the
  LoRA delta of its own output columns; no communication. A packed projection (fused qkv with
  GQA, gate_up) is split slice by slice (``output_sizes``) and the local pieces concatenated,
  exactly as the base weight is::

      rank k holds [q[k*q/tp:(k+1)*q/tp]; k_[k*kv/tp:...]; v[k*kv/tp:...]]

- **row-parallel** base layer (input split: ``o_proj``, ``down_proj``): ``lora_A`` columns split
  along ``H_in``, ``lora_B`` and ``lora_bias`` whole. Each rank computes the partial shrink
  ``v_k = x_k @ A_k.T`` (``[T, R]``, fp32 — fp64 for fp64 data — unscaled); one all-reduce (SUM)
  over the tensor-parallel group gives ``v = x @ A.T`` on every rank: ``T x R`` elements, the
  only bytes LoRA puts on the wire. **Rule: only tp rank 0 then runs the expand**, adding
  ``scaling * (v @ B.T + lora_bias)`` into its *partial* output before the base layer's own
  all-reduce, which sums it in exactly once (the other ranks add nothing).

The scale is the adapter's own ``scaling`` (resolved once from its config by
:func:`lora_kernels.load_peft_adapter`), copied verbatim into every shard: it is never recomputed
from a shard or from a padded rank, and each slot's rank ``r`` is the same on every rank.

Vocabulary: ``T`` tokens, ``H_in`` / ``H_out`` features (full, unsharded, unless said "local"),
``N`` adapter slots, ``R`` max rank.

Example (one row-parallel ``o_proj`` on each rank)::

    import lora_kernels as lk
    from lora_kernels.distributed import RowParallelLoRA, shard_peft_adapter

    o_lora = RowParallelLoRA(H_q, H, max_adapters=8, max_rank=64, dtype=torch.bfloat16,
                             device="cuda", group=tp_group)
    o_lora.add_module(adapter.modules["model.layers.0.self_attn.o_proj"])   # full -> shard
    ...
    y_partial = x_local @ w_o_local.T                # base row-parallel matmul
    o_lora.apply(y_partial, x_local, seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter)
    dist.all_reduce(y_partial, group=tp_group)       # the base layer's own all-reduce
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from . import ops
from .peft import LoRAModule, PeftAdapter, match_pattern_key
from .pool import LoRAPool

__all__ = [
    "COLUMN",
    "ROW",
    "REPLICATED",
    "ParallelStyle",
    "shard_dim",
    "shard_lora_module",
    "shard_peft_adapter",
    "ColumnParallelLoRA",
    "RowParallelLoRA",
]

COLUMN = "column"
ROW = "row"
REPLICATED = "replicated"
_KINDS = (COLUMN, ROW, REPLICATED)


@dataclasses.dataclass(frozen=True)
class ParallelStyle:
    """How a base layer is split over the tensor-parallel ranks.

    - ``kind``: ``"column"`` (output split), ``"row"`` (input split) or ``"replicated"``
      (every rank holds the whole layer; the LoRA weights stay whole too).
    - ``output_sizes``: column-parallel packed projections only: the full ``H_out`` of each
      packed slice, in order (e.g. ``(q, kv, kv)`` for a fused qkv with GQA, ``(I, I)`` for
      gate_up). Each slice is split over the ranks separately.

    Plain strings ``"column"``, ``"row"``, ``"replicated"`` are accepted wherever a style is.
    """

    kind: str
    output_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"ParallelStyle: kind must be one of {list(_KINDS)}, got {self.kind!r}."
            )
        if self.output_sizes is not None:
            if self.kind != COLUMN:
                raise ValueError(
                    f"ParallelStyle: output_sizes (packed slices) apply to column-parallel "
                    f"layers only, got kind {self.kind!r} with output_sizes {self.output_sizes!r}."
                )
            sizes = tuple(self.output_sizes)
            if not sizes or any(
                isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes
            ):
                raise ValueError(
                    f"ParallelStyle: output_sizes must be a non-empty sequence of positive ints "
                    f"(the full H_out of each packed slice), got {self.output_sizes!r}."
                )
            object.__setattr__(self, "output_sizes", tuple(int(s) for s in sizes))

    @classmethod
    def column(cls, output_sizes: Sequence[int] | None = None) -> "ParallelStyle":
        """Column-parallel (output split); ``output_sizes`` for a packed projection."""
        return cls(COLUMN, None if output_sizes is None else tuple(output_sizes))

    @classmethod
    def row(cls) -> "ParallelStyle":
        """Row-parallel (input split)."""
        return cls(ROW)

    @classmethod
    def replicated(cls) -> "ParallelStyle":
        """Not split: every rank holds the whole layer."""
        return cls(REPLICATED)


StyleLike = Union[str, ParallelStyle]


def _as_style(style: StyleLike, where: str) -> ParallelStyle:
    if isinstance(style, ParallelStyle):
        return style
    if isinstance(style, str):
        if style not in _KINDS:
            raise ValueError(
                f"{where}: style must be one of {list(_KINDS)} or a ParallelStyle, got {style!r}."
            )
        return ParallelStyle(style)
    raise TypeError(
        f"{where}: style must be one of {list(_KINDS)} or a ParallelStyle, "
        f"got {style!r} of type {type(style).__name__}."
    )


def _check_tp(tp_rank: Any, tp_size: Any, where: str) -> tuple[int, int]:
    for arg, value in (("tp_size", tp_size), ("tp_rank", tp_rank)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{where}: {arg} must be an int, got {value!r} of type {type(value).__name__}."
            )
    if tp_size < 1:
        raise ValueError(f"{where}: tp_size must be >= 1, got {tp_size}.")
    if not 0 <= tp_rank < tp_size:
        raise ValueError(
            f"{where}: tp_rank must be in [0, tp_size) = [0, {tp_size}), got {tp_rank}."
        )
    return int(tp_rank), int(tp_size)


def _split_sizes(
    total: int, sizes: Sequence[int] | None, tp_size: int, *, where: str, name: str, kind: str,
    dim_name: str,
) -> list[int]:
    """The full size of each slice along the split dimension, every one divisible by tp_size."""
    if sizes is None:
        sizes = [total]
    elif sum(sizes) != total:
        raise ValueError(
            f"{where}: module {name!r}: output_sizes {list(sizes)} must add up to "
            f"{dim_name} = {total}, they add up to {sum(sizes)}."
        )
    for i, n in enumerate(sizes):
        if n % tp_size:
            which = f"slice {i} of output_sizes {list(sizes)} has {n}" if len(sizes) > 1 else f"{dim_name} = {n}"
            raise ValueError(
                f"{where}: module {name!r} cannot be {kind}-parallel over tp_size = {tp_size}: "
                f"{which}, which is not divisible by tp_size = {tp_size}."
            )
    return list(sizes)


def shard_dim(
    tensor: Tensor,
    dim: int,
    tp_rank: int,
    tp_size: int,
    sizes: Sequence[int] | None = None,
    *,
    name: str = "tensor",
) -> Tensor:
    """Rank ``tp_rank``'s contiguous shard of ``tensor`` along ``dim`` (Megatron's split).

    With ``sizes`` (packed slices along ``dim``), each slice of full size ``n_i`` is split into
    ``tp_size`` pieces of ``n_i / tp_size`` and this rank's pieces are concatenated in slice
    order. Use it for the base weights too, so base and LoRA shards line up. Returns a new
    contiguous tensor (it does not keep the full one alive).

    Raises ``ValueError`` naming ``name``, the dimension and ``tp_size`` when a size does not
    divide.
    """
    where = "shard_dim"
    tp_rank, tp_size = _check_tp(tp_rank, tp_size, where)
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{where}: tensor must be a torch.Tensor, got {type(tensor).__name__}.")
    if not -tensor.dim() <= dim < tensor.dim():
        raise ValueError(
            f"{where}: dim must be a dimension of {name!r} (shape {list(tensor.shape)}), got {dim}."
        )
    dim = dim % tensor.dim()
    parts = _split_sizes(
        tensor.shape[dim], None if sizes is None else [int(s) for s in sizes], tp_size,
        where=where, name=name, kind="tensor", dim_name=f"dim {dim}",
    )
    pieces = []
    offset = 0
    for n in parts:
        local = n // tp_size
        pieces.append(tensor.narrow(dim, offset + tp_rank * local, local))
        offset += n
    if len(pieces) > 1:
        return torch.cat(pieces, dim=dim)  # a new contiguous tensor
    return pieces[0].clone(memory_format=torch.contiguous_format)


def _module_fields(module: Any) -> dict[str, Any]:
    names = ("name", "kind", "lora_A", "lora_B", "lora_bias", "r", "alpha", "use_rslora", "scaling")
    missing = [f for f in names if not hasattr(module, f)]
    if missing:
        raise TypeError(
            f"shard_lora_module: module must be a LoRAModule (or have its attributes), "
            f"{type(module).__name__} lacks {missing}."
        )
    return {f: getattr(module, f) for f in names}


def shard_lora_module(
    module: LoRAModule, style: StyleLike, tp_rank: int, tp_size: int
) -> LoRAModule:
    """Rank ``tp_rank``'s shard of one module's LoRA weights, for a base layer split ``style``.

    - ``"column"``: ``lora_A`` whole; ``lora_B`` rows and ``lora_bias`` split along ``H_out``
      (slice by slice with ``ParallelStyle.column(output_sizes)`` for a packed projection).
    - ``"row"``: ``lora_A`` columns split along ``H_in``; ``lora_B`` and ``lora_bias`` whole
      (only tp rank 0 adds the delta and the bias: see :class:`RowParallelLoRA`).
    - ``"replicated"``: the module unchanged.

    Embedding LoRA (``kind == "embedding"``): ``"column"`` splits ``lora_embedding_B`` along
    ``dim``; a vocab-parallel (``"row"``) embedding is refused: serve its LoRA replicated and add
    it after the embedding's all-reduce.

    ``name``, ``r``, ``alpha``, ``use_rslora`` and ``scaling`` are copied unchanged: the scale is
    the adapter's, never recomputed from a shard. Raises ``ValueError`` naming the module, the
    dimension and ``tp_size`` when a split does not divide.
    """
    where = "shard_lora_module"
    tp_rank, tp_size = _check_tp(tp_rank, tp_size, where)
    st = _as_style(style, where)
    f = _module_fields(module)
    name, A, B, bias = f["name"], f["lora_A"], f["lora_B"], f["lora_bias"]
    if st.kind == REPLICATED:
        return LoRAModule(**f)
    if f["kind"] == "embedding" and st.kind == ROW:
        raise ValueError(
            f"{where}: module {name!r} is an embedding LoRA; a row-parallel (vocab-parallel) "
            f"split of lora_embedding_A is not supported: serve it with style 'replicated' "
            f"and add it after the vocab-parallel embedding's all-reduce."
        )
    if st.kind == COLUMN:
        parts = _split_sizes(
            int(B.shape[0]), st.output_sizes, tp_size, where=where, name=name, kind="column",
            dim_name="H_out (lora_B.shape[0])",
        )
        f["lora_B"] = shard_dim(B, 0, tp_rank, tp_size, parts, name=f"{name}.lora_B")
        if bias is not None:
            f["lora_bias"] = shard_dim(bias, 0, tp_rank, tp_size, parts, name=f"{name}.lora_bias")
    else:  # ROW
        _split_sizes(
            int(A.shape[1]), None, tp_size, where=where, name=name, kind="row",
            dim_name="H_in (lora_A.shape[1])",
        )
        f["lora_A"] = shard_dim(A, 1, tp_rank, tp_size, name=f"{name}.lora_A")
    return LoRAModule(**f)


def shard_peft_adapter(
    adapter: PeftAdapter,
    tp_rank: int,
    tp_size: int,
    styles: Mapping[str, StyleLike],
) -> PeftAdapter:
    """Rank ``tp_rank``'s shard of a loaded PEFT adapter.

    Args:
        adapter: from :func:`lora_kernels.load_peft_adapter` (full, unsharded weights).
        tp_rank, tp_size: this rank and the tensor-parallel world size.
        styles: module-name pattern -> parallel style of that base layer. Keys match as PEFT's
            ``rank_pattern`` keys do: key ``k`` matches module ``m`` when
            ``re.match(rf"(.*\\.)?({k})$", m)`` (a dot-aligned suffix such as ``"q_proj"``, a
            full name, or an alternation ``"o_proj|down_proj"``); the first matching key wins.
            Every module of the adapter must match a key (none is silently replicated).

    Returns:
        A new :class:`PeftAdapter` with the same ``path`` and ``config`` and every module
        sharded by :func:`shard_lora_module` (scale, ``r``, ``alpha``, ``use_rslora`` unchanged).
        ``base_weights`` / ``base_biases`` (saved base-layer copies) are passed through whole.

    Example::

        styles = {"q_proj|k_proj|v_proj|gate_proj|up_proj": "column",
                  "o_proj|down_proj": "row"}
        local = shard_peft_adapter(lk.load_peft_adapter(path), tp_rank, tp_size, styles)
    """
    where = "shard_peft_adapter"
    tp_rank, tp_size = _check_tp(tp_rank, tp_size, where)
    if not isinstance(styles, Mapping):
        raise TypeError(
            f"{where}: styles must be a mapping of module-name pattern -> style, "
            f"got {type(styles).__name__}."
        )
    parsed: dict[str, ParallelStyle] = {}
    for key, style in styles.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: styles keys must be str patterns, got {key!r}.")
        try:
            re.compile(key)
        except re.error as e:
            raise ValueError(f"{where}: styles key {key!r} is not a valid regex: {e}.") from None
        parsed[key] = _as_style(style, f"{where}: styles[{key!r}]")
    modules = getattr(adapter, "modules", None)
    if not isinstance(modules, Mapping):
        raise TypeError(
            f"{where}: adapter must be a PeftAdapter (with a .modules mapping), "
            f"got {type(adapter).__name__}."
        )
    key_of = {name: match_pattern_key(parsed, name, "styles") for name in modules}  # PEFT's own rule (RE2)
    unmatched = [name for name, key in key_of.items() if key is None]
    if unmatched:
        raise ValueError(
            f"{where}: no styles key matches module(s) {unmatched}; keys are {list(styles)}. "
            f"Give every module's parallel style ('replicated' for a layer that is not split)."
        )
    out: dict[str, LoRAModule] = {}
    for name, module in modules.items():
        out[name] = shard_lora_module(module, parsed[key_of[name]], tp_rank, tp_size)
    return PeftAdapter(
        path=getattr(adapter, "path", None),
        config=dict(getattr(adapter, "config", {})),
        modules=out,
        base_weights=dict(getattr(adapter, "base_weights", {})),
        base_biases=dict(getattr(adapter, "base_biases", {})),
    )


# --------------------------------------------------------------------------------------------
# Runtime: one companion per tensor-parallel base layer


def _default_all_reduce(tensor: Tensor, group: Any) -> None:
    # Looked up at call time, so a wrapped torch.distributed.all_reduce is honoured.
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)


class _ParallelLoRA:
    _style_kind = ""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        max_adapters: int,
        max_rank: int,
        *,
        tp_rank: int | None = None,
        tp_size: int | None = None,
        group: Any = None,
        output_sizes: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        bias: bool = False,
        name: str = "",
    ) -> None:
        cls = type(self).__name__
        where = f"{cls}({name!r})" if name else cls
        self._where = where
        if tp_rank is None or tp_size is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise ValueError(
                    f"{where}: pass tp_rank and tp_size, or initialise torch.distributed so "
                    f"they can be read from the group."
                )
            if tp_rank is None:
                tp_rank = torch.distributed.get_rank(group)
            if tp_size is None:
                tp_size = torch.distributed.get_world_size(group)
        tp_rank, tp_size = _check_tp(tp_rank, tp_size, where)
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{where}: {arg} must be a positive int, got {value!r}.")
        self.style = ParallelStyle(self._style_kind, None if output_sizes is None else tuple(output_sizes))
        self.tp_rank, self.tp_size, self.group, self.name = tp_rank, tp_size, group, name
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self._style_kind == COLUMN:
            _split_sizes(
                self.out_features, self.style.output_sizes, tp_size, where=where,
                name=name, kind="column", dim_name="H_out (out_features)",
            )
            local_in, local_out = self.in_features, self.out_features // tp_size
        else:
            _split_sizes(
                self.in_features, None, tp_size, where=where, name=name, kind="row",
                dim_name="H_in (in_features)",
            )
            local_in, local_out = self.in_features // tp_size, self.out_features
        #: The local pool (local shapes); feed its tensors to the ops, or add shards to it.
        self.pool = LoRAPool(
            local_in, local_out, max_adapters, max_rank, dtype=dtype, device=device, bias=bias
        )

    # --- adapters ------------------------------------------------------------------------------

    def add_module(self, module: LoRAModule | None) -> int:
        """Shard a full (unsharded) module for this rank and add it to the lowest free slot.

        ``None`` reserves a slot of rank 0 (an adapter that does not target this layer), so
        that one slot numbering can be shared by every layer. Returns the slot.
        """
        pool = self.pool
        if module is None:
            slot = pool.add(
                torch.zeros(1, pool.in_features, dtype=pool.dtype, device=pool.device),
                torch.zeros(pool.out_features, 1, dtype=pool.dtype, device=pool.device),
                0.0,
            )
            with torch.no_grad():
                pool.ranks[slot] = 0
            return slot
        f = _module_fields(module)
        A, B = f["lora_A"], f["lora_B"]
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != self.in_features or B.shape[0] != self.out_features:
            raise ValueError(
                f"{self._where}.add_module: module {f['name']!r} must be the full (unsharded) "
                f"module of a layer with H_in = {self.in_features}, H_out = {self.out_features}: "
                f"lora_A [r, {self.in_features}], lora_B [{self.out_features}, r]; got lora_A "
                f"{list(A.shape)}, lora_B {list(B.shape)}."
            )
        shard = shard_lora_module(module, self.style, self.tp_rank, self.tp_size)
        return pool.add(shard.lora_A, shard.lora_B, shard.scaling, lora_bias=shard.lora_bias)

    def add_shard(
        self, lora_A: Tensor, lora_B: Tensor, scaling: float, lora_bias: Tensor | None = None
    ) -> int:
        """Add an already-sharded module (e.g. from :func:`shard_peft_adapter`); returns the slot."""
        return self.pool.add(lora_A, lora_B, scaling, lora_bias=lora_bias)

    def remove(self, slot: int) -> None:
        """Free ``slot`` (see :meth:`LoRAPool.remove`)."""
        self.pool.remove(slot)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, in_features={self.in_features}, "
            f"out_features={self.out_features}, tp_rank={self.tp_rank}, tp_size={self.tp_size}, "
            f"output_sizes={self.style.output_sizes}, pool={self.pool!r})"
        )

    def _check_path(self, indices, seg_indptr, seg_adapter, where: str) -> bool:
        if indices is not None:
            if seg_indptr is not None or seg_adapter is not None:
                raise ValueError(
                    f"{where}: pass either indices (BGMV) or seg_indptr and seg_adapter (SGMV), "
                    f"not both."
                )
            return True
        if seg_indptr is None or seg_adapter is None:
            raise ValueError(
                f"{where}: pass indices (BGMV) or both seg_indptr and seg_adapter (SGMV)."
            )
        return False


class ColumnParallelLoRA(_ParallelLoRA):
    """LoRA of a column-parallel base layer (output split over the ranks); no communication.

    For every token ``t`` with slot ``a`` this rank adds its own columns of the delta::

        y_local[t] += scaling[a] * ((x[t] @ A[a].T) @ B_local[a].T + lora_bias_local[a])

    ``in_features`` / ``out_features`` are the layer's full sizes; the local pool holds
    ``lora_A`` whole and ``H_out / tp_size`` rows of ``lora_B``. ``output_sizes`` gives the full
    size of each slice of a packed projection (fused qkv, gate_up), each split separately, so
    the local output is ``[q_local | k_local | v_local]``, as the base layer's is. For a fused
    base layer whose adapters target the slices separately (PEFT ``q_proj``, ``k_proj``,
    ``v_proj``), use one companion per slice and apply each to its column slice of ``y_local``.

    ``tp_rank`` / ``tp_size`` default to the rank and size of ``group`` (the world group when
    ``None``); ``group`` is not used otherwise.
    """

    _style_kind = COLUMN

    def apply(
        self,
        y_local: Tensor,
        x: Tensor,
        indices: Tensor | None = None,
        *,
        seg_indptr: Tensor | None = None,
        seg_adapter: Tensor | None = None,
    ) -> Tensor:
        """``y_local += delta`` for this rank's columns; ``x`` is the full ``[T, H_in]`` input.

        ``indices`` (BGMV) or ``seg_indptr`` / ``seg_adapter`` (SGMV), as :func:`lk.add_lora`.
        ``y_local`` is ``[T, H_out / tp_size]`` (a column slice of a wider output is fine).
        """
        self._check_path(indices, seg_indptr, seg_adapter, f"{self._where}.apply")
        p = self.pool
        return ops.add_lora(
            y_local, x, p.lora_a, p.lora_b, p.scaling, indices,
            seg_indptr=seg_indptr, seg_adapter=seg_adapter, ranks=p.ranks, lora_bias=p.lora_bias,
        )


class RowParallelLoRA(_ParallelLoRA):
    """LoRA of a row-parallel base layer (input split over the ranks).

    ``in_features`` / ``out_features`` are the layer's full sizes; the local pool holds
    ``H_in / tp_size`` columns of ``lora_A`` and the whole ``lora_B`` / ``lora_bias``. Per
    forward (:meth:`apply` = :meth:`shrink` then :meth:`expand`)::

        v = all_reduce_SUM(x_local @ A_local[a].T)          # [T, R], on every rank
        if tp_rank == 0:
            y_partial[t] += scaling[a] * (v[t] @ B[a].T + lora_bias[a])

    so after the base layer's own all-reduce of ``y_partial`` the delta (and the bias) is
    counted exactly once. The all-reduce moves exactly ``T x R`` elements (fp32, fp64 for fp64
    data) over ``group``; it is skipped when ``T x R == 0`` (the same on every rank).

    Args beyond :class:`ColumnParallelLoRA`'s:
        all_reduce: optional ``fn(tensor, group)`` that sums ``tensor`` in place over ``group``
            (a communication hook: count bytes, use a custom communicator); default
            ``torch.distributed.all_reduce(tensor, SUM, group)``.
    """

    _style_kind = ROW

    def __init__(self, *args: Any, all_reduce: Callable[[Tensor, Any], Any] | None = None, **kw: Any) -> None:
        if kw.get("output_sizes") is not None:
            raise ValueError(
                "RowParallelLoRA: output_sizes (packed slices) apply to column-parallel layers only."
            )
        super().__init__(*args, **kw)
        if all_reduce is not None and not callable(all_reduce):
            raise TypeError(f"{self._where}: all_reduce must be callable fn(tensor, group).")
        self.all_reduce = all_reduce
        if (
            all_reduce is None
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            # The default all-reduce runs over `group`: a tp_rank / tp_size that disagree with it
            # would sum the wrong partial shrinks, silently.
            g_rank = torch.distributed.get_rank(self.group)
            g_size = torch.distributed.get_world_size(self.group)
            if (g_rank, g_size) != (self.tp_rank, self.tp_size):
                raise ValueError(
                    f"{self._where}: tp_rank = {self.tp_rank}, tp_size = {self.tp_size} disagree "
                    f"with the group (rank {g_rank} of {g_size}); pass the tensor-parallel group "
                    f"as group= (or an all_reduce hook for a custom communicator)."
                )

    @property
    def adds_delta(self) -> bool:
        """True on the one rank (tp rank 0) that adds the delta to its partial output."""
        return self.tp_rank == 0

    def shrink(
        self,
        x_local: Tensor,
        indices: Tensor | None = None,
        *,
        seg_indptr: Tensor | None = None,
        seg_adapter: Tensor | None = None,
    ) -> Tensor:
        """``v = x @ A.T`` (``[T, R]``, unscaled): the local partial shrink, all-reduced.

        Every rank of ``group`` must call it with the same batch (same ``T``).
        """
        bgmv = self._check_path(indices, seg_indptr, seg_adapter, f"{self._where}.shrink")
        p = self.pool
        if bgmv:
            v = ops.bgmv_shrink(x_local, p.lora_a, indices, p.ranks)
        else:
            v = ops.sgmv_shrink(x_local, p.lora_a, seg_indptr, seg_adapter, p.ranks)
        if v.numel():
            (self.all_reduce or _default_all_reduce)(v, self.group)
        return v

    def expand(
        self,
        y_partial: Tensor,
        v: Tensor,
        indices: Tensor | None = None,
        *,
        seg_indptr: Tensor | None = None,
        seg_adapter: Tensor | None = None,
    ) -> Tensor:
        """On tp rank 0: ``y_partial[t] += scaling[a] * (v[t] @ B[a].T + lora_bias[a])``.

        On the other ranks ``y_partial`` is left untouched (the delta is counted once, by the
        base layer's all-reduce). Returns ``y_partial``.
        """
        bgmv = self._check_path(indices, seg_indptr, seg_adapter, f"{self._where}.expand")
        if not self.adds_delta:
            return y_partial
        p = self.pool
        if bgmv:
            return ops.bgmv_expand(y_partial, v, p.lora_b, indices, p.scaling, p.ranks, p.lora_bias)
        return ops.sgmv_expand(
            y_partial, v, p.lora_b, seg_indptr, seg_adapter, p.scaling, p.ranks, p.lora_bias
        )

    def apply(
        self,
        y_partial: Tensor,
        x_local: Tensor,
        indices: Tensor | None = None,
        *,
        seg_indptr: Tensor | None = None,
        seg_adapter: Tensor | None = None,
    ) -> Tensor:
        """Shrink, all-reduce ``[T, R]``, expand on rank 0, into the pre-all-reduce output.

        ``x_local`` is this rank's ``[T, H_in / tp_size]`` input shard; ``y_partial`` is this
        rank's ``[T, H_out]`` partial output *before* the base layer's all-reduce.
        """
        v = self.shrink(x_local, indices, seg_indptr=seg_indptr, seg_adapter=seg_adapter)
        return self.expand(y_partial, v, indices, seg_indptr=seg_indptr, seg_adapter=seg_adapter)
