"""BatchMetadata: which adapter each token of a batch uses, in both layouts the ops read.

Requests are laid out one after another; request ``s`` has adapter slot ``slot[s]`` (``-1`` =
no adapter) and ``len[s]`` tokens, occupying tokens ``seg_indptr[s] .. seg_indptr[s+1]-1``::

    seg_indptr[0] = 0,  seg_indptr[s+1] = seg_indptr[s] + len[s]      (per-segment: SGMV)
    indices[t]    = slot[s]  for seg_indptr[s] <= t < seg_indptr[s+1]  (per-token:  BGMV)
    seg_adapter[s] = slot[s]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["BatchMetadata"]

_INT32_MAX = 2**31 - 1

IntSequence = Union[Sequence[int], np.ndarray, Tensor]


def _as_int_array(values: IntSequence, name: str) -> np.ndarray:
    """Host int64 copy of a 1-D sequence of ints, or a clear error."""
    if isinstance(values, Tensor):
        if values.dim() != 1:
            raise ValueError(
                f"BatchMetadata.from_requests: {name} must be 1-D (one entry per request), "
                f"got a tensor of shape {list(values.shape)}."
            )
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise TypeError(
                f"BatchMetadata.from_requests: {name} must hold ints, got a tensor of dtype "
                f"{values.dtype}."
            )
        return values.detach().cpu().numpy().astype(np.int64)
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(
                f"BatchMetadata.from_requests: {name} must be 1-D (one entry per request), "
                f"got an array of shape {list(values.shape)}."
            )
        if values.dtype.kind not in "iu":
            raise TypeError(
                f"BatchMetadata.from_requests: {name} must hold ints, got an array of dtype "
                f"{values.dtype}."
            )
        return values.astype(np.int64)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"BatchMetadata.from_requests: {name} must be a sequence of ints (list, tuple, "
            f"1-D tensor or numpy array), got {type(values).__name__}."
        )
    for position, value in enumerate(values):
        # bool is an int subclass but never a slot or a length.
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                f"BatchMetadata.from_requests: {name}[{position}] must be an int, got "
                f"{value!r} of type {type(value).__name__}."
            )
        if not -(2**63) <= int(value) < 2**63:
            raise ValueError(
                f"BatchMetadata.from_requests: {name}[{position}] must fit int32, got {value}."
            )
    return np.asarray([int(v) for v in values], dtype=np.int64).reshape(-1)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@dataclass(frozen=True, eq=False)
class BatchMetadata:
    """Per-token and per-segment adapter slots of one batch, built once per forward.

    Tensors (int32, on ``device``; three views into one buffer, copied there in one transfer):

    - ``indices``: ``[T]``, the slot of each token (``-1`` = no adapter); for the BGMV ops.
    - ``seg_indptr``: ``[S+1]``, cumulative token counts, ``0 .. T``; for the SGMV ops.
    - ``seg_adapter``: ``[S]``, the slot of each request; requests are never merged.

    Host values (plain Python, no device sync needed to read them): ``num_tokens`` (T),
    ``num_segments`` (S), ``max_segment_length``, ``is_decode`` (every request has exactly one
    token; True for S = 0 too), ``distinct_adapters`` (number of distinct slots >= 0).

    Example::

        meta = BatchMetadata.from_requests([0, -1, 2], [5, 1, 3], device="cuda")
        lk.add_lora(y, x, pool.lora_a, pool.lora_b, pool.scaling,
                    seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter, ranks=pool.ranks)
    """

    indices: Tensor
    seg_indptr: Tensor
    seg_adapter: Tensor
    num_tokens: int
    num_segments: int
    max_segment_length: int
    is_decode: bool
    distinct_adapters: int

    @classmethod
    def from_requests(
        cls,
        adapter_slots: IntSequence,
        lengths: IntSequence,
        device: torch.device | str = "cpu",
        num_slots: int | None = None,
    ) -> "BatchMetadata":
        """Build the metadata of a batch from each request's adapter slot and token count.

        Args:
            adapter_slots: ``[S]`` ints, the slot of each request, ``-1`` = no adapter
                (and ``< num_slots`` when given).
            lengths: ``[S]`` ints >= 0, the token count of each request.
            device: where the tensors go.
            num_slots: the pool's ``max_adapters``; when given, slots are checked against it.
        """
        slots = _as_int_array(adapter_slots, "adapter_slots")
        lens = _as_int_array(lengths, "lengths")
        if slots.shape[0] != lens.shape[0]:
            raise ValueError(
                f"BatchMetadata.from_requests: adapter_slots and lengths must have one entry per "
                f"request, the same length, got {slots.shape[0]} and {lens.shape[0]}."
            )
        if num_slots is not None and (
            isinstance(num_slots, bool)
            or not isinstance(num_slots, (int, np.integer))
            or num_slots < 0
        ):
            raise ValueError(
                f"BatchMetadata.from_requests: num_slots must be a non-negative int or None, "
                f"got {num_slots!r}."
            )
        if (slots < -1).any():
            s = _first_bad(slots < -1)
            raise ValueError(
                f"BatchMetadata.from_requests: adapter_slots[{s}] must be >= -1 "
                f"(-1 = no adapter), got {slots[s]}."
            )
        if num_slots is not None and (slots >= num_slots).any():
            s = _first_bad(slots >= num_slots)
            raise ValueError(
                f"BatchMetadata.from_requests: adapter_slots[{s}] must be < num_slots = "
                f"{num_slots}, got {slots[s]}."
            )
        if (slots > _INT32_MAX).any():
            s = _first_bad(slots > _INT32_MAX)
            raise ValueError(
                f"BatchMetadata.from_requests: adapter_slots[{s}] must fit int32 "
                f"(<= {_INT32_MAX}), got {slots[s]}."
            )
        if (lens < 0).any():
            s = _first_bad(lens < 0)
            raise ValueError(
                f"BatchMetadata.from_requests: lengths[{s}] must be >= 0, got {lens[s]}."
            )
        if (lens > _INT32_MAX).any():
            s = _first_bad(lens > _INT32_MAX)
            raise ValueError(
                f"BatchMetadata.from_requests: the total token count T must fit int32 "
                f"(<= {_INT32_MAX}), but lengths[{s}] alone is {lens[s]}."
            )
        # Every entry is < 2**31 now, so the int64 prefix sum cannot overflow.
        indptr = np.zeros(lens.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        if indptr[-1] > _INT32_MAX:
            s = _first_bad(indptr[1:] > _INT32_MAX)
            raise ValueError(
                f"BatchMetadata.from_requests: the total token count T must fit int32 "
                f"(<= {_INT32_MAX}), but the running total reaches {indptr[s + 1]} "
                f"at lengths[{s}]."
            )

        num_segments = int(lens.shape[0])
        num_tokens = int(indptr[-1])
        token_slots = np.repeat(slots, lens)  # vectorised; no Python loop over tokens

        # One int32 host buffer [indices | seg_indptr | seg_adapter] -> one host-to-device copy.
        target = torch.device(device)
        pin = target.type == "cuda" and torch.cuda.is_available()
        packed = torch.empty(num_tokens + 2 * num_segments + 1, dtype=torch.int32, pin_memory=pin)
        host = packed.numpy()
        host[:num_tokens] = token_slots
        host[num_tokens : num_tokens + num_segments + 1] = indptr
        host[num_tokens + num_segments + 1 :] = slots
        on_device = packed.to(target, non_blocking=True)

        return cls(
            indices=on_device[:num_tokens],
            seg_indptr=on_device[num_tokens : num_tokens + num_segments + 1],
            seg_adapter=on_device[num_tokens + num_segments + 1 :],
            num_tokens=num_tokens,
            num_segments=num_segments,
            max_segment_length=int(lens.max()) if num_segments else 0,
            is_decode=bool((lens == 1).all()),
            distinct_adapters=int(np.unique(slots[slots >= 0]).size),
        )
