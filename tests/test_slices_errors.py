"""add_lora_slices: every argument check raises a sentence naming the argument (and the slice),
the expected and the actual value, and leaves y untouched (DESIGN §5). One test per message."""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lora_kernels as lk
from helpers.slice_cases import make_slice_case


@pytest.fixture
def case():
    # T = 6, H_in = 8, slices of widths 5, 3, 3 and max ranks 4, 2, 3 over N = 3 slots.
    return make_slice_case(T=6, H_in=8, widths=(5, 3, 3), N=3, max_ranks=(4, 2, 3))


def call(case, **over):
    args = dict(y=case.y, x=case.x, lora_a=list(case.lora_a), lora_b=list(case.lora_b),
                scaling=list(case.scaling), indices=case.indices, ranks=list(case.ranks),
                lora_bias=list(case.lora_bias))
    args.update(over)
    return lk.add_lora_slices(args.pop("y"), args.pop("x"), args.pop("lora_a"), args.pop("lora_b"),
                              args.pop("scaling"), args.pop("indices"), **args)


def replaced(items, i, value):
    items = list(items)
    items[i] = value
    return items


def on_meta(value):
    """A tensor's (or a list's) meta twin, strides kept: a call with it runs the fake impl."""
    if isinstance(value, list):
        return [on_meta(t) for t in value]
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


def expect_error(case, message, values=False, **over):
    """C++ refuses the call with `message`, y untouched; so does the fake impl (what torch.compile
    traces), with every tensor on the meta device, unless the message is about index values
    (only the kernels' hosts see those)."""
    y_before = case.y.clone()
    with pytest.raises(RuntimeError, match=message):
        call(case, **over)
    assert torch.equal(case.y, y_before), "y was written before the error"
    if not values:
        meta = dict(y=case.y, x=case.x, lora_a=case.lora_a, lora_b=case.lora_b, scaling=case.scaling,
                    indices=case.indices, ranks=case.ranks, lora_bias=case.lora_bias)
        meta.update(over)
        with pytest.raises(RuntimeError, match=message):
            call(case, **{k: on_meta(v) for k, v in meta.items()})


BAD_ARGUMENTS = {
    "empty": (lambda c: dict(lora_a=[], lora_b=[], scaling=[], ranks=None, lora_bias=None),
              r"add_lora_slices: lora_a must be a list of at least one slice's \[N, R, H_in\] stack, "
              r"got an empty list\."),
    "lora_b-length": (lambda c: dict(lora_b=c.lora_b[:2]),
                      r"add_lora_slices: lora_b must be a list of 3 tensors \(one per slice, as lora_a\), got 2\."),
    "scaling-length": (lambda c: dict(scaling=c.scaling + c.scaling[:1]),
                       r"add_lora_slices: scaling must be a list of 3 tensors \(one per slice, as lora_a\), got 4\."),
    "ranks-length": (lambda c: dict(ranks=c.ranks[:1]),
                     r"add_lora_slices: ranks must be a list of 3 tensors \(one per slice, as lora_a\), got 1\."),
    "lora_bias-length": (lambda c: dict(lora_bias=c.lora_bias[:2]),
                         r"add_lora_slices: lora_bias must be a list of 3 tensors \(one per slice, as lora_a\), "
                         r"got 2\."),
    "pair-dim": (lambda c: dict(lora_a=replaced(c.lora_a, 1, c.lora_a[1][0])),
                 r"add_lora_slices \(slice 1\): lora_a and lora_b must be 3-D, got 2-D and 3-D\."),
    "pair-shape": (lambda c: dict(lora_b=replaced(c.lora_b, 2, torch.randn(3, 3, 2))),
                   r"add_lora_slices \(slice 2\): lora_b must have shape \[N, H_out, R\] with N = 3 and R = 3 "
                   r"\(from lora_a\), got shape \[3, 3, 2\]\."),
    "same-N": (lambda c: dict(lora_a=replaced(c.lora_a, 1, torch.randn(4, 2, 8)),
                              lora_b=replaced(c.lora_b, 1, torch.randn(4, 3, 2))),
               r"add_lora_slices: every slice must have the same number of slots N = 3 \(from lora_a\[0\]\), "
               r"got lora_a\[1\] with shape \[4, 2, 8\]\."),
    "bias-shape": (lambda c: dict(lora_bias=replaced(c.lora_bias, 1, torch.randn(3, 4))),
                   r"add_lora_slices \(slice 1\): lora_bias must have shape \[N, H_out\] with N = 3 and H_out = 3 "
                   r"\(from lora_b\), got shape \[3, 4\]\."),
    "y-width": (lambda c: dict(y=torch.randn(6, 10)),
                r"add_lora_slices: y must have shape \[T, H_out\] with H_out = 5 \+ 3 \+ 3 = 11 "
                r"\(the slices' H_out side by side\), got shape \[6, 10\]\."),
    "y-T": (lambda c: dict(y=torch.randn(5, 11)),
            r"add_lora_slices: y must have shape \[T, H_out\] with T = 6 \(from x\), got shape \[5, 11\]\."),
    "y-dtype": (lambda c: dict(y=c.y.double()), r"add_lora_slices: y must have the same dtype as x \(Float\), got Double\."),
    "x-dim": (lambda c: dict(x=c.x[None]), r"add_lora_slices: x must be 2-D \[T, H_in\], got 3-D\."),
    "x-dtype": (lambda c: dict(x=c.x.int(), y=c.y.int()),
                r"add_lora_slices \(slice 0\): x must be float16, bfloat16, float32 or float64, got Int\."),
    "y-stride": (lambda c: dict(y=c.y.t().contiguous().t()),
                 r"add_lora_slices \(slice 0\): y must have unit stride along its last dimension .* "
                 r"got strides \[1, 6\]\."),
    "lora_a-H_in": (lambda c: dict(lora_a=replaced(c.lora_a, 2, c.lora_a[2][:, :, :7].contiguous())),
                    r"add_lora_slices \(slice 2\): lora_a must have shape \[N, R, H_in\] with H_in = 8 \(from x\), "
                    r"got shape \[3, 3, 7\]\."),
    "lora_a-dtype": (lambda c: dict(lora_a=replaced(c.lora_a, 1, c.lora_a[1].double())),
                     r"add_lora_slices \(slice 1\): lora_a must have the same dtype as x \(Float\), got Double\."),
    "lora_a-contiguous": (lambda c: dict(lora_a=replaced(c.lora_a, 0, c.lora_a[0].transpose(0, 1).contiguous()
                                                         .transpose(0, 1))),
                          r"add_lora_slices \(slice 0\): lora_a must be contiguous, got strides"),
    "lora_b-dtype": (lambda c: dict(lora_b=replaced(c.lora_b, 1, c.lora_b[1].half())),
                     r"add_lora_slices \(slice 1\): lora_b must have the same dtype as y \(Float\), got Half\."),
    "scaling-shape": (lambda c: dict(scaling=replaced(c.scaling, 1, torch.ones(4))),
                      r"add_lora_slices \(slice 1\): scaling must have shape \[N\] with N = 3 \(from lora_b\), "
                      r"got shape \[4\]\."),
    "scaling-dtype": (lambda c: dict(scaling=replaced(c.scaling, 2, c.scaling[2].half())),
                      r"add_lora_slices \(slice 2\): scaling must be float32 \(or float64\), got Half\."),
    "ranks-shape": (lambda c: dict(ranks=replaced(c.ranks, 1, torch.tensor([1, 2], dtype=torch.int32))),
                    r"add_lora_slices \(slice 1\): ranks must have shape \[N\] = \[3\], got shape \[2\]\."),
    "ranks-value": (lambda c: dict(ranks=replaced(c.ranks, 1, torch.tensor([2, 3, 0], dtype=torch.int32))),
                    r"add_lora_slices \(slice 1\): ranks\[1\] = 3 is out of range; expected 0 <= ranks\[a\] <= R = 2\."),
    "indices-value": (lambda c: dict(indices=torch.tensor([0, 1, 2, 3, -1, 0], dtype=torch.int32)),
                      r"add_lora_slices: indices\[3\] = 3 is out of range; expected -1 <= indices\[t\] < N = 3\."),
    "indices-shape": (lambda c: dict(indices=c.indices[:5]),
                      r"add_lora_slices: indices must have shape \[T\] = \[6\], got shape \[5\]\."),
    "segments-and-indices": (lambda c: dict(seg_indptr=torch.tensor([0, 6]), seg_adapter=torch.tensor([0])),
                             r"add_lora_slices: pass either indices or \(seg_indptr, seg_adapter\), not both\."),
    "segments-missing": (lambda c: dict(indices=None, seg_indptr=torch.tensor([0, 6])),
                         r"add_lora_slices: pass either indices, or both seg_indptr and seg_adapter; "
                         r"got seg_indptr without seg_adapter\."),
    "segments-first": (lambda c: dict(indices=None, seg_indptr=torch.tensor([1, 6]), seg_adapter=torch.tensor([0])),
                       r"add_lora_slices: seg_indptr\[0\] = 1 must be 0\."),
    "seg_adapter-value": (lambda c: dict(indices=None, seg_indptr=torch.tensor([0, 3, 6]),
                                         seg_adapter=torch.tensor([0, 3])),
                          r"add_lora_slices: seg_adapter\[1\] = 3 is out of range; expected -1 <= seg_adapter\[s\] "
                          r"< N = 3\."),
}


VALUE_ERRORS = {"ranks-value", "indices-value", "segments-first", "seg_adapter-value"}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_bad_argument(case, name):
    make, message = BAD_ARGUMENTS[name]
    expect_error(case, message, values=name in VALUE_ERRORS, **make(case))


def test_lone_tensor_for_a_list_is_refused(case):
    y_before = case.y.clone()
    with pytest.raises(TypeError, match=r"add_lora_slices: lora_a must be a list of tensors \(one per slice\), "
                                        r"got Tensor\."):
        call(case, lora_a=case.lora_a[0])
    assert torch.equal(case.y, y_before)


def test_none_inside_a_list_is_refused(case):
    y_before = case.y.clone()
    with pytest.raises(TypeError, match=r"add_lora_slices: ranks\[1\] must be a Tensor, got NoneType\."):
        call(case, ranks=[case.ranks[0], None, case.ranks[2]])
    assert torch.equal(case.y, y_before)


def test_a_later_slice_error_writes_no_earlier_slice(case):
    """Every slice is checked before any slice runs: a bad rank in the last slice leaves y as it was."""
    expect_error(case, r"add_lora_slices \(slice 2\): ranks\[0\] = 9 is out of range", values=True,
                 ranks=replaced(case.ranks, 2, torch.tensor([9, 0, 0], dtype=torch.int32)))


def test_an_input_of_one_slice_over_another_slices_columns_is_refused(case):
    """The overlap rule holds over y as a whole: slice 2's scaling laid over slice 0's columns of y
    is refused by name, though it shares nothing with slice 2's own columns."""
    store = torch.randn(6 * 11)
    y = store.view(6, 11)  # slices of widths 5, 3, 3
    before = store.clone()
    with pytest.raises(RuntimeError, match=re.escape(
            "add_lora_slices: scaling[2] must not share memory with the output y, but it does; pass a copy "
            "(scaling[2].clone()).")):
        call(case, y=y, scaling=replaced(case.scaling, 2, y[1, 1:4]))
    assert torch.equal(store, before)


def test_inputs_beside_y_in_one_tensor_are_fine(case):
    """x in the columns next to y in one buffer (a fused layer's output) shares no memory with
    it: accepted, and the result is the reference's."""
    fused = torch.randn(6, 11 + 8)
    fused[:, 11:] = case.x
    y, x = fused[:, :11], fused[:, 11:]
    expected = lk.reference.add_lora_slices(y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices,
                                            ranks=case.ranks, lora_bias=case.lora_bias)
    call(case, y=y, x=x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_fake_impl_names_the_widths(case):
    """Under torch.compile the fake impl refuses a y whose width is not the slices' sum, with the same words."""
    with FakeTensorMode() as mode:
        fake = lambda t: mode.from_tensor(t)  # noqa: E731
        with pytest.raises(RuntimeError, match=r"add_lora_slices: y must have shape \[T, H_out\] with "
                                               r"H_out = 5 \+ 3 \+ 3 = 11 \(the slices' H_out side by side\), "
                                               r"got shape \[6, 10\]\."):
            torch.ops.lora_kernels.add_lora_slices(
                fake(torch.randn(6, 10)), fake(case.x), [fake(a) for a in case.lora_a],
                [fake(b) for b in case.lora_b], [fake(s) for s in case.scaling], fake(case.indices))
        with pytest.raises(RuntimeError, match=r"add_lora_slices: lora_b must be a list of 3 tensors"):
            torch.ops.lora_kernels.add_lora_slices(
                fake(case.y), fake(case.x), [fake(a) for a in case.lora_a],
                [fake(b) for b in case.lora_b[:2]], [fake(s) for s in case.scaling], fake(case.indices))
