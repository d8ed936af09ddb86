"""Every argument check raises a sentence naming the argument, expected and actual value, and
leaves y untouched (DESIGN §5). One test per message."""

import re

import pytest
import torch

import lora_kernels as lk
from lora_cases import make_case
from lora_kernels._build import check_torch_version


@pytest.fixture
def case():
    return make_case(T=6, H_in=8, H_out=5, N=3, R=4)


def add(case, **over):
    args = dict(y=case.y, x=case.x, lora_a=case.lora_a, lora_b=case.lora_b, scaling=case.scaling,
                indices=case.indices, ranks=case.ranks, lora_bias=case.lora_bias)
    args.update(over)
    indices = args.pop("indices")
    return lk.add_lora(args.pop("y"), args.pop("x"), args.pop("lora_a"), args.pop("lora_b"), args.pop("scaling"),
                       indices, **args)


def expect_error(case, message, **over):
    y_before = case.y.clone()
    with pytest.raises(RuntimeError, match=message):
        add(case, **over)
    assert torch.equal(case.y, y_before), "y was written before the error"


BAD_ARGUMENTS = {
    "x-dtype": (lambda c: dict(x=c.x.int()), r"add_lora: x must be float16, bfloat16, float32 or float64, got Int"),
    "x-dim": (lambda c: dict(x=c.x[None]), r"add_lora: x must be 2-D \[T, H_in\], got 3-D"),
    "x-stride": (lambda c: dict(x=c.x.t().contiguous().t()),
                 r"x must have unit stride along its last dimension .* got strides \[1, 6\]"),
    "lora_a-dim": (lambda c: dict(lora_a=c.lora_a[0], lora_b=c.lora_b), r"lora_a and lora_b must be 3-D, got 2-D and 3-D"),
    "lora_a-dtype": (lambda c: dict(lora_a=c.lora_a.double()),
                     r"lora_a must have the same dtype as x \(Float\), got Double"),
    "lora_a-H_in": (lambda c: dict(lora_a=c.lora_a[:, :, :7].contiguous()),
                    r"lora_a must have shape \[N, R, H_in\] with H_in = 8 \(from x\), got shape \[3, 4, 7\]"),
    "lora_a-contiguous": (lambda c: dict(lora_a=c.lora_a.transpose(0, 1).contiguous().transpose(0, 1)),
                          r"lora_a must be contiguous, got strides"),
    "lora_b-pair": (lambda c: dict(lora_b=c.lora_b[:2].contiguous()),
                    r"lora_b must have shape \[N, H_out, R\] with N = 3 and R = 4 \(from lora_a\), got shape \[2, 5, 4\]"),
    "lora_b-H_out": (lambda c: dict(lora_b=torch.randn(3, 6, 4)),
                     r"lora_b must have shape \[N, H_out, R\] with H_out = 5 \(from y\), got shape \[3, 6, 4\]"),
    "lora_b-dtype": (lambda c: dict(lora_b=c.lora_b.half()), r"lora_b must have the same dtype as y \(Float\), got Half"),
    "y-T": (lambda c: dict(y=torch.randn(5, 5)), r"y must have shape \[T, H_out\] with T = 6 \(from x\), got shape \[5, 5\]"),
    "y-dtype": (lambda c: dict(y=c.y.double(), lora_b=c.lora_b.double(), lora_bias=c.lora_bias.double()),
                r"y must have the same dtype as x \(Float\), got Double"),
    "indices-dtype": (lambda c: dict(indices=c.indices.float()), r"indices must be int32 or int64, got Float"),
    "indices-shape": (lambda c: dict(indices=c.indices[:5]), r"indices must have shape \[T\] = \[6\], got shape \[5\]"),
    "indices-value": (lambda c: dict(indices=torch.tensor([0, 1, 2, 3, -1, 0], dtype=torch.int32)),
                      r"indices\[3\] = 3 is out of range; expected -1 <= indices\[t\] < N = 3"),
    "indices-negative": (lambda c: dict(indices=torch.tensor([0, -2, 0, 0, 0, 0])),
                         r"indices\[1\] = -2 is out of range"),
    "ranks-shape": (lambda c: dict(ranks=torch.tensor([1, 2], dtype=torch.int32)),
                    r"ranks must have shape \[N\] = \[3\], got shape \[2\]"),
    "ranks-value": (lambda c: dict(ranks=torch.tensor([1, 5, 2], dtype=torch.int32)),
                    r"ranks\[1\] = 5 is out of range; expected 0 <= ranks\[a\] <= R = 4"),
    "scaling-dtype": (lambda c: dict(scaling=c.scaling.half()), r"scaling must be float32 \(or float64\), got Half"),
    "scaling-shape": (lambda c: dict(scaling=torch.ones(4)), r"scaling must have shape \[N\] with N = 3 \(from lora_b\), got shape \[4\]"),
    "bias-shape": (lambda c: dict(lora_bias=torch.randn(3, 4)),
                   r"lora_bias must have shape \[N, H_out\] with H_out = 5 \(from y\), got shape \[3, 4\]"),
    "bias-dtype": (lambda c: dict(lora_bias=c.lora_bias.double()), r"lora_bias must have the same dtype as y"),
}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_bad_argument(case, name):
    make, message = BAD_ARGUMENTS[name]
    expect_error(case, message, **make(case))


SEGMENT_ERRORS = {
    "both": (dict(indices=torch.zeros(6, dtype=torch.int32), seg_indptr=torch.tensor([0, 6]), seg_adapter=torch.tensor([0])),
             r"pass either indices or \(seg_indptr, seg_adapter\), not both"),
    "neither": (dict(indices=None), r"pass either indices, or both seg_indptr and seg_adapter; got seg_indptr without seg_adapter"),
    "first": (dict(seg_indptr=torch.tensor([1, 6]), seg_adapter=torch.tensor([0])), r"seg_indptr\[0\] = 1 must be 0"),
    "last": (dict(seg_indptr=torch.tensor([0, 5]), seg_adapter=torch.tensor([0])),
             r"seg_indptr\[S\] = seg_indptr\[1\] = 5 must equal the number of tokens T = 6"),
    "decreasing": (dict(seg_indptr=torch.tensor([0, 4, 2, 6]), seg_adapter=torch.tensor([0, 1, 2])),
                   r"seg_indptr must be non-decreasing, but seg_indptr\[2\] = 2 < seg_indptr\[1\] = 4"),
    "adapter": (dict(seg_indptr=torch.tensor([0, 3, 6]), seg_adapter=torch.tensor([0, 3])),
                r"seg_adapter\[1\] = 3 is out of range; expected -1 <= seg_adapter\[s\] < N = 3"),
    "indptr-shape": (dict(seg_indptr=torch.tensor([0, 6]), seg_adapter=torch.tensor([0, 1])),
                     r"seg_indptr must have shape \[S\+1\] = \[3\], got shape \[2\]"),
    "adapter-dim": (dict(seg_indptr=torch.tensor([0, 6]), seg_adapter=torch.tensor([[0]])),
                    r"seg_adapter must be 1-D \[S\], got 2-D"),
}


@pytest.mark.parametrize("name", SEGMENT_ERRORS)
def test_bad_segments(case, name):
    over, message = SEGMENT_ERRORS[name]
    over = dict(over)
    if "indices" not in over:
        over["indices"] = None
    if name == "neither":
        over["seg_indptr"] = torch.tensor([0, 6])
    expect_error(case, message, **over)


def test_expand_v_checks(case):
    v = lk.bgmv_shrink(case.x, case.lora_a, case.indices)
    args = (case.lora_b, case.indices, case.scaling)
    with pytest.raises(RuntimeError, match=r"bgmv_expand: v must be Float \(the accumulator dtype for y's Float\), got Double"):
        lk.bgmv_expand(case.y, v.double(), *args)
    with pytest.raises(RuntimeError, match=r"bgmv_expand: v must have shape \[T, R\] with T = 6 \(from y\), got shape \[5, 4\]"):
        lk.bgmv_expand(case.y, v[:5], *args)
    with pytest.raises(RuntimeError, match=r"bgmv_expand: v must have shape \[T, R\] with R = 4 \(from lora_b\), got shape \[6, 3\]"):
        lk.bgmv_expand(case.y, v[:, :3], *args)
    with pytest.raises(RuntimeError, match=r"bgmv_expand: y must be 2-D \[T, H_out\], got 1-D"):
        lk.bgmv_expand(case.y[0], v, *args)
    with pytest.raises(RuntimeError, match=r"bgmv_expand: lora_b must be 3-D \[N, H_out, R\], got 2-D"):
        lk.bgmv_expand(case.y, v, case.lora_b[0], case.indices, case.scaling)
    with pytest.raises(RuntimeError, match=r"lora_b must be contiguous"):
        lk.bgmv_expand(case.y, v, case.lora_b.transpose(1, 2).contiguous().transpose(1, 2), case.indices, case.scaling)


def test_shrink_checks(case):
    with pytest.raises(RuntimeError, match=r"sgmv_shrink: lora_a must be 3-D \[N, R, H_in\], got 2-D"):
        lk.sgmv_shrink(case.x, case.lora_a[0], case.seg_indptr, case.seg_adapter)
    with pytest.raises(RuntimeError, match=r"bgmv_shrink: indices must be contiguous"):
        lk.bgmv_shrink(case.x, case.lora_a, torch.zeros(12, dtype=torch.int32)[::2])


def test_embedding_checks():
    y = torch.randn(4, 6)
    lora_a, lora_b = torch.randn(2, 3, 10), torch.randn(2, 6, 3)
    scaling, indices = torch.ones(2), torch.tensor([0, 1, -1, 0])
    y_before = y.clone()
    with pytest.raises(RuntimeError, match=r"add_lora_embedding: token_ids\[2\] = 10 is out of range; expected 0 <= token_ids\[t\] < vocab = 10"):
        lk.add_lora_embedding(y, torch.tensor([0, 1, 10, 3]), lora_a, lora_b, scaling, indices)
    with pytest.raises(RuntimeError, match=r"add_lora_embedding: token_ids must be int32 or int64, got Float"):
        lk.add_lora_embedding(y, torch.zeros(4), lora_a, lora_b, scaling, indices)
    with pytest.raises(RuntimeError, match=r"add_lora_embedding: lora_b must have shape \[N, dim, R\] with N = 2 and R = 3"):
        lk.add_lora_embedding(y, torch.zeros(4, dtype=torch.long), lora_a, torch.randn(2, 6, 4), scaling, indices)
    with pytest.raises(RuntimeError, match=r"add_lora_embedding: lora_b must have shape \[N, H_out, R\] with H_out = 6 \(from y\)"):
        lk.add_lora_embedding(y, torch.zeros(4, dtype=torch.long), lora_a, torch.randn(2, 7, 3), scaling, indices)
    assert torch.equal(y, y_before)


def test_import_refuses_extension_built_for_another_torch():
    with pytest.raises(ImportError, match=re.escape("compiled against torch 2.13.0, but torch 2.14.1 is installed")) as err:
        check_torch_version("2.13.0", "2.14.1")
    assert "pip install --no-build-isolation --force-reinstall" in str(err.value)
    check_torch_version("2.14.1+cu130", "2.14.1+cpu")  # local tags do not change the ABI
