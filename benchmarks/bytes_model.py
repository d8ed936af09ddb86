#!/usr/bin/env python3
"""Bytes each benchmark shape must move, against a model of what the CUDA kernels move.

    .venv/bin/python benchmarks/bytes_model.py                  # every bf16 sweep shape + the slices
    .venv/bin/python benchmarks/bytes_model.py --op add_lora --r 16 --markdown   # RESULTS.md's table

For each shape of the GPU sweep (lora_kernels.bench.full_cases, bf16; fp16 moves the same
bytes) and of the add_lora_slices run (lora_kernels.bench.slices.slices_cases):

- min: the bytes the call must move, each input read once and y read and written once
  (DESIGN §7; lora_kernels.bench.min_bytes / slices_min_bytes: x, the n distinct adapters'
  A and B, y; v as fp32 for shrink / expand alone; indices and scales not counted).
- model: the bytes the kernels' global loads and stores ask for, given their algorithm and the
  constants read from csrc/include/lora_kernels/tiles.h. One function per kernel path
  (PATHS); each returns the bytes by tensor, or None where its launcher does not run it.
  Counting rules: an element counts each time a thread loads or stores it, except that a value
  every thread of a block reads at one address (a broadcast: ranks[slot], scaling[slot], the
  plan's group entry) counts once per block; a global atomicAdd counts as a 4-byte read and a
  4-byte write; a cudaMemsetAsync counts its bytes as written. These are requests to the memory
  system, before any cache: a re-read that the L2 serves (a weight tile read by the next group
  of the same adapter, x read again by the next row block, the plan's arrays, the split-K
  partials) is counted in full, so DRAM traffic lies between min and model.

Every op call first builds the device-side grouping plan (plan.cu: one block reads the
indices, or searches the segments, twice and writes slot_start, rows_by_slot, slot_at and the
group lists); then every grouping block reads a few plan entries (kernels.cuh find_group) on a
grid of max_groups(T, N, G) blocks. The paths:

- cuda_core: the plan, then the plain launch_shrink / launch_expand (and the _slices launchers,
  which run the same block bodies per slice in one folded grid, sharing one plan): what runs
  for expand and add_lora_slices, and for add_lora / shrink where decode_config says plain.
  Modeled for every shape.
- decode: the plan, a counter memset, then decode.cu's split-K shrink (fp32 partials written
  and summed by the last block of each group) followed by launch_expand, or the fused
  one-launch add_lora (no v: the last block stages the summed partials and runs the expand);
  only where decode_config (decode.cu, reproduced by decode_rule) picks it, else None.

The path a call runs is the last path in PATHS with a model (a later path's function returns
None where its launcher does not pick it); the census's `launched` rows summarize those.

The token layout is the bench's (lora_kernels.bench.workload.token_slots, seed 0): decode
tokens spread evenly over n adapters in a random order, prefill n equal segments; N = n slots.
The plan's groups do not depend on the order of the tokens, only on the tokens per slot.
"""

from __future__ import annotations

import argparse
import ast
import math
import operator
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILES_H = os.path.join(ROOT, "csrc", "include", "lora_kernels", "tiles.h")
NEEDED = ("kThreads", "kShrinkRows", "kGroupTokens", "kRankChunk", "kPlanSharedBuckets", "kPlanGroupSizes",
          "kDecodeTargetBlocks", "kFusedMaxTokens", "kFusedMaxColTiles")
SHOWN = ("kThreads", "kShrinkRows", "kGroupTokens", "kRankChunk", "kPlanGroupSizes", "kDecodeTargetBlocks",
         "kFusedMaxTokens", "kFusedMaxColTiles")  # the first line of the output

ACC_BYTES = 4  # v, the split-K partials and scaling are fp32 for fp16 / bf16 / fp32 data
INDEX_BYTES = 4  # the bench's indices, seg_indptr, seg_adapter and ranks, and the plan, are int32

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv}  # C++ int division


def _eval(node: ast.AST, known: dict) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and isinstance(known.get(node.id), int):
        return known[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, known), _eval(node.right, known))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, known)
    raise ValueError("not a plain integer expression")


def read_tiles(*paths: str) -> dict:
    """The ``constexpr int NAME = EXPR;`` constants of tiles.h (or of ``paths``, later headers
    adding to and overriding earlier ones) whose EXPR is integer arithmetic on literals and
    earlier constants, and the ``constexpr int NAME[] = {EXPR, ...};`` arrays of such
    expressions (as tuples); others (casts, functions) are left out. Raises ValueError when one
    of NEEDED is missing."""
    paths = paths or (TILES_H,)
    tiles: dict = {}
    pattern = r"constexpr\s+int\s+(\w+)\s*(\[\s*\])?\s*=\s*(\{[^{};]*\}|[^;{}]+);"
    for path in paths:
        with open(path) as f:
            text = re.sub(r"//[^\n]*", "", f.read())
        for name, array, expr in re.findall(pattern, text):
            try:
                if array:
                    items = [e.strip() for e in expr.strip()[1:-1].split(",") if e.strip()]
                    tiles[name] = tuple(_eval(ast.parse(e, mode="eval").body, tiles) for e in items)
                else:
                    tiles[name] = _eval(ast.parse(expr.strip(), mode="eval").body, tiles)
            except (SyntaxError, ValueError):
                continue
    missing = [k for k in NEEDED if k not in tiles]
    if missing:
        raise ValueError(f"{', '.join(paths)}: no integer constant {', '.join(missing)} "
                         f"(the model needs {', '.join(NEEDED)}).")
    return tiles


# --- shapes and token layouts ----------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """One call: ``op`` in add_lora / shrink / expand / add_lora_slices; one (width, rank) per
    slice (a single slice for the first three); ``e`` bytes per element of x, y and weights;
    ``n`` adapters, which is also the number of slots N of the bench's weight stacks."""

    name: str
    kind: str  # decode (per-token indices) or prefill (segments)
    op: str
    T: int
    n: int
    H_in: int
    widths: tuple[int, ...]
    ranks: tuple[int, ...]
    e: int
    min_bytes: int


@dataclass(frozen=True)
class Layout:
    """The tokens of a batch: their slots (the indices), and the segments for prefill (None for
    decode: then the kernels read the indices)."""

    slots: tuple[int, ...]
    seg_indptr: tuple[int, ...] | None
    seg_adapter: tuple[int, ...] | None


def layout_of(kind: str, T: int, n: int, seed: int = 0) -> Layout:
    from lora_kernels.bench.workload import token_slots

    slots, indptr, adapter = token_slots(kind, T, n, seed)
    return Layout(tuple(slots.tolist()), None if indptr is None else tuple(indptr.tolist()),
                  None if adapter is None else tuple(adapter.tolist()))


# --- the grouping plan (plan.cu, kernels.cuh find_group) --------------------------------------

@lru_cache(maxsize=64)
def buckets_of(layout: Layout, N: int) -> tuple[tuple[int, ...], int]:
    """plan.cu's bucket_of for every token: (the buckets, the index elements one pass reads).
    Bucket b < N is slot b, bucket N the tokens without an adapter. Indices: indices[t].
    Segments: the binary search for the last segment s with seg_indptr[s] <= t (one
    seg_indptr[mid] a step), then seg_indptr[s] and [s + 1], and seg_adapter[s] when t lies
    inside the segment."""
    T = len(layout.slots)
    out, reads = [], 0
    for t in range(T):
        slot = -1
        if layout.seg_indptr is None:
            slot, reads = layout.slots[t], reads + 1
        elif layout.seg_adapter:
            indptr = layout.seg_indptr
            lo, hi = 0, len(layout.seg_adapter) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                reads += 1
                if indptr[mid] <= t:
                    lo = mid
                else:
                    hi = mid - 1
            reads += 2
            if indptr[lo] <= t < indptr[lo + 1]:
                slot, reads = layout.seg_adapter[lo], reads + 1
        out.append(slot if 0 <= slot < N else N)
    return tuple(out), reads


def max_groups(T: int, N: int, G: int) -> int:
    """params.h max_groups: the grid.x of every grouping kernel."""
    return min(T, (T + G - 1) // G + N + 1)


def groups_of(layout: Layout, N: int, G: int) -> list[tuple[int, int]]:
    """The plan's groups of at most G tokens (GroupPlan.groups), in its order, bucket after
    bucket, as (slot, token count); slot -1 for the no-adapter bucket. Block k of a grouping
    kernel runs group k."""
    counts = [0] * (N + 1)
    for b in buckets_of(layout, N)[0]:
        counts[b] += 1
    return [(b if b < N else -1, min(G, c - k)) for b, c in enumerate(counts) for k in range(0, c, G)]


def plan_kernel(layout: Layout, N: int, tiles: dict) -> Traffic:
    """build_plan_kernel (plan.cu), one block: (1) count the tokens per bucket (bucket_of; the
    counts in shared memory when N + 1 <= kPlanSharedBuckets, else zeroed and atomically counted
    in the global cursor array); (2) exclusive scans into slot_start [N + 2] and, per group size
    of kPlanGroupSizes, group_start [N + 2] (each reads the counts), then the cursors set from
    slot_start; (3) scatter: bucket_of again, a cursor atomic, rows_by_slot[p] and slot_at[p]
    written; (4) for every position p: slot_at[p] and slot_start[b] read, and for each group's
    first position group_start[b] read and the group's entry written; thread 0 writes each
    list's length (reading group_start[N + 1])."""
    t = Traffic()
    T = len(layout.slots)
    B = N + 1
    in_global = B > tiles["kPlanSharedBuckets"]
    _, reads = buckets_of(layout, N)
    t.add("indices", 2 * reads * INDEX_BYTES)  # the count pass and the scatter pass
    plan = 0
    sizes = tiles["kPlanGroupSizes"]
    if in_global:
        plan += B + 2 * T                      # cursor zeroed; the count atomics
    plan += (1 + len(sizes)) * (B + 1)         # the scans' outputs
    plan += (1 + len(sizes)) * B if in_global else 0  # the scans read the global counts
    plan += B + (B if in_global else 0)        # cursors = slot_start
    plan += 2 * T + (2 * T if in_global else 0)  # scatter: rows_by_slot, slot_at; the atomics
    plan += 2 * T                              # step 4: slot_at[p], slot_start[b]
    for G in sizes:
        plan += 2 * len(groups_of(layout, N, G)) + 2
    t.add("plan", plan * INDEX_BYTES)
    return t


def group_size(tiles: dict) -> int:
    """kGroupTokens, the group size of the CUDA-core and decode kernels: find_group<G> needs the
    plan to list groups of G (a static_assert in kernels.cuh)."""
    G = tiles["kGroupTokens"]
    if G not in tiles["kPlanGroupSizes"]:
        raise ValueError(f"kGroupTokens = {G} is not in kPlanGroupSizes = {tiles['kPlanGroupSizes']}: "
                         "find_group<kGroupTokens> would not compile.")
    return G


def find_group_reads(groups: list[tuple[int, int]], grid_x: int) -> int:
    """Plan elements one grid column of a grouping kernel reads (find_group): a block with a
    group reads, in thread 0, the number of groups, the group's first position, slot_at there
    and slot_start past its bucket, then (every thread, a broadcast) the first position again
    and its tokens' rows: 5 + count; a block past the last group reads the number only."""
    return sum(5 + count for _, count in groups) + (grid_x - len(groups))


# --- the model ------------------------------------------------------------------------------

CATEGORIES = ("x", "A", "v write", "v read", "B", "y read", "y write", "partials write", "partials read",
              "counters", "indices", "plan", "ranks+scaling")


@dataclass
class Traffic:
    """Bytes by tensor (CATEGORIES)."""

    parts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    def add(self, key: str, nbytes: int) -> None:
        self.parts[key] += nbytes

    def __iadd__(self, other: "Traffic") -> "Traffic":
        for k, v in other.parts.items():
            self.parts[k] += v
        return self

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def row_block_shrink(H_in: int, R: int, r: int, e: int, groups, grid_x: int, rows: int) -> Traffic:
    """A shrink whose block (k, rb) runs group k on `rows` rank rows j0 .. j0 + rows: it reads the
    slot's rank (broadcast) and, for the jn rows below it, jn whole rows of A and each token's row
    of x (so x once per row block); it writes its tokens' v[:, j0:j0 + rows] (zeros past r) in
    fp32. A group of the no-adapter bucket reads no rank and writes zeros."""
    t = Traffic()
    blocks = math.ceil(R / rows)
    for rb in range(blocks):
        j0 = rb * rows
        here = min(rows, R - j0)
        jn = max(0, min(r - j0, here))
        for slot, count in groups:
            if slot >= 0:
                t.add("ranks+scaling", INDEX_BYTES)
                if jn > 0:
                    t.add("x", count * H_in * e)
                    t.add("A", jn * H_in * e)
            t.add("v write", count * here * ACC_BYTES)
    t.add("plan", blocks * find_group_reads(groups, grid_x) * INDEX_BYTES)
    return t


def column_block_expand(H_out: int, r: int, e: int, groups, grid_x: int, cols_per_block: int) -> Traffic:
    """An expand whose block (k, cb) runs group k on `cols_per_block` output columns: it reads the
    slot's rank (broadcast), its tokens' v[:, :r] (fp32) once, its columns' rows of B[:, :r]
    once, scaling[slot] (broadcast) and its tokens' y, read and written once. The no-adapter
    bucket's groups (and rank 0) touch nothing past the plan."""
    t = Traffic()
    blocks = math.ceil(H_out / cols_per_block)
    for cb in range(blocks):
        cols = min(cols_per_block, H_out - cb * cols_per_block)
        for slot, count in groups:
            if slot < 0:
                continue
            t.add("ranks+scaling", INDEX_BYTES)
            if r == 0:
                continue
            t.add("v read", count * r * ACC_BYTES)
            t.add("B", cols * r * e)
            t.add("y read", count * cols * e)
            t.add("y write", count * cols * e)
            t.add("ranks+scaling", ACC_BYTES)
    t.add("plan", blocks * find_group_reads(groups, grid_x) * INDEX_BYTES)
    return t


def cuda_core_shrink(H_in: int, R: int, r: int, e: int, groups, grid_x: int, tiles: dict) -> Traffic:
    """shrink_block (kernels.cuh): grid (max_groups, ceil(R / kShrinkRows)); block (k, rb) runs
    group k on rank rows j0 .. j0 + kShrinkRows: it reads the slot's rank (broadcast) and, for
    the jn rows below it, jn whole rows of A and each token's row of x (so x once per row
    block); it writes its tokens' v[:, j0:j0 + rows] (zeros past r) in fp32. A group of the
    no-adapter bucket reads no rank and writes zeros."""
    return row_block_shrink(H_in, R, r, e, groups, grid_x, tiles["kShrinkRows"])


def cuda_core_expand(H_out: int, R: int, r: int, e: int, groups, grid_x: int, tiles: dict) -> Traffic:
    """expand_block (kernels.cuh): grid (max_groups, ceil(H_out / kThreads)), one output column
    per thread; block (k, cb) runs group k: it reads the slot's rank (broadcast), stages its
    tokens' v[:, :r] (fp32) in shared memory once, each thread reads its column's row of B (r
    elements) and reads and writes its tokens' y; scaling[slot] once (broadcast). The
    no-adapter bucket's groups (and rank 0) touch nothing past the plan."""
    return column_block_expand(H_out, r, e, groups, grid_x, tiles["kThreads"])


def cuda_core(shape: Shape, tiles: dict, layout: Layout) -> Traffic:
    """The plan, then the plain CUDA-core kernels (launch_shrink / launch_expand, and the _slices
    launchers, which run the same block bodies per slice in one folded grid and read the one
    plan): groups of kGroupTokens tokens of one slot. Every adapter has rank R (the bench's
    ranks). Modeled for every shape (where decode_config picks the decode path, this is what
    the plain launches would move)."""
    G, N = group_size(tiles), shape.n
    groups = groups_of(layout, N, G)
    grid_x = max_groups(shape.T, N, G)
    t = plan_kernel(layout, N, tiles)
    for width, R in zip(shape.widths, shape.ranks):
        if R == 0 or shape.T == 0:
            continue  # the launchers (and the folded grids) skip a rank-0 slice
        if shape.op in ("add_lora", "shrink", "add_lora_slices"):
            t += cuda_core_shrink(shape.H_in, R, R, shape.e, groups, grid_x, tiles)
        if shape.op in ("add_lora", "expand", "add_lora_slices"):
            t += cuda_core_expand(width, R, R, shape.e, groups, grid_x, tiles)
    return t


def decode_rule(T: int, R: int, H_in: int, H_out: int | None, e: int, tiles: dict) -> tuple[int, bool]:
    """decode.cu's decode_config: (K splits of the shrink, fused) from the shapes alone; H_out
    None for a shrink alone. The vector path of the shrink is taken when H_in (and x's row
    stride, H_in in the bench) is a multiple of 16 / e elements (the bench's tensors are
    16-byte aligned). The decode kernels run when fused or splits > 1."""
    if T == 0 or R == 0:
        return 1, False
    vec = 16 // e if H_in % (16 // e) == 0 else 1
    pass_ = tiles["kThreads"] * vec
    max_splits = max(H_in // pass_, 1)
    blocks = T * math.ceil(R / tiles["kShrinkRows"])
    want = max(tiles["kDecodeTargetBlocks"] // blocks, 1)
    fused = (H_out is not None and H_out > 0 and T <= tiles["kFusedMaxTokens"]
             and math.ceil(H_out / tiles["kThreads"]) <= tiles["kFusedMaxColTiles"])
    splits = min(want, max_splits)
    plain_passes = math.ceil(H_in / pass_)
    split_passes = math.ceil(math.ceil(H_in / splits) / pass_)
    if not fused and plain_passes - split_passes < 2:
        splits = 1
    return splits, fused


def decode_kernel(shape: Shape, tiles: dict, groups, grid_x: int, splits: int, fused: bool) -> Traffic:
    """decode_kernel (decode.cuh): grid (max_groups, ceil(R / kShrinkRows) * splits); block
    (k, y) runs group k on a row block and on H_in's split [split * chunk, + chunk) (chunk a
    multiple of the vector width): the rank (broadcast), x and A over its chunk, its fp32
    partial sums written for j below the rank, then one atomic on the group's counter. The
    last block of each group writes the counter back to 0 and sums the splits' partials:
    not fused, it writes v [count, R] (zeros past r); fused, it stages v one kRankChunk of
    the rank at a time (once for all column tiles when r <= kRankChunk, else per tile),
    reads scaling (broadcast) and runs the expand over every kThreads-column tile: B once, y
    read and written once. v is then neither written nor read."""
    t = Traffic()
    H_in, e, R = shape.H_in, shape.e, shape.ranks[0]
    r = R
    rows = tiles["kShrinkRows"]
    row_blocks = math.ceil(R / rows)
    vec = 16 // e if H_in % (16 // e) == 0 else 1
    chunk = math.ceil(math.ceil(H_in / splits) / vec) * vec
    spans = [max(0, min(H_in, s * chunk + chunk) - s * chunk) for s in range(splits)]
    t.add("plan", row_blocks * splits * find_group_reads(groups, grid_x) * INDEX_BYTES)
    for slot, count in groups:
        jr = 0 if slot < 0 else r
        for rb in range(row_blocks):
            j0 = rb * rows
            jn = max(0, min(jr - j0, min(rows, R - j0)))
            for span in spans:
                if slot >= 0:
                    t.add("ranks+scaling", INDEX_BYTES)
                if jn > 0:
                    t.add("x", count * span * e)
                    t.add("A", jn * span * e)
                t.add("partials write", count * jn * ACC_BYTES)
                t.add("counters", 2 * INDEX_BYTES)  # the atomicAdd
        t.add("counters", INDEX_BYTES)  # the last block sets it back to 0
        if not fused:
            t.add("partials read", count * jr * splits * ACC_BYTES)
            t.add("v write", count * R * ACC_BYTES)
            continue
        if jr == 0:
            continue
        H_out = shape.widths[0]
        tiles_n = math.ceil(H_out / tiles["kThreads"])
        stagings = 1 if r <= tiles["kRankChunk"] else tiles_n
        t.add("partials read", stagings * count * r * splits * ACC_BYTES)
        t.add("ranks+scaling", ACC_BYTES)
        t.add("B", H_out * r * e)
        t.add("y read", count * H_out * e)
        t.add("y write", count * H_out * e)
    return t


def decode(shape: Shape, tiles: dict, layout: Layout) -> Traffic | None:
    """add_lora and the shrink alone where decode_config picks the decode kernels (decode.cu
    launch_add_lora / launch_shrink_decode): the plan, the counters cleared (a T * 4-byte
    cudaMemsetAsync: the ops pass counters_zero = false), decode_kernel, and, unless fused,
    the plain launch_expand. None for expand, add_lora_slices, and where decode_config says
    plain (then cuda_core is what runs)."""
    if shape.op not in ("add_lora", "shrink") or shape.T == 0:
        return None
    (R,) = shape.ranks
    splits, fused = decode_rule(shape.T, R, shape.H_in, shape.widths[0] if shape.op == "add_lora" else None,
                                shape.e, tiles)
    if not fused and splits <= 1:
        return None
    G, N = group_size(tiles), shape.n
    groups = groups_of(layout, N, G)
    grid_x = max_groups(shape.T, N, G)
    t = plan_kernel(layout, N, tiles)
    t.add("counters", shape.T * INDEX_BYTES)
    t += decode_kernel(shape, tiles, groups, grid_x, splits, fused)
    if shape.op == "add_lora" and not fused:
        t += cuda_core_expand(shape.widths[0], R, R, shape.e, groups, grid_x, tiles)
    return t


TC_NEEDED = ("kTcTokens", "kTcShrinkRank", "kTcShrinkK", "kTcExpandCols", "kTcExpandRank", "kTcMinTokens",
             "kTcMinTokensPerSegment")


def tensor_core_rule(shape: Shape, tiles: dict) -> bool:
    """tc.cu's tensor_core_path: fp16 / bf16, at least kTcMinTokens
    tokens, and with segments at least kTcMinTokensPerSegment tokens per segment on average.
    launch_shrink / launch_expand and their _slices variants take it then."""
    if shape.e != 2 or shape.T < tiles["kTcMinTokens"]:
        return False
    return shape.kind == "decode" or shape.T >= tiles["kTcMinTokensPerSegment"] * shape.n


def tensor_core_shrink(H_in: int, R: int, r: int, e: int, groups, grid_x: int, tiles: dict) -> Traffic:
    """tc_shrink_block (tc_kernels.cuh): grid (max_groups, ceil(R / kTcShrinkRank)); a block with a group
    of up to kTcTokens tokens reads the rank (broadcast) and, when some of its kTcShrinkRank
    rows lie below it, stages in kTcShrinkK-column steps its tokens' rows of x (x once per row
    block: once for R <= 64) and the jn rows of A below the rank (zero padding is not loaded);
    it writes v[:, j0:j0 + rows] (fp32, zeros past r)."""
    return row_block_shrink(H_in, R, r, e, groups, grid_x, tiles["kTcShrinkRank"])


def tensor_core_expand(H_out: int, R: int, r: int, e: int, groups, grid_x: int, tiles: dict) -> Traffic:
    """tc_expand_block (tc_kernels.cuh): grid (max_groups, ceil(H_out / kTcExpandCols)); a block with a
    group reads the rank (broadcast) and, in kTcExpandRank steps of the rank, stages its
    tokens' v[:, :r] (fp32; v once per column block) and its columns' rows of B[:, :r] (B once
    per group); then scaling (broadcast) and its tokens' y, read and written once."""
    return column_block_expand(H_out, r, e, groups, grid_x, tiles["kTcExpandCols"])


def tensor_core(shape: Shape, tiles: dict, layout: Layout) -> Traffic | None:
    """The tensor-core path (tc.cu, tc_kernels.cuh) on the grouping plan: groups of kTcTokens
    tokens of one slot (kTcTokens is in kPlanGroupSizes, so the plan lists them), on a grid of
    max_groups(T, N, kTcTokens) blocks. Where tensor_core_rule holds and decode_config keeps
    add_lora / the shrink plain; None elsewhere, and wherever tiles lacks the kTc constants.
    Not modeled: a split-K shrink at T >= kTcMinTokens (H_in >= 4 passes, T < 264) whose
    launch_expand would then take the tensor-core path; no shape here has it."""
    if any(k not in tiles for k in TC_NEEDED) or not tensor_core_rule(shape, tiles):
        return None
    if shape.op in ("add_lora", "shrink"):
        splits, fused = decode_rule(shape.T, shape.ranks[0], shape.H_in,
                                    shape.widths[0] if shape.op == "add_lora" else None, shape.e, tiles)
        if fused or splits > 1:
            return None
    G, N = tiles["kTcTokens"], shape.n
    sizes = tuple(tiles["kPlanGroupSizes"]) + (() if G in tiles["kPlanGroupSizes"] else (G,))
    groups = groups_of(layout, N, G)
    grid_x = max_groups(shape.T, N, G)
    t = plan_kernel(layout, N, dict(tiles, kPlanGroupSizes=sizes))
    for width, R in zip(shape.widths, shape.ranks):
        if R == 0:
            continue
        if shape.op in ("add_lora", "shrink", "add_lora_slices"):
            t += tensor_core_shrink(shape.H_in, R, R, shape.e, groups, grid_x, tiles)
        if shape.op in ("add_lora", "expand", "add_lora_slices"):
            t += tensor_core_expand(width, R, R, shape.e, groups, grid_x, tiles)
    return t


# One function per kernel path: (shape, tiles, layout) -> Traffic, or None where the path does
# not serve the shape. The path a call runs is the last one with a model: add new paths after
# the ones they replace.
PATHS: dict[str, Callable[[Shape, dict, Layout], Traffic | None]] = {"cuda_core": cuda_core, "decode": decode,
                                                                     "tensor_core": tensor_core}


def launched(models: dict[str, Traffic | None]) -> str:
    """The path the call runs: the last path in PATHS order with a model."""
    return [name for name, m in models.items() if m is not None][-1]


# --- the shapes and the table ----------------------------------------------------------------

def sweep_shapes(dry_run: bool = False) -> list[Shape]:
    import torch

    from lora_kernels.bench import full_cases, min_bytes

    return [Shape(c.name, c.kind, c.op, c.T, c.n, c.H_in, (c.H_out,), (c.r,), 2, min_bytes(c))
            for c in full_cases((torch.bfloat16,), dry_run=dry_run)]


def slices_shapes(dry_run: bool = False) -> list[Shape]:
    from lora_kernels.bench.slices import slices_cases, slices_min_bytes

    return [Shape(c.name, c.kind, c.op, c.T, c.n, c.H_in, c.widths, c.ranks, 2, slices_min_bytes(c))
            for c in slices_cases(dry_run=dry_run)]


def decode_shapes() -> list[Shape]:
    """Shapes outside the bf16 sweep (H_in = 4096 there: decode_config keeps every one of them
    plain) where decode_config picks the decode kernels: the Llama-3-8B projections of
    decode.cu's table, k / v (4096 -> 1024: fused add_lora) and down_proj (14336 -> 4096: a
    split-K shrink at T = 1 and 8), T in {1, 8, 64} over 1 and T adapters, r 16, bf16,
    add_lora and the shrink alone."""
    import torch

    from lora_kernels.bench import min_bytes
    from lora_kernels.bench.cases import Case

    out = []
    for proj, H_in, H_out in (("kv_proj", 4096, 1024), ("down_proj", 14336, 4096)):
        for op in ("add_lora", "shrink"):
            for T in (1, 8, 64):
                for n in sorted({1, T}):
                    c = Case("decode", op, T, n, 16, H_in, H_out, torch.bfloat16)
                    out.append(Shape(f"{proj} {c.name}", c.kind, c.op, c.T, c.n, c.H_in, (c.H_out,), (c.r,), 2,
                                     min_bytes(c)))
    return out


def model_rows(shapes: list[Shape], tiles: dict[str, int], paths=None) -> list[dict]:
    paths = PATHS if paths is None else paths
    layouts: dict[tuple, Layout] = {}
    rows = []
    for s in shapes:
        key = (s.kind, s.T, s.n)
        if key not in layouts:
            layouts[key] = layout_of(s.kind, s.T, s.n)
        models = {name: fn(s, tiles, layouts[key]) for name, fn in paths.items()}
        rows.append({"shape": s, "min": s.min_bytes, "models": models})
    return rows


def format_rows(rows: list[dict], markdown: bool = False) -> str:
    """Per shape: min, each path's total and total / min (`-` where the path does not run), the
    path the call runs, and that path's bytes by tensor."""
    paths = list(rows[0]["models"]) if rows else []
    head = ["case", "min MB"]
    for p in paths:
        head += [f"{p} MB", f"{p} / min"]
    head += ["launched"] + [f"launched: {c} MB" for c in CATEGORIES]
    body = []
    for row in rows:
        cells = [row["shape"].name, f"{row['min'] / 1e6:.3f}"]
        for p in paths:
            m = row["models"][p]
            cells += ["-", "-"] if m is None else [f"{m.total / 1e6:.3f}", f"{m.total / row['min']:.2f}"]
        run = launched(row["models"])
        m = row["models"][run]
        cells += [run] + [f"{m.parts[c] / 1e6:.3f}" for c in CATEGORIES]
        body.append(cells)
    if markdown:
        aligns = ["---"] + ["---:"] * (1 + 2 * len(paths)) + ["---"] + ["---:"] * len(CATEGORIES)
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(aligns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(c) for c in body)])


def format_census(rows: list[dict], markdown: bool = False) -> str:
    """Per path (and `launched`: the path each call runs), op and kind: how many shapes, and the
    smallest, median and largest model / min."""
    groups: dict[tuple, list[tuple[float, str]]] = {}
    runs: dict[tuple, set[str]] = {}
    for row in rows:
        chosen = dict(row["models"], launched=row["models"][launched(row["models"])])
        for path, m in chosen.items():
            if m is not None:
                key = (path, row["shape"].op, row["shape"].kind)
                groups.setdefault(key, []).append((m.total / row["min"], row["shape"].name))
                if path == "launched":
                    runs.setdefault(key, set()).add(launched(row["models"]))
    # a `launched` row that is one path's row for every shape says nothing new
    groups = {k: v for k, v in groups.items() if k[0] != "launched" or len(runs[k]) > 1}
    head = ["path", "op", "kind", "shapes", "model / min: smallest", "median", "largest"]
    paths = (list(rows[0]["models"]) if rows else []) + ["launched"]
    ops = ["add_lora", "shrink", "expand", "add_lora_slices"]
    order = lambda k: (paths.index(k[0]), ops.index(k[1]) if k[1] in ops else len(ops), k[1], k[2])
    body = []
    for (path, op, kind), v in sorted(groups.items(), key=lambda kv: order(kv[0])):
        v.sort()
        med = v[len(v) // 2][0] if len(v) % 2 else (v[len(v) // 2 - 1][0] + v[len(v) // 2][0]) / 2
        body.append([path, op, kind, str(len(v)), f"{v[0][0]:.2f} ({v[0][1]})", f"{med:.2f}",
                     f"{v[-1][0]:.2f} ({v[-1][1]})"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 4) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    return "\n".join("  ".join(c) for c in [head] + body)


def _show(value) -> str:
    return "{" + ", ".join(map(str, value)) + "}" if isinstance(value, tuple) else str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", action="append",
                   help=f"a tile constants header (repeatable: later ones add to and override earlier ones; "
                        f"default {os.path.relpath(TILES_H, ROOT)})")
    p.add_argument("--op", choices=("add_lora", "shrink", "expand", "add_lora_slices"), action="append",
                   help="only these ops (repeatable; default all)")
    p.add_argument("--r", type=int, action="append", help="only these ranks (repeatable; default all)")
    p.add_argument("--no-slices", action="store_true", help="leave out the add_lora_slices shapes")
    p.add_argument("--no-decode-shapes", action="store_true",
                   help="leave out the shapes outside the sweep where decode_config picks the decode kernels")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (RESULTS.md)")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    headers = args.tiles or [TILES_H]
    tiles = read_tiles(*headers)
    shapes = (sweep_shapes() + ([] if args.no_slices else slices_shapes())
              + ([] if args.no_decode_shapes else decode_shapes()))
    if args.op:
        shapes = [s for s in shapes if s.op in args.op]
    if args.r:
        shapes = [s for s in shapes if max(s.ranks) in args.r]
    shown = [os.path.relpath(h, ROOT) if os.path.abspath(h).startswith(ROOT + os.sep) else h for h in headers]
    print(f"tiles ({' + '.join(shown)}): "
          + ", ".join(f"{k} = {_show(tiles[k])}" for k in SHOWN + TC_NEEDED if k in tiles)
          + f"; {len(shapes)} shapes, bf16 (fp16 moves the same bytes)")
    rows = model_rows(shapes, tiles)
    print(format_rows(rows, markdown=args.markdown))
    print()
    print(format_census(rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
