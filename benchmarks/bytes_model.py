#!/usr/bin/env python3
"""Bytes each benchmark shape must move, against a model of what today's CUDA kernels move.

    .venv/bin/python benchmarks/bytes_model.py                  # every bf16 sweep shape + the slices
    .venv/bin/python benchmarks/bytes_model.py --op add_lora --r 16 --markdown   # RESULTS.md's table

For each shape of the GPU sweep (lora_kernels.bench.full_cases, bf16; fp16 moves the same
bytes) and of the add_lora_slices run (lora_kernels.bench.slices.slices_cases):

- min: the bytes the call must move, each input read once and y read and written once
  (DESIGN §7; lora_kernels.bench.min_bytes / slices_min_bytes: x, the n distinct adapters'
  A and B, y; v as fp32 for shrink / expand alone; indices and scales not counted).
- model: the bytes the kernels' global loads and stores ask for, given their algorithm and the
  tile constants read from csrc/include/lora_kernels/tiles.h. One function per kernel path
  (PATHS); each returns the bytes by tensor. Counting rules: an element counts each time a
  thread loads or stores it, except that a value every thread of a block reads at one address
  (a broadcast: indices[pos], ranks[slot], scaling[slot]) counts once per block. These are
  requests to the memory system, before any cache: a re-read that the L2 serves (a weight tile
  read by the next group of the same adapter, x read again by the next row block, the index
  scans) is counted in full, so DRAM traffic lies between min and model.

The token layout is the bench's (lora_kernels.bench.workload.token_slots, seed 0): decode
tokens spread evenly over n adapters in a random order, prefill n equal segments. Only the
per-token-index scan depends on the order, and only a little.

A new kernel path (tensor-core prefill with larger token tiles, split-K decode, a device-side
plan) is one more function with the signature of `cuda_core`, added to PATHS: it gets a column
pair (MB, model/min) of its own.
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
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILES_H = os.path.join(ROOT, "csrc", "include", "lora_kernels", "tiles.h")
NEEDED = ("kThreads", "kShrinkRows", "kGroupTokens", "kRankChunk")

ACC_BYTES = 4  # v and scaling are fp32 for fp16 / bf16 / fp32 data
INDEX_BYTES = 4  # the bench's indices, seg_indptr, seg_adapter and ranks are int32

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv}  # C++ int division


def _eval(node: ast.AST, known: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, known), _eval(node.right, known))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, known)
    raise ValueError("not a plain integer expression")


def read_tiles(path: str = TILES_H) -> dict[str, int]:
    """The ``constexpr int NAME = EXPR;`` constants of tiles.h whose EXPR is integer arithmetic on
    literals and earlier constants (others, e.g. arrays or casts, are left out). Raises
    ValueError when one of NEEDED is missing."""
    with open(path) as f:
        text = re.sub(r"//[^\n]*", "", f.read())
    tiles: dict[str, int] = {}
    for name, expr in re.findall(r"constexpr\s+int\s+(\w+)\s*=\s*([^;{}]+);", text):
        try:
            tiles[name] = _eval(ast.parse(expr.strip(), mode="eval").body, tiles)
        except (SyntaxError, ValueError):
            continue
    missing = [k for k in NEEDED if k not in tiles]
    if missing:
        raise ValueError(f"{path}: no integer constant {', '.join(missing)} (the model needs {', '.join(NEEDED)}).")
    return tiles


# --- shapes and token layouts ----------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """One call: ``op`` in add_lora / shrink / expand / add_lora_slices; one (width, rank) per
    slice (a single slice for the first three); ``e`` bytes per element of x, y and weights."""

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
    """The tokens of a batch: their slots, and the segments for prefill (None for decode)."""

    slots: tuple[int, ...]
    seg_indptr: tuple[int, ...] | None
    seg_adapter: tuple[int, ...] | None


def layout_of(kind: str, T: int, n: int, seed: int = 0) -> Layout:
    from lora_kernels.bench.workload import token_slots

    slots, indptr, adapter = token_slots(kind, T, n, seed)
    return Layout(tuple(slots.tolist()), None if indptr is None else tuple(indptr.tolist()),
                  None if adapter is None else tuple(adapter.tolist()))


def groups_of(layout: Layout, G: int) -> list[tuple[int, int, int]]:
    """The groups find_group forms (kernels.cuh), as (leader position, slot, token count).
    Per-token indices: the token that is the k*G-th occurrence of its slot leads itself and the
    next G-1 tokens of that slot. Segments: each segment in runs of G tokens from its start."""
    out = []
    if layout.seg_indptr is None:
        seen: dict[int, list[int]] = {}
        for pos, s in enumerate(layout.slots):
            seen.setdefault(s, []).append(pos)
        for s, rows in seen.items():
            for k in range(0, len(rows), G):
                out.append((rows[k], s, len(rows[k:k + G])))
    else:
        for s, a in enumerate(layout.seg_adapter):
            start, end = layout.seg_indptr[s], layout.seg_indptr[s + 1]
            for pos in range(start, end, G):
                out.append((pos, a, min(G, end - pos)))
    return sorted(out)


def index_reads_per_column(layout: Layout, G: int) -> int:
    """Index elements one grid column's T blocks read in find_group (every block runs it).
    Per-token indices: indices[pos] (broadcast), the scan of indices[0:pos) that counts earlier
    tokens of the same slot (O(T^2) in all), then for a leader warp 0's forward scan, 32 indices
    a step, until it has G tokens or reaches T. Segments: thread 0's binary search over
    seg_indptr, seg_indptr[lo] and [lo + 1], and seg_adapter[lo] for a leader."""
    T = len(layout.slots)
    leaders = {pos for pos, _, _ in groups_of(layout, G)}
    total = 0
    if layout.seg_indptr is None:
        slots = layout.slots
        for pos in range(T):
            total += 1 + pos
            if pos in leaders:
                found, base = 0, pos
                while base < T and found < G:
                    chunk = slots[base:base + 32]
                    total += len(chunk)
                    found += sum(1 for s in chunk if s == slots[pos])
                    base += 32
        return total
    indptr, S = layout.seg_indptr, len(layout.seg_adapter)
    for pos in range(T):
        if S == 0:
            continue
        lo, hi = 0, S - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            total += 1
            if indptr[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        total += 2 + (pos in leaders)
    return total


# --- the model ------------------------------------------------------------------------------

CATEGORIES = ("x", "A", "v write", "v read", "B", "y read", "y write", "indices", "ranks+scaling")


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


def cuda_core_shrink(T: int, H_in: int, R: int, r: int, e: int, groups, index_per_col: int,
                     tiles: dict[str, int]) -> Traffic:
    """shrink_block (kernels.cuh): grid (T, ceil(R / kShrinkRows)); a leader block reads, for each
    of its rank rows j0 .. j0 + jn (jn = rows below the rank r), a whole row of A and, for each
    of its tokens, the row of x (so x once per row block); it writes its tokens' v[:, j0:j0 +
    rows] (zeros past r) in fp32. Every block reads ranks[slot] once (broadcast)."""
    t = Traffic()
    rows = tiles["kShrinkRows"]
    blocks = math.ceil(R / rows)
    for rb in range(blocks):
        j0 = rb * rows
        here = min(rows, R - j0)
        jn = max(0, min(r - j0, here))
        for _, _, count in groups:
            t.add("ranks+scaling", INDEX_BYTES)
            if jn > 0:
                t.add("x", count * H_in * e)
                t.add("A", jn * H_in * e)
            t.add("v write", count * here * ACC_BYTES)
    t.add("indices", blocks * index_per_col * INDEX_BYTES)
    return t


def cuda_core_expand(T: int, H_out: int, R: int, r: int, e: int, groups, index_per_col: int,
                     tiles: dict[str, int]) -> Traffic:
    """expand_block (kernels.cuh): grid (T, ceil(H_out / kThreads)), one output column per thread;
    a leader block stages its tokens' v[:, :r] (fp32) in shared memory once, each of its
    threads reads its column's row of B (r elements) and reads and writes its tokens' y; the
    block reads ranks[slot] and scaling[slot] once (broadcast)."""
    t = Traffic()
    cols_per_block = tiles["kThreads"]
    blocks = math.ceil(H_out / cols_per_block)
    for cb in range(blocks):
        cols = min(cols_per_block, H_out - cb * cols_per_block)
        for _, _, count in groups:
            t.add("ranks+scaling", INDEX_BYTES)
            if r == 0:
                continue
            t.add("v read", count * r * ACC_BYTES)
            t.add("B", cols * r * e)
            t.add("y read", count * cols * e)
            t.add("y write", count * cols * e)
            t.add("ranks+scaling", ACC_BYTES)
    t.add("indices", blocks * index_per_col * INDEX_BYTES)
    return t


def cuda_core(shape: Shape, tiles: dict[str, int], layout: Layout) -> Traffic:
    """Today's CUDA-core kernels (launch_shrink / launch_expand, and the _slices launchers, which
    run the same block body per slice in one folded grid): groups of kGroupTokens tokens of one
    slot, found by every block from the indices (kernels.cuh find_group). Every adapter has rank
    R (the bench's ranks)."""
    G = tiles["kGroupTokens"]
    groups = groups_of(layout, G)
    per_col = index_reads_per_column(layout, G)
    t = Traffic()
    for width, R in zip(shape.widths, shape.ranks):
        if shape.op in ("add_lora", "shrink", "add_lora_slices"):
            t += cuda_core_shrink(shape.T, shape.H_in, R, R, shape.e, groups, per_col, tiles)
        if shape.op in ("add_lora", "expand", "add_lora_slices"):
            t += cuda_core_expand(shape.T, width, R, R, shape.e, groups, per_col, tiles)
    return t


# One function per kernel path: (shape, tiles, layout) -> Traffic, or None where the path does
# not serve the shape. Add the new paths here.
PATHS: dict[str, Callable[[Shape, dict, Layout], Traffic | None]] = {"cuda_core": cuda_core}


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
    paths = list(rows[0]["models"]) if rows else []
    first = paths[0] if paths else None
    head = ["case", "min MB"]
    for p in paths:
        head += [f"{p} MB", f"{p} / min"]
    head += [f"{first}: {c} MB" for c in CATEGORIES]
    body = []
    for row in rows:
        cells = [row["shape"].name, f"{row['min'] / 1e6:.3f}"]
        for p in paths:
            m = row["models"][p]
            cells += ["-", "-"] if m is None else [f"{m.total / 1e6:.3f}", f"{m.total / row['min']:.2f}"]
        m = row["models"][first]
        cells += [f"{m.parts[c] / 1e6:.3f}" for c in CATEGORIES]
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(c) for c in body)])


def format_census(rows: list[dict], markdown: bool = False) -> str:
    """Per path, op and kind: how many shapes, and the smallest, median and largest model / min."""
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for row in rows:
        for path, m in row["models"].items():
            if m is not None:
                key = (path, row["shape"].op, row["shape"].kind)
                groups.setdefault(key, []).append((m.total / row["min"], row["shape"].name))
    head = ["path", "op", "kind", "shapes", "model / min: smallest", "median", "largest"]
    body = []
    for (path, op, kind), v in groups.items():
        v.sort()
        med = v[len(v) // 2][0] if len(v) % 2 else (v[len(v) // 2 - 1][0] + v[len(v) // 2][0]) / 2
        body.append([path, op, kind, str(len(v)), f"{v[0][0]:.2f} ({v[0][1]})", f"{med:.2f}",
                     f"{v[-1][0]:.2f} ({v[-1][1]})"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 4) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    return "\n".join("  ".join(c) for c in [head] + body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", default=TILES_H, help="the tile constants header (default: %(default)s)")
    p.add_argument("--op", choices=("add_lora", "shrink", "expand", "add_lora_slices"), action="append",
                   help="only these ops (repeatable; default all)")
    p.add_argument("--r", type=int, action="append", help="only these ranks (repeatable; default all)")
    p.add_argument("--no-slices", action="store_true", help="leave out the add_lora_slices shapes")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (RESULTS.md)")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    tiles = read_tiles(args.tiles)
    shapes = sweep_shapes() + ([] if args.no_slices else slices_shapes())
    if args.op:
        shapes = [s for s in shapes if s.op in args.op]
    if args.r:
        shapes = [s for s in shapes if max(s.ranks) in args.r]
    print(f"tiles ({os.path.relpath(args.tiles, ROOT)}): "
          + ", ".join(f"{k} = {tiles[k]}" for k in NEEDED) + f"; {len(shapes)} shapes, bf16 (fp16 moves the same bytes)")
    rows = model_rows(shapes, tiles)
    print(format_rows(rows, markdown=args.markdown))
    print()
    print(format_census(rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
