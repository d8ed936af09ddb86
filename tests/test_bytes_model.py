"""benchmarks/bytes_model.py: the bytes a call must move against a model of what the CUDA kernels
move, checked on cases small enough to count by hand."""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bm():
    spec = importlib.util.spec_from_file_location("bytes_model", os.path.join(ROOT, "benchmarks", "bytes_model.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bytes_model"] = mod
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["bytes_model"]


TILES = {"kThreads": 256, "kShrinkRows": 4, "kGroupTokens": 8, "kRankChunk": 64, "kPlanSharedBuckets": 4096,
         "kPlanGroupSizes": (8,), "kDecodeTargetBlocks": 264, "kFusedMaxTokens": 64, "kFusedMaxColTiles": 4}


def _shape(bm, op="add_lora", kind="decode", T=2, n=1, H_in=8, widths=(8,), ranks=(4,), e=4, min_bytes=0):
    return bm.Shape("hand", kind, op, T, n, H_in, widths, ranks, e, min_bytes)


def test_two_tokens_of_one_adapter_counted_by_hand(bm):
    # fp32, T = 2 tokens both on slot 0 of N = 1, R = 4, H_in = H_out = 8: one group of 2 tokens,
    # one row block (R <= kShrinkRows), one column block (H_out <= kThreads).
    layout = bm.Layout((0, 0), None, None)
    assert bm.groups_of(layout, 1, 8) == [(0, 2)]
    assert bm.max_groups(2, 1, 8) == 2  # min(T, ceil(T / G) + N + 1): block 1 finds no group
    # the plan kernel (2 buckets, counted in shared memory): indices read twice (2 + 2); the
    # scans write slot_start and group_start (3 + 3); cursors from slot_start (2 reads); the
    # scatter writes rows_by_slot and slot_at (2 + 2); step 4 reads slot_at and slot_start
    # (2 + 2); the one group: group_start read, its entry written, then the list's length
    # (group_start[2] read, groups[0] written): 20 int32
    plan = bm.plan_kernel(layout, 1, TILES)
    assert plan.parts["indices"] == 4 * 4 and plan.parts["plan"] == 20 * 4 and plan.total == 96
    # per grid column: block 0 reads 5 plan entries and its 2 rows; block 1 the number of groups
    assert bm.find_group_reads([(0, 2)], 2) == 5 + 2 + 1
    t = bm.cuda_core(_shape(bm), TILES, layout)
    assert t.parts == {
        "x": 2 * 8 * 4,            # the group's 2 rows of x, once (one row block)
        "A": 4 * 8 * 4,            # the adapter's 4 rows of A, once (one group)
        "v write": 2 * 4 * 4,      # v [2, 4] fp32
        "v read": 2 * 4 * 4,
        "B": 8 * 4 * 4,            # B [8, 4], once
        "y read": 2 * 8 * 4,
        "y write": 2 * 8 * 4,
        "partials write": 0, "partials read": 0, "counters": 0,
        "indices": 4 * 4,          # the plan kernel's two passes
        "plan": (20 + 2 * 8) * 4,  # the plan kernel, then two grid columns (shrink, expand)
        "ranks+scaling": 4 + 4 + 4,  # ranks[0] by the shrink and the expand block, scaling[0]
    }
    assert t.total == 684
    # the minimum: x, A, B once, y read and written once
    case_min = 4 * (2 * 8 + 1 * 4 * (8 + 8) + 2 * 2 * 8)
    assert case_min == 448


def test_the_tile_constants_change_the_count(bm):
    layout = bm.Layout((0, 0), None, None)
    base = bm.cuda_core(_shape(bm, op="shrink"), TILES, layout)
    # two rank rows a block: two row blocks, so x is read twice and each block reads the plan
    two_rows = bm.cuda_core(_shape(bm, op="shrink"), dict(TILES, kShrinkRows=2), layout)
    assert two_rows.parts["x"] == 2 * base.parts["x"] and two_rows.parts["A"] == base.parts["A"]
    assert two_rows.total - base.total == 64 + 8 * 4 + 4  # x, one more column of plan reads, ranks
    # one token a group (the plan lists groups of 1): two groups, so A is read twice
    one = dict(TILES, kGroupTokens=1, kPlanGroupSizes=(1,))
    one_token = bm.cuda_core(_shape(bm, op="shrink"), one, layout)
    assert one_token.parts["A"] == 2 * base.parts["A"] and one_token.parts["x"] == base.parts["x"]
    assert bm.groups_of(layout, 1, 1) == [(0, 1), (0, 1)]
    assert one_token.parts["plan"] - base.parts["plan"] == (2 + 2 * 6 - 8) * 4  # plan kernel: 1 more group
    # a group size the plan does not list cannot be used (find_group's static_assert)
    with pytest.raises(ValueError, match="kGroupTokens = 1 is not in kPlanGroupSizes = \\(8,\\)"):
        bm.cuda_core(_shape(bm), dict(TILES, kGroupTokens=1), layout)


def test_plan_of_per_token_indices_counted_by_hand(bm):
    # token 0 and 39 on slot 0, tokens 1..38 on slot 1, N = 2; groups of 8, bucket after bucket
    slots = (0,) + (1,) * 38 + (0,)
    layout = bm.Layout(slots, None, None)
    groups = bm.groups_of(layout, 2, 8)
    assert groups == [(0, 2), (1, 8), (1, 8), (1, 8), (1, 8), (1, 6)]
    grid_x = bm.max_groups(40, 2, 8)
    assert grid_x == 8  # ceil(40 / 8) + 2 + 1: two blocks find no group
    assert bm.find_group_reads(groups, grid_x) == 6 * 5 + 40 + 2
    plan = bm.plan_kernel(layout, 2, TILES)
    assert plan.parts["indices"] == 2 * 40 * 4
    # 3 buckets: scans 2 * 4, cursors 3, scatter 2 * 40, step 4 2 * 40, 6 groups 2 * 6 + 2
    assert plan.parts["plan"] == (8 + 3 + 80 + 80 + 14) * 4
    # buckets past kPlanSharedBuckets count in the global cursor array: zeroed (3), an atomic per
    # token in each pass (2 * 40 + 2 * 40: a read and a write), the scans read it (2 * 3) and
    # the cursors are written there (3)
    spilled = bm.plan_kernel(layout, 2, dict(TILES, kPlanSharedBuckets=2))
    assert spilled.parts["plan"] - plan.parts["plan"] == (3 + 80 + 80 + 6 + 3) * 4
    # the order of the tokens does not change the plan's groups or traffic
    shuffled = bm.Layout(tuple(sorted(slots)), None, None)
    assert bm.plan_kernel(shuffled, 2, TILES).parts == plan.parts and bm.groups_of(shuffled, 2, 8) == groups


def test_plan_of_segments_counted_by_hand(bm):
    # one segment of 10 tokens: bucket_of has nothing to search (S = 1): seg_indptr[0] and [1]
    # and seg_adapter[0] per token and pass; groups of 8 and 2
    layout = bm.Layout(tuple([0] * 10), (0, 10), (0,))
    assert bm.groups_of(layout, 1, 8) == [(0, 8), (0, 2)]
    assert bm.plan_kernel(layout, 1, TILES).parts["indices"] == 2 * 10 * 3 * 4
    t = bm.cuda_core(_shape(bm, kind="prefill", T=10), TILES, layout)
    assert t.parts["A"] == 2 * 4 * 8 * 4 and t.parts["B"] == 2 * 8 * 4 * 4  # once per group
    assert t.parts["x"] == 10 * 8 * 4 and t.parts["y write"] == 10 * 8 * 4
    # four segments of 3 tokens on adapters 0, 1, 0, 1: the search takes 2 steps for every
    # token; the segments of one adapter share its groups (one group of 6 each, not four of 3)
    layout4 = bm.Layout((0,) * 3 + (1,) * 3 + (0,) * 3 + (1,) * 3, (0, 3, 6, 9, 12), (0, 1, 0, 1))
    assert bm.plan_kernel(layout4, 2, TILES).parts["indices"] == 2 * 12 * (2 + 2 + 1) * 4
    assert bm.groups_of(layout4, 2, 8) == [(0, 6), (1, 6)]
    t4 = bm.cuda_core(_shape(bm, kind="prefill", T=12, n=2), TILES, layout4)
    assert t4.parts["A"] == 2 * 4 * 8 * 4  # each adapter's A once
    # a token past the last segment has no adapter: its own bucket (slot -1), no seg_adapter
    # read (1 search step, then seg_indptr[1] and [2]); the shrink writes its v row as zeros
    # and reads no x for it, the expand leaves its y alone
    layout5 = bm.Layout((0, 0, 1, 1, -1), (0, 2, 4), (0, 1))
    assert bm.buckets_of(layout5, 2) == ((0, 0, 1, 1, 2), 4 * (1 + 2 + 1) + (1 + 2))
    assert bm.groups_of(layout5, 2, 8) == [(0, 2), (1, 2), (-1, 1)]
    t5 = bm.cuda_core(_shape(bm, kind="prefill", T=5, n=2), TILES, layout5)
    assert t5.parts["x"] == 4 * 8 * 4 and t5.parts["v write"] == 5 * 4 * 4 and t5.parts["y write"] == 4 * 8 * 4


def test_split_k_shrink_counted_by_hand(bm):
    # tiles small enough to split: 4 threads, a grid target of 8 blocks. fp32 (4 elements a
    # 16-byte load), T = 1 token on N = 1 slot, R = 4, H_in = 64: a pass is 4 * 4 = 16 elements;
    # the plain grid has 1 block; 8 / 1 wanted, at most 64 / 16 = 4 splits; 4 passes -> 1
    tiles = dict(TILES, kThreads=4, kDecodeTargetBlocks=8)
    assert bm.decode_rule(1, 4, 64, None, 4, tiles) == (4, False)
    layout = bm.Layout((0,), None, None)
    shrink = _shape(bm, op="shrink", T=1, H_in=64)
    t = bm.decode(shrink, tiles, layout)
    assert t.parts == {
        "x": 64 * 4,                # each split its 16 elements of x: x once
        "A": 4 * 64 * 4,            # and its 16 columns of the 4 rows of A: A once
        "v write": 1 * 4 * 4,       # the last block writes v [1, 4]
        "v read": 0, "B": 0, "y read": 0, "y write": 0,
        "partials write": 4 * 4 * 4,  # 4 blocks, [1, 4] fp32 each
        "partials read": 4 * 4 * 4,   # the last block sums the 4 splits
        "counters": 4 + 4 * 8 + 4,  # memset of T counters, an atomic per block, reset to 0
        "indices": 2 * 4,           # the plan kernel's two passes over indices[0]
        # the plan kernel (2 buckets: scans 2 * 3, cursors 2, scatter 2, step 4 2, 1 group 4),
        # then grid (1, 4): each block reads 5 plan entries and its row
        "plan": (6 + 2 + 2 + 2 + 4) * 4 + 4 * 6 * 4,
        "ranks+scaling": 4 * 4,     # ranks[0] by each block
    }
    assert t.total == 1648
    assert bm.cuda_core(shrink, tiles, layout).parts["x"] == 64 * 4  # the plain path: one block
    # add_lora with H_out = 8 (2 column tiles <= kFusedMaxColTiles, T <= kFusedMaxTokens): fused,
    # 4 splits; the last block reads scaling, the partials once (r <= kRankChunk), B, y once;
    # v is neither written nor read
    assert bm.decode_rule(1, 4, 64, 8, 4, tiles) == (4, True)
    fused = bm.decode(_shape(bm, T=1, H_in=64), tiles, layout)
    assert fused.parts == dict(t.parts, **{"v write": 0, "B": 8 * 4 * 4, "y read": 8 * 4, "y write": 8 * 4,
                                           "ranks+scaling": 4 * 4 + 4})
    assert fused.total == 1648 - 16 + 4 + 128 + 64
    # a rank past kRankChunk: the summed partials are staged again for every column tile
    wide = bm.decode(_shape(bm, T=1, H_in=64), dict(tiles, kRankChunk=2), layout)
    assert wide.parts["partials read"] == 2 * fused.parts["partials read"]
    # 2 passes -> 1 is not worth a reduction for a shrink alone: plain, the decode path is None
    assert bm.decode_rule(1, 4, 32, None, 4, tiles) == (1, False)
    assert bm.decode(_shape(bm, op="shrink", T=1, H_in=32), tiles, layout) is None
    assert bm.decode(_shape(bm, op="expand", T=1, H_in=64), tiles, layout) is None


TC = dict(TILES, kTcTokens=64, kTcShrinkRank=64, kTcShrinkK=64, kTcExpandCols=128, kTcExpandRank=32, kTcMinTokens=128,
          kTcMinTokensPerSegment=32)


def test_tensor_core_path_counted_by_hand(bm):
    # bf16, T = 128 tokens of one slot (N = 1), R = 16, H_in = H_out = 128: decode_config keeps
    # add_lora plain (512 blocks; T > kFusedMaxTokens); tc.cu's rule holds (T >= 128, bf16)
    layout = bm.Layout((0,) * 128, None, None)
    shape = _shape(bm, T=128, H_in=128, widths=(128,), ranks=(16,), e=2)
    assert bm.decode_rule(128, 16, 128, 128, 2, TC) == (1, False) and bm.tensor_core_rule(shape, TC)
    t = bm.tensor_core(shape, TC, layout)
    # two groups of 64 tokens; one shrink row block (R <= kTcShrinkRank), one expand column block
    # (H_out <= kTcExpandCols); grid.x = max_groups(128, 1, 64) = 4: 2 blocks find no group
    assert bm.groups_of(layout, 1, 64) == [(0, 64), (0, 64)]
    column = 2 * (5 + 64) + 2
    # the plan kernel lists groups of 8 (16) and of 64 (2): scans 3 * 3, cursors 2, scatter
    # 2 * 128, step 4 2 * 128, the lists 2 * 16 + 2 and 2 * 2 + 2
    plan = 9 + 2 + 256 + 256 + 34 + 6
    assert t.parts == {
        "x": 128 * 128 * 2,            # once: every rank row in one block
        "A": 2 * 16 * 128 * 2,         # once per group of 64
        "v write": 128 * 16 * 4,
        "v read": 128 * 16 * 4,        # once: one column block
        "B": 2 * 128 * 16 * 2,         # once per group of 64
        "y read": 128 * 128 * 2, "y write": 128 * 128 * 2,
        "partials write": 0, "partials read": 0, "counters": 0,
        "indices": 2 * 128 * 4,
        "plan": (plan + 2 * column) * 4,
        "ranks+scaling": 2 * 4 + 2 * (4 + 4),
    }
    core = bm.cuda_core(shape, TC, layout)
    assert core.parts["x"] == 4 * t.parts["x"] and core.parts["A"] == 8 * t.parts["A"]  # 4 row blocks, 16 groups
    # where the rule does not hold the path is None: 127 tokens, fp32, segments shorter than 32
    # tokens on average; and in a tree without the tc constants
    assert bm.tensor_core(_shape(bm, T=127, H_in=128, ranks=(16,), e=2), TC, bm.Layout((0,) * 127, None, None)) is None
    assert bm.tensor_core(_shape(bm, T=128, H_in=128, ranks=(16,), e=4), TC, layout) is None
    segs5 = bm.Layout((0,) * 128, (0, 26, 52, 78, 104, 128), (0, 0, 0, 0, 0))
    assert bm.tensor_core(_shape(bm, kind="prefill", T=128, n=5, H_in=128, ranks=(16,), e=2), TC, segs5) is None
    segs4 = bm.Layout((0,) * 128, (0, 32, 64, 96, 128), (0, 0, 0, 0))
    assert bm.tensor_core(_shape(bm, kind="prefill", T=128, n=4, H_in=128, ranks=(16,), e=2), TC, segs4) is not None
    assert bm.tensor_core(shape, TILES, layout) is None


def test_tensor_core_never_undercuts_the_minimum(bm):
    tiles = dict(bm.read_tiles(), **{k: TC[k] for k in bm.TC_NEEDED})
    shapes = [s for s in bm.sweep_shapes() + bm.slices_shapes() if s.T >= 128]
    rows = bm.model_rows(shapes, tiles)
    ran = [r for r in rows if r["models"]["tensor_core"] is not None]
    assert len(ran) == 24 * 3 + 24 * 3 + 2  # every prefill and T = 256 decode shape, the prefill slices
    for row in ran:
        tc, core = row["models"]["tensor_core"].total, row["models"]["cuda_core"].total
        assert row["min"] <= tc, row["shape"].name
        assert bm.launched(row["models"]) == "tensor_core"
        # fewer bytes wherever groups hold more than a few tokens; with one token per adapter
        # (T = 256 over 256) the wider shrink / narrower expand tiles cost a little more
        if row["shape"].kind == "prefill" or row["shape"].n < row["shape"].T:
            assert tc < core, row["shape"].name
        else:
            assert tc < 1.05 * core, row["shape"].name


def test_slices_are_the_sum_of_their_slices(bm):
    # one plan for all slices; each slice's shrink and expand as add_lora's on that slice
    layout = bm.layout_of("decode", 16, 4)
    fused = bm.cuda_core(_shape(bm, op="add_lora_slices", T=16, n=4, H_in=64, widths=(64, 16, 16), ranks=(8, 4, 4),
                                e=2), TILES, layout)
    parts = [bm.cuda_core(_shape(bm, T=16, n=4, H_in=64, widths=(w,), ranks=(r,), e=2), TILES, layout)
             for w, r in ((64, 8), (16, 4), (16, 4))]
    plan = bm.plan_kernel(layout, 4, TILES)
    assert {k: fused.parts[k] + 2 * plan.parts[k] for k in bm.CATEGORIES} == {
        k: sum(p.parts[k] for p in parts) for k in bm.CATEGORIES}


def test_the_header_constants_are_read_not_copied(bm, tmp_path):
    h = tmp_path / "tiles.h"
    h.write_text("""
namespace x {
constexpr int kThreads = 128;  // threads
constexpr int kWarps = kThreads / 32;
constexpr int kShrinkRows = 2;
constexpr int kGroupTokens = 4 * 4;
constexpr int kRankChunk = 32;
constexpr int kDecodeTargetBlocks = 2 * 66;
constexpr int kFusedMaxTokens = 32;
constexpr int kFusedMaxColTiles = 2;
constexpr int kPlanSharedBuckets = 1024;
constexpr int kPlanGroupSizes[] = {kGroupTokens, 64};
constexpr int kCount = static_cast<int>(sizeof(kPlanGroupSizes) / sizeof(kPlanGroupSizes[0]));
constexpr int f(int g) {
  return g;
}
}
""")
    tiles = bm.read_tiles(str(h))
    assert tiles == {"kThreads": 128, "kWarps": 4, "kShrinkRows": 2, "kGroupTokens": 16, "kRankChunk": 32,
                     "kDecodeTargetBlocks": 132, "kFusedMaxTokens": 32, "kFusedMaxColTiles": 2,
                     "kPlanSharedBuckets": 1024, "kPlanGroupSizes": (16, 64)}
    h.write_text("constexpr int kThreads = 256;\nconstexpr int kShrinkRows = 4;\nconstexpr int kGroupTokens = 8;\n"
                 "constexpr int kRankChunk = 64;\nconstexpr int kPlanSharedBuckets = 4096;\n")
    with pytest.raises(ValueError, match="no integer constant kPlanGroupSizes, kDecodeTargetBlocks, kFusedMaxTokens, "
                                         "kFusedMaxColTiles \\(the model needs kThreads, "):
        bm.read_tiles(str(h))
    real = bm.read_tiles()
    assert all(isinstance(real[k], int) and real[k] > 0 for k in bm.NEEDED if k != "kPlanGroupSizes")
    assert real["kGroupTokens"] in real["kPlanGroupSizes"]


def test_decode_64_over_64_adapters_with_the_real_tiles(bm):
    tiles = bm.read_tiles()
    (shape,) = [s for s in bm.sweep_shapes() if s.name == "decode T=64 adapters=64 r=16 4096->4096 add_lora bf16"]
    assert shape.min_bytes == 18_350_080
    (row,) = bm.model_rows([shape], tiles)
    # decode_config keeps it plain (T * ceil(16 / 4) = 256 blocks: no split; 16 column tiles: not fused)
    assert row["models"]["decode"] is None and bm.launched(row["models"]) == "cuda_core"
    t = row["models"]["cuda_core"]
    # one token per adapter: one group per token
    assert t.parts["x"] == math.ceil(16 / tiles["kShrinkRows"]) * 64 * 4096 * 2
    assert t.parts["A"] == 64 * 16 * 4096 * 2 and t.parts["B"] == 64 * 4096 * 16 * 2
    assert t.parts["y read"] == t.parts["y write"] == 64 * 4096 * 2
    assert t.parts["v write"] == t.parts["v read"] / math.ceil(4096 / tiles["kThreads"]) == 64 * 16 * 4
    # no O(T^2) scan: the indices are read twice, by the plan kernel only
    assert t.parts["indices"] == 2 * 64 * 4


def test_the_model_never_undercuts_the_minimum(bm):
    tiles = bm.read_tiles()
    rows = bm.model_rows(bm.sweep_shapes(dry_run=True) + bm.slices_shapes(dry_run=True) + bm.decode_shapes(), tiles)
    assert len(rows) == 624 // 2 + 8 + 20
    for row in rows:
        for path, m in row["models"].items():
            assert m is None or m.total >= row["min"], (path, row["shape"].name)
    # the decode shapes are there for the decode path: it runs on 11 of them
    assert sum(bm.launched(r["models"]) == "decode" for r in rows[-20:]) == 11


def _cuda_include() -> str | None:
    nvcc = shutil.which("nvcc")
    tops = [os.path.dirname(os.path.dirname(nvcc))] if nvcc else []
    tops += sorted(glob.glob("/usr/local/cuda*"))
    for top in tops:
        if os.path.exists(os.path.join(top, "include", "cuda_fp16.h")):
            return os.path.join(top, "include")
    found = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "cu*", "include",
                                   "cuda_fp16.h"))
    return os.path.dirname(found[0]) if found else None


def test_decode_rule_is_decode_config(bm, tmp_path):
    # decode.cu's decode_config, compiled for the CPU executor with a small driver, on the sweep's
    # and the decode shapes and on a grid of odd ones: bytes_model.decode_rule picks the same
    include, cxx = _cuda_include(), shutil.which(os.environ.get("CXX", "g++"))
    if include is None or cxx is None:
        pytest.skip("needs g++ and the CUDA headers (cuda_fp16.h) to build decode.cu for the CPU executor")
    flags = ["-std=c++20", "-O0", "-w", "-isystem", include, "-I", os.path.join(ROOT, "tests", "simt"),
             "-I", os.path.join(ROOT, "csrc", "include")]
    kernel = flags + ["-DLK_SIMT", "-x", "c++", "-include", os.path.join(ROOT, "tests", "simt", "simt.h")]
    exe = tmp_path / "decode_config"
    subprocess.run([cxx, *flags, "-c", os.path.join(ROOT, "tests", "simt", "simt.cpp"), "-o", str(tmp_path / "simt.o")],
                   check=True)
    # decode.cu's launchers call the other launchers: every kernel file of the build definition
    with open(os.path.join(ROOT, "csrc", "build.json")) as f:
        kernels = json.load(f)["sources"]["cuda_kernels"]
    objects = []
    for cu in kernels:
        objects.append(str(tmp_path / (os.path.splitext(os.path.basename(cu))[0] + ".o")))
        subprocess.run([cxx, *kernel, "-c", os.path.join(ROOT, cu), "-o", objects[-1]], check=True)
    subprocess.run([cxx, *kernel, os.path.join(ROOT, "tests", "decode_config_main.cpp"), "-x", "none",
                    *objects, str(tmp_path / "simt.o"), "-o", str(exe), "-lpthread"], check=True)
    shapes = {(s.e, s.T, s.ranks[0], s.H_in, s.widths[0] if s.op == "add_lora" else -1)
              for s in bm.sweep_shapes(dry_run=False) + bm.decode_shapes() if s.op in ("add_lora", "shrink")}
    shapes |= {(e, T, R, H_in, H_out) for e in (2, 4) for T in (0, 1, 2, 8, 16, 64, 65, 256) for R in (0, 1, 4, 16, 17, 128)
               for H_in in (1000, 2048, 4096, 4100, 14336) for H_out in (-1, 256, 1024, 1025, 4096)}
    shapes = sorted(shapes)
    out = subprocess.run([str(exe)], input="".join(f"{e} {T} {R} {Hi} {Ho}\n" for e, T, R, Hi, Ho in shapes),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    tiles = bm.read_tiles()
    picked = 0
    for (e, T, R, Hi, Ho), line in zip(shapes, out):
        splits, fused, _ = map(int, line.split())
        assert bm.decode_rule(T, R, Hi, None if Ho < 0 else Ho, e, tiles) == (splits, bool(fused)), (e, T, R, Hi, Ho)
        picked += fused or splits > 1
    assert len(out) == len(shapes) + 1 and 100 < picked < len(shapes)  # both answers are exercised


def test_the_command_prints_the_table(bm, capsys):
    assert bm.main(["--op", "add_lora_slices", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiles (csrc/include/lora_kernels/tiles.h): kThreads = ")
    assert out[1].startswith("| case | min MB | cuda_core MB | cuda_core / min | decode MB | decode / min | "
                             "tensor_core MB | tensor_core / min | launched |")
    assert len([line for line in out if line.startswith(("| qkv ", "| gate_up "))]) == 8
    # no decode path for the slices; decode (T = 64) stays on the CUDA cores, prefill (T = 2048,
    # 256 tokens a segment) takes the tensor cores
    slices = [line for line in out if line.startswith(("| qkv ", "| gate_up "))]
    assert all(" | - | - | - | - | cuda_core | " in line for line in slices if " decode " in line)
    assert all(" | - | - | " in line and " | tensor_core | " in line for line in slices if " prefill " in line)
    census = out[out.index("") + 1:]
    assert census[0] == "| path | op | kind | shapes | model / min: smallest | median | largest |"
    assert [line.split(" | ")[0:4] for line in census[2:]] == [["| cuda_core", "add_lora_slices", "decode", "6"],
                                                             ["| cuda_core", "add_lora_slices", "prefill", "2"],
                                                             ["| tensor_core", "add_lora_slices", "prefill", "2"]]
