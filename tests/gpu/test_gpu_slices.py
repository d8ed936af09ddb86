"""add_lora_slices on CUDA against the float64 reference and add_lora per column slice; CUDA
graphs, streams, debug checks (DESIGN §6). Skipped without a CUDA device or build (conftest.py).

This build's CUDA add_lora_slices is one shrink and one expand launch for up to 8 slices whose
blocks run the add_lora kernels' own per-block code on each slice's params (the same vector path
add_lora would take), so it is bit-for-bit add_lora on each slice, and EXACT says so (checked on
the CPU executor by tests/simt; not yet on a GPU); a kernel that sums in another order sets
EXACT = False (then add_lora per slice is compared within the tolerance).
"""

import pytest
import torch

import lora_kernels as lk
from slice_cases import check_add_lora_slices, make_slice_case

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SHAPES = {  # T, H_in, widths (H_out_i), N, max ranks (R_i)
    "llama3-8b-qkv-decode": (64, 4096, (4096, 1024, 1024), 16, (16, 8, 8)),
    "gate-up-prefill": (300, 512, (1024, 1024), 4, (32, 32)),
    "odd": (37, 97, (1, 3, 131), 5, (7, 1, 5)),
    "slice-R=0": (11, 24, (10, 6, 8), 3, (4, 0, 3)),
    "T=0": (0, 32, (16, 8), 3, (4, 2)),
}
EXACT = True


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_add_lora_slices(shape, dtype, segments):
    T, H_in, widths, N, max_ranks = shape
    check_add_lora_slices("cuda", dtype, segments, EXACT, T=T, H_in=H_in, widths=widths, N=N,
                          max_ranks=max_ranks, seed=sum(widths) + T)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
def test_strided_unaligned(segments):
    for dtype in DTYPES:
        check_add_lora_slices("cuda", dtype, segments, EXACT, T=33, H_in=72, widths=(40, 8, 8), N=4,
                              max_ranks=(8, 4, 4), strided=True, index_dtype=torch.int64, num_segments=7)


def _case():
    return make_slice_case(T=64, H_in=256, widths=(256, 64, 64), N=8, max_ranks=(16, 8, 8), dtype=torch.bfloat16,
                           device="cuda", seed=11)


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


def test_non_default_stream():
    case = _case()
    args = (case.lora_a, case.lora_b, case.scaling)
    y_ref = case.y.clone()
    lk.add_lora_slices(y_ref, case.x, *args, case.indices, ranks=case.ranks)
    y = case.y.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(1_000_000)  # keep the side stream busy: a default-stream launch would race
        lk.add_lora_slices(y, case.x, *args, case.indices, ranks=case.ranks)
        out = y.clone()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(out, y_ref)


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


def test_device_mismatch_is_named():
    case = make_slice_case(T=4, H_in=8, widths=(8, 4), N=2, max_ranks=(4, 2), device="cuda")
    lora_b = [case.lora_b[0], case.lora_b[1].cpu()]
    with pytest.raises(RuntimeError, match=r"add_lora_slices: lora_b\[1\] must be on the same device as y "
                                           r"\(cuda:0\), got cpu\."):
        lk.add_lora_slices(case.y, case.x, case.lora_a, lora_b, case.scaling, case.indices, ranks=case.ranks)


def test_opcheck_cuda():
    case = make_slice_case(T=9, H_in=12, widths=(10, 4, 4), N=3, max_ranks=(4, 2, 3), device="cuda")
    torch.library.opcheck(
        torch.ops.lora_kernels.add_lora_slices,
        (case.y.clone(), case.x, case.lora_a, case.lora_b, case.scaling, case.indices),
        dict(ranks=case.ranks, lora_bias=case.lora_bias),
    )
