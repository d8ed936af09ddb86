"""Sharding rules for tensor-parallel multi-LoRA: pure functions, no communication, no state.

A LoRA module follows the split of its base layer (Megatron / vLLM style), so no adapter
weights cross the wire: every rank loads the adapter and keeps only its own shard.

- **column-parallel** base layer (output split): ``lora_A`` whole; ``lora_B`` rows and
  ``lora_bias`` split along ``H_out``, slice by slice for a packed projection (``output_sizes``).
- **row-parallel** base layer (input split): ``lora_A`` columns split along ``H_in``; ``lora_B``
  and ``lora_bias`` whole.
- **replicated**: unchanged.

The scale, ``r``, ``alpha`` and ``use_rslora`` are copied verbatim into every shard, never
recomputed from one. The runtime layers that serve these shards (and the one all-reduce a
row-parallel LoRA needs) are in :mod:`lora_kernels.distributed`, which also re-exports every
public name of this module.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from .peft import LoRAModule, PeftAdapter, match_pattern_key

__all__ = [
    "COLUMN",
    "ROW",
    "REPLICATED",
    "ParallelStyle",
    "shard_dim",
    "shard_lora_module",
    "shard_peft_adapter",
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
