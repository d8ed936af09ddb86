"""A config whose target_modules / layers_to_transform / layers_pattern / exclude_modules
disagree with the tensors saved beside it (issue 13, item 6).

PEFT puts LoRA layers on the modules its config selects and loads the saved tensors of those
only: the others are ignored, and a selected module without tensors keeps its fresh
initialisation (zero for init_lora_weights=True). lora_kernels must serve exactly that, or
refuse by name; these tests load each mismatched adapter with PEFT 0.21.2 itself and compare.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

F = pytest.importorskip("helpers.hf_fixtures")  # skips the module without peft / transformers

from lora_kernels.model import MultiLoRAModel  # noqa: E402
from lora_kernels.peft import PeftAdapterError, config_selects, load_peft_adapter  # noqa: E402

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module", autouse=True)
def _versions():
    F.check_versions()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A PEFT-saved Llama adapter on q/v of both layers plus the MLP's down_proj (random lora_B)."""
    root = str(tmp_path_factory.mktemp("selection"))
    kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    return F.save_peft_adapter("llama", kwargs, os.path.join(root, "saved"), seed=5)


def _variant(saved: str, tmp_path, **changes) -> str:
    """The saved adapter's tensors beside an edited config."""
    path = str(tmp_path / "variant")
    os.makedirs(path)
    shutil.copy(os.path.join(saved, "adapter_model.safetensors"), path)
    with open(os.path.join(saved, "adapter_config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def _peft_logits(path: str, ids: torch.Tensor):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(F.tiny_llama(torch.float64), path, adapter_name="a").eval()
    wrapped = sorted(
        name for name, m in model.base_model.model.named_modules() if "a" in getattr(m, "lora_A", {})
    )
    with torch.no_grad():
        return model(input_ids=ids).logits, wrapped


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


CASES = {
    "target_subset": dict(target_modules=["q_proj"]),
    "target_exact_name": dict(target_modules=["model.layers.1.self_attn.v_proj", "down_proj"]),
    "target_regex": dict(target_modules=r".*\.0\.(self_attn\.q_proj|mlp\.down_proj)"),
    "layers_to_transform": dict(layers_to_transform=[1]),
    "layers_to_transform_int": dict(layers_to_transform=0),
    "layers_pattern": dict(layers_to_transform=[1], layers_pattern="layers"),
    "layers_pattern_list": dict(layers_to_transform=[0], layers_pattern=["blocks", "layers"]),
    # an exact name bypasses layers_to_transform (PEFT checks it before the layer filter)
    "exact_name_bypasses_layers": dict(
        target_modules=["model.layers.0.self_attn.q_proj", "v_proj"], layers_to_transform=[1]
    ),
    "exclude_list": dict(exclude_modules=["v_proj", "model.layers.1.mlp.down_proj"]),
    "exclude_regex": dict(exclude_modules=r"model\.layers\.0\..*"),
    # selected modules without tensors: init_lora_weights=True makes PEFT's layer add zero
    "selected_without_tensors_zero_init": dict(target_modules=ATTN + ["down_proj"], init_lora_weights=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mismatched_config_served_as_peft_serves_it(saved, tmp_path, case):
    changes = CASES[case]
    path = _variant(saved, tmp_path, **changes)
    ids = F.input_ids(2, 6, seed=3)
    ref, wrapped = _peft_logits(path, ids)
    full, full_wrapped = _peft_logits(saved, ids)
    adapter = load_peft_adapter(path)
    model = MultiLoRAModel(F.tiny_llama(torch.float64), {"a": adapter})
    out = model(input_ids=ids, adapter_names=["a", "a"]).logits
    served = sorted(adapter.modules)
    with_tensors = set(full_wrapped)
    assert served == sorted(set(wrapped) & with_tensors)  # PEFT's modules that have tensors
    assert sorted(set(full_wrapped) - set(served)) == adapter.ignored_modules
    assert _rel(out, ref) < 1e-10, f"{case}: ours vs PEFT {_rel(out, ref):.3e}"
    if case != "selected_without_tensors_zero_init":
        # the config really changes what PEFT serves: serving every tensor would be caught
        assert adapter.ignored_modules and _rel(full, ref) > 1e-3


def test_config_selects_equals_peft_rule():
    """config_selects against PEFT's own check_target_module_exists on every module name of the
    tiny Llama, for every case above and a few more."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [n for n, _ in F.tiny_llama().named_modules() if n]
    extra = [
        dict(target_modules=["layers.0.self_attn.q_proj"], layers_to_transform=[1]),
        dict(target_modules=["mlp"], exclude_modules="model\\.layers\\.1\\.mlp"),
        dict(target_modules="model.*proj", exclude_modules=["o_proj"]),
        dict(target_modules=["embed_tokens", "lm_head", "norm"]),
        dict(target_modules=["q_proj", "up_proj"], layers_to_transform=[0, 1], layers_pattern="model"),
        dict(layers_to_transform=[0, 1], layers_pattern="h"),
    ]
    for changes in list(CASES.values()) + extra:
        changes = {k: v for k, v in changes.items() if k != "init_lora_weights"}
        cfg = {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj", "down_proj"], **changes}
        peft_cfg = LoraConfig(**{k: v for k, v in cfg.items() if k != "peft_type"})
        for name in names:
            assert config_selects(cfg, name) == bool(check_target_module_exists(peft_cfg, name)), (changes, name)


def test_selected_module_without_tensors_and_random_init_refused(saved, tmp_path):
    """init_lora_weights=False: PEFT gives a selected module without tensors random weights."""
    path = _variant(saved, tmp_path, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"])
    assert load_peft_adapter(path).config["init_lora_weights"] is False
    with pytest.raises(
        PeftAdapterError,
        match=r"the config selects module 'model\.layers\.0\.self_attn\.k_proj' but the adapter has no tensors "
        r"for it: PEFT would serve it with freshly initialised weights \(init_lora_weights=False",
    ):
        MultiLoRAModel(F.tiny_llama(torch.float64), {"a": path})


def test_selected_module_peft_cannot_wrap_refused(saved, tmp_path):
    """A config that selects a module type PEFT has no LoRA layer for: PEFT refuses, and so do we."""
    path = _variant(saved, tmp_path, target_modules=["q_proj", "v_proj", "down_proj", "post_attention_layernorm"],
                    init_lora_weights=True)
    ids = F.input_ids(1, 4)
    with pytest.raises(ValueError, match="is not supported"):
        _peft_logits(path, ids)
    with pytest.raises(PeftAdapterError, match=r"module 'model\.layers\.0\.post_attention_layernorm' \(a "
                       r"LlamaRMSNorm\), on which PEFT cannot put a LoRA layer"):
        MultiLoRAModel(F.tiny_llama(torch.float64), {"a": path})


@pytest.mark.parametrize(
    "changes, peft_refuses",
    [
        (dict(target_modules=["k_proj"]), False),  # PEFT serves k_proj with its random init
        (dict(layers_to_transform=[0, 1], layers_pattern="h"), True),  # PEFT: no module matched
    ],
)
def test_no_selected_module_has_tensors_refused(saved, tmp_path, changes, peft_refuses):
    path = _variant(saved, tmp_path, **changes)
    if peft_refuses:
        with pytest.raises(ValueError, match="not found in the base model"):
            _peft_logits(path, F.input_ids(1, 4))
    with pytest.raises(PeftAdapterError, match="none of the 6 modules with LoRA tensors is selected by the config"):
        load_peft_adapter(path)
