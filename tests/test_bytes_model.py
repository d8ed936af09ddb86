"""benchmarks/bytes_model.py: the bytes a call must move against a model of what the CUDA kernels
move, checked on cases small enough to count by hand."""

from __future__ import annotations

import importlib.util
import math
import os
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


TILES = {"kThreads": 256, "kShrinkRows": 4, "kGroupTokens": 8, "kRankChunk": 64}


def _shape(bm, op="add_lora", kind="decode", T=2, n=1, H_in=8, widths=(8,), ranks=(4,), e=4, min_bytes=0):
    return bm.Shape("hand", kind, op, T, n, H_in, widths, ranks, e, min_bytes)


def test_two_tokens_of_one_adapter_counted_by_hand(bm):
    # fp32, T = 2 tokens both on slot 0, R = 4, H_in = H_out = 8: one group of 2 tokens, one row
    # block (R <= kShrinkRows), one column block (H_out <= kThreads).
    layout = bm.Layout((0, 0), None, None)
    t = bm.cuda_core(_shape(bm), TILES, layout)
    # index reads per grid column: block 0 reads indices[0] and, leading, scans forward over the
    # 2 tokens; block 1 reads indices[1] and the 1 index before it: 3 + 2 = 5
    assert bm.index_reads_per_column(layout, 8) == 5
    assert t.parts == {
        "x": 2 * 8 * 4,            # the group's 2 rows of x, once (one row block)
        "A": 4 * 8 * 4,            # the adapter's 4 rows of A, once (one group)
        "v write": 2 * 4 * 4,      # v [2, 4] fp32
        "v read": 2 * 4 * 4,
        "B": 8 * 4 * 4,            # B [8, 4], once
        "y read": 2 * 8 * 4,
        "y write": 2 * 8 * 4,
        "indices": 2 * 5 * 4,      # two grid columns (shrink, expand), int32
        "ranks+scaling": 4 + 4 + 4,  # ranks[0] by the shrink and the expand leader, scaling[0]
    }
    assert t.total == 564
    # the minimum: x, A, B once, y read and written once
    case_min = 4 * (2 * 8 + 1 * 4 * (8 + 8) + 2 * 2 * 8)
    assert case_min == 448


def test_the_tile_constants_change_the_count(bm):
    layout = bm.Layout((0, 0), None, None)
    base = bm.cuda_core(_shape(bm, op="shrink"), TILES, layout)
    # two rank rows a block: two row blocks, so x is read twice and the index scan runs twice
    two_rows = bm.cuda_core(_shape(bm, op="shrink"), dict(TILES, kShrinkRows=2), layout)
    assert two_rows.parts["x"] == 2 * base.parts["x"] and two_rows.parts["A"] == base.parts["A"]
    assert two_rows.parts["indices"] == 2 * base.parts["indices"]
    assert two_rows.total - base.total == 64 + 20 + 4
    # one token a group: two groups, so A is read twice; both blocks lead and scan forward
    one_token = bm.cuda_core(_shape(bm, op="shrink"), dict(TILES, kGroupTokens=1), layout)
    assert one_token.parts["A"] == 2 * base.parts["A"] and one_token.parts["x"] == base.parts["x"]
    assert bm.index_reads_per_column(layout, 1) == (1 + 0 + 2) + (1 + 1 + 1)


def test_forward_scan_over_several_warps_counted_by_hand(bm):
    # token 0 and 39 on slot 0, tokens 1..38 on slot 1; groups of 8
    slots = (0,) + (1,) * 38 + (0,)
    layout = bm.Layout(slots, None, None)
    assert bm.groups_of(layout, 8) == [(0, 0, 2), (1, 1, 8), (9, 1, 8), (17, 1, 8), (25, 1, 8), (33, 1, 6)]
    backward = 40 * 39 // 2  # block pos reads indices[0:pos)
    broadcast = 40  # indices[pos]
    # leaders' forward scans, 32 a step: pos 0 needs both steps (32 + 8) and still has 2 < 8;
    # pos 1 finds 8 in its first 32; 9: 31 left; 17: 23; 25: 15; 33: 7 (6 found, end reached)
    forward = 40 + 32 + 31 + 23 + 15 + 7
    assert bm.index_reads_per_column(layout, 8) == backward + broadcast + forward == 968


def test_segments_counted_by_hand(bm):
    # one segment of 10 tokens: groups at 0 (8 tokens) and 8 (2 tokens); thread 0's binary search
    # has nothing to search (S = 1): seg_indptr[0] and [1] per block, seg_adapter[0] per leader
    layout = bm.Layout(tuple([0] * 10), (0, 10), (0,))
    assert bm.groups_of(layout, 8) == [(0, 0, 8), (8, 0, 2)]
    assert bm.index_reads_per_column(layout, 8) == 10 * 2 + 2
    t = bm.cuda_core(_shape(bm, kind="prefill", T=10), TILES, layout)
    assert t.parts["A"] == 2 * 4 * 8 * 4 and t.parts["B"] == 2 * 8 * 4 * 4  # once per group
    assert t.parts["x"] == 10 * 8 * 4 and t.parts["y write"] == 10 * 8 * 4
    # four segments: the search takes 2 steps for every position
    layout4 = bm.Layout(tuple(s for s in range(4) for _ in range(2)), (0, 2, 4, 6, 8), (0, 1, 2, 3))
    assert bm.index_reads_per_column(layout4, 8) == 8 * (2 + 2) + 4


def test_slices_are_the_sum_of_their_slices(bm):
    layout = bm.layout_of("decode", 16, 4)
    fused = bm.cuda_core(_shape(bm, op="add_lora_slices", T=16, n=4, H_in=64, widths=(64, 16, 16), ranks=(8, 4, 4),
                                e=2), TILES, layout)
    parts = [bm.cuda_core(_shape(bm, T=16, n=4, H_in=64, widths=(w,), ranks=(r,), e=2), TILES, layout)
             for w, r in ((64, 8), (16, 4), (16, 4))]
    assert fused.parts == {k: sum(p.parts[k] for p in parts) for k in bm.CATEGORIES}


def test_the_header_constants_are_read_not_copied(bm, tmp_path):
    h = tmp_path / "tiles.h"
    h.write_text("""
namespace x {
constexpr int kThreads = 128;  // threads
constexpr int kWarps = kThreads / 32;
constexpr int kShrinkRows = 2;
constexpr int kGroupTokens = 4 * 4;
constexpr int kRankChunk = 32;
constexpr int kSizes[] = {kGroupTokens};
constexpr int kCount = static_cast<int>(sizeof(kSizes) / sizeof(kSizes[0]));
constexpr int f(int g) {
  return g;
}
}
""")
    tiles = bm.read_tiles(str(h))
    assert tiles == {"kThreads": 128, "kWarps": 4, "kShrinkRows": 2, "kGroupTokens": 16, "kRankChunk": 32}
    h.write_text("constexpr int kThreads = 256;\n")
    with pytest.raises(ValueError, match="no integer constant kShrinkRows, kGroupTokens, kRankChunk"):
        bm.read_tiles(str(h))
    real = bm.read_tiles()
    assert all(isinstance(real[k], int) and real[k] > 0 for k in bm.NEEDED)


def test_decode_64_over_64_adapters_with_the_real_tiles(bm):
    tiles = bm.read_tiles()
    (shape,) = [s for s in bm.sweep_shapes() if s.name == "decode T=64 adapters=64 r=16 4096->4096 add_lora bf16"]
    assert shape.min_bytes == 18_350_080
    (row,) = bm.model_rows([shape], tiles)
    t = row["models"]["cuda_core"]
    # one token per adapter: one group per token
    assert t.parts["x"] == math.ceil(16 / tiles["kShrinkRows"]) * 64 * 4096 * 2
    assert t.parts["A"] == 64 * 16 * 4096 * 2 and t.parts["B"] == 64 * 4096 * 16 * 2
    assert t.parts["y read"] == t.parts["y write"] == 64 * 4096 * 2
    assert t.parts["v write"] == t.parts["v read"] / math.ceil(4096 / tiles["kThreads"]) == 64 * 16 * 4


def test_the_model_never_undercuts_the_minimum(bm):
    tiles = bm.read_tiles()
    rows = bm.model_rows(bm.sweep_shapes(dry_run=True) + bm.slices_shapes(dry_run=True), tiles)
    assert len(rows) == 624 // 2 + 8
    for row in rows:
        assert row["models"]["cuda_core"].total >= row["min"], row["shape"].name


def test_the_command_prints_the_table(bm, capsys):
    assert bm.main(["--op", "add_lora_slices", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiles (csrc/include/lora_kernels/tiles.h): kThreads = ")
    assert out[1].startswith("| case | min MB | cuda_core MB | cuda_core / min |")
    assert len([line for line in out if line.startswith(("| qkv ", "| gate_up "))]) == 8
    census = out[out.index("") + 1:]
    assert census[0] == "| path | op | kind | shapes | model / min: smallest | median | largest |"
    assert [line.split(" | ")[1:4] for line in census[2:]] == [["add_lora_slices", "decode", "6"],
                                                             ["add_lora_slices", "prefill", "2"]]
