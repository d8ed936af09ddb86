"""The reference (the suite's oracle) meets the contract exactly where the ops do: v is zero past
each rank and for -1 tokens whatever x holds, and N = 0 (every token -1) works (DESIGN §1)."""

import math

import pytest
import torch

import lora_kernels as lk
from helpers.lora_cases import make_case
from helpers.slice_cases import make_slice_case, untouched_slice_entries


def _poisoned_case(segments):
    """x holds NaN on every -1 token and Inf on one token with an adapter; the padding past each
    rank holds NaN (make_case)."""
    case = make_case(T=12, H_in=9, H_out=7, N=3, R=4, seed=11)
    indices = lk.reference.segments_to_indices(case.seg_indptr, case.seg_adapter) if segments else case.indices.long()
    assert (indices == -1).any() and (indices >= 0).any()
    case.x[indices == -1] = math.nan
    case.x[torch.nonzero(indices >= 0)[0, 0], 2] = math.inf
    return case, indices


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
def test_shrink_is_zero_past_the_rank_and_for_no_adapter_whatever_x_holds(segments):
    case, indices = _poisoned_case(segments)
    if segments:
        args = (case.x, case.lora_a, case.seg_indptr, case.seg_adapter, case.ranks)
        v_ref, v_op = lk.reference.sgmv_shrink(*args), lk.sgmv_shrink(*args)
    else:
        args = (case.x, case.lora_a, case.indices, case.ranks)
        v_ref, v_op = lk.reference.bgmv_shrink(*args), lk.bgmv_shrink(*args)
    rank = torch.where(indices >= 0, case.ranks.long()[indices.clamp(min=0)], 0)
    past = torch.arange(4)[None, :] >= rank[:, None]
    assert past.any() and not past.all()
    assert torch.equal(v_ref[past], torch.zeros(int(past.sum())))
    torch.testing.assert_close(v_ref, v_op, equal_nan=True)


def test_add_lora_leaves_no_adapter_rows_untouched_whatever_x_holds():
    case, indices = _poisoned_case(False)
    y = case.y.clone()
    lk.reference.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks,
                          lora_bias=case.lora_bias)
    untouched = (indices == -1) | (case.ranks.long()[indices.clamp(min=0)] == 0)
    assert torch.equal(y[untouched], case.y[untouched])
    assert torch.isfinite(y[untouched]).all()


def test_no_adapter_slots():
    """N = 0: every token is -1; v is zero and y untouched, as the ops give."""
    case = make_case(T=5, H_in=6, H_out=4, N=0, R=3)
    ref, seg = lk.reference, (case.seg_indptr, case.seg_adapter)
    zeros = torch.zeros(5, 3)
    for v in (ref.bgmv_shrink(case.x, case.lora_a, case.indices, case.ranks),
              ref.sgmv_shrink(case.x, case.lora_a, *seg, case.ranks)):
        assert torch.equal(v, zeros) and torch.equal(v, lk.bgmv_shrink(case.x, case.lora_a, case.indices, case.ranks))
    calls = [
        lambda y: ref.bgmv_expand(y, zeros, case.lora_b, case.indices, case.scaling, case.ranks, case.lora_bias),
        lambda y: ref.sgmv_expand(y, zeros, case.lora_b, *seg, case.scaling, case.ranks, case.lora_bias),
        lambda y: ref.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks),
        lambda y: ref.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, seg_indptr=seg[0],
                               seg_adapter=seg[1]),
        lambda y: ref.add_lora_embedding(y, torch.zeros(5, dtype=torch.long), torch.zeros(0, 3, 10), case.lora_b,
                                         case.scaling, case.indices, case.ranks),
    ]
    for run in calls:
        y = case.y.clone()
        assert run(y) is y and torch.equal(y, case.y)
    y = case.y.clone()
    lk.add_lora_embedding(y, torch.zeros(5, dtype=torch.long), torch.zeros(0, 3, 10), case.lora_b, case.scaling,
                          case.indices, case.ranks)
    assert torch.equal(y, case.y)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
def test_add_lora_slices_leaves_untouched_entries_whatever_x_holds(segments):
    """Per slice, rows of -1 tokens and of rank-0 slots stay bit-for-bit as they were with NaN in x
    on every -1 token and Inf on one token with an adapter (NaN padding past each slice's rank);
    the op gives the same."""
    case = make_slice_case(T=12, H_in=9, widths=(7, 3, 2), N=3, max_ranks=(4, 2, 3), seed=0)
    indices = lk.reference.segments_to_indices(case.seg_indptr, case.seg_adapter) if segments else case.indices.long()
    assert (indices == -1).any() and (indices >= 0).any()
    case.x[indices == -1] = math.nan
    case.x[torch.nonzero(indices >= 0)[0, 0], 2] = math.inf
    kw = case.kwargs(segments)
    where = kw.pop("indices", None)
    y = case.y.clone()
    assert lk.reference.add_lora_slices(y, case.x, case.lora_a, case.lora_b, case.scaling, where, **kw) is y
    untouched = untouched_slice_entries(case, segments)
    assert untouched.any() and not untouched.all()
    assert torch.equal(y[untouched], case.y[untouched])
    y_op = case.y.clone()
    lk.add_lora_slices(y_op, case.x, case.lora_a, case.lora_b, case.scaling, where, **kw)
    torch.testing.assert_close(y_op, y, equal_nan=True)


def test_add_lora_slices_no_adapter_slots():
    """N = 0 in every slice: the reference and the op leave y untouched."""
    case = make_slice_case(T=5, H_in=6, widths=(4, 3), N=0, max_ranks=(3, 2))
    for segments in (False, True):
        kw = case.kwargs(segments)
        where = kw.pop("indices", None)
        for add in (lk.reference.add_lora_slices, lk.add_lora_slices):
            y = case.y.clone()
            assert add(y, case.x, case.lora_a, case.lora_b, case.scaling, where, **kw) is y
            assert torch.equal(y, case.y)
