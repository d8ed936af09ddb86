"""MultiLoRAModel against PEFT itself: tiny random Llama / GPT-2 models built from configs,
adapters saved by PEFT (pinned: peft 0.21.2, transformers 5.23.0), one mixed batch.

Parity is measured per batch row as ||ours - peft|| / ||peft|| on the logits: <= 1e-10 in float64
and 2e-5 in float32; "__base__" rows must be bit-equal to the plain base model; every adapter row
must differ visibly from the base (else the comparison proves nothing). bf16 / fp16 are compared
per layer (PEFT computes the LoRA branch in fp32 there, so end-to-end drift is not ours to match).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

F = pytest.importorskip("helpers.hf_fixtures")  # skips the module without peft / transformers

import lora_kernels as lk  # noqa: E402
from lora_kernels.model import LoRALayer, MultiLoRAModel  # noqa: E402
from lora_kernels.pool import LoRAPool  # noqa: E402
from lora_kernels.peft import PeftAdapterError, adapter_from_state_dict, load_peft_adapter  # noqa: E402
from helpers.peft_helpers import PREFIX, lora_config, lora_tensors  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
FAMILIES = ("llama", "gpt2")


@pytest.fixture(scope="module", autouse=True)
def _versions():
    F.check_versions()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("peft_adapters"))
    return {family: F.make_adapters(family, root) for family in FAMILIES}


def mixed_rows(names: list[str]) -> list[str]:
    """Every adapter, a "__base__" row, and repeats that are not neighbours."""
    return [names[0], "__base__"] + names[1:] + [names[0], "__base__", names[1]]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_rows_match(out, ref, plain, rows, tol):
    for i, name in enumerate(rows):
        if name == "__base__":
            assert torch.equal(out[i], plain[i]), f"row {i} ('__base__') differs from the base model"
        else:
            err = rel(out[i], ref[i])
            assert err <= tol, f"row {i} ({name}): ||ours - peft|| / ||peft|| = {err:.3e} > {tol:g}"
            assert rel(ref[i], plain[i]) > 0.05, f"row {i} ({name}): the adapter barely changes the output"


# --- the mixed batch --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_equals_peft(dirs, family, dtype):
    ads = dirs[family]
    rows = mixed_rows(list(ads))
    ids = F.input_ids(len(rows), 7, seed=1)
    ref = F.peft_model(family, ads, dtype)(input_ids=ids, adapter_names=rows).logits
    model = MultiLoRAModel(F.BUILDERS[family](dtype), ads)
    out = model(input_ids=ids, adapter_names=rows).logits
    plain = F.BUILDERS[family](dtype)(input_ids=ids).logits
    assert out.dtype == dtype
    assert_rows_match(out, ref, plain, rows, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_gemma3_scaled_embedding_lora(tmp_path, dtype):
    """Gemma 3 multiplies embeddings by embed_scale = sqrt(hidden); PEFT scales the LoRA delta too."""
    ads = F.make_adapters("gemma3", str(tmp_path))
    assert float(F.tiny_gemma3().model.embed_tokens.embed_scale) != 1.0
    rows = ["emb", "__base__", "plain", "emb"]
    ids = F.input_ids(len(rows), 5, seed=12)
    ref = F.peft_model("gemma3", ads, dtype)(input_ids=ids, adapter_names=rows).logits
    out = MultiLoRAModel(F.tiny_gemma3(dtype), ads)(input_ids=ids, adapter_names=rows).logits
    plain = F.tiny_gemma3(dtype)(input_ids=ids).logits
    assert_rows_match(out, ref, plain, rows, TOL[dtype])


def test_reference_backend_gives_the_same_model(dirs):
    """The model logic does not depend on the kernels: lk.reference as the op backend agrees."""
    ads = dirs["llama"]
    rows = mixed_rows(list(ads))
    ids = F.input_ids(len(rows), 5, seed=3)
    a = MultiLoRAModel(F.tiny_llama(torch.float64), ads)(input_ids=ids, adapter_names=rows).logits
    b = MultiLoRAModel(F.tiny_llama(torch.float64), ads, ops=lk.reference)(input_ids=ids, adapter_names=rows).logits
    assert rel(a, b) < 1e-12


def test_rslora_served_with_plain_scale_fails_parity(dirs):
    """The bug this project exists for (LoRAX #700, vLLM #10798, SGLang #40835): serving an
    rsLoRA adapter with alpha / r. The same comparison that passes above must catch it."""
    ads = dirs["llama"]
    rows = ["rs8", "__base__", "patterns"]
    ids = F.input_ids(len(rows), 6, seed=4)
    ref = F.peft_model("llama", {"rs8": ads["rs8"], "patterns": ads["patterns"]}, torch.float64)(
        input_ids=ids, adapter_names=rows
    ).logits

    def buggy(path):
        ad = load_peft_adapter(path)
        assert ad.use_rslora
        mods = {n: dataclasses.replace(m, scaling=m.plain_scaling) for n, m in ad.modules.items()}
        return dataclasses.replace(ad, modules=mods)

    good = MultiLoRAModel(F.tiny_llama(torch.float64), {"rs8": ads["rs8"], "patterns": ads["patterns"]})
    bad = MultiLoRAModel(F.tiny_llama(torch.float64), {"rs8": buggy(ads["rs8"]), "patterns": buggy(ads["patterns"])})
    out_good = good(input_ids=ids, adapter_names=rows).logits
    out_bad = bad(input_ids=ids, adapter_names=rows).logits
    for i in (0, 2):
        assert rel(out_good[i], ref[i]) <= TOL[torch.float64]
        assert rel(out_bad[i], ref[i]) > 1e-3  # 1e7 x the tolerance: caught
    plain = F.tiny_llama(torch.float64)(input_ids=ids).logits
    with pytest.raises(AssertionError, match="ours - peft"):
        assert_rows_match(out_bad, ref, plain, rows, TOL[torch.float64])


def test_no_adapter_names_serves_the_active_adapter_as_peft(dirs):
    """Without adapter_names PEFT serves its active adapter on every row: the first one loaded,
    then whatever set_adapter chose. So do we, for forward and generate."""
    ads = {n: dirs["llama"][n] for n in ("rs8", "plain", "bias")}  # rs8 first: not slot order by name
    ids = F.input_ids(3, 5, seed=13)
    peft = F.peft_model("llama", ads, torch.float64)
    model = MultiLoRAModel(F.tiny_llama(torch.float64), ads)
    plain = F.tiny_llama(torch.float64)(input_ids=ids).logits
    assert model.active_adapter == peft.active_adapter == "rs8"
    for name in ("rs8", "bias"):
        if name != "rs8":
            model.set_adapter(name)
            peft.set_adapter(name)
        assert model.active_adapter == peft.active_adapter == name
        with torch.no_grad():
            ref = peft(input_ids=ids).logits
        assert_rows_match(model(input_ids=ids).logits, ref, plain, [name] * 3, TOL[torch.float64])
        kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            ref_tokens = peft.generate(input_ids=ids, **kw)
        assert torch.equal(model.generate(input_ids=ids, **kw), ref_tokens)
    model.set_adapter("__base__")
    assert model.active_adapter is None
    assert torch.equal(model(input_ids=ids).logits, plain)


def test_removing_the_active_adapter_activates_the_first_remaining_name(dirs):
    """PEFT's delete_adapter makes the first remaining name (sorted) active, with a warning; with
    none left, calls without adapter_names run the plain base model."""
    ads = dirs["llama"]
    ids = F.input_ids(2, 4, seed=14)
    model = MultiLoRAModel(F.tiny_llama(torch.float64), {n: ads[n] for n in ("rs8", "plain", "bias")})
    with pytest.warns(UserWarning, match="adapter 'rs8' was the active adapter and is removed; the active adapter is now 'bias'"):
        model.remove_adapter("rs8")
    peft = F.peft_model("llama", {n: ads[n] for n in ("rs8", "plain", "bias")}, torch.float64)
    with pytest.warns(UserWarning):
        peft.delete_adapter("rs8")
    assert model.active_adapter == peft.active_adapter == "bias"
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids, adapter_names=["bias", "bias"]).logits)
    model.remove_adapter("plain")  # not the active one: no change, no warning
    assert model.active_adapter == "bias"
    model.remove_adapter("bias")
    assert model.active_adapter is None
    assert torch.equal(model(input_ids=ids).logits, F.tiny_llama(torch.float64)(input_ids=ids).logits)
    model.add_adapter("again", ads["plain"])  # the first adapter of an empty model is active
    model.add_adapter("other", ads["rs8"])
    assert model.active_adapter == "again"


def test_inference_only_even_in_grad_mode(dirs):
    """The docstring and README say so: outputs carry no autograd graph, whatever the grad mode."""
    model = MultiLoRAModel(F.tiny_llama(torch.float32), {"plain": dirs["llama"]["plain"]})
    assert any(p.requires_grad for p in model.base_model.parameters())
    with torch.enable_grad():
        out = model(input_ids=F.input_ids(2, 3), adapter_names=["plain", "__base__"]).logits
    assert not out.requires_grad and out.grad_fn is None
    assert "Inference only" in MultiLoRAModel.__doc__


def test_set_adapter_refuses_an_unknown_name(dirs):
    model = MultiLoRAModel(F.tiny_llama(torch.float32), {"plain": dirs["llama"]["plain"]})
    with pytest.raises(ValueError, match=r"set_adapter: adapter_name must be a loaded adapter or '__base__', got 'nope'; loaded: \['plain'\]"):
        model.set_adapter("nope")
    assert model.active_adapter == "plain"


def test_wrapping_a_wrapped_base_says_so(dirs):
    base = F.tiny_llama(torch.float32)
    MultiLoRAModel(base, {"plain": dirs["llama"]["plain"]})
    with pytest.raises(ValueError, match=r"base_model is already wrapped by another MultiLoRAModel \(its module 'model.layers.0.self_attn.q_proj' is a LoRALayer of it\)"):
        MultiLoRAModel(base, {"rs8": dirs["llama"]["rs8"]})


def test_wrapping_a_multilora_model_says_so(dirs):
    inner = MultiLoRAModel(F.tiny_llama(torch.float32))
    with pytest.raises(TypeError, match="base_model is already a MultiLoRAModel; add adapters to it with add_adapter"):
        MultiLoRAModel(inner, {"rs8": dirs["llama"]["rs8"]})


def test_to_dtype_moves_the_adapters_too(dirs):
    ads = dirs["gpt2"]
    rows = mixed_rows(list(ads))
    ids = F.input_ids(len(rows), 6, seed=5)
    model = MultiLoRAModel(F.tiny_gpt2(torch.float32), ads).to(torch.float64)
    assert all(layer.pool.dtype == torch.float64 for layer in model.lora_layers.values())
    ref = F.peft_model("gpt2", ads, torch.float64)(input_ids=ids, adapter_names=rows).logits
    plain = F.tiny_gpt2(torch.float64)(input_ids=ids).logits
    assert_rows_match(model(input_ids=ids, adapter_names=rows).logits, ref, plain, rows, TOL[torch.float64])


# --- generate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_gives_peft_tokens(dirs, family):
    ads = dirs[family]
    rows = list(ads) + ["__base__"]
    ids = F.input_ids(len(rows), 5, seed=6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    ids[1, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    ref = F.peft_model(family, ads, torch.float64).generate(input_ids=ids, adapter_names=rows, **kw)
    model = MultiLoRAModel(F.BUILDERS[family](torch.float64), ads)
    out = model.generate(input_ids=ids, adapter_names=rows, **kw)
    assert torch.equal(out, ref)
    base = F.BUILDERS[family](torch.float64).generate(input_ids=ids, **kw)
    assert torch.equal(out[-1], base[-1])
    assert not torch.equal(out[:-1], base[:-1])  # the adapters do change the tokens


def test_beam_search_repeats_adapter_per_beam(dirs):
    ads = dirs["llama"]
    rows = ["plain", "__base__", "rs8"]
    ids = F.input_ids(len(rows), 4, seed=7)
    kw = dict(max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0, eos_token_id=None)
    ref = F.peft_model("llama", ads, torch.float64).generate(input_ids=ids, adapter_names=rows, **kw)
    out = MultiLoRAModel(F.tiny_llama(torch.float64), ads).generate(input_ids=ids, adapter_names=rows, **kw)
    assert torch.equal(out, ref)


# --- low precision, per layer -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_low_precision_per_layer(dirs, family, dtype):
    ads = dirs[family]
    rows = mixed_rows(list(ads))
    model = MultiLoRAModel(F.BUILDERS[family](dtype), ads)
    assert all(layer.pool.dtype == dtype for layer in model.lora_layers.values())
    F.check_per_layer_against_peft(model, F.peft_model(family, ads, dtype), F.input_ids(len(rows), 5, seed=8), rows)


# --- paths and metadata -----------------------------------------------------------------------


class SpyOps:
    """lora_kernels.ops, recording which path each call took."""

    def __init__(self):
        self.calls: list[str] = []

    def add_lora(self, y, x, lora_a, lora_b, scaling, indices=None, **kw):
        self.calls.append("bgmv" if indices is not None else "sgmv")
        return lk.add_lora(y, x, lora_a, lora_b, scaling, indices, **kw)

    def add_lora_embedding(self, *args, **kw):
        self.calls.append("embedding")
        return lk.add_lora_embedding(*args, **kw)


def test_prefill_sgmv_decode_bgmv(dirs):
    spy = SpyOps()
    model = MultiLoRAModel(F.tiny_llama(torch.float32), dirs["llama"], ops=spy)
    rows = ["plain", "embhead"]
    ids = F.input_ids(2, 5)
    model(input_ids=ids, adapter_names=rows)
    assert set(spy.calls) == {"sgmv", "embedding"}
    spy.calls.clear()
    model.generate(input_ids=ids, adapter_names=rows, max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    # prefill: SGMV; the last-token lm_head and the two decode steps: BGMV
    assert "sgmv" in spy.calls and "bgmv" in spy.calls and "embedding" in spy.calls
    n_prefill = spy.calls.index("bgmv")
    assert all(c in ("bgmv", "embedding") for c in spy.calls[n_prefill:])


def test_layers_without_a_row_adapter_do_no_work(dirs):
    spy = SpyOps()
    model = MultiLoRAModel(F.tiny_llama(torch.float32), dirs["llama"], ops=spy)
    ids = F.input_ids(2, 4)
    model(input_ids=ids, adapter_names=["__base__", "__base__"])
    assert spy.calls == []
    model(input_ids=ids, adapter_names=["plain", "__base__"])
    assert len(spy.calls) == 4  # q_proj and v_proj of two layers: the modules "plain" targets


def test_metadata_built_once_per_forward(dirs, monkeypatch):
    from lora_kernels import model as model_mod

    built = []
    real = model_mod.BatchMetadata.from_requests

    def counting(*args, **kw):
        built.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(model_mod.BatchMetadata, "from_requests", counting)
    model = MultiLoRAModel(F.tiny_llama(torch.float32), dirs["llama"])
    names = list(dirs["llama"])
    model(input_ids=F.input_ids(len(names), 6), adapter_names=names)
    assert len(built) == 1, built  # shared by all 2 x 7 + 2 wrapped layers
    slots, lengths = built[0][0], built[0][1]
    assert lengths == [6] * len(names) and sorted(slots) == list(range(len(names)))


def test_neighbouring_rows_share_a_segment(dirs, monkeypatch):
    from lora_kernels import model as model_mod

    built = []
    real = model_mod.BatchMetadata.from_requests
    monkeypatch.setattr(model_mod.BatchMetadata, "from_requests", lambda *a, **k: built.append(a) or real(*a, **k))
    model = MultiLoRAModel(F.tiny_llama(torch.float32), dirs["llama"])
    model(input_ids=F.input_ids(5, 3), adapter_names=["plain", "plain", "__base__", "__base__", "plain"])
    s = model.adapter_names.index("plain")
    assert built == [([s, -1, s], [6, 6, 3])]


# --- adapters at run time -------------------------------------------------------------------------


def test_add_and_remove_adapters_at_run_time(dirs):
    ads = dirs["llama"]
    base = F.tiny_llama(torch.float64)
    model = MultiLoRAModel(base, {"plain": ads["plain"]})
    model.add_adapter("patterns", ads["patterns"])  # new modules, higher ranks: pools grow
    model.add_adapter("embhead", load_peft_adapter(ads["embhead"]))  # a loaded adapter object
    assert model.adapter_names == ["plain", "patterns", "embhead"]
    rows = ["embhead", "plain", "__base__", "patterns"]
    ids = F.input_ids(len(rows), 5, seed=9)
    plain_logits = F.tiny_llama(torch.float64)(input_ids=ids).logits
    sub = {n: ads[n] for n in ("plain", "patterns", "embhead")}
    ref = F.peft_model("llama", sub, torch.float64)(input_ids=ids, adapter_names=rows).logits
    assert_rows_match(model(input_ids=ids, adapter_names=rows).logits, ref, plain_logits, rows, 1e-10)

    with pytest.warns(UserWarning, match="the active adapter is now 'embhead'"):  # "plain" was active
        model.remove_adapter("plain")
    with pytest.raises(ValueError, match="unknown adapter name"):
        model(input_ids=ids, adapter_names=rows)
    rows2 = ["embhead", "__base__", "__base__", "patterns"]
    assert_rows_match(model(input_ids=ids, adapter_names=rows2).logits, ref, plain_logits, rows2, 1e-10)

    model.add_adapter("rs8", ads["rs8"])  # reuses the freed slot
    assert model._state.slots["rs8"] == 0
    rows3 = ["rs8", "embhead", "__base__", "patterns"]
    sub3 = {n: ads[n] for n in ("rs8", "patterns", "embhead")}
    ref3 = F.peft_model("llama", sub3, torch.float64)(input_ids=ids, adapter_names=rows3).logits
    assert_rows_match(model(input_ids=ids, adapter_names=rows3).logits, ref3, plain_logits, rows3, 1e-10)

    with pytest.raises(ValueError, match="no adapter named 'plain'"):
        model.remove_adapter("plain")
    # the base model's weights were never modified
    restored = model.unload()
    fresh = F.tiny_llama(torch.float64).state_dict()
    assert restored.state_dict().keys() == fresh.keys()
    assert all(torch.equal(v, fresh[k]) for k, v in restored.state_dict().items())
    assert not any(isinstance(m, LoRALayer) for m in restored.modules())


def _snapshot(model: MultiLoRAModel):
    layers = {}
    for name, layer in model.lora_layers.items():
        p = layer.pool
        tensors = [p.lora_a, p.lora_b, p.scaling, p.ranks] + ([p.lora_bias] if p.lora_bias is not None else [])
        layers[name] = ([t.clone() for t in tensors], sorted(layer.targeting), p.used_slots, id(p))
    structure = [(n, type(m).__name__) for n, m in model.base_model.named_modules()]
    return layers, structure, dict(model._state.slots), model._state.max_adapters


def _assert_same_snapshot(a, b):
    assert a[1:] == b[1:]
    assert a[0].keys() == b[0].keys()
    for name in a[0]:
        ta, tb = a[0][name], b[0][name]
        assert ta[1:] == tb[1:], name
        assert all(torch.equal(x, y) for x, y in zip(ta[0], tb[0])), name


def _bad_adapters(ads):
    emb = load_peft_adapter(ads["embhead"])
    changed = dataclasses.replace(emb, base_weights=dict(emb.base_weights))
    changed.base_weights["model.embed_tokens"] = changed.base_weights["model.embed_tokens"] + 1.0
    resized_tensors = lora_tensors({"model.embed_tokens": (4, F.VOCAB + 4, 32)}, embedding=("model.embed_tokens",))
    resized_tensors[f"{PREFIX}model.embed_tokens.base_layer.weight"] = torch.randn(F.VOCAB + 4, 32)
    resized = adapter_from_state_dict(lora_config(target_modules=["embed_tokens"]), resized_tensors)
    return [
        (changed, "differs from the served model's"),
        (resized, r"has shape \[100, 32\], the served model's has \[96, 32\]"),
        (adapter_from_state_dict(lora_config(target_modules=["model.layers.7.self_attn.q_proj"]), lora_tensors({"model.layers.7.self_attn.q_proj": (4, 32, 32)})),
         "which the served model does not have"),
        (adapter_from_state_dict(lora_config(target_modules=["model.norm"]), lora_tensors({"model.norm": (4, 32, 32)})),
         "lora_kernels serves LoRA on nn.Linear, nn.Embedding and transformers' Conv1D"),
        (adapter_from_state_dict(lora_config(target_modules=["model.layers.0.mlp.gate_proj"]), lora_tensors({"model.layers.0.mlp.gate_proj": (4, 64, 48)})),
         r"the served layer is \[H_in, H_out\] = \[32, 48\]"),
        (adapter_from_state_dict(lora_config(target_modules=["model.embed_tokens"]), lora_tensors({"model.embed_tokens": (4, 32, 32)})),
         "is a Embedding but the adapter holds linear LoRA weights"),
    ]


def test_refused_adapter_leaves_running_model_unchanged(dirs, tmp_path):
    ads = dirs["llama"]
    model = MultiLoRAModel(F.tiny_llama(torch.float64), {"plain": ads["plain"], "rs8": ads["rs8"]})
    rows = ["plain", "__base__", "rs8"]
    ids = F.input_ids(3, 5, seed=11)
    before = _snapshot(model)
    out_before = model(input_ids=ids, adapter_names=rows).logits
    for adapter, message in _bad_adapters(ads):
        with pytest.raises(PeftAdapterError, match=message):
            model.add_adapter("new", adapter)
        _assert_same_snapshot(before, _snapshot(model))
    with pytest.raises(ValueError, match="reserved"):
        model.add_adapter("__base__", ads["bias"])
    with pytest.raises(ValueError, match="already loaded"):
        model.add_adapter("plain", ads["bias"])
    with pytest.raises(PeftAdapterError, match="use_dora"):
        model.add_adapter("dora", _dora_dir(ads, tmp_path))
    _assert_same_snapshot(before, _snapshot(model))
    assert torch.equal(model(input_ids=ids, adapter_names=rows).logits, out_before)


def _dora_dir(ads, tmp_path):
    import json
    import shutil

    d = str(tmp_path / "dora")
    shutil.copytree(ads["plain"], d)
    with open(os.path.join(d, "adapter_config.json")) as f:
        cfg = json.load(f)
    cfg["use_dora"] = True
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def test_failure_at_any_point_of_the_build_changes_nothing(dirs, monkeypatch):
    """add_adapter builds every new pool and checks every new slot content before it publishes
    anything: a failure at the k-th slot content, for every k (in a pool rebuilt for a new
    wrapper, or in a pool kept in place), leaves the model as it was; the add works afterwards."""
    import copy

    ads = dirs["llama"]
    model = MultiLoRAModel(F.tiny_llama(torch.float32), {"plain": ads["plain"], "rs8": ads["rs8"]}, max_adapters=4)
    rows, ids = ["plain", "__base__", "rs8"], F.input_ids(3, 4, seed=12)
    out_before = model(input_ids=ids, adapter_names=rows).logits
    before = _snapshot(model)
    real = LoRAPool.prepare
    calls: list[LoRAPool] = []

    def counting(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    probe = copy.deepcopy(model)
    kept = {id(layer.pool) for layer in probe.lora_layers.values()}
    monkeypatch.setattr(LoRAPool, "prepare", counting)
    probe.add_adapter("emb", ads["embhead"])  # new wrappers for embed / lm_head, v_proj in place
    in_place = [id(p) in kept for p in calls]
    assert any(in_place) and not all(in_place), in_place

    for k in range(len(calls)):
        seen = []

        def flaky(self, *args, **kwargs):
            seen.append(1)
            if len(seen) == k + 1:
                raise RuntimeError("simulated failure")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(LoRAPool, "prepare", flaky)
        with pytest.raises(RuntimeError, match="simulated"):
            model.add_adapter("emb", ads["embhead"])
        _assert_same_snapshot(before, _snapshot(model))
    monkeypatch.undo()
    assert torch.equal(model(input_ids=ids, adapter_names=rows).logits, out_before)
    model.add_adapter("emb", ads["embhead"])
    assert model.adapter_names == ["plain", "rs8", "emb"]


def test_adapter_the_pools_cannot_hold_changes_nothing(dirs):
    """A weight the served dtype cannot hold, found in a pool kept in place after another kept
    pool has its slot content ready: refused, and nothing was written or wrapped."""
    ads = dirs["llama"]
    model = MultiLoRAModel(F.tiny_llama(torch.float32), {"plain": ads["plain"]}, max_adapters=4)
    rows, ids = ["plain", "__base__"], F.input_ids(2, 4, seed=13)
    out_before = model(input_ids=ids, adapter_names=rows).logits
    before = _snapshot(model)
    q0, q1, up = (f"model.layers.{i}.{m}" for i, m in ((0, "self_attn.q_proj"), (1, "self_attn.q_proj"), (0, "mlp.up_proj")))
    tensors = lora_tensors({q0: (4, 32, 32), q1: (4, 32, 32), up: (4, 32, 48)}, dtype=torch.float64)
    tensors[f"{PREFIX}{q1}.lora_B.weight"][3, 1] = 1e300  # finite in float64, Inf in the float32 pool
    with pytest.raises(ValueError, match=r"lora_B must fit the pool's dtype torch\.float32"):
        model.add_adapter("huge", adapter_from_state_dict(lora_config(), tensors))
    _assert_same_snapshot(before, _snapshot(model))
    assert torch.equal(model(input_ids=ids, adapter_names=rows).logits, out_before)


def test_fixed_capacity_refuses_the_next_adapter(dirs):
    ads = dirs["llama"]
    model = MultiLoRAModel(F.tiny_llama(torch.float32), {"plain": ads["plain"]}, max_adapters=1, max_rank=8)
    assert all(l.pool.max_rank == 8 and l.pool.max_adapters == 1 for l in model.lora_layers.values())
    with pytest.raises(PeftAdapterError, match="all max_adapters = 1 slots are in use"):
        model.add_adapter("rs8", ads["rs8"])
    with pytest.raises(PeftAdapterError, match="rank 16 > max_rank = 8"):
        MultiLoRAModel(F.tiny_llama(torch.float32), {"patterns": ads["patterns"]}, max_rank=8)


def test_adapter_names_errors_before_any_compute(dirs):
    model = MultiLoRAModel(F.tiny_llama(torch.float32), dirs["llama"])
    ran = []
    model.base_model.register_forward_pre_hook(lambda *a: ran.append(1))
    ids = F.input_ids(3, 4)
    with pytest.raises(ValueError, match="one entry per batch row: got 2 names for a batch of 3 rows"):
        model(input_ids=ids, adapter_names=["plain", "rs8"])
    with pytest.raises(ValueError, match=r"unknown adapter name\(s\) \['nope'\]"):
        model(input_ids=ids, adapter_names=["plain", "nope", "__base__"])
    with pytest.raises(TypeError, match="adapter_names must be a list"):
        model(input_ids=ids, adapter_names="plain")
    with pytest.raises(ValueError, match="one entry per batch row"):
        model.generate(input_ids=ids, adapter_names=["plain"], max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown adapter name"):
        model.generate(input_ids=ids, adapter_names=["a", "b", "c"], max_new_tokens=2)
    assert ran == []


def test_constructor_errors(dirs):
    with pytest.raises(TypeError, match="base_model must be a torch.nn.Module"):
        MultiLoRAModel("not a model", {})
    with pytest.raises(ValueError, match="max_adapters must be a positive int"):
        MultiLoRAModel(F.tiny_llama(), {}, max_adapters=0)
    with pytest.raises(TypeError, match="a directory path or a PeftAdapter"):
        MultiLoRAModel(F.tiny_llama(), {"x": 3})
    with pytest.raises(FileNotFoundError):
        MultiLoRAModel(F.tiny_llama(), {"x": "/nonexistent/adapter"})


def test_wrapped_modules_keep_their_interface(dirs):
    base = F.tiny_gpt2(torch.float32)
    wte, lm_head = base.transformer.wte, base.lm_head
    model = MultiLoRAModel(base, dirs["gpt2"])
    assert isinstance(base.transformer.wte, LoRALayer) and base.transformer.wte.base_layer is wte
    assert base.transformer.wte.weight is wte.weight and base.lm_head.weight is lm_head.weight
    assert base.lm_head.weight is base.transformer.wte.base_layer.weight  # GPT-2's tie survives
    assert base.transformer.wte.num_embeddings == F.VOCAB
    assert model.config is base.config  # attribute delegation


# --- python -m lora_kernels check -------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_base_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("base") / "tiny-llama")
    F.tiny_llama(torch.float32).save_pretrained(path)
    return path


def _check(argv, capsys):
    from lora_kernels.__main__ import main

    status = main(["check"] + argv)
    return status, capsys.readouterr().out


def test_check_passes_on_peft_adapters(dirs, llama_base_dir, capsys):
    ads = dirs["llama"]
    status, out = _check(["--base", llama_base_dir, *ads.values(), "--dtype", "float64", "--seq-len", "6"], capsys)
    assert status == 0, out
    assert out.rstrip().endswith("PASS")
    for path in ads.values():
        assert any(line.startswith(os.path.basename(path)) and line.rstrip().endswith("ok") for line in out.splitlines())
    assert "__base__" in out and "bit-equal to the base model" in out


def test_check_fails_above_tolerance(dirs, llama_base_dir, capsys):
    status, out = _check(["--base", llama_base_dir, dirs["llama"]["rs8"], "--tol", "1e-30", "--seq-len", "4"], capsys)
    assert status == 1 and out.rstrip().endswith("FAIL")


def test_check_reports_refused_adapters(dirs, llama_base_dir, capsys, tmp_path):
    status, out = _check(["--base", llama_base_dir, dirs["llama"]["plain"], _dora_dir(dirs["llama"], tmp_path),
                          "--seq-len", "4"], capsys)
    assert status == 1
    assert "REFUSED dora" in out and "use_dora" in out


def test_check_reports_adapters_refused_by_the_model(dirs, llama_base_dir, capsys, tmp_path):
    import shutil

    from helpers.peft_helpers import safetensors_bytes

    bad = str(tmp_path / "resized")
    shutil.copytree(dirs["llama"]["embhead"], bad)
    tensors = lk.peft.read_safetensors(os.path.join(bad, "adapter_model.safetensors"))
    tensors[f"{PREFIX}model.embed_tokens.base_layer.weight"] = tensors[f"{PREFIX}model.embed_tokens.base_layer.weight"] * 2
    with open(os.path.join(bad, "adapter_model.safetensors"), "wb") as f:
        f.write(safetensors_bytes(tensors))
    status, out = _check(["--base", llama_base_dir, dirs["llama"]["rs8"], bad, "--seq-len", "4"], capsys)
    assert status == 1
    assert "REFUSED resized" in out and "differs from the served model's" in out
    assert any(line.startswith("llama-rs8") and line.rstrip().endswith("ok") for line in out.splitlines())
