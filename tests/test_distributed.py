"""Tensor-parallel multi-LoRA (lora_kernels.distributed): sharding rules, errors, and a
Megatron-style block run over gloo at world sizes 2 and 4 that equals the unsharded block.

The multi-process checks share one spawn per world size (a module-scoped fixture): the parent
writes the base weights, the batch and four PEFT adapters to disk; every rank loads the
adapters itself, shards them, runs the block (BGMV and SGMV paths) and saves what it saw; the
parent compares with a plain-torch, single-process float64 computation of the whole block.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))

import lora_kernels as lk  # noqa: E402
from lora_kernels.distributed import (  # noqa: E402
    ColumnParallelLoRA,
    ParallelStyle,
    RowParallelLoRA,
    shard_dim,
    shard_lora_module,
    shard_peft_adapter,
)
from lora_kernels.peft import LoRAModule, PeftAdapter  # noqa: E402
from helpers.peft_helpers import PREFIX, lora_config, write_adapter  # noqa: E402

F64 = torch.float64
TOL = 1e-12

# The block: hidden H, GQA attention (8 query heads, 4 kv heads, head_dim 4), MLP width I.
H, N_HEADS, N_KV, HEAD_DIM, INTER = 32, 8, 4, 4, 24
Q_SIZE, KV_SIZE = N_HEADS * HEAD_DIM, N_KV * HEAD_DIM  # 32, 16: uneven packed qkv slices
QKV = "model.layers.0.self_attn.qkv_proj"  # packed LoRA module (Phi-3 style): one A, B [q+2kv, r]
O = "model.layers.0.self_attn.o_proj"
GATE = "model.layers.0.mlp.gate_proj"  # separate LoRA modules on a fused gate_up base layer
UP = "model.layers.0.mlp.up_proj"
DOWN = "model.layers.0.mlp.down_proj"
SHAPES = {QKV: (H, Q_SIZE + 2 * KV_SIZE), O: (Q_SIZE, H), GATE: (H, INTER), UP: (H, INTER), DOWN: (INTER, H)}
STYLES = {
    "qkv_proj": ParallelStyle.column([Q_SIZE, KV_SIZE, KV_SIZE]),
    "gate_proj|up_proj": "column",
    "o_proj|down_proj": "row",
}
MAX_RANK = 8

# Four adapters: (config overrides, targeted modules, {module: (r, scale)} computed by hand).
ALL = [QKV, O, GATE, UP, DOWN]
ADAPTERS = [
    (dict(r=4, lora_alpha=8), ALL, {m: (4, 8 / 4) for m in ALL}),
    (dict(r=8, lora_alpha=16, use_rslora=True), ALL, {m: (8, 16 / math.sqrt(8)) for m in ALL}),
    (dict(r=2, lora_alpha=4, lora_bias=True), [QKV, O, DOWN], {m: (2, 4 / 2) for m in (QKV, O, DOWN)}),
    (
        dict(r=6, lora_alpha=6, use_rslora=True, rank_pattern={"down_proj": 3}, alpha_pattern={"down_proj": 12}),
        [QKV, GATE, UP, DOWN],
        {QKV: (6, 6 / math.sqrt(6)), GATE: (6, 6 / math.sqrt(6)), UP: (6, 6 / math.sqrt(6)), DOWN: (3, 12 / math.sqrt(3))},
    ),
]
# One mixed batch: per request its adapter slot (-1 = none) and token count (one empty request).
BATCH_SLOTS = [1, -1, 0, 3, 2, -1, 1, 0]
BATCH_LENGTHS = [3, 2, 1, 4, 2, 1, 0, 2]


# ------------------------------------------------------------------------------------------
# The block, written once for both the full model (tp 1) and one rank's shard


def _attention(q, k, v, n_heads, n_kv, seg_indptr):
    """Causal GQA attention inside each request (segment); float64, plain torch."""
    T = q.shape[0]
    group = n_heads // n_kv
    q = q.reshape(T, n_heads, HEAD_DIM)
    k = k.reshape(T, n_kv, HEAD_DIM).repeat_interleave(group, dim=1)
    v = v.reshape(T, n_kv, HEAD_DIM).repeat_interleave(group, dim=1)
    out = torch.zeros_like(q)
    for s, e in zip(seg_indptr[:-1], seg_indptr[1:]):
        if e > s:
            scores = torch.einsum("thd,uhd->htu", q[s:e], k[s:e]) / math.sqrt(HEAD_DIM)
            causal = torch.ones(e - s, e - s, dtype=torch.bool).tril()
            p = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            out[s:e] = torch.einsum("htu,uhd->thd", p, v[s:e])
    return out.reshape(T, n_heads * HEAD_DIM)


def _megatron_shards(w, rank, ws):
    """Base weights of one rank, sliced by hand (independently of lora_kernels.distributed)."""
    q_l, kv_l, i_l = Q_SIZE // ws, KV_SIZE // ws, INTER // ws
    wq, wk, wv = w["qkv"].split([Q_SIZE, KV_SIZE, KV_SIZE])
    wg, wu = w["gate_up"].split([INTER, INTER])
    return {
        "qkv": torch.cat([wq[rank * q_l:(rank + 1) * q_l], wk[rank * kv_l:(rank + 1) * kv_l],
                          wv[rank * kv_l:(rank + 1) * kv_l]]),
        "o": w["o"][:, rank * q_l:(rank + 1) * q_l].contiguous(),
        "gate_up": torch.cat([wg[rank * i_l:(rank + 1) * i_l], wu[rank * i_l:(rank + 1) * i_l]]),
        "down": w["down"][:, rank * i_l:(rank + 1) * i_l].contiguous(),
    }


def _block(x, w, seg_indptr, ws, lora=None, reduce=None, batch=None):
    """One Megatron block on one rank's weights ``w``; ``lora``: the rank's companions."""
    q_l, kv_l, i_l = Q_SIZE // ws, KV_SIZE // ws, INTER // ws
    qkv = x @ w["qkv"].T  # column-parallel
    if lora:
        lora["qkv"].apply(qkv, x, **batch)
    q, k, v = qkv.split([q_l, kv_l, kv_l], dim=1)
    attn = _attention(q, k, v, N_HEADS // ws, N_KV // ws, seg_indptr)
    o = attn @ w["o"].T  # row-parallel: partial sum
    if lora:
        lora["o"].apply(o, attn, **batch)
    if reduce:
        reduce(o)
    h = x + o
    gu = h @ w["gate_up"].T  # column-parallel, fused gate | up
    if lora:
        lora["gate"].apply(gu[:, :i_l], h, **batch)  # column slices of the fused output
        lora["up"].apply(gu[:, i_l:], h, **batch)
    act = torch.nn.functional.silu(gu[:, :i_l]) * gu[:, i_l:]
    d = act @ w["down"].T  # row-parallel
    if lora:
        lora["down"].apply(d, act, **batch)
    if reduce:
        reduce(d)
    return h + d


def _reference_block(case, use_lora=True):
    """The unsharded block in one process, LoRA written out in plain torch from the saved tensors."""
    tok = torch.repeat_interleave(torch.tensor(BATCH_SLOTS), torch.tensor(BATCH_LENGTHS))

    def delta(module, inp):
        out = torch.zeros(inp.shape[0], SHAPES[module][1], dtype=F64)
        if not use_lora:
            return out
        for slot, (_, targets, scales) in enumerate(ADAPTERS):
            if module not in targets:
                continue
            t = case["adapters"][slot][module]
            rows = tok == slot
            upd = inp[rows] @ t["A"].T @ t["B"].T
            if "bias" in t:
                upd = upd + t["bias"]
            out[rows] += scales[module][1] * upd
        return out

    w, x = case["base"], case["x"]
    indptr = [0] + torch.tensor(BATCH_LENGTHS).cumsum(0).tolist()
    qkv = x @ w["qkv"].T + delta(QKV, x)
    q, k, v = qkv.split([Q_SIZE, KV_SIZE, KV_SIZE], dim=1)
    attn = _attention(q, k, v, N_HEADS, N_KV, indptr)
    h = x + attn @ w["o"].T + delta(O, attn)
    gu = h @ w["gate_up"].T + torch.cat([delta(GATE, h), delta(UP, h)], dim=1)
    act = torch.nn.functional.silu(gu[:, :INTER]) * gu[:, INTER:]
    return h + act @ w["down"].T + delta(DOWN, act)


# ------------------------------------------------------------------------------------------
# The case on disk


def _write_case(root) -> dict:
    g = torch.Generator().manual_seed(1234)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=F64) * scale

    T = sum(BATCH_LENGTHS)
    base = {
        "qkv": rnd(Q_SIZE + 2 * KV_SIZE, H, scale=H ** -0.5),
        "o": rnd(H, Q_SIZE, scale=Q_SIZE ** -0.5),
        "gate_up": rnd(2 * INTER, H, scale=H ** -0.5),
        "down": rnd(H, INTER, scale=INTER ** -0.5),
    }
    case = {"base": base, "x": rnd(T, H), "adapters": [], "dirs": []}
    for k, (overrides, targets, scales) in enumerate(ADAPTERS):
        tensors, per_module = {}, {}
        for m in targets:
            r = scales[m][0]
            h_in, h_out = SHAPES[m]
            t = {"A": rnd(r, h_in, scale=h_in ** -0.5), "B": rnd(h_out, r, scale=r ** -0.5)}
            tensors[f"{PREFIX}{m}.lora_A.weight"] = t["A"]
            tensors[f"{PREFIX}{m}.lora_B.weight"] = t["B"]
            if overrides.get("lora_bias"):
                t["bias"] = rnd(h_out, scale=0.5)
                tensors[f"{PREFIX}{m}.lora_B.bias"] = t["bias"]
            per_module[m] = t
        names = sorted({m.rsplit(".", 1)[1] for m in targets})
        path = write_adapter(os.path.join(root, f"adapter{k}"), lora_config(target_modules=names, **overrides), tensors)
        case["adapters"].append(per_module)
        case["dirs"].append(path)
    torch.save(case, os.path.join(root, "case.pt"))
    return case


# ------------------------------------------------------------------------------------------
# What each rank runs (in a spawned process)


def _rank_checks(rank: int, ws: int, root: str) -> dict:
    case = torch.load(os.path.join(root, "case.pt"))
    adapters = [lk.load_peft_adapter(d) for d in case["dirs"]]  # every rank reads the files
    local = [shard_peft_adapter(a, rank, ws, STYLES) for a in adapters]
    log: list[tuple[str, int, torch.dtype]] = []

    def hook(name):
        def all_reduce(t, group):
            log.append((name, t.numel(), t.dtype))
            dist.all_reduce(t, group=group)

        return all_reduce

    common = dict(max_adapters=len(ADAPTERS), max_rank=MAX_RANK, tp_rank=rank, tp_size=ws, dtype=F64, bias=True)
    lora = {
        "qkv": ColumnParallelLoRA(*SHAPES[QKV], output_sizes=[Q_SIZE, KV_SIZE, KV_SIZE], name=QKV, **common),
        "o": RowParallelLoRA(*SHAPES[O], all_reduce=hook("o_proj"), name=O, **common),
        "gate": ColumnParallelLoRA(*SHAPES[GATE], name=GATE, **common),
        "up": ColumnParallelLoRA(*SHAPES[UP], name=UP, **common),
        "down": RowParallelLoRA(*SHAPES[DOWN], all_reduce=hook("down_proj"), name=DOWN, **common),
    }
    for slot, (full, shard) in enumerate(zip(adapters, local)):
        for key, module in (("qkv", QKV), ("o", O), ("down", DOWN)):  # pre-sharded adapter
            m = shard.modules.get(module)
            got = lora[key].add_module(None) if m is None else lora[key].add_shard(
                m.lora_A, m.lora_B, m.scaling, m.lora_bias)
            assert got == slot
        for key, module in (("gate", GATE), ("up", UP)):  # full module, sharded by the companion
            assert lora[key].add_module(full.modules.get(module)) == slot

    meta = lk.BatchMetadata.from_requests(BATCH_SLOTS, BATCH_LENGTHS)
    indptr = meta.seg_indptr.tolist()
    w = _megatron_shards(case["base"], rank, ws)
    reduce = lambda t: dist.all_reduce(t)  # noqa: E731  (the base layers' own all-reduce)
    x = case["x"]
    out = {}
    logs = {}
    for path, batch in (("bgmv", dict(indices=meta.indices)),
                        ("sgmv", dict(seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter))):
        log.clear()
        out[path] = _block(x, w, indptr, ws, lora, reduce, batch)
        logs[path] = list(log)
    log.clear()

    # Row-parallel rule: after the all-reduced shrink only tp rank 0 changes its partial output,
    # and -1 rows stay bit-for-bit untouched there.
    g = torch.Generator().manual_seed(99 + rank)
    x_local = torch.randn(meta.num_tokens, Q_SIZE // ws, generator=g, dtype=F64)
    y0 = torch.randn(meta.num_tokens, H, generator=g, dtype=F64)
    v = lora["o"].shrink(x_local, meta.indices)
    y = lora["o"].expand(y0.clone(), v, meta.indices)
    none_rows = meta.indices < 0
    expand = {
        "changed": not torch.equal(y, y0),
        "none_rows_untouched": torch.equal(y[none_rows], y0[none_rows]),
        "x_local": x_local, "y0": y0, "y": y, "v": v,
    }

    # The default communication path is torch.distributed.all_reduce, T x R elements, once.
    plain = RowParallelLoRA(*SHAPES[O], name=O, **common)
    for shard in local:
        m = shard.modules.get(O)
        plain.add_module(None) if m is None else plain.add_shard(m.lora_A, m.lora_B, m.scaling, m.lora_bias)
    calls = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append((tensor.numel(), tensor.dtype, tuple(tensor.shape)))
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        plain.apply(y0.clone(), x_local, seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter)
        # T = 0: nothing to reduce, no collective (the same on every rank), no hang.
        empty = lk.BatchMetadata.from_requests([], [])
        y_empty = torch.zeros(0, H, dtype=F64)
        plain.apply(y_empty, torch.zeros(0, Q_SIZE // ws, dtype=F64), empty.indices)
    finally:
        dist.all_reduce = real

    # tp_rank / tp_size that disagree with the group are refused (they would sum wrong shards)
    try:
        RowParallelLoRA(*SHAPES[O], len(ADAPTERS), MAX_RANK, tp_rank=0, tp_size=1, name=O)
        group_error = None
    except ValueError as e:
        group_error = str(e)
    # tp_rank / tp_size default to the group's
    from_group = ColumnParallelLoRA(*SHAPES[GATE], len(ADAPTERS), MAX_RANK, group=None)
    from_group = (from_group.tp_rank, from_group.tp_size, tuple(from_group.pool.lora_b.shape))

    pools = {k: (c.pool.scaling.clone(), c.pool.ranks.clone(), tuple(c.pool.lora_a.shape),
                 tuple(c.pool.lora_b.shape)) for k, c in lora.items()}
    return {"out": out, "logs": logs, "expand": expand, "default_calls": calls, "pools": pools,
            "T": meta.num_tokens, "group_error": group_error, "from_group": from_group}


def _worker(rank: int, ws: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ws,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(_rank_checks(rank, ws, root), os.path.join(root, f"rank{rank}_of{ws}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(ws: int, root: str, timeout: float = 120.0) -> None:
    """Run ``_worker`` on ``ws`` spawned processes; bounded; never leaves a child behind."""
    ctx = mp.start_processes(
        _worker, args=(ws, _free_port(), root), nprocs=ws, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):  # raises, with the child's traceback, if a rank fails
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed test: world size {ws} did not finish in {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        for p in ctx.processes:
            p.join(10)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("distributed_case"))
    return root, _write_case(root)


@pytest.fixture(scope="module", params=[2, 4], ids=["tp2", "tp4"])
def tp_run(request, case_dir):
    root, case = case_dir
    ws = request.param
    _spawn(ws, root)
    ranks = [torch.load(os.path.join(root, f"rank{r}_of{ws}.pt")) for r in range(ws)]
    return ws, case, ranks


@pytest.fixture(scope="module")
def references(case_dir):
    _, case = case_dir
    return _reference_block(case), _reference_block(case, use_lora=False)


def _rel(a, b, scale):
    return ((a - b).norm() / scale.norm()).item()


# ------------------------------------------------------------------------------------------
# Multi-process checks


@pytest.mark.parametrize("path", ["bgmv", "sgmv"])
def test_distributed_block_equals_unsharded(tp_run, references, path):
    ws, _, ranks = tp_run
    ref, base = references
    d_ref = ref - base
    assert d_ref.norm() > 0.1 * base.norm()  # the LoRA update is not negligible
    for r, res in enumerate(ranks):
        got = res["out"][path]
        err = _rel(got - base, d_ref, d_ref)
        assert err < TOL, f"tp_size {ws}, rank {r}, {path}: relative error {err:.3g}"
        # -1 requests get no update: their rows equal the base block's
        tok = torch.repeat_interleave(torch.tensor(BATCH_SLOTS), torch.tensor(BATCH_LENGTHS))
        none = tok < 0
        assert none.any()
        assert (got[none] - base[none]).norm() / d_ref.norm() < TOL


def test_distributed_ranks_agree(tp_run):
    _, _, ranks = tp_run
    for res in ranks[1:]:
        for path in ("bgmv", "sgmv"):
            torch.testing.assert_close(res["out"][path], ranks[0]["out"][path], rtol=1e-15, atol=1e-15)


def test_distributed_comm_volume_is_T_x_R_per_row_layer(tp_run):
    _, _, ranks = tp_run
    for res in ranks:
        T = res["T"]
        for path in ("bgmv", "sgmv"):
            # one all-reduce of exactly T x R elements per row-parallel layer; none for columns
            assert res["logs"][path] == [("o_proj", T * MAX_RANK, F64), ("down_proj", T * MAX_RANK, F64)]


def test_distributed_default_all_reduce_volume(tp_run):
    _, _, ranks = tp_run
    for res in ranks:
        T = res["T"]
        # apply() on T tokens: one torch.distributed.all_reduce of [T, R]; T = 0: none at all
        assert res["default_calls"] == [(T * MAX_RANK, F64, (T, MAX_RANK))]


def test_distributed_row_delta_added_once_on_rank0(tp_run, case_dir):
    ws, _, ranks = tp_run
    assert ranks[0]["expand"]["changed"]
    assert ranks[0]["expand"]["none_rows_untouched"]
    for res in ranks[1:]:
        assert not res["expand"]["changed"]  # bit-for-bit untouched off rank 0
    # sum over ranks of (y - y0) == the full o_proj delta of x (x = concatenated x_local)
    x = torch.cat([res["expand"]["x_local"] for res in ranks], dim=1)
    total = sum(res["expand"]["y"] - res["expand"]["y0"] for res in ranks)
    meta = lk.BatchMetadata.from_requests(BATCH_SLOTS, BATCH_LENGTHS)
    tok = meta.indices.long()
    want = torch.zeros_like(total)
    _, case = case_dir
    for slot, (_, targets, scales) in enumerate(ADAPTERS):
        if O in targets:
            t = case["adapters"][slot][O]
            rows = tok == slot
            upd = x[rows] @ t["A"].T @ t["B"].T + t.get("bias", torch.zeros(H, dtype=F64))
            want[rows] += scales[O][1] * upd
    assert _rel(total, want, want) < TOL
    # the all-reduced v is the same on every rank and equals x @ A.T
    for res in ranks[1:]:
        torch.testing.assert_close(res["expand"]["v"], ranks[0]["expand"]["v"], rtol=1e-15, atol=1e-15)


def test_distributed_error_tp_size_disagrees_with_group(tp_run):
    ws, _, ranks = tp_run
    for r, res in enumerate(ranks):
        assert res["group_error"] is not None
        assert f"tp_rank = 0, tp_size = 1 disagree with the group (rank {r} of {ws})" in res["group_error"]
        assert O in res["group_error"]
        assert res["from_group"] == (r, ws, (len(ADAPTERS), INTER // ws, MAX_RANK))


def test_distributed_scale_and_ranks_unchanged_across_shards(tp_run):
    ws, _, ranks = tp_run
    for key, module in (("qkv", QKV), ("o", O), ("gate", GATE), ("up", UP), ("down", DOWN)):
        want_scale = torch.tensor(
            [s[module][1] if module in tg else 0.0 for _, tg, s in ADAPTERS], dtype=F64)
        want_rank = torch.tensor([s[module][0] if module in tg else 0 for _, tg, s in ADAPTERS], dtype=torch.int32)
        h_in, h_out = SHAPES[module]
        for res in ranks:
            scaling, rk, a_shape, b_shape = res["pools"][key]
            # the adapter's own scale, at the pool's precision (float64 in a float64 pool)
            assert torch.equal(scaling, want_scale.to(scaling.dtype)), (key, scaling, want_scale)
            assert torch.equal(rk, want_rank)
            if key in ("o", "down"):  # row: A split along H_in, B whole
                assert a_shape == (len(ADAPTERS), MAX_RANK, h_in // ws) and b_shape == (len(ADAPTERS), h_out, MAX_RANK)
            else:  # column: A whole, B split along H_out
                assert a_shape == (len(ADAPTERS), MAX_RANK, h_in) and b_shape == (len(ADAPTERS), h_out // ws, MAX_RANK)


# ------------------------------------------------------------------------------------------
# Single-process checks: sharding rules and errors


def _module(name="layers.0.qkv_proj", r=4, h_in=8, h_out=12, bias=False, kind="linear", seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    fields = dict(alpha=8.0, use_rslora=True, scaling=8 / math.sqrt(r))
    fields.update(kw)
    return LoRAModule(
        name=name, kind=kind, lora_A=torch.randn(r, h_in, generator=g, dtype=F64),
        lora_B=torch.randn(h_out, r, generator=g, dtype=F64),
        lora_bias=torch.randn(h_out, generator=g, dtype=F64) if bias else None, r=r, **fields,
    )


def test_distributed_shard_dim_packed_slices_match_megatron():
    w = torch.arange(12 * 3, dtype=F64).reshape(12, 3)  # q 8, k 2, v 2 rows
    for rank in range(2):
        got = shard_dim(w, 0, rank, 2, [8, 2, 2])
        want = torch.cat([w[rank * 4:(rank + 1) * 4], w[8 + rank:9 + rank], w[10 + rank:11 + rank]])
        assert torch.equal(got, want) and got.is_contiguous()
    assert torch.equal(shard_dim(w, 1, 2, 3), w[:, 2:3])


def test_distributed_shard_lora_module_column_row_replicated():
    m = _module(h_out=12, bias=True)
    sizes = [8, 2, 2]
    parts_b, parts_bias = [], []
    for rank in range(2):
        s = shard_lora_module(m, ParallelStyle.column(sizes), rank, 2)
        assert s.lora_A is m.lora_A or torch.equal(s.lora_A, m.lora_A)
        assert s.lora_B.shape == (6, 4)
        parts_b.append(s.lora_B.split([4, 1, 1]))
        parts_bias.append(s.lora_bias.split([4, 1, 1]))
    # reassemble slice by slice: rank pieces of q, then of k, then of v
    full_b = torch.cat([torch.cat([p[i] for p in parts_b]) for i in range(3)])
    full_bias = torch.cat([torch.cat([p[i] for p in parts_bias]) for i in range(3)])
    assert torch.equal(full_b, m.lora_B) and torch.equal(full_bias, m.lora_bias)

    rows = [shard_lora_module(m, "row", rank, 4) for rank in range(4)]
    assert torch.equal(torch.cat([s.lora_A for s in rows], dim=1), m.lora_A)
    for s in rows:
        assert torch.equal(s.lora_B, m.lora_B) and torch.equal(s.lora_bias, m.lora_bias)

    rep = shard_lora_module(m, "replicated", 1, 4)
    assert torch.equal(rep.lora_A, m.lora_A) and torch.equal(rep.lora_B, m.lora_B)


def test_distributed_shard_keeps_the_adapters_own_scale():
    # A scale that no formula would recompute from a shard (or a padded rank): copied verbatim.
    m = _module(r=4, alpha=16.0, use_rslora=True, scaling=16 / math.sqrt(4))
    for style in ("column", "row", "replicated"):
        for rank in range(4):
            s = shard_lora_module(m, style, rank, 4)
            assert (s.scaling, s.r, s.alpha, s.use_rslora, s.name, s.kind) == (8.0, 4, 16.0, True, m.name, m.kind)
            assert s.lora_A.shape[0] == 4 and s.lora_B.shape[1] == 4
    odd = _module(scaling=0.123456789)
    assert shard_lora_module(odd, "row", 1, 2).scaling == 0.123456789


@pytest.mark.parametrize("dtype,tol", [(F64, TOL), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_distributed_row_and_column_math_single_process(dtype, tol):
    """Summed row shards (the all-reduce done by hand) and concatenated column shards equal the
    float64 update of the unsharded layer."""
    g = torch.Generator().manual_seed(5)
    mods = [_module(r=r, h_in=12, h_out=8, bias=True, seed=r, scaling=0.5 * r) for r in (3, 1, 4)]
    meta = lk.BatchMetadata.from_requests([2, -1, 0, 1], [2, 1, 3, 1])
    x = torch.randn(meta.num_tokens, 12, generator=g, dtype=F64).to(dtype)
    y0 = torch.randn(meta.num_tokens, 8, generator=g, dtype=F64).to(dtype)
    full = lk.LoRAPool(12, 8, 3, 4, dtype=F64, bias=True)
    for m in mods:  # the reference sees the same (rounded) weights the shards hold
        full.add(m.lora_A.to(dtype), m.lora_B.to(dtype), m.scaling, m.lora_bias.to(dtype))
    want = lk.reference.add_lora(torch.zeros(meta.num_tokens, 8, dtype=F64), x.to(F64), full.lora_a,
                                 full.lora_b, full.scaling, meta.indices, ranks=full.ranks,
                                 lora_bias=full.lora_bias)
    y0_64 = y0.to(F64)
    tp = 3
    vs, rows = [], []
    for rank in range(tp):
        layer = RowParallelLoRA(12, 8, 3, 4, tp_rank=rank, tp_size=tp, dtype=dtype, bias=True,
                                all_reduce=lambda t, g: None)  # partial v only
        for m in mods:
            layer.add_module(m)
        v_partial = layer.shrink(x[:, rank * 4:(rank + 1) * 4], meta.indices)
        assert v_partial.dtype == (F64 if dtype == F64 else torch.float32)
        vs.append(v_partial)
        rows.append(layer)
    v = sum(vs)
    got = sum(layer.expand(y0.clone(), v, meta.indices).to(F64) - y0_64 for layer in rows)
    assert _rel(got, want, want) < tol
    cols = []
    for rank in range(2):
        layer = ColumnParallelLoRA(12, 8, 3, 4, tp_rank=rank, tp_size=2, dtype=dtype, bias=True)
        for m in mods:
            layer.add_module(m)
        y = y0.clone()[:, rank * 4:(rank + 1) * 4]  # a strided column slice, as in a fused output
        cols.append(layer.apply(y, x, seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter).to(F64)
                    - y0_64[:, rank * 4:(rank + 1) * 4])
    assert _rel(torch.cat(cols, dim=1), want, want) < tol


def test_distributed_shard_peft_adapter_patterns():
    mods = {
        "model.layers.0.self_attn.q_proj": _module("model.layers.0.self_attn.q_proj", h_in=8, h_out=8),
        "model.layers.0.self_attn.o_proj": _module("model.layers.0.self_attn.o_proj", h_in=8, h_out=8),
        "lm_head": _module("lm_head", h_in=8, h_out=16),
    }
    base = {"lm_head": torch.ones(16, 8)}
    ad = PeftAdapter(path="/x", config={"r": 4}, modules=mods, base_weights=base)
    styles = {"o_proj": "row", "q_proj|lm_head": "column", "self_attn.o_proj": "replicated"}
    out = shard_peft_adapter(ad, 1, 2, styles)
    assert out.path == "/x" and out.config == {"r": 4} and out.base_weights["lm_head"] is base["lm_head"]
    assert out.modules["model.layers.0.self_attn.o_proj"].lora_A.shape == (4, 4)  # first key wins: row
    assert out.modules["model.layers.0.self_attn.q_proj"].lora_B.shape == (4, 4)
    assert out.modules["lm_head"].lora_B.shape == (8, 4)
    assert set(out.modules) == set(mods)


def test_distributed_error_column_not_divisible():
    m = _module("model.layers.3.mlp.up_proj", h_out=10)
    with pytest.raises(ValueError, match=r"'model\.layers\.3\.mlp\.up_proj'.*H_out \(lora_B\.shape\[0\]\) = 10.*tp_size = 4"):
        shard_lora_module(m, "column", 0, 4)


def test_distributed_error_packed_slice_not_divisible():
    m = _module("model.layers.0.self_attn.qkv_proj", h_out=16)  # q 8, k 4, v 4; kv not / 8
    with pytest.raises(ValueError, match=r"qkv_proj.*slice 1 of output_sizes \[8, 4, 4\] has 4.*tp_size = 8"):
        shard_lora_module(m, ParallelStyle.column([8, 4, 4]), 0, 8)


def test_distributed_error_output_sizes_sum():
    m = _module("model.layers.0.self_attn.qkv_proj", h_out=12)
    with pytest.raises(ValueError, match=r"output_sizes \[8, 2\] must add up to H_out .* = 12"):
        shard_lora_module(m, ParallelStyle.column([8, 2]), 0, 2)


def test_distributed_error_row_not_divisible():
    m = _module("model.layers.0.mlp.down_proj", h_in=9)
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.down_proj' cannot be row-parallel.*H_in \(lora_A\.shape\[1\]\) = 9.*tp_size = 2"):
        shard_lora_module(m, "row", 1, 2)


def test_distributed_error_tp_rank_out_of_range():
    with pytest.raises(ValueError, match=r"tp_rank must be in \[0, tp_size\) = \[0, 2\), got 2"):
        shard_lora_module(_module(), "row", 2, 2)
    with pytest.raises(ValueError, match=r"tp_size must be >= 1, got 0"):
        shard_lora_module(_module(), "row", 0, 0)


def test_distributed_error_bad_style():
    with pytest.raises(ValueError, match=r"style must be one of \['column', 'row', 'replicated'\].*'colum'"):
        shard_lora_module(_module(), "colum", 0, 2)
    with pytest.raises(ValueError, match=r"output_sizes .* column-parallel layers only"):
        ParallelStyle("row", (4, 4))


def test_distributed_error_embedding_row_refused():
    m = _module("model.embed_tokens", kind="embedding", h_in=16, h_out=8)
    with pytest.raises(ValueError, match=r"'model\.embed_tokens' is an embedding LoRA.*'replicated'"):
        shard_lora_module(m, "row", 0, 2)
    s = shard_lora_module(m, "column", 1, 2)  # a dim-split embedding: B rows split
    assert torch.equal(s.lora_B, m.lora_B[4:]) and torch.equal(s.lora_A, m.lora_A)


def test_distributed_error_unmatched_module():
    ad = PeftAdapter(path=None, config={}, modules={"model.layers.0.mlp.down_proj": _module()})
    with pytest.raises(ValueError, match=r"no styles key matches module\(s\) \['model\.layers\.0\.mlp\.down_proj'\]"):
        shard_peft_adapter(ad, 0, 2, {"q_proj": "column"})


def test_distributed_error_companion_shapes():
    with pytest.raises(ValueError, match=r"ColumnParallelLoRA\('gate'\).*'gate' cannot be column-parallel.*= 10.*tp_size = 4"):
        ColumnParallelLoRA(8, 10, 2, 4, tp_rank=0, tp_size=4, name="gate")
    with pytest.raises(ValueError, match=r"RowParallelLoRA\('down'\).*row-parallel.*H_in \(in_features\) = 9.*tp_size = 2"):
        RowParallelLoRA(9, 8, 2, 4, tp_rank=0, tp_size=2, name="down")
    layer = RowParallelLoRA(8, 12, 2, 4, tp_rank=0, tp_size=2, dtype=F64)
    with pytest.raises(ValueError, match=r"add_module: module 'layers\.0\.qkv_proj' must be the full \(unsharded\) module.*H_in = 8, H_out = 12.*got lora_A \[4, 4\]"):
        layer.add_module(_module(h_in=4, h_out=12))
    with pytest.raises(ValueError, match=r"either indices \(BGMV\) or seg_indptr and seg_adapter \(SGMV\), not both"):
        meta = lk.BatchMetadata.from_requests([0], [1])
        layer.apply(torch.zeros(1, 12, dtype=F64), torch.zeros(1, 4, dtype=F64), meta.indices,
                    seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter)
    if not dist.is_initialized():
        with pytest.raises(ValueError, match=r"pass tp_rank and tp_size, or initialise torch\.distributed"):
            RowParallelLoRA(8, 8, 2, 4)


def test_distributed_reexports_the_sharding_rules():
    # The pure sharding functions live in lora_kernels.sharding; every name stays importable
    # from lora_kernels.distributed as the same object.
    import lora_kernels.distributed as distributed
    import lora_kernels.sharding as sharding

    for name in sharding.__all__ + ["StyleLike"]:
        assert getattr(distributed, name) is getattr(sharding, name), name
    assert set(sharding.__all__) <= set(distributed.__all__)


def test_distributed_add_module_none_reserves_a_rank_0_slot():
    # add_module(None): the lowest free slot, all zero (rank 0, scale 0): LoRAPool.reserve.
    layer = ColumnParallelLoRA(8, 12, 3, 4, tp_rank=1, tp_size=2, dtype=F64, bias=True)
    assert layer.add_module(_module(h_in=8, h_out=12, bias=True)) == 0
    assert layer.add_module(None) == 1
    p = layer.pool
    assert p.used_slots == [0, 1] and int(p.ranks[1]) == 0 and float(p.scaling[1]) == 0.0
    assert not p.lora_a[1].any() and not p.lora_b[1].any() and not p.lora_bias[1].any()
    layer.remove(0)
    assert layer.add_module(None) == 0 and p.used_slots == [0, 1]
    layer.add_module(None)
    with pytest.raises(RuntimeError, match=r"LoRAPool\.reserve: the pool is full: all max_adapters = 3 slots"):
        layer.add_module(None)
