"""Write PEFT-layout adapters by hand (no peft needed): for the loader's negative tests."""

from __future__ import annotations

import json
import os
from typing import Any

import safetensors.torch
import torch

PREFIX = "base_model.model."



def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors encoding of ``tensors``, by the safetensors library."""
    return safetensors.torch.save({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, metadata)


def lora_config(**overrides: Any) -> dict[str, Any]:
    """A LoraConfig dict as PEFT 0.21.2 writes it (sorted keys), with ``overrides``."""
    cfg = {
        "alora_invocation_tokens": None,
        "alpha_pattern": {},
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": 8,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": 4,
        "rank_pattern": {},
        "revision": None,
        "target_modules": ["q_proj", "v_proj"],
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": False,
        "velora_config": None,
    }
    cfg.update(overrides)
    return cfg


def lora_tensors(
    modules: dict[str, tuple[int, int, int]],
    *,
    bias: bool = False,
    embedding: tuple[str, ...] = (),
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """PEFT-saved keys for ``{module: (r, H_in, H_out)}`` with random (nonzero) values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (r, h_in, h_out) in modules.items():
        if name in embedding:
            out[f"{PREFIX}{name}.lora_embedding_A"] = torch.randn(r, h_in, generator=g).to(dtype)
            out[f"{PREFIX}{name}.lora_embedding_B"] = torch.randn(h_out, r, generator=g).to(dtype)
            continue
        out[f"{PREFIX}{name}.lora_A.weight"] = torch.randn(r, h_in, generator=g).to(dtype)
        out[f"{PREFIX}{name}.lora_B.weight"] = torch.randn(h_out, r, generator=g).to(dtype)
        if bias:
            out[f"{PREFIX}{name}.lora_B.bias"] = torch.randn(h_out, generator=g).to(dtype)
    return out


def write_adapter(
    path: str | os.PathLike,
    config: dict[str, Any] | str | None,
    tensors: dict[str, torch.Tensor] | bytes | None,
    fmt: str = "safetensors",
) -> str:
    """Write ``adapter_config.json`` (a dict, raw text, or nothing) and the weights file."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    if config is not None:
        with open(os.path.join(path, "adapter_config.json"), "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config, indent=2))
    if tensors is not None:
        if fmt == "safetensors":
            data = tensors if isinstance(tensors, bytes) else safetensors_bytes(tensors)
            with open(os.path.join(path, "adapter_model.safetensors"), "wb") as f:
                f.write(data)
        else:
            torch.save(tensors, os.path.join(path, "adapter_model.bin"))
    return path
