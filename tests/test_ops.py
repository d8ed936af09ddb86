"""Ops on every device (cpu, cuda) against the float64 reference (DESIGN §6); on CPU also
opcheck, torch.compile and random cases; on CUDA also CUDA graphs, streams and debug checks.

CUDA parameters and CUDA-only tests are skipped, visibly, without a CUDA device or build
(tests/conftest.py).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lora_kernels as lk
from helpers.devices import on_busy_side_stream, per_device
from helpers.lora_cases import make_case
from helpers.op_checks import check_add_lora, check_embedding, check_shrink_expand

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

SHARED_SHAPES = {  # T, H_in, H_out, N, R: on every device
    "odd": (37, 97, 131, 5, 7),
    "H=1": (9, 1, 1, 3, 4),
    "H=3": (11, 3, 3, 4, 2),
    "H=4097": (5, 4097, 4097, 2, 4),
    "T=0": (0, 32, 16, 3, 4),
}
SHAPES = per_device({
    "cpu": {
        "decode": (16, 64, 48, 6, 8),
        **SHARED_SHAPES,
        "one-token": (1, 40, 24, 2, 16),
        "long-groups": (150, 24, 20, 2, 5),  # > 32 tokens per slot: groups split into work items
        "rank-1": (13, 33, 17, 3, 1),
        "packed-shrink": (300, 70, 40, 3, 20),  # >= 4 items of >= 16 tokens: the packed CPU shrink
    },
    "cuda": {
        "decode-64": (64, 4096, 4096, 64, 16),
        "shared-adapter": (64, 512, 768, 1, 16),
        **SHARED_SHAPES,
        "prefill": (1000, 256, 384, 6, 64),
        "rank-128": (20, 128, 160, 3, 128),
        "T=70000": (70000, 24, 16, 5, 4),  # the device plan at large T: > 65535 tokens, groups on grid.x
    },
})

SHRINK_EXPAND = per_device({
    "cpu": {"T=29": dict(T=29, H_in=70, H_out=53, N=5, R=6, seed=3)},
    "cuda": {"T=45": dict(T=45, H_in=264, H_out=136, N=5, R=16, seed=7)},
})

# Column slices of wider buffers with int64 indices. On CUDA the rows are not 16-byte aligned, so
# the scalar path runs, in every dtype; on CPU float32 without bias, all ranks full.
STRIDED = per_device({
    "cpu": {"float32-no-bias-full-ranks": [
        dict(dtype=torch.float32, T=21, H_in=40, H_out=36, N=4, R=8, bias=False, mixed_ranks=False)]},
    "cuda": {"unaligned": [dict(dtype=dtype, T=33, H_in=72, H_out=40, N=4, R=8) for dtype in DTYPES]},
})


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,shape", SHAPES)
def test_add_lora_matches_reference(device, shape, dtype, segments):
    T, H_in, H_out, N, R = shape
    check_add_lora(device, dtype, segments, T=T, H_in=H_in, H_out=H_out, N=N, R=R, seed=hash(shape) % 1000)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,sizes", SHRINK_EXPAND)
def test_shrink_and_expand_separately(device, sizes, dtype, segments):
    check_shrink_expand(device, dtype, segments, **sizes)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("device,cases", STRIDED)
def test_strided_views_int64_indices(device, cases, segments):
    for case in cases:
        case = dict(case)
        check_add_lora(device, case.pop("dtype"), segments, strided=True, index_dtype=torch.int64, **case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_lora_embedding_matches_reference(device, dtype):
    check_embedding(device, dtype)


# --- CPU only ------------------------------------------------------------------------------

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


# --- CUDA only: graphs, streams, LORA_KERNELS_DEBUG, device mismatch ---------------------

def _graph_case():
    return make_case(T=64, H_in=256, H_out=192, N=8, R=16, dtype=torch.bfloat16, device="cuda", seed=11)


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay():
    case = _graph_case()
    static_y = case.y.clone()
    y_in = static_y.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture
        lk.add_lora(static_y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lk.add_lora(static_y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks,
                    lora_bias=case.lora_bias)
        lk.add_lora(static_y, case.x, case.lora_a, case.lora_b, case.scaling, seg_indptr=case.seg_indptr,
                    seg_adapter=case.seg_adapter, ranks=case.ranks)
    for _ in range(2):  # new indices and segments between replays: nothing baked in at capture
        new = make_case(T=64, H_in=256, H_out=192, N=8, R=16, dtype=torch.bfloat16, device="cuda",
                        seed=int(torch.randint(0, 10_000, ())))
        case.indices.copy_(new.indices)
        case.seg_indptr.copy_(new.seg_indptr)  # same S: the segment count is a shape, fixed at capture
        case.seg_adapter.copy_(new.seg_adapter)
        static_y.copy_(y_in)
        graph.replay()
        expected = y_in.clone()
        lk.add_lora(expected, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks,
                    lora_bias=case.lora_bias)
        lk.add_lora(expected, case.x, case.lora_a, case.lora_b, case.scaling, seg_indptr=case.seg_indptr,
                    seg_adapter=case.seg_adapter, ranks=case.ranks)
        torch.cuda.synchronize()
        assert torch.equal(static_y, expected)


@pytest.mark.cuda
def test_non_default_stream():
    case = _graph_case()

    def update(y):
        lk.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks)

    y_ref = case.y.clone()
    update(y_ref)
    assert torch.equal(on_busy_side_stream(update, case.y.clone()), y_ref)


# Few tokens take the decode kernels (csrc/kernels/decode.cu): a split-K shrink with the last
# block of each group reducing the partials, and for H_out <= 1024 shrink + expand in one launch.
DECODE_SHAPES = [(1, 4096, 4096), (3, 4096, 1024), (8, 14336, 512), (64, 256, 200)]


@pytest.mark.cuda
@pytest.mark.parametrize("T,H_in,H_out", DECODE_SHAPES)
@pytest.mark.parametrize("segments", [False, True])
def test_cuda_decode_paths_match_reference(T, H_in, H_out, segments):
    check_add_lora("cuda", torch.bfloat16, segments, T=T, H_in=H_in, H_out=H_out, N=4, R=16)
    check_shrink_expand("cuda", torch.bfloat16, segments, T=T, H_in=H_in, H_out=H_out, N=4, R=16)


@pytest.mark.cuda
@pytest.mark.parametrize("T,H_in,H_out", DECODE_SHAPES)
def test_cuda_decode_paths_are_deterministic_and_capturable(T, H_in, H_out):
    """Bit-equal run to run (the partials are summed in a fixed order, whichever block of a group
    arrives last) and under CUDA-graph replay (workspace, counter reset and grid from shapes only)."""
    case = make_case(T=T, H_in=H_in, H_out=H_out, N=4, R=16, dtype=torch.bfloat16, device="cuda", seed=5)

    def update(y):
        lk.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks,
                    lora_bias=case.lora_bias)
        return y

    first = update(case.y.clone())
    v_first = lk.bgmv_shrink(case.x, case.lora_a, case.indices, ranks=case.ranks)
    for _ in range(3):
        assert torch.equal(update(case.y.clone()), first)
        assert torch.equal(lk.bgmv_shrink(case.x, case.lora_a, case.indices, ranks=case.ranks), v_first)
    static_y = case.y.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        update(case.y.clone())
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        update(static_y)
    for _ in range(2):
        static_y.copy_(case.y)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, first)


@pytest.mark.cuda
def test_out_of_range_indices_stay_in_bounds_without_debug(monkeypatch):
    monkeypatch.delenv("LORA_KERNELS_DEBUG", raising=False)
    case = make_case(T=16, H_in=64, H_out=32, N=3, R=4, device="cuda")
    bad = case.indices.clone()
    bad[3], bad[5] = 1000, -7  # treated as "no adapter" by the kernels, never dereferenced
    y = case.y.clone()
    lk.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, bad, ranks=case.ranks)
    torch.cuda.synchronize()
    assert torch.equal(y[3], case.y[3]) and torch.equal(y[5], case.y[5])


@pytest.mark.cuda
def test_debug_switch_checks_index_values(monkeypatch):
    monkeypatch.setenv("LORA_KERNELS_DEBUG", "1")
    case = make_case(T=16, H_in=64, H_out=32, N=3, R=4, device="cuda")
    bad = case.indices.clone()
    bad[3] = 1000
    y = case.y.clone()
    with pytest.raises(RuntimeError, match=r"add_lora: indices\[3\] = 1000 is out of range; expected -1 <= indices\[t\] < N = 3"):
        lk.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, bad, ranks=case.ranks)
    with pytest.raises(RuntimeError, match=r"ranks\[0\] = 9 is out of range"):
        lk.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices,
                    ranks=torch.tensor([9, 1, 1], dtype=torch.int32, device="cuda"))
    assert torch.equal(y, case.y)


@pytest.mark.cuda
def test_device_mismatch_is_named():
    case = make_case(T=4, H_in=8, H_out=8, N=2, R=4, device="cuda")
    with pytest.raises(RuntimeError, match=r"add_lora: indices must be on the same device as y \(cuda:0\), got cpu"):
        lk.add_lora(case.y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices.cpu())
    with pytest.raises(RuntimeError, match=r"lora_a must be on the same device as y \(cuda:0\), got cpu"):
        lk.add_lora(case.y, case.x, case.lora_a.cpu(), case.lora_b, case.scaling, case.indices)
    with pytest.raises(RuntimeError, match=r"lora_a must be on the same device as y \(cpu\), got cuda:0"):
        lk.add_lora(case.y.cpu(), case.x.cpu(), case.lora_a, case.lora_b.cpu(), case.scaling.cpu(), case.indices.cpu())
