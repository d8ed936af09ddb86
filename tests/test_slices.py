"""add_lora_slices on every device (cpu, cuda) against the float64 reference and add_lora per
column slice (DESIGN §6); on CPU also opcheck, torch.compile and random cases; on CUDA also CUDA
graphs, streams and debug checks. CUDA parameters and CUDA-only tests are skipped, visibly,
without a CUDA device or build (tests/conftest.py).

This build's CUDA add_lora_slices is one shrink and one expand launch for up to 8 slices whose
blocks run the add_lora kernels' own per-block code on each slice's params (the same vector path
add_lora would take; for few tokens the same decode config: split-K shrink, or shrink and expand
fused, the decode shapes below), so it is bit-for-bit add_lora on each slice (as the CPU op is), and EXACT
says so (checked on the CPU executor by tests/simt; not yet on a GPU); a kernel that sums in
another order sets EXACT = False (then add_lora per slice is compared within the tolerance).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lora_kernels as lk
from helpers.devices import on_busy_side_stream, per_device
from helpers.slice_cases import check_add_lora_slices, make_slice_case

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EXACT = True

SHAPES = per_device({  # T, H_in, widths (H_out_i), N, max ranks (R_i)
    "cpu": {
        "qkv-gqa": (21, 64, (64, 16, 16), 6, (8, 4, 6)),
        "gate-up": (37, 48, (96, 96), 5, (16, 16)),
        "odd": (13, 97, (1, 3, 131), 4, (7, 1, 5)),
        "one-slice": (9, 33, (17,), 3, (4,)),
        "T=0": (0, 32, (16, 8), 3, (4, 2)),
        "H=4097": (5, 4097, (4097, 3), 2, (4, 2)),
        "slice-R=0": (11, 24, (10, 6, 8), 3, (4, 0, 3)),  # a slice without any rank rows
        "packed-shrink": (300, 70, (40, 24, 24), 3, (20, 12, 8)),  # >= 4 items of >= 16 tokens
        "long-groups": (150, 24, (20, 12), 2, (5, 3)),  # groups split into several work items
    },
    "cuda": {
        "llama3-8b-qkv-decode": (64, 4096, (4096, 1024, 1024), 16, (16, 8, 8)),
        "qkv-decode-T=1": (1, 4096, (4096, 1024, 1024), 4, (16, 8, 8)),  # q plain, k / v fused
        "decode-T=3-H_in=4097": (3, 4097, (1100, 200, 200), 4, (16, 8, 4)),  # q split-K, k / v fused
        "gate-up-prefill": (300, 512, (1024, 1024), 4, (32, 32)),
        "odd": (37, 97, (1, 3, 131), 5, (7, 1, 5)),
        "slice-R=0": (11, 24, (10, 6, 8), 3, (4, 0, 3)),
        "T=0": (0, 32, (16, 8), 3, (4, 2)),
    },
})

# Column slices of wider buffers with int64 indices: on CPU in each dtype; on CUDA rows not
# 16-byte aligned, all dtypes in one test, with 7 segments.
STRIDED = per_device({
    "cpu": {str(dtype): [dict(dtype=dtype, T=19, H_in=40, widths=(32, 8, 8), N=4, max_ranks=(8, 4, 4), seed=4)]
            for dtype in DTYPES},
    "cuda": {"unaligned": [dict(dtype=dtype, T=33, H_in=72, widths=(40, 8, 8), N=4, max_ranks=(8, 4, 4),
                                num_segments=7) for dtype in DTYPES]},
})


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,shape", SHAPES)
def test_add_lora_slices_matches_reference(device, shape, dtype, segments):
    T, H_in, widths, N, max_ranks = shape
    check_add_lora_slices(device, dtype, segments, EXACT, T=T, H_in=H_in, widths=widths, N=N,
                          max_ranks=max_ranks, seed=sum(widths) + T)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("device,cases", STRIDED)
def test_strided_views_int64_indices(device, cases, segments):
    for case in cases:
        case = dict(case)
        check_add_lora_slices(device, case.pop("dtype"), segments, EXACT, strided=True,
                              index_dtype=torch.int64, **case)


# --- CPU only ------------------------------------------------------------------------------

@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
def test_no_ranks_no_bias(segments):
    check_add_lora_slices("cpu", torch.float32, segments, T=17, H_in=20, widths=(12, 7), N=3, max_ranks=(4, 6),
                          mixed_ranks=False, bias=False, seed=8)


def test_empty_segments():
    check_add_lora_slices("cpu", torch.float32, True, T=12, H_in=16, widths=(8, 4, 4), N=3, max_ranks=(4, 2, 3),
                          num_segments=9, seed=5)
    check_add_lora_slices("cpu", torch.float32, True, T=0, H_in=8, widths=(8, 4), N=2, max_ranks=(4, 2),
                          num_segments=0)


def test_every_token_without_adapter_leaves_y_untouched():
    case = make_slice_case(T=10, H_in=8, widths=(8, 4), N=0, max_ranks=(4, 2), mixed_ranks=False, bias=False)
    y_in = case.y.clone()
    lk.add_lora_slices(case.y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices)
    assert torch.equal(case.y, y_in)


def test_unsorted_indices_same_as_sorted():
    case = make_slice_case(T=40, H_in=24, widths=(24, 8, 8), N=4, max_ranks=(4, 2, 3), bias=False)
    perm = torch.randperm(40)
    y1, y2 = case.y.clone(), case.y.clone()[perm]
    args = (case.lora_a, case.lora_b, case.scaling)
    lk.add_lora_slices(y1, case.x, *args, case.indices, ranks=case.ranks)
    lk.add_lora_slices(y2, case.x[perm], *args, case.indices[perm], ranks=case.ranks)
    torch.testing.assert_close(y1[perm], y2, rtol=1e-6, atol=1e-6)


def test_slices_differ_in_scale_and_rank():
    """Each slice uses its own scale and rank: q (R 2 used at rank 1, scale 0.5), k (r 1, scale 3)."""
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    a_q = torch.tensor([[[1.0, 0.0], [float("nan"), float("nan")]]], dtype=torch.float64)  # [1, 2, 2]
    b_q = torch.tensor([[[1.0, float("nan")]]], dtype=torch.float64)  # [1, 1, 2]
    a_k = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)  # [1, 1, 2]
    b_k = torch.tensor([[[2.0], [-1.0]]], dtype=torch.float64)  # [1, 2, 1]
    y = torch.zeros(1, 3, dtype=torch.float64)
    ranks = [torch.tensor([1]), torch.tensor([1])]
    lk.add_lora_slices(y, x, (a_q, a_k), (b_q, b_k), (torch.tensor([0.5]), torch.tensor([3.0])), torch.tensor([0]),
                       ranks=ranks)  # tuples work as lists
    assert y.tolist() == [[0.5 * 1.0, 3.0 * 3.0 * 2.0, 3.0 * 3.0 * -1.0]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    T=st.integers(0, 40), H_in=st.integers(1, 70), widths=st.lists(st.integers(1, 50), min_size=1, max_size=4),
    N=st.integers(1, 6), R=st.integers(0, 12), segments=st.booleans(), dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 10_000), strided=st.booleans(),
)
def test_random_cases(T, H_in, widths, N, R, segments, dtype, seed, strided):
    max_ranks = tuple((R + 3 * i) % 13 for i in range(len(widths)))
    check_add_lora_slices("cpu", dtype, segments, T=T, H_in=H_in, widths=tuple(widths), N=N, max_ranks=max_ranks,
                          seed=seed, strided=strided)


# --- torch.library integration -------------------------------------------------------------

def test_opcheck_indices():
    case = make_slice_case(T=9, H_in=12, widths=(10, 4, 4), N=3, max_ranks=(4, 2, 3))
    torch.library.opcheck(
        torch.ops.lora_kernels.add_lora_slices,
        (case.y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices),
        dict(ranks=case.ranks, lora_bias=case.lora_bias),
    )


def test_opcheck_segments():
    case = make_slice_case(T=9, H_in=12, widths=(6, 6), N=3, max_ranks=(4, 4), mixed_ranks=False)
    torch.library.opcheck(
        torch.ops.lora_kernels.add_lora_slices,
        (case.y.clone(), case.x, case.lora_a, case.lora_b, case.scaling),
        dict(seg_indptr=case.seg_indptr, seg_adapter=case.seg_adapter, lora_bias=case.lora_bias),
    )


def test_torch_compile_fullgraph():
    case = make_slice_case(T=14, H_in=16, widths=(16, 4, 4), N=3, max_ranks=(4, 2, 2))

    def layer(x, w, indices):
        qkv = x @ w  # the fused base projection, then its LoRA slices
        lk.add_lora_slices(qkv, x, case.lora_a, case.lora_b, case.scaling, indices, ranks=case.ranks,
                           lora_bias=case.lora_bias)
        lk.add_lora_slices(qkv, x, case.lora_a, case.lora_b, case.scaling, seg_indptr=case.seg_indptr,
                           seg_adapter=case.seg_adapter, ranks=case.ranks)
        return qkv * 2

    w = torch.randn(16, 24)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    expected = layer(case.x, w, case.indices)
    torch.testing.assert_close(compiled(case.x, w, case.indices), expected)


# --- CUDA only: graphs, streams, LORA_KERNELS_DEBUG, device mismatch, opcheck --------------

def _case():
    return make_slice_case(T=64, H_in=256, widths=(256, 64, 64), N=8, max_ranks=(16, 8, 8), dtype=torch.bfloat16,
                           device="cuda", seed=11)


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay():
    case = _case()
    static_y = case.y.clone()
    y_in = static_y.clone()
    args = (case.lora_a, case.lora_b, case.scaling)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture
        lk.add_lora_slices(static_y.clone(), case.x, *args, case.indices, ranks=case.ranks)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lk.add_lora_slices(static_y, case.x, *args, case.indices, ranks=case.ranks, lora_bias=case.lora_bias)
    for seed in (1, 2):  # new indices between replays: nothing baked in at capture
        case.indices.copy_(make_slice_case(T=64, H_in=256, widths=(256, 64, 64), N=8, max_ranks=(16, 8, 8),
                                           device="cuda", seed=seed).indices)
        static_y.copy_(y_in)
        graph.replay()
        expected = y_in.clone()
        lk.add_lora_slices(expected, case.x, *args, case.indices, ranks=case.ranks, lora_bias=case.lora_bias)
        torch.cuda.synchronize()
        assert torch.equal(static_y, expected)


@pytest.mark.cuda
def test_non_default_stream():
    case = _case()

    def update(y):
        lk.add_lora_slices(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks)

    y_ref = case.y.clone()
    update(y_ref)
    assert torch.equal(on_busy_side_stream(update, case.y.clone()), y_ref)


@pytest.mark.cuda
def test_debug_switch_checks_every_slice(monkeypatch):
    monkeypatch.setenv("LORA_KERNELS_DEBUG", "1")
    case = make_slice_case(T=16, H_in=64, widths=(32, 8, 8), N=3, max_ranks=(4, 2, 2), device="cuda")
    y = case.y.clone()
    bad = case.indices.clone()
    bad[3] = 1000
    with pytest.raises(RuntimeError, match=r"add_lora_slices: indices\[3\] = 1000 is out of range"):
        lk.add_lora_slices(y, case.x, case.lora_a, case.lora_b, case.scaling, bad, ranks=case.ranks)
    ranks = list(case.ranks)
    ranks[2] = torch.tensor([2, 3, 0], dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match=r"add_lora_slices \(slice 2\): ranks\[1\] = 3 is out of range"):
        lk.add_lora_slices(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=ranks)
    assert torch.equal(y, case.y)


@pytest.mark.cuda
def test_device_mismatch_is_named():
    case = make_slice_case(T=4, H_in=8, widths=(8, 4), N=2, max_ranks=(4, 2), device="cuda")
    lora_b = [case.lora_b[0], case.lora_b[1].cpu()]
    with pytest.raises(RuntimeError, match=r"add_lora_slices: lora_b\[1\] must be on the same device as y "
                                           r"\(cuda:0\), got cpu\."):
        lk.add_lora_slices(case.y, case.x, case.lora_a, lora_b, case.scaling, case.indices, ranks=case.ranks)


@pytest.mark.cuda
def test_opcheck_cuda():
    case = make_slice_case(T=9, H_in=12, widths=(10, 4, 4), N=3, max_ranks=(4, 2, 3), device="cuda")
    torch.library.opcheck(
        torch.ops.lora_kernels.add_lora_slices,
        (case.y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices),
        dict(ranks=case.ranks, lora_bias=case.lora_bias),
    )
