"""Tiny random transformers models built from configs (no downloads) and adapters saved by PEFT.

Every base model is rebuilt from the same seed, so two calls give bit-identical weights: one copy
goes to PEFT (which injects its LoRA layers in place), another to MultiLoRAModel.
The adapters use ``init_lora_weights=False`` so that ``lora_B`` (and the ``lora_B`` bias) are
random, not zero: a parity test on zero updates would prove nothing.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import pytest
import torch

# Pinned: the versions whose semantics these tests encode (see ANCHORS: PEFT's pattern rule is
# the one since 0.15; 0.21.2 is what DESIGN was checked against).
PEFT_VERSION = "0.21.2"
TRANSFORMERS_VERSION = "5.23.0"

peft = pytest.importorskip(
    "peft", reason="PEFT parity tests need the test extras: pip install 'peft==0.21.2' 'transformers==5.23.0'"
)
transformers = pytest.importorskip(
    "transformers",
    reason="PEFT parity tests need the test extras: pip install 'peft==0.21.2' 'transformers==5.23.0'",
)

VOCAB = 96


def check_versions() -> None:
    if peft.__version__ != PEFT_VERSION:
        pytest.skip(f"these tests are pinned to peft=={PEFT_VERSION}, found {peft.__version__}")


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def tiny_gpt2(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg)
    return model.to(dtype).eval()


def tiny_gemma3(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """Gemma 3 scales its embeddings (embed_scale = sqrt(hidden)); PEFT scales embedding LoRA too."""
    cfg = transformers.Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=16,
    )
    torch.manual_seed(seed)
    model = transformers.Gemma3ForCausalLM(cfg)
    return model.to(dtype).eval()


BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "gemma3": tiny_gemma3}

# name -> LoraConfig kwargs; every adapter of a family goes into one mixed batch.
LLAMA_ADAPTERS: dict[str, dict[str, Any]] = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rs8": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "patterns": dict(
        r=16,
        lora_alpha=32,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
        rank_pattern={
            "proj": 1,  # not dot-aligned: matches nothing (a substring search would match all)
            "model.layers.0.self_attn.q_proj": 4,  # full path; wins over "q_proj" below
            "q_proj": 2,  # bare leaf name: layer 1's q_proj
            "down_proj": 2,
            "layers.1.mlp.up_proj": 6,  # dotted suffix
            "k_proj|v_proj": 3,  # alternation
        },
        alpha_pattern={
            "q_proj": 9,  # first match wins, although the next key is more specific
            "model.layers.1.self_attn.q_proj": 5,
            "gate_proj": 7,
            "layers.0.mlp.up_proj": 3.5,
            "k_proj|down_proj": 11,
        },
    ),
    "bias": dict(r=4, lora_alpha=4, lora_bias=True, target_modules=["q_proj", "o_proj", "down_proj"]),
    "embhead": dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["embed_tokens", "lm_head", "v_proj"]),
}

GPT2_ADAPTERS: dict[str, dict[str, Any]] = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True),
    "rs": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
        rank_pattern={"h.0.attn.c_attn": 2, "mlp.c_proj": 6},
        alpha_pattern={"attn.c_proj": 3, "h\\.1\\..*c_attn": 12},
    ),
    "bias": dict(r=4, lora_alpha=8, lora_bias=True, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True),
    "emb": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["wte", "lm_head", "c_attn"], fan_in_fan_out=True),
}

GEMMA3_ADAPTERS: dict[str, dict[str, Any]] = {
    "emb": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["embed_tokens", "q_proj"]),
    "plain": dict(r=2, lora_alpha=4, target_modules=["v_proj"]),
}

ADAPTERS = {"llama": LLAMA_ADAPTERS, "gpt2": GPT2_ADAPTERS, "gemma3": GEMMA3_ADAPTERS}


def save_peft_adapter(family: str, kwargs: dict[str, Any], path: str, seed: int = 1) -> str:
    """Train nothing: build PEFT's LoRA with random weights on a fresh base and save it."""
    from peft import LoraConfig, get_peft_model

    base = BUILDERS[family](torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(init_lora_weights=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, cfg)
        model.save_pretrained(path)
    return path


def make_adapters(family: str, root: str, names: list[str] | None = None) -> dict[str, str]:
    out = {}
    for i, (name, kwargs) in enumerate(ADAPTERS[family].items()):
        if names is not None and name not in names:
            continue
        out[name] = save_peft_adapter(family, kwargs, os.path.join(root, f"{family}-{name}"), seed=10 + i)
    return out


def peft_model(family: str, adapters: dict[str, str], dtype: torch.dtype) -> torch.nn.Module:
    """A fresh PeftModel (PEFT #3475: never reuse one across cases) with every adapter loaded."""
    from peft import PeftModel

    base = BUILDERS[family](dtype)
    names = list(adapters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name)
    return model.eval()


def input_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def deepcopy_model(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def check_per_layer_against_peft(model, peft_model, input_ids, rows: list[str], tol: float = 2e-2) -> None:
    """Run `model` (a MultiLoRAModel) once, capturing every LoRA layer's input and output, then run
    the same PEFT layer on the same input. `"__base__"` rows must equal the base layer exactly;
    the LoRA update (output - base) must be within `tol` of PEFT's, relative, per layer."""
    captured = {}
    hooks = [
        layer.register_forward_hook(lambda mod, inp, out, name=name: captured.__setitem__(name, (inp[0], out.clone())))
        for name, layer in model.lora_layers.items()
    ]
    try:
        model(input_ids=input_ids, adapter_names=rows)
    finally:
        for h in hooks:
            h.remove()
    assert set(captured) == set(model.lora_layers)
    base_rows = [i for i, n in enumerate(rows) if n == "__base__"]
    for name, (x, y) in captured.items():
        layer = peft_model.base_model.model.get_submodule(name)
        with torch.no_grad():
            y_peft = layer(x, adapter_names=rows)
            base = layer.base_layer(x)
        assert y.dtype == base.dtype, name
        for i in base_rows:
            assert torch.equal(y[i], base[i]), name
        d_ours, d_peft = y.double() - base.double(), y_peft.double() - base.double()
        err = ((d_ours - d_peft).norm() / d_peft.norm()).item()
        assert err < tol, f"{name}: update differs from PEFT's by {err:.3e}"
