"""The LoRA scale, computed exactly as PEFT computes it.

    scaling = alpha / r              (plain LoRA)
    scaling = alpha / sqrt(r)        (rsLoRA, ``use_rslora=True``)

Why this gets its own function: serving stacks have repeatedly served rsLoRA adapters with the
plain ``alpha / r`` scale (LoRAX #700, vLLM #10798, SGLang #40835, TensorRT-LLM #1668). Nothing
errors; the fine-tune just "does not show", because the update is ``sqrt(r)`` times too small
(8x at r = 64). ``r`` and ``alpha`` must be the module's own values after PEFT's
``rank_pattern`` / ``alpha_pattern`` — never a padded rank.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["lora_scaling"]


def lora_scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """Return PEFT's LoRA scale: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA.

    Plain LoRA scales the update ``B @ A`` by ``alpha / r``; rsLoRA (rank-stabilized LoRA)
    by ``alpha / sqrt(r)``. Serving an rsLoRA adapter with ``alpha / r`` silently shrinks its
    effect by ``sqrt(r)`` — a bug several serving stacks have shipped — so the flag must come
    from the adapter's own config.

    Args:
        alpha: ``lora_alpha`` of the module (a finite int or float; bool is refused).
        rank: ``r`` of the module, a positive int (bool is refused); it must equal
            ``lora_A.weight.shape[0]``, not a padded rank.
        use_rslora: PEFT's ``use_rslora`` flag.

    Example:
        >>> lora_scaling(16, 64)
        0.25
        >>> lora_scaling(16, 64, use_rslora=True)
        2.0
    """
    # bool is an int subclass: lora_scaling(True, 8) is a bug in the caller, not alpha = 1.
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(
            f"lora_scaling: rank must be a positive int, got {rank!r} "
            f"of type {type(rank).__name__}."
        )
    if rank <= 0:
        raise ValueError(f"lora_scaling: rank must be a positive int (>= 1), got {rank}.")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(
            f"lora_scaling: alpha must be a finite real number (int or float), got {alpha!r} "
            f"of type {type(alpha).__name__}."
        )
    if not math.isfinite(alpha):
        raise ValueError(f"lora_scaling: alpha must be a finite real number, got {alpha!r}.")
    if not isinstance(use_rslora, bool):
        raise TypeError(
            f"lora_scaling: use_rslora must be a bool, got {use_rslora!r} "
            f"of type {type(use_rslora).__name__}."
        )
    rank = int(rank)
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)
