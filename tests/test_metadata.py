"""BatchMetadata.from_requests: per-token and per-segment slots of a batch, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_kernels.metadata import BatchMetadata


def _naive(slots: list[int], lengths: list[int]) -> dict:
    """The obvious Python construction the vectorised one must match."""
    indices: list[int] = []
    indptr = [0]
    for slot, length in zip(slots, lengths):
        indices += [slot] * length
        indptr.append(indptr[-1] + length)
    return dict(
        indices=indices,
        seg_indptr=indptr,
        seg_adapter=list(slots),
        num_tokens=len(indices),
        num_segments=len(slots),
        max_segment_length=max(lengths, default=0),
        is_decode=all(length == 1 for length in lengths),
        distinct_adapters=len({s for s in slots if s >= 0}),
    )


def _check(meta: BatchMetadata, slots: list[int], lengths: list[int]) -> None:
    want = _naive(slots, lengths)
    for name in ("indices", "seg_indptr", "seg_adapter"):
        t = getattr(meta, name)
        assert t.dtype == torch.int32 and t.dim() == 1 and t.device.type == "cpu", name
        assert t.tolist() == want[name], name
    for name in (
        "num_tokens",
        "num_segments",
        "max_segment_length",
        "is_decode",
        "distinct_adapters",
    ):
        value = getattr(meta, name)
        assert type(value) is type(want[name]) and value == want[name], name


requests = st.integers(0, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-1, 7), min_size=n, max_size=n),
        st.lists(st.integers(0, 9), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(requests)
def test_matches_naive_construction(req: tuple[list[int], list[int]]) -> None:
    slots, lengths = req
    _check(BatchMetadata.from_requests(slots, lengths, num_slots=8), slots, lengths)


@pytest.mark.parametrize(
    "convert",
    [
        list,
        tuple,
        lambda v: torch.tensor(v, dtype=torch.int64),
        lambda v: torch.tensor(v, dtype=torch.int32),
        lambda v: np.asarray(v, dtype=np.int64),
        lambda v: [np.int32(x) for x in v],
    ],
    ids=["list", "tuple", "tensor64", "tensor32", "numpy", "numpy-scalars"],
)
def test_accepted_sequence_types(convert) -> None:
    slots, lengths = [2, -1, 0, 2], [3, 1, 0, 5]
    _check(BatchMetadata.from_requests(convert(slots), convert(lengths)), slots, lengths)


def test_examples() -> None:
    meta = BatchMetadata.from_requests([0, -1, 2], [5, 1, 3])
    assert meta.indices.tolist() == [0] * 5 + [-1] + [2] * 3
    assert meta.seg_indptr.tolist() == [0, 5, 6, 9]
    assert meta.seg_adapter.tolist() == [0, -1, 2]
    assert (meta.num_tokens, meta.num_segments, meta.max_segment_length) == (9, 3, 5)
    assert not meta.is_decode and meta.distinct_adapters == 2

    decode = BatchMetadata.from_requests([3, 3, -1, 1], [1, 1, 1, 1])
    assert decode.is_decode and decode.distinct_adapters == 2
    assert decode.indices.tolist() == [3, 3, -1, 1]


def test_requests_are_not_merged() -> None:
    meta = BatchMetadata.from_requests([4, 4, 4], [2, 0, 1])
    assert meta.seg_adapter.tolist() == [4, 4, 4]
    assert meta.seg_indptr.tolist() == [0, 2, 2, 3]  # the empty segment stays
    assert meta.distinct_adapters == 1


def test_empty_batch() -> None:
    meta = BatchMetadata.from_requests([], [])
    assert meta.indices.shape == (0,) and meta.seg_adapter.shape == (0,)
    assert meta.seg_indptr.tolist() == [0]
    assert (meta.num_tokens, meta.num_segments, meta.max_segment_length) == (0, 0, 0)
    assert meta.distinct_adapters == 0


def test_three_views_of_one_buffer() -> None:
    # One host buffer, one host-to-device copy: all three tensors share its storage.
    meta = BatchMetadata.from_requests([1, -1], [3, 2])
    storage = meta.indices.untyped_storage().data_ptr()
    assert meta.seg_indptr.untyped_storage().data_ptr() == storage
    assert meta.seg_adapter.untyped_storage().data_ptr() == storage
    for t in (meta.indices, meta.seg_indptr, meta.seg_adapter):
        assert t.is_contiguous()


def test_large_batch_is_vectorised() -> None:
    # Two million tokens in four requests: a loop over tokens would be visibly slow here.
    meta = BatchMetadata.from_requests([0, -1, 1, 0], [500_000] * 4)
    assert meta.num_tokens == 2_000_000
    assert meta.indices[499_999].item() == 0 and meta.indices[500_000].item() == -1
    assert meta.seg_indptr.tolist() == [0, 500_000, 1_000_000, 1_500_000, 2_000_000]


def test_frozen() -> None:
    meta = BatchMetadata.from_requests([0], [1])
    with pytest.raises(AttributeError):
        meta.num_tokens = 5  # type: ignore[misc]


# --- one test per error message -------------------------------------------------------------

P = r"BatchMetadata\.from_requests: "


def test_not_a_sequence() -> None:
    with pytest.raises(
        TypeError, match=P + r"adapter_slots must be a sequence of ints .* got int\."
    ):
        BatchMetadata.from_requests(3, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=P + r"lengths must be a sequence of ints .* got str\."):
        BatchMetadata.from_requests([0], "1")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.0, True, "1", None])
def test_element_not_int(bad: object) -> None:
    with pytest.raises(TypeError, match=P + r"lengths\[1\] must be an int, got .* of type"):
        BatchMetadata.from_requests([0, 0], [1, bad])  # type: ignore[list-item]


def test_element_beyond_int64() -> None:
    with pytest.raises(
        ValueError, match=P + r"adapter_slots\[0\] must fit int32, got 1180591620717411303424\."
    ):
        BatchMetadata.from_requests([2**70], [1])


def test_tensor_not_1d() -> None:
    with pytest.raises(
        ValueError, match=P + r"lengths must be 1-D .* got a tensor of shape \[2, 1\]\."
    ):
        BatchMetadata.from_requests([0, 1], torch.ones(2, 1, dtype=torch.int64))


def test_tensor_not_int() -> None:
    with pytest.raises(
        TypeError, match=P + r"adapter_slots must hold ints, got a tensor of dtype"
    ):
        BatchMetadata.from_requests(torch.zeros(2), [1, 1])


def test_array_not_1d() -> None:
    with pytest.raises(
        ValueError, match=P + r"lengths must be 1-D .* got an array of shape \[1, 2\]\."
    ):
        BatchMetadata.from_requests([0, 1], np.ones((1, 2), dtype=np.int64))


def test_array_not_int() -> None:
    with pytest.raises(
        TypeError, match=P + r"lengths must hold ints, got an array of dtype float64\."
    ):
        BatchMetadata.from_requests([0, 1], np.ones(2))


def test_length_mismatch() -> None:
    with pytest.raises(
        ValueError,
        match=P + r"adapter_slots and lengths must have .* the same length, got 3 and 2\.",
    ):
        BatchMetadata.from_requests([0, 1, 2], [1, 1])


@pytest.mark.parametrize("num_slots", [-1, 2.0, True])
def test_num_slots_invalid(num_slots: object) -> None:
    with pytest.raises(ValueError, match=P + r"num_slots must be a non-negative int or None, got"):
        BatchMetadata.from_requests([0], [1], num_slots=num_slots)  # type: ignore[arg-type]


def test_slot_below_minus_one() -> None:
    with pytest.raises(
        ValueError, match=P + r"adapter_slots\[2\] must be >= -1 \(-1 = no adapter\), got -2\."
    ):
        BatchMetadata.from_requests([0, -1, -2], [1, 1, 1])


def test_slot_not_below_num_slots() -> None:
    with pytest.raises(
        ValueError, match=P + r"adapter_slots\[1\] must be < num_slots = 4, got 4\."
    ):
        BatchMetadata.from_requests([3, 4], [1, 1], num_slots=4)


def test_slot_beyond_int32() -> None:
    with pytest.raises(
        ValueError, match=P + r"adapter_slots\[0\] must fit int32 .* got 2147483648\."
    ):
        BatchMetadata.from_requests([2**31], [1])


def test_negative_length() -> None:
    with pytest.raises(ValueError, match=P + r"lengths\[1\] must be >= 0, got -3\."):
        BatchMetadata.from_requests([0, 0], [2, -3])


def test_single_length_beyond_int32() -> None:
    with pytest.raises(
        ValueError,
        match=P + r"the total token count T must fit int32 \(<= 2147483647\), "
        r"but lengths\[0\] alone is 2147483648\.",
    ):
        BatchMetadata.from_requests([0], [2**31])


def test_total_tokens_beyond_int32() -> None:
    with pytest.raises(
        ValueError,
        match=P + r"the total token count T must fit int32 \(<= 2147483647\), "
        r"but the running total reaches 3000000000 at lengths\[2\]\.",
    ):
        BatchMetadata.from_requests([0, 1, 2], [1_000_000_000] * 3)
