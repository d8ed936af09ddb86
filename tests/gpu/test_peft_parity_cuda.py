"""PEFT parity on CUDA: MultiLoRAModel (CUDA kernels) against PEFT on the same GPU.

fp32 end to end (2e-5 per row), bf16 / fp16 per layer, greedy generate. Skipped without CUDA or
without the test extras (peft 0.21.2, transformers 5.23.0).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

F = pytest.importorskip("helpers.hf_fixtures")

from lora_kernels.model import MultiLoRAModel  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    F.check_versions()
    root = str(tmp_path_factory.mktemp("peft_adapters_cuda"))
    return {family: F.make_adapters(family, root) for family in ("llama", "gpt2")}


def _rows(names):
    return [names[0], "__base__"] + names[1:] + [names[0]]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cuda_fp32_mixed_batch_equals_peft(dirs, family):
    ads = dirs[family]
    rows = _rows(list(ads))
    ids = F.input_ids(len(rows), 9, seed=1).cuda()
    ref = F.peft_model(family, ads, torch.float32).cuda()(input_ids=ids, adapter_names=rows).logits
    model = MultiLoRAModel(F.BUILDERS[family](torch.float32).cuda(), ads)
    assert all(l.pool.lora_a.is_cuda for l in model.lora_layers.values())
    out = model(input_ids=ids, adapter_names=rows).logits
    plain = F.BUILDERS[family](torch.float32).cuda()(input_ids=ids).logits
    for i, name in enumerate(rows):
        if name == "__base__":
            assert torch.equal(out[i], plain[i])
        else:
            assert _rel(out[i], ref[i]) <= 2e-5, (name, _rel(out[i], ref[i]))
            assert _rel(ref[i], plain[i]) > 0.05


def test_cuda_model_moved_after_wrapping(dirs):
    ads = dirs["llama"]
    rows = _rows(list(ads))
    ids = F.input_ids(len(rows), 5, seed=2)
    model = MultiLoRAModel(F.tiny_llama(torch.float32), ads).cuda()
    assert all(l.pool.lora_a.is_cuda for l in model.lora_layers.values())
    out = model(input_ids=ids.cuda(), adapter_names=rows).logits.cpu()
    ref = F.peft_model("llama", ads, torch.float32)(input_ids=ids, adapter_names=rows).logits
    for i, name in enumerate(rows):
        if name != "__base__":
            assert _rel(out[i], ref[i]) <= 2e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_low_precision_per_layer(dirs, dtype):
    ads = dirs["llama"]
    rows = _rows(list(ads))
    model = MultiLoRAModel(F.tiny_llama(dtype).cuda(), ads)
    pm = F.peft_model("llama", ads, dtype).cuda()
    F.check_per_layer_against_peft(model, pm, F.input_ids(len(rows), 6, seed=3).cuda(), rows)


def test_cuda_greedy_generate(dirs):
    ads = dirs["llama"]
    rows = list(ads) + ["__base__"]
    ids = F.input_ids(len(rows), 5, seed=4).cuda()
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    ref = F.peft_model("llama", ads, torch.float32).cuda().generate(input_ids=ids, adapter_names=rows, **kw)
    out = MultiLoRAModel(F.tiny_llama(torch.float32).cuda(), ads).generate(input_ids=ids, adapter_names=rows, **kw)
    assert torch.equal(out, ref)
