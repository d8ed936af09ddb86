"""LoRAPool: the stacked, zero-padded adapter weights of one module, in the layout the ops read.

For every token ``t`` with adapter slot ``a`` (DESIGN §1)::

    y[t] += scaling[a] * ((x[t] @ lora_a[a, :r].T) @ lora_b[a, :, :r].T + lora_bias[a])

with ``r = ranks[a]``; ``a == -1`` (no adapter) leaves ``y[t]`` untouched.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LoRAPool", "PreparedAdapter"]


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


class PreparedAdapter(NamedTuple):
    """One adapter checked by :meth:`LoRAPool.prepare`, ready for :meth:`LoRAPool.add_prepared`:
    ``lora_A`` ``[r, H_in]``, ``lora_B`` ``[H_out, r]`` and ``lora_bias`` ``[H_out]`` (or ``None``)
    in the pool's dtype and device."""

    pool: "LoRAPool"
    lora_A: Tensor
    lora_B: Tensor
    scaling: float
    lora_bias: Tensor | None

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])


class LoRAPool:
    """Fixed-size storage for up to ``N`` adapters of one module, ranks up to ``R``.

    Slot ``a`` holds one adapter; the ops compute, for each token ``t`` served by slot ``a``::

        y[t] += scaling[a] * ((x[t] @ lora_a[a, :r].T) @ lora_b[a, :, :r].T + lora_bias[a])

    with ``r = ranks[a]``. Tensors (vocabulary ``N = max_adapters``, ``R = max_rank``,
    ``H_in = in_features``, ``H_out = out_features``), all contiguous, all zero in a free slot:

    - ``lora_a``: ``[N, R, H_in]``, ``dtype``: PEFT's ``lora_A.weight`` (``[r, H_in]``) in rows
      ``0..r-1``, zeros below.
    - ``lora_b``: ``[N, H_out, R]``, ``dtype``: PEFT's ``lora_B.weight`` (``[H_out, r]``) in
      columns ``0..r-1``, zeros right of them.
    - ``scaling``: ``[N]`` float32 (float64 in a float64 pool), the scale of each slot (see :func:`lora_kernels.lora_scaling`).
    - ``ranks``: ``[N]`` int32, ``r`` of each slot (0 when free, which contributes nothing).
    - ``lora_bias``: ``[N, H_out]``, ``dtype`` (PEFT's ``lora_B.bias``), or ``None`` when the
      pool was built with ``bias=False``.

    The same pool serves embedding LoRA: PEFT's ``lora_embedding_A`` is ``[r, vocab]`` and
    ``lora_embedding_B`` is ``[dim, r]``, so build it with ``in_features = vocab`` and
    ``out_features = dim`` and feed it to :func:`lora_kernels.add_lora_embedding`.

    Inference only: writes happen under ``torch.no_grad()`` and no tensor requires grad.

    Example::

        pool = LoRAPool(4096, 4096, max_adapters=8, max_rank=64, dtype=torch.bfloat16)
        slot = pool.add(peft_lora_A, peft_lora_B, lora_scaling(16, 8))
        lk.add_lora(y, x, pool.lora_a, pool.lora_b, pool.scaling, indices, ranks=pool.ranks)
        pool.remove(slot)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        max_adapters: int,
        max_rank: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        bias: bool = False,
    ) -> None:
        for name, value in (
            ("in_features", in_features),
            ("out_features", out_features),
            ("max_adapters", max_adapters),
            ("max_rank", max_rank),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"LoRAPool: {name} must be a positive int, got {value!r}.")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"LoRAPool: dtype must be a floating torch.dtype, got {dtype!r}.")
        if not isinstance(bias, bool):
            raise TypeError(f"LoRAPool: bias must be a bool, got {bias!r}.")

        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.max_adapters = int(max_adapters)
        self.max_rank = int(max_rank)
        self.dtype = dtype
        self.device = torch.device(device)
        self.has_bias = bias

        N, R, H_in, H_out = self.max_adapters, self.max_rank, self.in_features, self.out_features
        self.lora_a = torch.zeros(N, R, H_in, dtype=dtype, device=self.device)
        self.device = self.lora_a.device  # "cuda" -> "cuda:0": the device the tensors are on
        self.lora_b = torch.zeros(N, H_out, R, dtype=dtype, device=self.device)
        # float64 pools keep float64 scales: an fp32 scale alone would cap float64 parity near 1e-7.
        scale_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.scaling = torch.zeros(N, dtype=scale_dtype, device=self.device)
        self.ranks = torch.zeros(N, dtype=torch.int32, device=self.device)
        self.lora_bias: Tensor | None = (
            torch.zeros(N, H_out, dtype=dtype, device=self.device) if bias else None
        )
        self._used: set[int] = set()

    # --- read-only views of the occupancy ---------------------------------------------------

    @property
    def used_slots(self) -> list[int]:
        """Slots currently holding an adapter, sorted."""
        return sorted(self._used)

    @property
    def num_free(self) -> int:
        """Number of slots that :meth:`add` can still fill."""
        return self.max_adapters - len(self._used)

    def __len__(self) -> int:
        return len(self._used)

    def __repr__(self) -> str:
        return (
            f"LoRAPool(in_features={self.in_features}, out_features={self.out_features}, "
            f"max_adapters={self.max_adapters}, max_rank={self.max_rank}, dtype={self.dtype}, "
            f"device={str(self.device)!r}, bias={self.has_bias}, used={len(self)})"
        )

    # --- writes -------------------------------------------------------------------------------

    def add(
        self,
        lora_A: Tensor,
        lora_B: Tensor,
        scaling: float,
        lora_bias: Tensor | None = None,
    ) -> int:
        """Copy one adapter into the lowest free slot and return that slot.

        Args:
            lora_A: PEFT's ``lora_A.weight`` (or ``lora_embedding_A``), ``[r, H_in]``, floating.
            lora_B: PEFT's ``lora_B.weight`` (or ``lora_embedding_B``), ``[H_out, r]``, floating.
            scaling: the adapter's scale for this module, a finite real number
                (``lora_scaling(alpha, r, use_rslora)``).
            lora_bias: PEFT's ``lora_B.bias``, ``[H_out]``; only for a pool built with
                ``bias=True`` (zeros when omitted there).

        Everything is checked before anything is written: a refused adapter leaves the pool
        exactly as it was. Weights are converted to the pool's dtype and device; weights holding
        NaN or Inf, or values the pool's dtype cannot hold, are refused.
        """
        return self._put(self._prepare("add", lora_A, lora_B, scaling, lora_bias), "add")

    def prepare(
        self,
        lora_A: Tensor,
        lora_B: Tensor,
        scaling: float,
        lora_bias: Tensor | None = None,
    ) -> "PreparedAdapter":
        """Check and convert one adapter exactly as :meth:`add` does, without writing anything.

        Returns a :class:`PreparedAdapter` (the weights in this pool's dtype and device) that
        :meth:`add_prepared` copies into a slot. It lets a caller that fills many pools check
        every one of them first, then write them all: only a full pool can refuse that write.
        The prepared tensors may share memory with the arguments: leave those unchanged until
        the write.
        """
        return self._prepare("prepare", lora_A, lora_B, scaling, lora_bias)

    def add_prepared(self, prepared: "PreparedAdapter") -> int:
        """Copy an adapter checked by :meth:`prepare` of this pool into the lowest free slot and
        return that slot (refused only when the pool is full)."""
        if not isinstance(prepared, PreparedAdapter) or prepared.pool is not self:
            got = (
                f"one prepared by another pool ({prepared.pool!r})"
                if isinstance(prepared, PreparedAdapter)
                else type(prepared).__name__
            )
            raise ValueError(
                f"LoRAPool.add_prepared: prepared must be what this pool's prepare() returned, "
                f"got {got}."
            )
        return self._put(prepared, "add_prepared")

    def _prepare(
        self,
        caller: str,
        lora_A: Tensor,
        lora_B: Tensor,
        scaling: float,
        lora_bias: Tensor | None,
    ) -> "PreparedAdapter":
        H_in, H_out, R = self.in_features, self.out_features, self.max_rank
        for name, t in (("lora_A", lora_A), ("lora_B", lora_B)):
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"LoRAPool.{caller}: {name} must be a torch.Tensor, got {type(t).__name__}."
                )
            if not t.is_floating_point():
                raise TypeError(
                    f"LoRAPool.{caller}: {name} must be a floating-point tensor, got dtype {t.dtype}."
                )
            if t.dim() != 2:
                raise ValueError(
                    f"LoRAPool.{caller}: {name} must be a 2-D tensor, got {t.dim()}-D "
                    f"with shape {_shape(t)}."
                )
        if lora_A.shape[1] != H_in:
            raise ValueError(
                f"LoRAPool.{caller}: lora_A must have shape [r, H_in] = [r, {H_in}], "
                f"got {_shape(lora_A)}."
            )
        if lora_B.shape[0] != H_out:
            raise ValueError(
                f"LoRAPool.{caller}: lora_B must have shape [H_out, r] = [{H_out}, r], "
                f"got {_shape(lora_B)}."
            )
        rank = lora_A.shape[0]
        if lora_B.shape[1] != rank:
            raise ValueError(
                f"LoRAPool.{caller}: lora_B must have shape [H_out, r] = [{H_out}, {rank}] "
                f"(r from lora_A), got {_shape(lora_B)}."
            )
        if not 1 <= rank <= R:
            raise ValueError(
                f"LoRAPool.{caller}: the rank r = lora_A.shape[0] must be in [1, max_rank] = "
                f"[1, {R}], got {rank}."
            )
        if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real):
            raise TypeError(
                f"LoRAPool.{caller}: scaling must be a finite real number (int or float), "
                f"got {scaling!r} of type {type(scaling).__name__}."
            )
        if not math.isfinite(scaling):
            raise ValueError(
                f"LoRAPool.{caller}: scaling must be a finite real number, got {scaling!r}."
            )
        if lora_bias is not None:
            if self.lora_bias is None:
                raise ValueError(
                    f"LoRAPool.{caller}: lora_bias was given but this pool was built with bias=False; "
                    "build it with bias=True to serve adapters with a lora_B bias."
                )
            if not isinstance(lora_bias, Tensor) or not lora_bias.is_floating_point():
                raise TypeError(
                    f"LoRAPool.{caller}: lora_bias must be a floating-point tensor, got "
                    f"{getattr(lora_bias, 'dtype', type(lora_bias).__name__)}."
                )
            if tuple(lora_bias.shape) != (H_out,):
                raise ValueError(
                    f"LoRAPool.{caller}: lora_bias must have shape [H_out] = [{H_out}], "
                    f"got {_shape(lora_bias)}."
                )
        converted: dict[str, Tensor | None] = {"lora_bias": None}
        for name, t in (("lora_A", lora_A), ("lora_B", lora_B), ("lora_bias", lora_bias)):
            if t is None:
                continue
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                raise ValueError(
                    f"LoRAPool.{caller}: {name} must hold only finite values, got {bad} NaN or Inf "
                    f"entries (a broken adapter; the loader refuses it too)."
                )
            converted[name] = t.detach().to(device=self.device, dtype=self.dtype)
            if not bool(torch.isfinite(converted[name]).all()):
                raise ValueError(
                    f"LoRAPool.{caller}: {name} must fit the pool's dtype {self.dtype} (largest finite "
                    f"value {torch.finfo(self.dtype).max:g}), got a value of magnitude "
                    f"{t.detach().abs().max().item():g}, which would become Inf."
                )
        return PreparedAdapter(
            self, converted["lora_A"], converted["lora_B"], float(scaling), converted["lora_bias"]
        )

    def _put(self, prepared: "PreparedAdapter", caller: str) -> int:
        slot = self._take_free_slot(caller)
        rank = prepared.rank
        with torch.no_grad():
            self.lora_a[slot, :rank].copy_(prepared.lora_A)
            self.lora_b[slot, :, :rank].copy_(prepared.lora_B)
            self.scaling[slot] = prepared.scaling
            self.ranks[slot] = rank
            if prepared.lora_bias is not None:
                self.lora_bias[slot].copy_(prepared.lora_bias)
        return slot

    def reserve(self) -> int:
        """Occupy the lowest free slot with rank 0 and return it: the ops leave the rows of
        tokens using that slot untouched. For servers that keep one slot numbering across all
        of a model's pools, where an adapter that does not target this module still needs
        its slot here."""
        return self._take_free_slot("reserve")

    def _take_free_slot(self, caller: str) -> int:
        """Mark the lowest free slot used, all zero (rank 0, scale 0, zero weights and bias)."""
        if self.num_free == 0:
            raise RuntimeError(
                f"LoRAPool.{caller}: the pool is full: all max_adapters = {self.max_adapters} "
                f"slots are in use; remove one first."
            )
        slot = min(set(range(self.max_adapters)) - self._used)
        self._zero_slot(slot)  # padding must be zero: ops called without `ranks` read all R
        self._used.add(slot)
        return slot

    def _zero_slot(self, slot: int) -> None:
        with torch.no_grad():
            self.lora_a[slot].zero_()
            self.lora_b[slot].zero_()
            self.scaling[slot] = 0.0
            self.ranks[slot] = 0
            if self.lora_bias is not None:
                self.lora_bias[slot].zero_()

    def remove(self, slot: int) -> None:
        """Free ``slot``: zero its weights, bias, scale and rank, and make it reusable."""
        if isinstance(slot, bool) or not isinstance(slot, numbers.Integral):
            raise TypeError(
                f"LoRAPool.remove: slot must be an int, got {slot!r} of type {type(slot).__name__}."
            )
        slot = int(slot)
        if slot not in self._used:
            raise ValueError(
                f"LoRAPool.remove: slot must be a slot in use, one of {self.used_slots}, "
                f"got {slot}."
            )
        self._zero_slot(slot)
        self._used.discard(slot)
