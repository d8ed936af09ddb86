"""Random multi-LoRA cases and the update-error metric shared by the op tests (DESIGN §6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import lora_kernels as lk

# Relative error of the update d = y_out - y_in against the float64 reference update.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@dataclass
class Case:
    x: torch.Tensor  # [T, H_in] (maybe a strided view)
    y: torch.Tensor  # [T, H_out] (maybe a strided view)
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: torch.Tensor
    ranks: torch.Tensor | None
    lora_bias: torch.Tensor | None
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


def random_segments(T: int, S: int, N: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """S segments (some empty) covering T tokens; adapters in [-1, N)."""
    cuts = torch.sort(torch.randint(0, T + 1, (max(S - 1, 0),), generator=gen)).values
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.full((1,), T)]) if S > 0 else torch.zeros(1, dtype=torch.long)
    adapter = torch.randint(-1, N, (S,), generator=gen)
    return indptr, adapter


def make_case(
    T: int,
    H_in: int,
    H_out: int,
    N: int,
    R: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    *,
    seed: int = 0,
    mixed_ranks: bool = True,
    bias: bool = True,
    strided: bool = False,
    index_dtype: torch.dtype = torch.int32,
    num_segments: int | None = None,
) -> Case:
    """Fresh random data: -1 tokens, mixed ranks (with rank 0), NaN in the padding past each
    rank (so any read of it shows), random y (it is accumulated into)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    ranks = torch.randint(0, R + 1, (N,), generator=gen) if mixed_ranks else None
    if ranks is not None and N > 0:
        ranks[0] = R  # at least one full-rank slot
    lora_a = rand(N, R, H_in) / max(H_in, 1) ** 0.5
    lora_b = rand(N, H_out, R)
    if ranks is not None:
        for a, r in enumerate(ranks.tolist()):
            lora_a[a, r:] = float("nan")
            lora_b[a, :, r:] = float("nan")
    indices = torch.randint(-1, N, (T,), generator=gen) if N > 0 else torch.full((T,), -1)
    S = num_segments if num_segments is not None else max(1, min(T, 5))
    seg_indptr, seg_adapter = random_segments(T, S, N, gen) if N > 0 else random_segments(T, S, 0, gen)
    if N == 0:
        seg_adapter = torch.full_like(seg_adapter, -1)

    # Strided cases cut x and y out of wider buffers, as a fused qkv output would be.
    x_full = rand(T, H_in + (3 if strided else 0))
    y_full = rand(T, H_out + (5 if strided else 0))

    def dev(t, dt=dtype):
        return t.to(device=device, dtype=dt)

    x_dev = dev(x_full)
    y_dev = dev(y_full)
    return Case(
        x=x_dev[:, 1 : 1 + H_in] if strided else x_dev,
        y=y_dev[:, 2 : 2 + H_out] if strided else y_dev,
        lora_a=dev(lora_a),
        lora_b=dev(lora_b),
        scaling=dev(rand(N).abs() + 0.1, torch.float32),
        ranks=None if ranks is None else dev(ranks, torch.int32),
        lora_bias=dev(rand(N, H_out)) if bias else None,
        indices=dev(indices, index_dtype),
        seg_indptr=dev(seg_indptr, index_dtype),
        seg_adapter=dev(seg_adapter, index_dtype),
    )


def float64_copy(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().to("cpu", torch.float64) if t.is_floating_point() else t.detach().cpu()


def update_error(y_in: torch.Tensor, y_out: torch.Tensor, d_ref: torch.Tensor) -> float:
    """||d - d_ref|| / ||d_ref|| with d = y_out - y_in, minus what y's one rounding explains.

    For low-precision y the rounding of y itself (half an ulp of y_out per element) is allowed
    on top of the tolerance (DESIGN §6: "plus the one rounding of y").
    """
    d = y_out.double().cpu() - y_in.double().cpu()
    d_ref = d_ref.double().cpu()
    err = (d - d_ref).norm().item()
    if y_out.dtype in (torch.float16, torch.bfloat16):
        half_ulp = torch.finfo(y_out.dtype).eps / 2
        err = max(0.0, err - half_ulp * (y_in.double().cpu() + d_ref).norm().item())
    ref = d_ref.norm().item()
    return err / ref if ref > 0 else err


def reference_update(case: Case, segments: bool) -> torch.Tensor:
    """The float64 reference update d_ref for add_lora on `case`."""
    y64 = float64_copy(case.y).clone()
    y_before = y64.clone()
    kw = case.kwargs(segments)
    kw = {k: float64_copy(v) for k, v in kw.items()}
    if segments:
        lk.reference.add_lora(y64, float64_copy(case.x), float64_copy(case.lora_a), float64_copy(case.lora_b),
                              float64_copy(case.scaling), **kw)
    else:
        indices = kw.pop("indices")
        lk.reference.add_lora(y64, float64_copy(case.x), float64_copy(case.lora_a), float64_copy(case.lora_b),
                              float64_copy(case.scaling), indices, **kw)
    return y64 - y_before


def token_slots(case: Case, segments: bool) -> torch.Tensor:
    if segments:
        return lk.reference.segments_to_indices(case.seg_indptr.cpu(), case.seg_adapter.cpu())
    return case.indices.long().cpu()


def untouched_rows(case: Case, segments: bool) -> torch.Tensor:
    """Rows whose slot is -1 or whose rank is 0: they must stay bit-for-bit unchanged."""
    slots = token_slots(case, segments)
    rank = torch.full_like(slots, case.lora_a.shape[1])
    if case.ranks is not None:
        rank = case.ranks.long().cpu()[slots.clamp(min=0)]
    return (slots < 0) | (rank == 0)
