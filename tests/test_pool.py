"""LoRAPool: layout, zero padding, slot reuse, dtype conversion, refusals that change nothing."""

from __future__ import annotations

import math

import pytest
import torch

from lora_kernels import reference
from lora_kernels.pool import LoRAPool


def _weights(r: int, h_in: int, h_out: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(r, h_in, generator=g, dtype=dtype),
        torch.randn(h_out, r, generator=g, dtype=dtype),
    )


def _pool_tensors(pool: LoRAPool) -> dict[str, torch.Tensor]:
    tensors = {
        "lora_a": pool.lora_a,
        "lora_b": pool.lora_b,
        "scaling": pool.scaling,
        "ranks": pool.ranks,
    }
    if pool.lora_bias is not None:
        tensors["lora_bias"] = pool.lora_bias
    return {k: v.clone() for k, v in tensors.items()}


# --- layout and behaviour ---------------------------------------------------------------------


def test_initial_state() -> None:
    pool = LoRAPool(6, 5, max_adapters=3, max_rank=4, dtype=torch.float16, bias=True)
    assert pool.lora_a.shape == (3, 4, 6) and pool.lora_a.dtype == torch.float16
    assert pool.lora_b.shape == (3, 5, 4) and pool.lora_b.dtype == torch.float16
    assert pool.lora_bias is not None and pool.lora_bias.shape == (3, 5)
    assert pool.scaling.shape == (3,) and pool.scaling.dtype == torch.float32
    assert pool.ranks.shape == (3,) and pool.ranks.dtype == torch.int32
    for t in _pool_tensors(pool).values():
        assert t.device.type == "cpu"
        assert not t.any()
    for t in (pool.lora_a, pool.lora_b, pool.scaling, pool.ranks, pool.lora_bias):
        assert t.is_contiguous() and not t.requires_grad
    assert len(pool) == 0 and pool.num_free == 3 and pool.used_slots == []
    assert (pool.in_features, pool.out_features, pool.max_adapters, pool.max_rank) == (6, 5, 3, 4)
    assert pool.has_bias and pool.dtype == torch.float16 and pool.device == torch.device("cpu")
    assert "LoRAPool(in_features=6" in repr(pool)
    assert LoRAPool(6, 5, 3, 4).lora_bias is None


def test_add_copies_and_zero_pads() -> None:
    pool = LoRAPool(7, 5, max_adapters=2, max_rank=8)
    pool.lora_a.fill_(3.0)  # stale garbage: padding must be zeroed, not assumed zero
    pool.lora_b.fill_(3.0)
    A, B = _weights(3, 7, 5)
    slot = pool.add(A, B, 0.5)
    assert slot == 0
    assert torch.equal(pool.lora_a[0, :3], A)
    assert not pool.lora_a[0, 3:].any()
    assert torch.equal(pool.lora_b[0, :, :3], B)
    assert not pool.lora_b[0, :, 3:].any()
    assert pool.ranks[0].item() == 3 and pool.scaling[0].item() == 0.5
    assert len(pool) == 1 and pool.num_free == 1 and pool.used_slots == [0]


def test_add_bias_and_default_zero_bias() -> None:
    pool = LoRAPool(4, 3, max_adapters=2, max_rank=2, bias=True)
    A, B = _weights(2, 4, 3)
    bias = torch.tensor([1.0, -2.0, 3.0])
    assert pool.add(A, B, 1.0, lora_bias=bias) == 0
    assert pool.lora_bias is not None
    pool.lora_bias[1].fill_(7.0)
    assert pool.add(A, B, 1.0) == 1
    assert torch.equal(pool.lora_bias[0], bias)
    assert not pool.lora_bias[1].any()


def test_remove_zeroes_and_slot_is_reused() -> None:
    pool = LoRAPool(4, 3, max_adapters=3, max_rank=4, bias=True)
    slots = [pool.add(*_weights(r, 4, 3, seed=r), 1.0 + r, torch.ones(3)) for r in (1, 2, 4)]
    assert slots == [0, 1, 2] and pool.num_free == 0
    pool.remove(1)
    assert pool.used_slots == [0, 2] and len(pool) == 2 and pool.num_free == 1
    assert pool.lora_bias is not None
    for t in (pool.lora_a[1], pool.lora_b[1], pool.scaling[1], pool.ranks[1], pool.lora_bias[1]):
        assert not t.any()
    A, B = _weights(3, 4, 3, seed=9)
    assert pool.add(A, B, 2.0) == 1  # the lowest free slot
    assert torch.equal(pool.lora_a[1, :3], A) and pool.ranks[1].item() == 3
    pool.remove(0)
    pool.remove(2)
    assert pool.add(A, B, 2.0) == 0


def test_dtype_conversion_bf16_pool_from_fp32_weights() -> None:
    pool = LoRAPool(16, 8, max_adapters=1, max_rank=4, dtype=torch.bfloat16)
    A, B = _weights(4, 16, 8, dtype=torch.float32)
    pool.add(A, B, 0.125)
    assert pool.lora_a.dtype == torch.bfloat16 and pool.lora_b.dtype == torch.bfloat16
    assert torch.equal(pool.lora_a[0], A.to(torch.bfloat16))
    assert torch.equal(pool.lora_b[0], B.to(torch.bfloat16))
    assert pool.scaling.dtype == torch.float32 and pool.scaling[0].item() == 0.125


def test_add_accepts_grad_tensors_and_creates_no_graph() -> None:
    pool = LoRAPool(4, 3, max_adapters=1, max_rank=2)
    A = torch.randn(2, 4, requires_grad=True)
    B = torch.randn(3, 2, requires_grad=True)
    pool.add(A, B, 1.0)
    assert not pool.lora_a.requires_grad and not pool.lora_b.requires_grad
    assert pool.lora_a.grad_fn is None


def test_embedding_layout() -> None:
    # PEFT: lora_embedding_A [r, vocab], lora_embedding_B [dim, r] -> in = vocab, out = dim.
    vocab, dim, r = 11, 6, 3
    pool = LoRAPool(vocab, dim, max_adapters=2, max_rank=4, dtype=torch.float64)
    A, B = _weights(r, vocab, dim, dtype=torch.float64)
    slot = pool.add(A, B, 0.5)
    token_ids = torch.tensor([0, 10, 4, 4])
    indices = torch.tensor([slot, -1, slot, slot], dtype=torch.int32)
    y = torch.randn(4, dim, dtype=torch.float64)
    expected = y.clone()
    for t in (0, 2, 3):
        expected[t] += 0.5 * B @ A[:, token_ids[t]]
    reference.add_lora_embedding(
        y, token_ids, pool.lora_a, pool.lora_b, pool.scaling, indices, ranks=pool.ranks
    )
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_pool_drives_reference_add_lora() -> None:
    h_in, h_out, T = 24, 10, 40
    g = torch.Generator().manual_seed(1234)
    pool = LoRAPool(h_in, h_out, max_adapters=4, max_rank=16, dtype=torch.float64)
    adapters = []
    for r, s in ((4, 0.5), (8, 2.0), (16, 0.25)):
        A = torch.randn(r, h_in, generator=g, dtype=torch.float64)
        B = torch.randn(h_out, r, generator=g, dtype=torch.float64)
        slot = pool.add(A, B, s)
        adapters.append((slot, A, B, s))
    x = torch.randn(T, h_in, generator=g, dtype=torch.float64)
    y = torch.randn(T, h_out, generator=g, dtype=torch.float64)
    indices = torch.randint(-1, 3, (T,), generator=g, dtype=torch.int32)
    indices[:4] = torch.tensor([-1, 0, 1, 2], dtype=torch.int32)  # every case present

    expected = y.clone()
    by_slot = {slot: (A, B, s) for slot, A, B, s in adapters}
    for t in range(T):
        a = int(indices[t])
        if a >= 0:
            A, B, s = by_slot[a]
            expected[t] += s * (x[t] @ A.T) @ B.T

    y_in = y.clone()
    out = reference.add_lora(
        y, x, pool.lora_a, pool.lora_b, pool.scaling, indices, ranks=pool.ranks
    )
    assert out is y
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(y[indices == -1], y_in[indices == -1])  # untouched, bit for bit
    # Zero padding makes `ranks` optional: the padded rows/columns contribute exactly zero.
    y2 = y_in.clone()
    reference.add_lora(y2, x, pool.lora_a, pool.lora_b, pool.scaling, indices)
    torch.testing.assert_close(y2, expected, rtol=1e-12, atol=1e-12)


# --- refusals: one test per message, each leaving the pool bit-identical ----------------------


def _full_pool() -> tuple[LoRAPool, dict[str, torch.Tensor]]:
    """A bias pool with one adapter in it, and clones of its tensors."""
    pool = LoRAPool(8, 6, max_adapters=2, max_rank=4, bias=True)
    pool.add(*_weights(3, 8, 6), 0.5, torch.randn(6))
    return pool, _pool_tensors(pool)


def _assert_unchanged(pool: LoRAPool, before: dict[str, torch.Tensor], used: list[int]) -> None:
    after = _pool_tensors(pool)
    assert after.keys() == before.keys()
    for name in before:
        assert torch.equal(after[name], before[name]), name
    assert pool.used_slots == used


A_OK, B_OK = _weights(2, 8, 6)

BAD_ADDS = [
    pytest.param(
        dict(lora_A=A_OK.numpy(), lora_B=B_OK, scaling=1.0),
        TypeError, r"LoRAPool\.add: lora_A must be a torch\.Tensor, got ndarray\.",
        id="A-not-tensor",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK.to(torch.int64), scaling=1.0),
        TypeError,
        r"LoRAPool\.add: lora_B must be a floating-point tensor, got dtype torch\.int64\.",
        id="B-not-floating",
    ),
    pytest.param(
        dict(lora_A=A_OK[None], lora_B=B_OK, scaling=1.0),
        ValueError, r"LoRAPool\.add: lora_A must be a 2-D tensor, got 3-D with shape \[1, 2, 8\]\.",
        id="A-not-2d",
    ),
    pytest.param(
        dict(lora_A=torch.randn(2, 7), lora_B=B_OK, scaling=1.0),
        ValueError, r"LoRAPool\.add: lora_A must have shape \[r, H_in\] = \[r, 8\], got \[2, 7\]\.",
        id="A-wrong-H_in",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=torch.randn(5, 2), scaling=1.0),
        ValueError,
        r"LoRAPool\.add: lora_B must have shape \[H_out, r\] = \[6, r\], got \[5, 2\]\.",
        id="B-wrong-H_out",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=torch.randn(6, 3), scaling=1.0),
        ValueError,
        r"LoRAPool\.add: lora_B must have shape \[H_out, r\] = \[6, 2\] \(r from lora_A\), "
        r"got \[6, 3\]\.",
        id="rank-mismatch",
    ),
    pytest.param(
        dict(lora_A=torch.randn(5, 8), lora_B=torch.randn(6, 5), scaling=1.0),
        ValueError,
        r"LoRAPool\.add: the rank r = lora_A\.shape\[0\] must be in \[1, max_rank\] = \[1, 4\], "
        r"got 5\.",
        id="rank-too-big",
    ),
    pytest.param(
        dict(lora_A=torch.randn(0, 8), lora_B=torch.randn(6, 0), scaling=1.0),
        ValueError, r"must be in \[1, max_rank\] = \[1, 4\], got 0\.",
        id="rank-zero",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK, scaling=torch.tensor(1.0)),
        TypeError, r"LoRAPool\.add: scaling must be a finite real number \(int or float\), got",
        id="scaling-tensor",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK, scaling=True),
        TypeError, r"scaling must be a finite real number .* of type bool\.",
        id="scaling-bool",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK, scaling=math.nan),
        ValueError, r"LoRAPool\.add: scaling must be a finite real number, got nan\.",
        id="scaling-nan",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK, scaling=1.0, lora_bias=torch.zeros(6, dtype=torch.int32)),
        TypeError, r"LoRAPool\.add: lora_bias must be a floating-point tensor, got torch\.int32\.",
        id="bias-not-floating",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK, scaling=1.0, lora_bias=torch.zeros(1, 6)),
        ValueError, r"LoRAPool\.add: lora_bias must have shape \[H_out\] = \[6\], got \[1, 6\]\.",
        id="bias-wrong-shape",
    ),
    pytest.param(
        dict(lora_A=A_OK.masked_fill(A_OK > 0.5, math.nan), lora_B=B_OK, scaling=1.0),
        ValueError,
        r"LoRAPool\.add: lora_A must hold only finite values, got \d+ NaN or Inf entries",
        id="A-nan",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK.index_fill(0, torch.tensor([1]), -math.inf), scaling=1.0),
        ValueError, r"LoRAPool\.add: lora_B must hold only finite values, got 2 NaN or Inf entries",
        id="B-inf",
    ),
    pytest.param(
        dict(lora_A=A_OK, lora_B=B_OK, scaling=1.0, lora_bias=torch.tensor([0.0, math.nan, 0, 0, 0, 0])),
        ValueError, r"LoRAPool\.add: lora_bias must hold only finite values, got 1 NaN or Inf entries",
        id="bias-nan",
    ),
    pytest.param(
        dict(lora_A=A_OK.double() * 1e300, lora_B=B_OK, scaling=1.0),
        ValueError,
        r"LoRAPool\.add: lora_A must fit the pool's dtype torch\.float32 \(largest finite value 3\.40282e\+38\), "
        r"got a value of magnitude .*e\+300, which would become Inf\.",
        id="A-overflows-pool-dtype",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ADDS)
def test_refused_add_leaves_pool_unchanged(kwargs: dict, error: type, message: str) -> None:
    pool, before = _full_pool()
    with pytest.raises(error, match=message):
        pool.add(**kwargs)
    _assert_unchanged(pool, before, [0])


def test_bias_given_to_pool_without_bias() -> None:
    pool = LoRAPool(8, 6, max_adapters=2, max_rank=4)
    pool.add(*_weights(3, 8, 6), 0.5)
    before = _pool_tensors(pool)
    with pytest.raises(
        ValueError,
        match=r"LoRAPool\.add: lora_bias was given but this pool was built with bias=False",
    ):
        pool.add(A_OK, B_OK, 1.0, lora_bias=torch.zeros(6))
    _assert_unchanged(pool, before, [0])


def test_add_to_full_pool() -> None:
    pool, _ = _full_pool()
    pool.add(A_OK, B_OK, 1.0)
    before = _pool_tensors(pool)
    with pytest.raises(
        RuntimeError,
        match=r"LoRAPool\.add: the pool is full: all max_adapters = 2 slots are in use",
    ):
        pool.add(A_OK, B_OK, 1.0)
    _assert_unchanged(pool, before, [0, 1])


@pytest.mark.parametrize("slot", [1, -1, 2, 99])
def test_remove_slot_not_in_use(slot: int) -> None:
    pool, before = _full_pool()
    with pytest.raises(
        ValueError,
        match=rf"LoRAPool\.remove: slot must be a slot in use, one of \[0\], got {slot}\.",
    ):
        pool.remove(slot)
    _assert_unchanged(pool, before, [0])


@pytest.mark.parametrize("slot", [0.0, True, "0", None])
def test_remove_slot_not_int(slot: object) -> None:
    pool, before = _full_pool()
    with pytest.raises(TypeError, match=r"LoRAPool\.remove: slot must be an int, got"):
        pool.remove(slot)  # type: ignore[arg-type]
    _assert_unchanged(pool, before, [0])


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("in_features", dict(in_features=0)),
        ("out_features", dict(out_features=-3)),
        ("max_adapters", dict(max_adapters=2.0)),
        ("max_rank", dict(max_rank=True)),
    ],
)
def test_constructor_sizes(name: str, kwargs: dict) -> None:
    args = dict(in_features=4, out_features=4, max_adapters=2, max_rank=2) | kwargs
    with pytest.raises(ValueError, match=rf"LoRAPool: {name} must be a positive int, got"):
        LoRAPool(**args)


def test_constructor_dtype() -> None:
    with pytest.raises(TypeError, match=r"LoRAPool: dtype must be a floating torch\.dtype, got"):
        LoRAPool(4, 4, 2, 2, dtype=torch.int32)


def test_constructor_bias() -> None:
    with pytest.raises(TypeError, match=r"LoRAPool: bias must be a bool, got 1\."):
        LoRAPool(4, 4, 2, 2, bias=1)  # type: ignore[arg-type]


def test_float64_pool_keeps_float64_scales() -> None:
    """A float32 scale would round 16 / sqrt(48) at ~1e-8 and cap float64 parity there."""
    pool = LoRAPool(4, 4, max_adapters=1, max_rank=2, dtype=torch.float64)
    A, B = _weights(2, 4, 4, dtype=torch.float64)
    pool.add(A, B, 16 / 48 ** 0.5)
    assert pool.scaling.dtype == torch.float64 and pool.scaling[0].item() == 16 / 48 ** 0.5


def test_reserve_takes_a_rank_zero_slot() -> None:
    pool = LoRAPool(4, 3, max_adapters=2, max_rank=2, bias=True)
    A, B = _weights(2, 4, 3)
    assert pool.reserve() == 0
    assert pool.add(A, B, 0.5) == 1
    assert pool.ranks.tolist() == [0, 2] and pool.scaling[0].item() == 0.0
    assert not pool.lora_a[0].any() and not pool.lora_b[0].any() and not pool.lora_bias[0].any()
    with pytest.raises(RuntimeError, match=r"LoRAPool.reserve: the pool is full"):
        pool.reserve()
    pool.remove(0)
    assert pool.used_slots == [1]


# --- prepare / add_prepared: check every pool first, then write -------------------------------


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ADDS)
def test_prepare_refuses_what_add_refuses_and_writes_nothing(kwargs: dict, error: type, message: str) -> None:
    pool, before = _full_pool()
    with pytest.raises(error, match=message.replace(r"LoRAPool\.add:", r"LoRAPool\.prepare:")):
        pool.prepare(**kwargs)
    _assert_unchanged(pool, before, [0])


def test_prepare_then_add_prepared_equals_add() -> None:
    A, B = _weights(3, 8, 6, dtype=torch.float64, seed=4)
    bias = torch.randn(6, dtype=torch.float64)
    added = LoRAPool(8, 6, max_adapters=3, max_rank=4, dtype=torch.bfloat16, bias=True)
    staged = LoRAPool(8, 6, max_adapters=3, max_rank=4, dtype=torch.bfloat16, bias=True)
    for pool in (added, staged):
        pool.reserve()
    prepared = staged.prepare(A, B, 0.75, bias)
    assert staged.used_slots == [0] and not staged.lora_a[1].any()  # prepare wrote nothing
    assert prepared.lora_A.dtype == torch.bfloat16 and prepared.rank == 3
    assert added.add(A, B, 0.75, bias) == staged.add_prepared(prepared) == 1
    for name, t in _pool_tensors(added).items():
        assert torch.equal(t, _pool_tensors(staged)[name]), name
    assert staged.add_prepared(prepared) == 2  # the same content again: a copy in the next slot
    with pytest.raises(RuntimeError, match=r"LoRAPool\.add_prepared: the pool is full: all max_adapters = 3"):
        staged.add_prepared(prepared)


def test_add_prepared_refuses_another_pools_content() -> None:
    pool, before = _full_pool()
    other = LoRAPool(8, 6, max_adapters=2, max_rank=4, bias=True)
    with pytest.raises(
        ValueError,
        match=r"LoRAPool\.add_prepared: prepared must be what this pool's prepare\(\) returned, got one "
        r"prepared by another pool \(LoRAPool\(in_features=8",
    ):
        pool.add_prepared(other.prepare(A_OK, B_OK, 1.0))
    with pytest.raises(ValueError, match=r"prepare\(\) returned, got tuple\."):
        pool.add_prepared((A_OK, B_OK, 1.0))
    _assert_unchanged(pool, before, [0])
