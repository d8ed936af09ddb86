"""CUDA ops against the float64 reference, CUDA graphs, streams, debug checks (DESIGN §6).

Skipped, visibly, where no CUDA device or no CUDA build is present (see conftest.py).
"""

import pytest
import torch

import lora_kernels as lk
from lora_cases import make_case
from op_checks import check_add_lora, check_embedding, check_shrink_expand

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SHAPES = {  # T, H_in, H_out, N, R
    "decode-64": (64, 4096, 4096, 64, 16),
    "shared-adapter": (64, 512, 768, 1, 16),
    "odd": (37, 97, 131, 5, 7),
    "H=1": (9, 1, 1, 3, 4),
    "H=3": (11, 3, 3, 4, 2),
    "H=4097": (5, 4097, 4097, 2, 4),
    "T=0": (0, 32, 16, 3, 4),
    "prefill": (1000, 256, 384, 6, 64),
    "rank-128": (20, 128, 160, 3, 128),
}


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_add_lora(shape, dtype, segments):
    T, H_in, H_out, N, R = shape
    check_add_lora("cuda", dtype, segments, T=T, H_in=H_in, H_out=H_out, N=N, R=R, seed=hash(shape) % 1000)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shrink_expand(dtype, segments):
    check_shrink_expand("cuda", dtype, segments, T=45, H_in=264, H_out=136, N=5, R=16, seed=7)


@pytest.mark.parametrize("segments", [False, True], ids=["bgmv", "sgmv"])
def test_strided_unaligned(segments):
    # Column slices of wider buffers: rows not 16-byte aligned, so the scalar path runs.
    for dtype in DTYPES:
        check_add_lora("cuda", dtype, segments, T=33, H_in=72, H_out=40, N=4, R=8, strided=True,
                       index_dtype=torch.int64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedding(dtype):
    check_embedding("cuda", dtype)


def _graph_case():
    return make_case(T=64, H_in=256, H_out=192, N=8, R=16, dtype=torch.bfloat16, device="cuda", seed=11)


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


def test_non_default_stream():
    case = _graph_case()
    y_ref = case.y.clone()
    lk.add_lora(y_ref, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks)
    stream = torch.cuda.Stream()
    y = case.y.clone()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(1_000_000)  # keep the side stream busy: a default-stream launch would race
        lk.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices, ranks=case.ranks)
        out = y.clone()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(out, y_ref)


def test_out_of_range_indices_stay_in_bounds_without_debug(monkeypatch):
    monkeypatch.delenv("LORA_KERNELS_DEBUG", raising=False)
    case = make_case(T=16, H_in=64, H_out=32, N=3, R=4, device="cuda")
    bad = case.indices.clone()
    bad[3], bad[5] = 1000, -7  # treated as "no adapter" by the kernels, never dereferenced
    y = case.y.clone()
    lk.add_lora(y, case.x, case.lora_a, case.lora_b, case.scaling, bad, ranks=case.ranks)
    torch.cuda.synchronize()
    assert torch.equal(y[3], case.y[3]) and torch.equal(y[5], case.y[5])


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


def test_device_mismatch_is_named():
    case = make_case(T=4, H_in=8, H_out=8, N=2, R=4, device="cuda")
    with pytest.raises(RuntimeError, match=r"add_lora: indices must be on the same device as y \(cuda:0\), got cpu"):
        lk.add_lora(case.y, case.x, case.lora_a, case.lora_b, case.scaling, case.indices.cpu())
    with pytest.raises(RuntimeError, match=r"lora_a must be on the same device as y \(cuda:0\), got cpu"):
        lk.add_lora(case.y, case.x, case.lora_a.cpu(), case.lora_b, case.scaling, case.indices)
    with pytest.raises(RuntimeError, match=r"lora_a must be on the same device as y \(cpu\), got cuda:0"):
        lk.add_lora(case.y.cpu(), case.x.cpu(), case.lora_a, case.lora_b.cpu(), case.scaling.cpu(), case.indices.cpu())
