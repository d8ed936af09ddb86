"""Does a loaded PEFT adapter fit the model that will serve it?

:mod:`lora_kernels.peft` checks an adapter on its own (config, tensors, scales); this module
checks it against a served model, as :class:`~lora_kernels.MultiLoRAModel` does before it adds
anything: every targeted module exists and is a layer lora_kernels serves (``nn.Linear``,
``nn.Embedding``, transformers' GPT-2 ``Conv1D``) of the kind and sizes the adapter's weights
are for; no module PEFT's config selects lacks tensors; base-layer copies saved inside the
adapter equal the served model's own weights. It reads the model only (nothing is changed) and
returns every problem found, so the caller can refuse the adapter with all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .peft import PeftAdapter, selected_modules_without_tensors

__all__ = ["adapter_model_problems", "module_kind"]


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 style Conv1D (weight [nx, nf], y = x @ W + b), without importing it."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and hasattr(module, "nx")
        and isinstance(getattr(module, "weight", None), Tensor)
        and tuple(module.weight.shape) == (module.nx, module.nf)
    )


def module_kind(module: nn.Module) -> tuple[str, int, int] | None:
    """("linear" | "embedding", H_in, H_out) of a module we can serve, or None."""
    if isinstance(module, nn.Linear):
        return "linear", int(module.in_features), int(module.out_features)
    if _is_conv1d(module):
        return "linear", int(module.nx), int(module.nf)
    if isinstance(module, nn.Embedding):
        return "embedding", int(module.num_embeddings), int(module.embedding_dim)
    return None


def _same_values(saved: Tensor, served: Tensor) -> bool:
    """Equal, up to the one dtype cast between the saved copy and the served weight."""
    if tuple(saved.shape) != tuple(served.shape):
        return False
    served = served.detach()
    saved = saved.to(served.device)
    if saved.dtype == served.dtype:
        return torch.equal(saved, served)
    return torch.equal(saved.to(served.dtype), served) or torch.equal(saved, served.to(saved.dtype))


def adapter_model_problems(
    adapter: PeftAdapter,
    served_module: Callable[[str], nn.Module | None],
    named_modules: Iterable[tuple[str, nn.Module]],
    *,
    max_rank: int | None = None,
) -> list[str]:
    """Every reason the served model cannot serve ``adapter`` exactly as PEFT would, as
    sentences (empty when it can).

    Args:
        adapter: from :func:`lora_kernels.load_peft_adapter`.
        served_module: module name -> the served model's own module under that name (unwrapped,
            as it was before any LoRA wrapper), or ``None`` when the model has none.
        named_modules: the served model's ``(name, module)`` pairs, unwrapped likewise (what
            PEFT's config selection is matched against).
        max_rank: the largest rank the serving pools hold, or ``None`` for no limit.
    """
    problems = _module_problems(adapter, served_module, max_rank)
    # Modules PEFT's config selects but the adapter has no tensors for (issue 13, item 6).
    problems += selected_modules_without_tensors(adapter, named_modules)
    problems += _base_copy_problems(adapter, served_module)
    return problems


def _module_problems(
    adapter: PeftAdapter, served_module: Callable[[str], nn.Module | None], max_rank: int | None
) -> list[str]:
    """Each targeted module: present, of a kind we serve, the adapter's kind and sizes."""
    problems: list[str] = []
    for mname, m in adapter.modules.items():
        module = served_module(mname)
        if module is None:
            problems.append(f"it targets module {mname!r}, which the served model does not have")
            continue
        kind = module_kind(module)
        if kind is None:
            problems.append(
                f"module {mname!r} is a {type(module).__name__}; lora_kernels serves LoRA on "
                f"nn.Linear, nn.Embedding and transformers' Conv1D"
            )
            continue
        if kind[0] != m.kind:
            problems.append(
                f"module {mname!r} is a {type(module).__name__} but the adapter holds "
                f"{m.kind} LoRA weights for it"
            )
            continue
        if (kind[1], kind[2]) != (m.in_features, m.out_features):
            what = "[vocab, dim]" if m.kind == "embedding" else "[H_in, H_out]"
            problems.append(
                f"module {mname!r}: the served layer is {what} = [{kind[1]}, {kind[2]}] but "
                f"the adapter's lora_A {list(m.lora_A.shape)} / lora_B {list(m.lora_B.shape)} "
                f"are for [{m.in_features}, {m.out_features}]"
            )
            continue
        if m.kind == "embedding" and getattr(module, "max_norm", None) is not None:
            problems.append(
                f"module {mname!r} is an nn.Embedding with max_norm set, which renormalizes "
                f"the LoRA weights during lookup; not served"
            )
        if not module.weight.is_floating_point():
            problems.append(
                f"module {mname!r} has a {module.weight.dtype} weight; LoRA is served on "
                f"floating-point layers only"
            )
        if max_rank is not None and m.r > max_rank:
            problems.append(f"module {mname!r} has rank {m.r} > max_rank = {max_rank}")
    return problems


def _base_copy_problems(
    adapter: PeftAdapter, served_module: Callable[[str], nn.Module | None]
) -> list[str]:
    """Base-layer weights / biases saved inside the adapter: the served model's own, or refused
    (PEFT would load them into the base model, which every request shares)."""
    problems: list[str] = []
    for copies, attr in ((adapter.base_weights, "weight"), (adapter.base_biases, "bias")):
        for mname, saved in copies.items():
            module = served_module(mname)
            served = getattr(module, attr, None) if module is not None else None
            if not isinstance(served, Tensor):
                problems.append(
                    f"it carries a copy of the base {attr} of {mname!r}, which the served "
                    f"model does not have"
                )
            elif tuple(saved.shape) != tuple(served.shape):
                problems.append(
                    f"its saved copy of the base {attr} of {mname!r} has shape "
                    f"{list(saved.shape)}, the served model's has {list(served.shape)} (a "
                    f"resized vocabulary?); a base model shared by every request cannot "
                    f"serve it"
                )
            elif not _same_values(saved, served):
                diff = (saved.to(served.device, torch.float64) - served.detach().double()).abs().max()
                problems.append(
                    f"its saved copy of the base {attr} of {mname!r} differs from the served "
                    f"model's (max abs difference {float(diff):.3g}); PEFT would load that "
                    f"copy into the base model for every request, which a base model shared "
                    f"by every request cannot do"
                )
    return problems
