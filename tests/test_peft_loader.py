"""lk.load_peft_adapter: scales exactly as PEFT resolves them, and every refusal, by name.

Most tests write adapters by hand (tests/helpers/peft_helpers.py) and need no peft; the ones that
compare against PEFT's own per-layer values skip without it (peft/transformers are test extras).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import lora_kernels as lk  # noqa: E402
from lora_kernels.peft import (  # noqa: E402
    LoRAModule,
    PeftAdapter,
    PeftAdapterError,
    adapter_from_state_dict,
    load_peft_adapter,
    match_pattern_key,
    read_safetensors,
    resolve_rank_alpha,
)
from helpers.peft_helpers import PREFIX, lora_config, lora_tensors, safetensors_bytes, write_adapter  # noqa: E402

Q0 = "model.layers.0.self_attn.q_proj"
V0 = "model.layers.0.self_attn.v_proj"
Q1 = "model.layers.1.self_attn.q_proj"
V1 = "model.layers.1.self_attn.v_proj"
MODS = {Q0: (4, 16, 16), V0: (4, 16, 8), Q1: (4, 16, 16), V1: (4, 16, 8)}


def _adapter(tmp_path, config=None, tensors=None, **kw):
    cfg = lora_config(**kw) if config is None else config
    t = lora_tensors(MODS) if tensors is None else tensors
    return write_adapter(tmp_path / "ad", cfg, t)


# --- public API ---------------------------------------------------------------------------------


def test_exported_from_package():
    assert lk.load_peft_adapter is load_peft_adapter
    assert lk.MultiLoRAModel.__name__ == "MultiLoRAModel"
    assert "load_peft_adapter" in lk.__all__ and "MultiLoRAModel" in lk.__all__


def test_loader_never_imports_peft(tmp_path):
    path = _adapter(tmp_path)
    code = (
        "import sys, lora_kernels as lk; a = lk.load_peft_adapter(sys.argv[1]); "
        "assert 'peft' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('peft', 'transformers')); print(len(a.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"


# --- what a loaded adapter holds -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_roundtrip_tensors_and_fields(tmp_path, dtype):
    tensors = lora_tensors(MODS, dtype=dtype)
    path = _adapter(tmp_path, tensors=tensors)
    ad = load_peft_adapter(path)
    assert isinstance(ad, PeftAdapter)
    assert ad.path == path and ad.config["r"] == 4 and ad.base_weights == {}
    assert sorted(ad.modules) == sorted(MODS)
    for name, (r, h_in, h_out) in MODS.items():
        m = ad.modules[name]
        assert isinstance(m, LoRAModule)
        assert (m.name, m.kind, m.r, m.alpha, m.use_rslora, m.lora_bias) == (name, "linear", 4, 8.0, False, None)
        assert m.scaling == 2.0
        assert m.lora_A.dtype == dtype and m.lora_A.shape == (r, h_in) and m.lora_B.shape == (h_out, r)
        assert torch.equal(m.lora_A, tensors[f"{PREFIX}{name}.lora_A.weight"])
        assert torch.equal(m.lora_B, tensors[f"{PREFIX}{name}.lora_B.weight"])


def test_rslora_scale_is_alpha_over_sqrt_r(tmp_path):
    ad = load_peft_adapter(_adapter(tmp_path, r=4, lora_alpha=8, use_rslora=True))
    for m in ad.modules.values():
        assert m.use_rslora and m.scaling == 8 / math.sqrt(4) == 4.0
        assert m.plain_scaling == 2.0  # what the rsLoRA bug serves


def test_lora_bias_and_embedding(tmp_path):
    mods = {Q0: (2, 16, 16), "model.embed_tokens": (3, 50, 16)}
    tensors = lora_tensors(mods, embedding=("model.embed_tokens",))
    tensors[f"{PREFIX}{Q0}.lora_B.bias"] = torch.randn(16)
    tensors[f"{PREFIX}model.embed_tokens.base_layer.weight"] = torch.randn(50, 16)
    cfg = lora_config(lora_bias=True, rank_pattern={"q_proj": 2, "embed_tokens": 3}, target_modules=["q_proj", "embed_tokens"])
    ad = load_peft_adapter(write_adapter(tmp_path / "ad", cfg, tensors))
    q, e = ad.modules[Q0], ad.modules["model.embed_tokens"]
    assert q.kind == "linear" and torch.equal(q.lora_bias, tensors[f"{PREFIX}{Q0}.lora_B.bias"])
    assert e.kind == "embedding" and e.lora_A.shape == (3, 50) and e.lora_B.shape == (16, 3)
    assert e.in_features == 50 and e.out_features == 16 and e.scaling == 8 / 3
    assert list(ad.base_weights) == ["model.embed_tokens"]


def test_bin_file_through_weights_only(tmp_path):
    tensors = lora_tensors(MODS)
    path = write_adapter(tmp_path / "ad", lora_config(), tensors, fmt="bin")
    ad = load_peft_adapter(path)
    assert torch.equal(ad.modules[Q0].lora_A, tensors[f"{PREFIX}{Q0}.lora_A.weight"])


def test_safetensors_preferred_over_bin(tmp_path):
    path = _adapter(tmp_path)
    torch.save({"garbage": 1}, os.path.join(path, "adapter_model.bin"))
    assert len(load_peft_adapter(path).modules) == 4


class _Evil:  # an arbitrary object: torch.load(weights_only=True) must refuse to unpickle it
    pass


def test_bin_refused_unless_weights_only(tmp_path):
    path = write_adapter(tmp_path / "ad", lora_config(), None)
    torch.save({"x": _Evil()}, os.path.join(path, "adapter_model.bin"))
    with pytest.raises(PeftAdapterError, match=r"weights_only=True"):
        load_peft_adapter(path)


def test_bin_must_hold_tensors(tmp_path):
    path = write_adapter(tmp_path / "ad", lora_config(), {"k": [1, 2]}, fmt="bin")
    with pytest.raises(PeftAdapterError, match="dict of str -> Tensor"):
        load_peft_adapter(path)


# --- PEFT's pattern rule (PEFT >= 0.15, pinned 0.21.2) ----------------------------------------


@pytest.mark.parametrize(
    "key, name, hit",
    [
        ("model.layers.0.self_attn.q_proj", Q0, True),  # full path
        ("q_proj", Q0, True),  # bare leaf name
        ("self_attn.q_proj", Q0, True),  # dotted suffix
        ("layers.0.self_attn.q_proj", Q1, False),
        ("k_proj|q_proj", Q0, True),  # alternation
        ("proj", Q0, False),  # not dot-aligned
        ("_proj", Q0, False),
        ("q_pro", Q0, False),  # must reach the end
        ("layers.0", Q0, False),
        (r"model\.layers\.\d+\.self_attn\.q_proj", Q1, True),  # a regex
        (".*q_proj", Q0, True),
    ],
)
def test_pattern_match_rule(key, name, hit):
    assert (match_pattern_key({key: 1}, name) == key) is hit


def test_first_matching_key_wins_in_dict_order():
    assert match_pattern_key({"q_proj": 1, Q0: 2}, Q0) == "q_proj"
    assert match_pattern_key({Q0: 2, "q_proj": 1}, Q0) == Q0
    assert match_pattern_key({}, Q0) is None and match_pattern_key(None, Q0) is None


def test_rank_and_alpha_resolved_independently():
    cfg = lora_config(r=8, lora_alpha=16, rank_pattern={"q_proj": 4}, alpha_pattern={"layers.1.self_attn.q_proj": 3})
    assert resolve_rank_alpha(cfg, Q0) == (4, 16, "q_proj", None)
    assert resolve_rank_alpha(cfg, Q1) == (4, 3, "q_proj", "layers.1.self_attn.q_proj")
    assert resolve_rank_alpha(cfg, V0) == (8, 16, None, None)


def test_patterns_from_file_follow_file_order(tmp_path):
    # JSON order is kept: the first key in the file that matches wins (PEFT writes sorted keys).
    mods = {Q0: (2, 16, 16), Q1: (2, 16, 16), V0: (3, 16, 8), V1: (5, 16, 8)}
    cfg = lora_config(
        r=16,
        lora_alpha=32,
        use_rslora=True,
        rank_pattern={"q_proj": 2, "layers.1.self_attn.v_proj": 5, "v_proj": 3},
        alpha_pattern={"q_proj": 7, Q1: 1, "k_proj|v_proj": 6.5},
    )
    ad = load_peft_adapter(write_adapter(tmp_path / "ad", cfg, lora_tensors(mods)))
    got = {n: (m.r, m.alpha, m.scaling) for n, m in ad.modules.items()}
    assert got == {
        Q0: (2, 7.0, 7 / math.sqrt(2)),
        Q1: (2, 7.0, 7 / math.sqrt(2)),  # "q_proj" comes first in the file
        V0: (3, 6.5, 6.5 / math.sqrt(3)),
        V1: (5, 6.5, 6.5 / math.sqrt(5)),
    }


# --- refusals: config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("use_dora", True, "use_dora=True: DoRA"),
        ("modules_to_save", ["lm_head"], r"modules_to_save=\['lm_head'\]: these modules"),
        ("target_parameters", ["experts.gate_up_proj"], "target_parameters="),
        ("layer_replication", [[0, 2], [1, 2]], "layer_replication="),
        ("trainable_token_indices", [1, 2], "trainable_token_indices="),
        ("alora_invocation_tokens", [5, 6], "alora_invocation_tokens="),
        ("use_qalora", True, "use_qalora=True"),
        ("megatron_config", {"tp": 2}, "megatron_config="),
        ("ensure_weight_tying", True, "ensure_weight_tying=True"),
        ("use_bdlora", {"nblocks": 2}, "use_bdlora="),
        ("bias", "all", "bias='all'"),
        ("bias", "lora_only", "bias='lora_only'"),
        ("init_lora_weights", "pissa", "init_lora_weights='pissa'"),
        ("init_lora_weights", "pissa_niter_4", "rewrites the base model"),
        ("init_lora_weights", "olora", "init_lora_weights='olora'"),
        ("init_lora_weights", "loftq", "init_lora_weights='loftq'"),
        ("init_lora_weights", "corda", "init_lora_weights='corda'"),
        ("init_lora_weights", "lora_ga", "init_lora_weights='lora_ga'"),
        ("peft_type", "IA3", "peft_type='IA3'"),
        ("some_future_option", 3, "some_future_option=3: a config field lora_kernels does not implement"),
        ("r", 0, "r must be a positive int"),
        ("lora_alpha", "16", "lora_alpha must be a finite number"),
        ("use_rslora", "yes", "use_rslora must be true or false"),
        ("rank_pattern", {"q_proj": 2.5}, r"rank_pattern\['q_proj'\] must be a positive int"),
        ("alpha_pattern", {"(q_proj": 2}, "not a valid regular expression"),
    ],
)
def test_config_refusals(tmp_path, field, value, message):
    path = _adapter(tmp_path, **{field: value})
    with pytest.raises(PeftAdapterError, match=message):
        load_peft_adapter(path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("some_future_option", None),
        ("some_future_option", False),
        ("some_future_option", {}),
        ("use_dora", False),
        ("modules_to_save", []),
        ("init_lora_weights", "gaussian"),
        ("init_lora_weights", "eva"),
        ("init_lora_weights", False),
        ("lora_dropout", 0.1),
        ("fan_in_fan_out", True),
        ("layers_to_transform", [0, 1]),
        ("exclude_modules", ["o_proj"]),
        ("task_type", None),
    ],
)
def test_config_defaults_and_informational_fields_accepted(tmp_path, field, value):
    assert len(load_peft_adapter(_adapter(tmp_path, **{field: value})).modules) == 4


def test_every_problem_is_listed(tmp_path):
    path = _adapter(tmp_path, use_dora=True, modules_to_save=["score"], layer_replication=[[0, 1]])
    with pytest.raises(PeftAdapterError) as info:
        load_peft_adapter(path)
    msg = str(info.value)
    assert "use_dora" in msg and "modules_to_save" in msg and "layer_replication" in msg and path in msg


def test_config_must_be_json_object(tmp_path):
    with pytest.raises(PeftAdapterError, match="must hold a JSON object"):
        load_peft_adapter(write_adapter(tmp_path / "ad", "[1, 2]", lora_tensors(MODS)))


def test_config_malformed_json(tmp_path):
    with pytest.raises(PeftAdapterError, match="not valid JSON"):
        load_peft_adapter(write_adapter(tmp_path / "ad", '{"r": 4,', lora_tensors(MODS)))


# --- refusals: files and directories -------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter directory"):
        load_peft_adapter(tmp_path / "nope")


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no adapter_config.json"):
        load_peft_adapter(write_adapter(tmp_path / "ad", None, lora_tensors(MODS)))


def test_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither adapter_model.safetensors nor adapter_model.bin"):
        load_peft_adapter(write_adapter(tmp_path / "ad", lora_config(), None))


def _st(tmp_path, data: bytes):
    return write_adapter(tmp_path / "ad", lora_config(), data)


MALFORMED = "malformed safetensors file .*adapter_model.safetensors: "


def test_truncated_safetensors_data(tmp_path):
    data = safetensors_bytes(lora_tensors(MODS))
    with pytest.raises(PeftAdapterError, match=MALFORMED + ".*incomplete metadata, file not fully covered"):
        load_peft_adapter(_st(tmp_path, data[:-7]))


def test_truncated_safetensors_header(tmp_path):
    data = safetensors_bytes(lora_tensors(MODS))
    with pytest.raises(PeftAdapterError, match=MALFORMED + ".*invalid header length"):
        load_peft_adapter(_st(tmp_path, data[:40]))
    with pytest.raises(PeftAdapterError, match=MALFORMED + ".*header too small"):
        load_peft_adapter(_st(tmp_path, data[:5]))


def test_safetensors_garbage_header(tmp_path):
    bad = (16).to_bytes(8, "little") + b"{not json at all"
    with pytest.raises(PeftAdapterError, match=MALFORMED + ".*invalid JSON in header"):
        load_peft_adapter(_st(tmp_path, bad))
    huge = (2**62).to_bytes(8, "little") + b"{}"
    with pytest.raises(PeftAdapterError, match=MALFORMED):
        load_peft_adapter(_st(tmp_path, huge))


def _raw(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + body


def test_safetensors_size_mismatch(tmp_path):
    data = _raw({f"{PREFIX}{Q0}.lora_A.weight": {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 100]}}, b"\0" * 100)
    with pytest.raises(PeftAdapterError, match=MALFORMED):
        load_peft_adapter(_st(tmp_path, data))


def test_safetensors_overlapping_tensors(tmp_path):
    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    data = _raw({f"{PREFIX}{Q0}.lora_A.weight": entry, f"{PREFIX}{Q0}.lora_B.weight": entry}, b"\0" * 16)
    with pytest.raises(PeftAdapterError, match=MALFORMED):
        load_peft_adapter(_st(tmp_path, data))


def test_safetensors_trailing_bytes(tmp_path):
    data = safetensors_bytes(lora_tensors(MODS)) + b"\0" * 8
    with pytest.raises(PeftAdapterError, match=MALFORMED + ".*file not fully covered"):
        load_peft_adapter(_st(tmp_path, data))


def test_safetensors_unsupported_dtype(tmp_path):
    tensors = lora_tensors(MODS)
    key = next(iter(tensors))
    tensors[key] = tensors[key].to(torch.float8_e4m3fn)
    with pytest.raises(PeftAdapterError, match=f"tensor '{key}' must be float16, bfloat16, float32 or float64, got torch.float8_e4m3fn"):
        load_peft_adapter(_st(tmp_path, safetensors_bytes(tensors)))


def test_safetensors_bad_entry(tmp_path):
    data = _raw({f"{PREFIX}{Q0}.lora_A.weight": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"")
    with pytest.raises(PeftAdapterError, match=MALFORMED):
        load_peft_adapter(_st(tmp_path, data))


def test_read_safetensors_reads_metadata_and_empty(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(safetensors_bytes({"a": torch.zeros(0, 3), "b": torch.arange(6.0).reshape(2, 3)}, {"format": "pt"}))
    t = read_safetensors(str(p))
    assert t["a"].shape == (0, 3) and torch.equal(t["b"], torch.arange(6.0).reshape(2, 3))


# --- refusals: tensors ----------------------------------------------------------------------------


def test_rank_disagrees_with_config(tmp_path):
    with pytest.raises(PeftAdapterError, match=r"the config gives r = 8 \(from r\) but the tensors have rank 4"):
        load_peft_adapter(_adapter(tmp_path, r=8))


def test_rank_pattern_disagrees_with_tensors(tmp_path):
    with pytest.raises(PeftAdapterError, match=r"r = 2 \(from rank_pattern\['v_proj'\]\)"):
        load_peft_adapter(_adapter(tmp_path, rank_pattern={"v_proj": 2}))


def test_lora_a_b_rank_disagree(tmp_path):
    t = lora_tensors(MODS)
    t[f"{PREFIX}{Q0}.lora_B.weight"] = torch.randn(16, 3)
    with pytest.raises(PeftAdapterError, match="disagree on the rank"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_unknown_tensor_key(tmp_path):
    t = lora_tensors(MODS)
    t[f"{PREFIX}{Q0}.lora_C.weight"] = torch.randn(4, 4)
    with pytest.raises(PeftAdapterError, match=r"unknown tensor key .*lora_C"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_dora_magnitude_key_named(tmp_path):
    t = lora_tensors(MODS)
    t[f"{PREFIX}{Q0}.lora_magnitude_vector"] = torch.randn(16)
    with pytest.raises(PeftAdapterError, match="DoRA magnitude vector"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_key_without_peft_prefix(tmp_path):
    t = {k[len(PREFIX):]: v for k, v in lora_tensors(MODS).items()}
    with pytest.raises(PeftAdapterError, match="with the prefix 'base_model.model.'"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_missing_lora_b(tmp_path):
    t = lora_tensors(MODS)
    del t[f"{PREFIX}{Q0}.lora_B.weight"]
    with pytest.raises(PeftAdapterError, match=f"module '{Q0}' is missing lora_B.weight"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_convolution_lora_refused(tmp_path):
    t = {f"{PREFIX}conv.lora_A.weight": torch.randn(4, 3, 3, 3), f"{PREFIX}conv.lora_B.weight": torch.randn(8, 4, 1, 1)}
    with pytest.raises(PeftAdapterError, match="convolution LoRA is not served"):
        load_peft_adapter(_adapter(tmp_path, tensors=t, target_modules=["conv"]))


def test_integer_tensor_refused(tmp_path):
    t = lora_tensors(MODS)
    t[f"{PREFIX}{Q0}.lora_A.weight"] = torch.ones(4, 16, dtype=torch.int32)
    with pytest.raises(PeftAdapterError, match="must be float16, bfloat16, float32 or float64, got torch.int32"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_non_finite_values_refused(tmp_path):
    t = lora_tensors(MODS)
    t[f"{PREFIX}{Q0}.lora_B.weight"][0, 0] = float("nan")
    with pytest.raises(PeftAdapterError, match="non-finite"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_bias_tensor_without_lora_bias_config(tmp_path):
    t = lora_tensors(MODS, bias=True)
    with pytest.raises(PeftAdapterError, match="lora_bias=false"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_lora_bias_config_without_bias_tensor(tmp_path):
    with pytest.raises(PeftAdapterError, match="lora_B.bias is missing"):
        load_peft_adapter(_adapter(tmp_path, lora_bias=True))


def test_bias_wrong_shape(tmp_path):
    t = lora_tensors(MODS, bias=True)
    t[f"{PREFIX}{Q0}.lora_B.bias"] = torch.randn(5)
    with pytest.raises(PeftAdapterError, match=r"lora_B.bias must be \[H_out\] = \[16\]"):
        load_peft_adapter(_adapter(tmp_path, tensors=t, lora_bias=True))


def test_linear_and_embedding_tensors_on_one_module(tmp_path):
    t = lora_tensors({Q0: (4, 16, 16)})
    t.update(lora_tensors({Q0: (4, 16, 16)}, embedding=(Q0,)))
    with pytest.raises(PeftAdapterError, match="both linear"):
        load_peft_adapter(_adapter(tmp_path, tensors=t))


def test_empty_adapter_refused(tmp_path):
    with pytest.raises(PeftAdapterError, match="holds no LoRA tensors"):
        load_peft_adapter(_adapter(tmp_path, tensors={}))


def test_adapter_from_state_dict_same_checks():
    with pytest.raises(PeftAdapterError, match="use_dora"):
        adapter_from_state_dict(lora_config(use_dora=True), lora_tensors(MODS))
    ad = adapter_from_state_dict(lora_config(), lora_tensors(MODS))
    assert ad.path is None and len(ad.modules) == 4


# --- against PEFT itself ----------------------------------------------------------------------


def test_every_module_scale_equals_peft(tmp_path):
    """For every adapter of the parity suite, every module: r, alpha, scale == PEFT's layer values."""
    F = pytest.importorskip("helpers.hf_fixtures")
    F.check_versions()
    from peft.tuners.lora import LoraLayer

    for family in ("llama", "gpt2"):
        dirs = F.make_adapters(family, str(tmp_path))
        pm = F.peft_model(family, dirs, torch.float32)
        seen = 0
        for mname, module in pm.base_model.model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            for adapter_name, scale in module.scaling.items():
                ours = load_peft_adapter(dirs[adapter_name]).modules[mname]
                assert ours.r == module.r[adapter_name], (family, adapter_name, mname)
                assert ours.alpha == module.lora_alpha[adapter_name], (family, adapter_name, mname)
                assert ours.scaling == scale, (family, adapter_name, mname)  # exactly
                seen += 1
        assert seen == sum(len(load_peft_adapter(d).modules) for d in dirs.values())


# --- python -m lora_kernels inspect ---------------------------------------------------------------


def _cli(argv, capsys):
    from lora_kernels.__main__ import main

    status = main(argv)
    return status, capsys.readouterr().out


def test_inspect_rslora_shows_plain_scale_and_factor(tmp_path, capsys):
    path = _adapter(tmp_path, r=16, lora_alpha=32, use_rslora=True, rank_pattern={"v_proj": 4},
                    tensors=lora_tensors({Q0: (16, 16, 16), V0: (4, 16, 8)}))
    status, out = _cli(["inspect", path], capsys)
    assert status == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("model.")}
    # module kind r alpha rsLoRA scale alpha/r factor from
    assert lines[Q0][:8] == [Q0, "linear", "16", "32", "yes", "8", "2", "4x"]
    assert lines[V0][:8] == [V0, "linear", "4", "32", "yes", "16", "8", "2x"]
    assert "r<-'v_proj'" in lines[V0]
    assert "rsLoRA: a server that used alpha/r would scale these updates 2x to 4x too small on 2 of 2 modules." in out


def test_inspect_plain_adapter_has_no_factor(tmp_path, capsys):
    status, out = _cli(["inspect", _adapter(tmp_path)], capsys)
    assert status == 0
    row = next(line for line in out.splitlines() if line.startswith(Q0)).split()
    assert row == [Q0, "linear", "4", "8", "no", "2"]
    assert "rsLoRA:" not in out and "scale = alpha / r" in out


def test_inspect_refused_adapter_says_why(tmp_path, capsys):
    status, out = _cli(["inspect", _adapter(tmp_path, use_dora=True), str(tmp_path / "missing")], capsys)
    assert status == 1
    assert out.count("REFUSED") == 2 and "use_dora=True: DoRA" in out and "no adapter directory" in out
