"""lora_scaling: PEFT's alpha / r, or alpha / sqrt(r) with rsLoRA, and its input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lora_kernels.scaling import lora_scaling


def test_plain_vs_rslora_values() -> None:
    # The bug this guards against: rsLoRA served with alpha/r is 8x too weak at r = 64.
    assert lora_scaling(16, 64) == 0.25
    assert lora_scaling(16, 64, use_rslora=True) == 2.0
    assert lora_scaling(16, 64, use_rslora=True) / lora_scaling(16, 64) == 8.0


@pytest.mark.parametrize("alpha", [1, 8, 16, 32.0, 0.5, 0, -4])
@pytest.mark.parametrize("rank", [1, 2, 3, 8, 16, 64, 128, 4096])
def test_matches_peft_formula(alpha: float, rank: int) -> None:
    plain = lora_scaling(alpha, rank)
    rs = lora_scaling(alpha, rank, use_rslora=True)
    assert isinstance(plain, float) and isinstance(rs, float)
    assert plain == alpha / rank
    assert rs == alpha / math.sqrt(rank)


def test_numpy_scalars_accepted() -> None:
    assert lora_scaling(np.float32(16.0), np.int64(64)) == 0.25


@pytest.mark.parametrize("rank", [True, 8.0, "8", None])
def test_rank_wrong_type(rank: object) -> None:
    with pytest.raises(
        TypeError, match=r"lora_scaling: rank must be a positive int, got .* of type"
    ):
        lora_scaling(16, rank)  # type: ignore[arg-type]


@pytest.mark.parametrize("rank", [0, -1, -64])
def test_rank_not_positive(rank: int) -> None:
    with pytest.raises(
        ValueError, match=rf"lora_scaling: rank must be a positive int \(>= 1\), got {rank}\."
    ):
        lora_scaling(16, rank)


@pytest.mark.parametrize("alpha", [True, "16", None, 1 + 2j])
def test_alpha_wrong_type(alpha: object) -> None:
    with pytest.raises(
        TypeError, match=r"lora_scaling: alpha must be a finite real number \(int or float\), got"
    ):
        lora_scaling(alpha, 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [math.inf, -math.inf, math.nan])
def test_alpha_not_finite(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"lora_scaling: alpha must be a finite real number, got"):
        lora_scaling(alpha, 8)


@pytest.mark.parametrize("flag", [1, "true", None])
def test_use_rslora_must_be_bool(flag: object) -> None:
    # A string "false" from a hand-written config would otherwise be truthy: refuse it.
    with pytest.raises(TypeError, match=r"lora_scaling: use_rslora must be a bool, got"):
        lora_scaling(16, 8, use_rslora=flag)  # type: ignore[arg-type]
