"""CPU ops against the float64 reference (DESIGN §6), opcheck and torch.compile."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lora_kernels as lk
from lora_cases import make_case
from op_checks import check_add_lora, check_embedding, check_shrink_expand

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

SHAPES = {  # T, H_in, H_out, N, R
    "decode": (16, 64, 48, 6, 8),
    "odd": (37, 97, 131, 5, 7),
    "H=1": (9, 1, 1, 3, 4),
    "H=3": (11, 3, 3, 4, 2),
    "H=4097": (5, 4097, 4097, 2, 4),
    "T=0": (0, 32, 16, 3, 4),
    "one-token": (1, 40, 24, 2, 16),
    "long-groups": (150, 24, 20, 2, 5),  # > 32 tokens per slot: groups split into work items
    "rank-1": (13, 33, 17, 3, 1),
    "packed-shrink": (300, 70, 40, 3, 20),  # >= 4 items of >= 16 tokens: the packed CPU shrink
}


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_add_lora_matches_reference(shape, dtype, segments):
    T, H_in, H_out, N, R = shape
    check_add_lora("cpu", dtype, segments, T=T, H_in=H_in, H_out=H_out, N=N, R=R, seed=hash(shape) % 1000)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shrink_and_expand_separately(dtype, segments):
    check_shrink_expand("cpu", dtype, segments, T=29, H_in=70, H_out=53, N=5, R=6, seed=3)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
def test_strided_views_int64_indices_no_bias_full_ranks(segments):
    check_add_lora("cpu", torch.float32, segments, T=21, H_in=40, H_out=36, N=4, R=8, strided=True,
                   index_dtype=torch.int64, bias=False, mixed_ranks=False)


def test_empty_segments_and_no_segments():
    check_add_lora("cpu", torch.float32, True, T=12, H_in=16, H_out=8, N=3, R=4, num_segments=9, seed=5)
    case = make_case(T=0, H_in=8, H_out=8, N=2, R=4, num_segments=0)
    y_in = case.y.clone()
    lk.add_lora(case.y, case.x, case.lora_a, case.lora_b, case.scaling, seg_indptr=case.seg_indptr,
                seg_adapter=case.seg_adapter)
    assert torch.equal(case.y, y_in)


def test_every_token_without_adapter_leaves_y_untouched():
    case = make_case(T=10, H_in=8, H_out=8, N=0, R=4)
    y_in = case.y.clone()
    lk.add_lora(case.y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices)
    assert torch.equal(case.y, y_in)
    v = lk.bgmv_shrink(case.x, case.lora_a, case.indices)
    assert torch.equal(v, torch.zeros(10, 4))


def test_unsorted_indices_same_as_sorted():
    case = make_case(T=40, H_in=24, H_out=24, N=4, R=4, bias=False)
    perm = torch.randperm(40)
    y1, y2 = case.y.clone(), case.y.clone()[perm]
    lk.add_lora(y1, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks)
    lk.add_lora(y2, case.x[perm], case.lora_a, case.lora_b, case.scaling, case.indices[perm], ranks=case.ranks)
    torch.testing.assert_close(y1[perm], y2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_lora_embedding_matches_reference(dtype):
    check_embedding("cpu", dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    T=st.integers(0, 40), H_in=st.integers(1, 70), H_out=st.integers(1, 70), N=st.integers(1, 6),
    R=st.integers(1, 20), segments=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 10_000),
    strided=st.booleans(),
)
def test_random_cases(T, H_in, H_out, N, R, segments, dtype, seed, strided):
    check_add_lora("cpu", dtype, segments, T=T, H_in=H_in, H_out=H_out, N=N, R=R, seed=seed, strided=strided)


def test_scale_applied_once_with_bias():
    """y += s * (x A^T B^T + bias): the bias is scaled too, as PEFT scales the whole branch."""
    x = torch.ones(1, 2, dtype=torch.float64)
    lora_a = torch.ones(1, 1, 2, dtype=torch.float64)
    lora_b = torch.ones(1, 1, 1, dtype=torch.float64)
    bias = torch.full((1, 1), 3.0, dtype=torch.float64)
    y = torch.zeros(1, 1, dtype=torch.float64)
    lk.add_lora(y, x, lora_a, lora_b, torch.tensor([0.5]), torch.tensor([0]), lora_bias=bias)
    assert y.item() == 0.5 * (2.0 + 3.0)


# --- torch.library integration -------------------------------------------------------------

def _op_samples():
    case = make_case(T=9, H_in=12, H_out=10, N=3, R=4)
    seg = (case.seg_indptr, case.seg_adapter)
    v = lk.bgmv_shrink(case.x, case.lora_a, case.indices, case.ranks)
    ops = torch.ops.lora_kernels
    token_ids = torch.randint(0, 7, (9,))
    emb_a, emb_b = torch.randn(3, 4, 7), torch.randn(3, 10, 4)
    return [
        (ops.bgmv_shrink, (case.x, case.lora_a, case.indices, case.ranks)),
        (ops.sgmv_shrink, (case.x, case.lora_a, *seg, case.ranks)),
        (ops.bgmv_expand, (case.y.clone(), v, case.lora_b, case.indices, case.scaling, case.ranks, case.lora_bias)),
        (ops.sgmv_expand, (case.y.clone(), v, case.lora_b, *seg, case.scaling, case.ranks, case.lora_bias)),
        (ops.add_lora, (case.y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices)),
        (ops.add_lora_embedding, (case.y.clone(), token_ids, emb_a, emb_b, case.scaling, case.indices, case.ranks)),
    ]


@pytest.mark.parametrize("sample", range(6))
def test_opcheck(sample):
    op, args = _op_samples()[sample]
    torch.library.opcheck(op, args)


def test_opcheck_add_lora_segments_kwargs():
    case = make_case(T=9, H_in=12, H_out=10, N=3, R=4)
    torch.library.opcheck(
        torch.ops.lora_kernels.add_lora,
        (case.y.clone(), case.x, case.lora_a, case.lora_b, case.scaling),
        dict(seg_indptr=case.seg_indptr, seg_adapter=case.seg_adapter, ranks=case.ranks, lora_bias=case.lora_bias),
    )


def test_torch_compile_fullgraph():
    case = make_case(T=14, H_in=16, H_out=12, N=3, R=4)

    def layer(x, y, indices):
        base = x @ torch.ones(16, 12)  # something around the op, as in a model
        out = base + y
        v = lk.bgmv_shrink(x, case.lora_a, indices, case.ranks)
        lk.bgmv_expand(out, v, case.lora_b, indices, case.scaling, case.ranks, case.lora_bias)
        lk.add_lora(out, x, case.lora_a, case.lora_b, case.scaling, seg_indptr=case.seg_indptr,
                    seg_adapter=case.seg_adapter, ranks=case.ranks)
        return out * 2

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    expected = layer(case.x, case.y, case.indices)
    torch.testing.assert_close(compiled(case.x, case.y, case.indices), expected)


def test_build_info():
    info = lk.build_info()
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["cpu"] is True and isinstance(info["cuda"], bool)
    assert info["version"] == lk.__version__
    if info["cuda"]:
        assert info["cuda_version"] and info["archs"]
