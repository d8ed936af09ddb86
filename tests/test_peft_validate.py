"""lora_kernels.peft_validate: a loaded adapter checked against a served model, on its own
(no MultiLoRAModel): every problem found, as sentences, in a fixed order; nothing changed."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from lora_kernels.peft import adapter_from_state_dict  # noqa: E402
from lora_kernels.peft_validate import adapter_model_problems, module_kind  # noqa: E402
from helpers.peft_helpers import PREFIX, lora_config, lora_tensors  # noqa: E402


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 6, bias=False)
        self.v_proj = nn.Linear(8, 4, bias=False)
        self.embed = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)


def _problems(model: nn.Module, adapter, max_rank=None) -> list[str]:
    def served(name):
        try:
            return model.get_submodule(name)
        except AttributeError:
            return None

    return adapter_model_problems(adapter, served, model.named_modules(), max_rank=max_rank)


def test_a_fitting_adapter_has_no_problem():
    model = Tiny()
    adapter = adapter_from_state_dict(lora_config(), lora_tensors({"q_proj": (4, 8, 6), "v_proj": (4, 8, 4)}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _problems(model, adapter) == []
    assert _problems(model, adapter, max_rank=4) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_every_problem_is_listed_in_order():
    model = Tiny()
    tensors = lora_tensors(
        {"q_proj": (4, 8, 5), "norm": (4, 8, 8), "missing": (4, 8, 8), "embed": (4, 10, 8)}, embedding=("embed",)
    )
    tensors[f"{PREFIX}embed.base_layer.weight"] = model.embed.weight.detach() + 1.0
    config = lora_config(target_modules=["q_proj", "v_proj", "norm", "missing", "embed"], init_lora_weights=False)
    adapter = adapter_from_state_dict(config, tensors)
    assert _problems(model, adapter, max_rank=2) == [
        "module 'embed' has rank 4 > max_rank = 2",
        "it targets module 'missing', which the served model does not have",
        "module 'norm' is a LayerNorm; lora_kernels serves LoRA on nn.Linear, nn.Embedding and "
        "transformers' Conv1D",
        "module 'q_proj': the served layer is [H_in, H_out] = [8, 6] but the adapter's lora_A [4, 8] / "
        "lora_B [5, 4] are for [8, 5]",
        "the config selects module 'v_proj' but the adapter has no tensors for it: PEFT would serve it "
        "with freshly initialised weights (init_lora_weights=False makes them random, not zero)",
        "its saved copy of the base weight of 'embed' differs from the served model's (max abs "
        "difference 1); PEFT would load that copy into the base model for every request, which a "
        "base model shared by every request cannot do",
    ]


def test_module_kind():
    assert module_kind(nn.Linear(3, 5)) == ("linear", 3, 5)
    assert module_kind(nn.Embedding(7, 2)) == ("embedding", 7, 2)
    assert module_kind(nn.LayerNorm(4)) is None
