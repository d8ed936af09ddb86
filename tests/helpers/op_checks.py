"""Correctness checks of every op against the float64 reference, for any device.

Shared by tests/test_ops.py (CPU) and tests/gpu/ (CUDA).
"""

from __future__ import annotations

import torch

import lora_kernels as lk

from .lora_cases import TOLERANCE, float64_copy, make_case, reference_update, untouched_rows, update_error


def check_add_lora(device: str, dtype: torch.dtype, segments: bool, **case_kw) -> float:
    case = make_case(dtype=dtype, device=device, **case_kw)
    y_in = case.y.clone()
    d_ref = reference_update(case, segments)
    kw = case.kwargs(segments)
    indices = kw.pop("indices", None)
    out = lk.add_lora(case.y, case.x, case.lora_a, case.lora_b, case.scaling, indices, **kw)
    assert out is case.y
    err = update_error(y_in, case.y, d_ref)
    assert err < TOLERANCE[dtype], f"relative update error {err:.3g} >= {TOLERANCE[dtype]:g}"
    keep = untouched_rows(case, segments)
    assert torch.equal(case.y.cpu()[keep], y_in.cpu()[keep]), "rows without an adapter were modified"
    assert not torch.isnan(case.y).any()
    return err


def check_shrink_expand(device: str, dtype: torch.dtype, segments: bool, **case_kw) -> None:
    """The two halves separately: v against the reference shrink, then the expand."""
    case = make_case(dtype=dtype, device=device, **case_kw)
    slots = case.seg_indptr, case.seg_adapter
    if segments:
        v = lk.sgmv_shrink(case.x, case.lora_a, *slots, ranks=case.ranks)
    else:
        v = lk.bgmv_shrink(case.x, case.lora_a, case.indices, ranks=case.ranks)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert v.dtype == acc and v.shape == (case.x.shape[0], case.lora_a.shape[1]) and v.device == case.x.device
    ref_indices = lk.reference.segments_to_indices(*[s.cpu() for s in slots]) if segments else case.indices.cpu()
    v_ref = lk.reference.bgmv_shrink(float64_copy(case.x), float64_copy(case.lora_a), ref_indices,
                                     float64_copy(case.ranks))
    assert not torch.isnan(v).any()
    denom = v_ref.norm().item() or 1.0
    assert (v.double().cpu() - v_ref).norm().item() / denom < TOLERANCE[dtype]
    # Rows of v past each rank and for -1 tokens are exactly zero.
    assert torch.equal(v.cpu()[v_ref == 0], torch.zeros_like(v.cpu()[v_ref == 0]))

    y_in = case.y.clone()
    y64 = float64_copy(case.y).clone()
    lk.reference.bgmv_expand(y64, v.double().cpu(), float64_copy(case.lora_b), ref_indices,
                             float64_copy(case.scaling), float64_copy(case.ranks), float64_copy(case.lora_bias))
    if segments:
        out = lk.sgmv_expand(case.y, v, case.lora_b, *slots, case.scaling, case.ranks, case.lora_bias)
    else:
        out = lk.bgmv_expand(case.y, v, case.lora_b, case.indices, case.scaling, case.ranks, case.lora_bias)
    assert out is case.y
    err = update_error(y_in, case.y, y64 - float64_copy(y_in))
    assert err < TOLERANCE[dtype], f"expand update error {err:.3g}"
    keep = untouched_rows(case, segments)
    assert torch.equal(case.y.cpu()[keep], y_in.cpu()[keep])


def check_embedding(device: str, dtype: torch.dtype, *, T=23, vocab=57, dim=41, N=4, R=8, seed=0) -> None:
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.randint(0, R + 1, (N,), generator=gen)
    ranks[0] = R
    lora_a = torch.randn(N, R, vocab, generator=gen, dtype=torch.float64)
    lora_b = torch.randn(N, dim, R, generator=gen, dtype=torch.float64)
    for a, r in enumerate(ranks.tolist()):
        lora_a[a, r:] = float("nan")
        lora_b[a, :, r:] = float("nan")
    token_ids = torch.randint(0, vocab, (T,), generator=gen)
    indices = torch.randint(-1, N, (T,), generator=gen)
    scaling = torch.rand(N, generator=gen, dtype=torch.float64) + 0.1
    y64 = torch.randn(T, dim, generator=gen, dtype=torch.float64)

    y = y64.to(device, dtype)
    y_in = y.clone()
    out = lk.add_lora_embedding(y, token_ids.to(device), lora_a.to(device, dtype), lora_b.to(device, dtype),
                                scaling.to(device, torch.float32), indices.to(device, torch.int32),
                                ranks.to(device, torch.int32))
    assert out is y
    y_ref = y_in.double().cpu().clone()
    lk.reference.add_lora_embedding(y_ref, token_ids, lora_a.to(dtype).double(), lora_b.to(dtype).double(),
                                    scaling.float().double(), indices, ranks)
    err = update_error(y_in, y, y_ref - y_in.double().cpu())
    assert err < TOLERANCE[dtype], f"embedding update error {err:.3g}"
    keep = (indices < 0) | (ranks[indices.clamp(min=0)] == 0)
    assert torch.equal(y.cpu()[keep], y_in.cpu()[keep])
