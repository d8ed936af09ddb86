"""Random add_lora_slices cases and their check against the float64 reference (DESIGN §6).

Shared by tests/test_slices.py (CPU) and tests/gpu/test_gpu_slices.py (CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import lora_kernels as lk
from .lora_cases import TOLERANCE, float64_copy, random_segments, update_error


@dataclass
class SliceCase:
    x: torch.Tensor  # [T, H_in] (maybe a strided view)
    y: torch.Tensor  # [T, sum(widths)] (maybe a column view of a wider buffer)
    y_buffer: torch.Tensor  # the buffer y is cut from (y itself when not strided)
    lora_a: list[torch.Tensor]  # [N, R_i, H_in]
    lora_b: list[torch.Tensor]  # [N, H_out_i, R_i]
    scaling: list[torch.Tensor]  # [N] float32
    ranks: list[torch.Tensor] | None
    lora_bias: list[torch.Tensor] | None
    indices: torch.Tensor
    seg_indptr: torch.Tensor
    seg_adapter: torch.Tensor

    def kwargs(self, segments: bool) -> dict:
        where = (
            dict(seg_indptr=self.seg_indptr, seg_adapter=self.seg_adapter)
            if segments
            else dict(indices=self.indices)
        )
        return dict(where, ranks=self.ranks, lora_bias=self.lora_bias)

    @property
    def widths(self) -> list[int]:
        return [b.shape[1] for b in self.lora_b]


def make_slice_case(
    T: int,
    H_in: int,
    widths: tuple[int, ...],
    N: int,
    max_ranks: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    *,
    seed: int = 0,
    mixed_ranks: bool = True,
    bias: bool = True,
    strided: bool = False,
    index_dtype: torch.dtype = torch.int32,
    num_segments: int | None = None,
) -> SliceCase:
    """Fresh random data per slice (its own width, max rank R_i, ranks with 0 among them, NaN
    in the padding past each rank, scales); -1 tokens and unsorted indices; random y."""
    assert len(widths) == len(max_ranks)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def dev(t, dt=dtype):
        return t.to(device=device, dtype=dt)

    lora_a, lora_b, scaling, ranks, lora_bias = [], [], [], [], []
    for i, (width, R) in enumerate(zip(widths, max_ranks)):
        r = torch.randint(0, R + 1, (N,), generator=gen)
        if N > 0:
            r[0] = R  # one full-rank slot per slice
        if N > 1 and i == 0:
            r[1] = 0  # and rank 0 in the first slice
        a = rand(N, R, H_in) / max(H_in, 1) ** 0.5
        b = rand(N, width, R)
        if mixed_ranks:
            for slot, rank in enumerate(r.tolist()):
                a[slot, rank:] = float("nan")
                b[slot, :, rank:] = float("nan")
        lora_a.append(dev(a))
        lora_b.append(dev(b))
        scaling.append(dev(rand(N).abs() + 0.1, torch.float32))
        ranks.append(dev(r, torch.int32))
        lora_bias.append(dev(rand(N, width)))
    indices = torch.randint(-1, N, (T,), generator=gen) if N > 0 else torch.full((T,), -1)
    S = num_segments if num_segments is not None else max(1, min(T, 5))
    seg_indptr, seg_adapter = random_segments(T, S, max(N, 0), gen)
    if N == 0:
        seg_adapter = torch.full_like(seg_adapter, -1)

    H_out = sum(widths)
    x_full = dev(rand(T, H_in + (3 if strided else 0)))
    y_full = dev(rand(T, H_out + (5 if strided else 0)))
    return SliceCase(
        x=x_full[:, 1 : 1 + H_in] if strided else x_full,
        y=y_full[:, 2 : 2 + H_out] if strided else y_full,
        y_buffer=y_full,
        lora_a=lora_a,
        lora_b=lora_b,
        scaling=scaling,
        ranks=ranks if mixed_ranks else None,
        lora_bias=lora_bias if bias else None,
        indices=dev(indices, index_dtype),
        seg_indptr=dev(seg_indptr, index_dtype),
        seg_adapter=dev(seg_adapter, index_dtype),
    )


def _float64_list(ts):
    return None if ts is None else [float64_copy(t) for t in ts]


def reference_slices_update(case: SliceCase, segments: bool) -> torch.Tensor:
    """The float64 reference update of add_lora_slices on `case`."""
    y64 = float64_copy(case.y).clone()
    y_before = y64.clone()
    kw = case.kwargs(segments)
    indices = kw.pop("indices", None)
    kw = {k: (_float64_list(v) if isinstance(v, list) else float64_copy(v)) for k, v in kw.items()}
    lk.reference.add_lora_slices(y64, float64_copy(case.x), _float64_list(case.lora_a), _float64_list(case.lora_b),
                                 _float64_list(case.scaling), float64_copy(indices), **kw)
    return y64 - y_before


def untouched_slice_entries(case: SliceCase, segments: bool) -> torch.Tensor:
    """[T, sum(widths)] mask: entries whose token has slot -1 or rank 0 in that slice."""
    if segments:
        slots = lk.reference.segments_to_indices(case.seg_indptr.cpu(), case.seg_adapter.cpu())
    else:
        slots = case.indices.long().cpu()
    masks = []
    for i, (a, width) in enumerate(zip(case.lora_a, case.widths)):
        rank = torch.full_like(slots, a.shape[1])
        if case.ranks is not None:
            rank = case.ranks[i].long().cpu()[slots.clamp(min=0)]
        masks.append(((slots < 0) | (rank == 0))[:, None].expand(-1, width))
    return torch.cat(masks, dim=1) if masks else torch.zeros(len(slots), 0, dtype=torch.bool)


def check_add_lora_slices(device: str, dtype: torch.dtype, segments: bool, exact_per_slice: bool = True,
                          **case_kw) -> float:
    """add_lora_slices against the float64 reference, against add_lora on each column slice
    (bit-for-bit with `exact_per_slice`, else within the tolerance), rows without an adapter
    (per slice) and y's surroundings untouched."""
    case = make_slice_case(dtype=dtype, device=device, **case_kw)
    buffer_in = case.y_buffer.clone()
    y_in = case.y.clone()
    d_ref = reference_slices_update(case, segments)

    # add_lora on each column slice, on a copy of the buffer.
    per_slice_buffer = case.y_buffer.clone()
    y_per_slice = per_slice_buffer[:, 2 : 2 + case.y.shape[1]] if case.y is not case.y_buffer else per_slice_buffer
    kw = case.kwargs(segments)
    indices = kw.pop("indices", None)
    offset = 0
    for i, width in enumerate(case.widths):
        lk.add_lora(y_per_slice[:, offset : offset + width], case.x, case.lora_a[i], case.lora_b[i], case.scaling[i],
                    indices, seg_indptr=kw.get("seg_indptr"), seg_adapter=kw.get("seg_adapter"),
                    ranks=None if case.ranks is None else case.ranks[i],
                    lora_bias=None if case.lora_bias is None else case.lora_bias[i])
        offset += width

    out = lk.add_lora_slices(case.y, case.x, case.lora_a, case.lora_b, case.scaling, indices, **kw)
    assert out is case.y
    err = update_error(y_in, case.y, d_ref)
    assert err < TOLERANCE[dtype], f"relative update error {err:.3g} >= {TOLERANCE[dtype]:g}"
    keep = untouched_slice_entries(case, segments)
    assert torch.equal(case.y.cpu()[keep], y_in.cpu()[keep]), "entries without an adapter were modified"
    assert not torch.isnan(case.y).any()
    if exact_per_slice:
        assert torch.equal(case.y_buffer, per_slice_buffer), "differs from add_lora on each column slice"
    else:
        assert update_error(y_in, y_per_slice, d_ref) < TOLERANCE[dtype]
    if case.y is not case.y_buffer:  # columns around the view are untouched
        assert torch.equal(case.y_buffer[:, :2], buffer_in[:, :2])
        assert torch.equal(case.y_buffer[:, 2 + case.y.shape[1] :], buffer_in[:, 2 + case.y.shape[1] :])
    return err
