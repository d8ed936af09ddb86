"""`python -m lora_kernels check`: what a user gets for a wrong --base, a --device without a GPU,
and a refused adapter (a row of the table with its reason)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

F = pytest.importorskip("helpers.hf_fixtures")  # skips the module without peft / transformers

from lora_kernels.__main__ import main  # noqa: E402


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("base") / "tiny-llama")
    F.tiny_llama(torch.float32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    return F.make_adapters("llama", str(tmp_path_factory.mktemp("adapters")), names=["plain"])["plain"]


def _check(argv, capsys):
    status = main(["check"] + argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _dora_dir(plain: str, tmp_path) -> str:
    d = str(tmp_path / "dora")
    shutil.copytree(plain, d)
    with open(os.path.join(d, "adapter_config.json")) as f:
        cfg = json.load(f)
    cfg["use_dora"] = True
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def test_base_that_does_not_exist(plain_dir, capsys):
    status, out, err = _check(["--base", "/nope", plain_dir], capsys)
    assert status == 2
    assert "--base /nope: there is no model directory there (nothing at that path)" in err
    assert "repo" not in err.lower()  # not transformers' hub repo-id message
    assert "Traceback" not in err


def test_base_directory_without_a_model(plain_dir, tmp_path, capsys):
    status, _, err = _check(["--base", str(tmp_path), plain_dir], capsys)
    assert status == 2
    assert f"--base {tmp_path}: the directory holds no config.json" in err


def test_base_that_is_an_adapter_directory(base_dir, plain_dir, tmp_path, capsys):
    # an adapter that names its base, as PEFT saves it when the base came from a directory:
    # transformers would load the base *with* the adapter in it
    adapter = str(tmp_path / "adapter")
    shutil.copytree(plain_dir, adapter)
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = base_dir
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    status, _, err = _check(["--base", adapter, plain_dir], capsys)
    assert status == 2
    assert f"--base {adapter} already carries a LoRA adapter" in err
    assert "is a Linear" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_device_cuda_without_a_gpu_is_one_line(base_dir, plain_dir, capsys):
    status, out, err = _check(["--base", base_dir, plain_dir, "--device", "cuda"], capsys)
    assert status == 2
    assert err.strip() == "check: --device cuda, but torch sees no CUDA device here."


def test_device_that_torch_does_not_know(base_dir, plain_dir, capsys):
    status, _, err = _check(["--base", base_dir, plain_dir, "--device", "gpu"], capsys)
    assert status == 2
    assert "check: --device must be cpu or cuda (or cuda:N), got 'gpu'." in err


def test_refused_adapter_is_a_row_of_the_table(base_dir, plain_dir, tmp_path, capsys):
    status, out, _ = _check(["--base", base_dir, plain_dir, _dora_dir(plain_dir, tmp_path),
                             "--seq-len", "4"], capsys)
    assert status == 1
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("adapter "))
    rows = {line.split()[0]: line for line in lines[header + 1:] if line and not line.startswith(" ")}
    assert rows["llama-plain"].rstrip().endswith("ok")
    assert "REFUSED:" in rows["dora"] and "use_dora" in rows["dora"]
    assert out.rstrip().endswith("FAIL")


def test_every_adapter_refused_still_prints_the_table(base_dir, plain_dir, tmp_path, capsys):
    status, out, err = _check(["--base", base_dir, _dora_dir(plain_dir, tmp_path)], capsys)
    assert status == 1
    assert any(line.startswith("dora ") and "REFUSED:" in line and "use_dora" in line
               for line in out.splitlines())
    assert "no adapter left to compare" in err


def test_a_loaded_model_with_lora_layers_is_recognised(plain_dir):
    from lora_kernels.cli_peft import _carries_lora

    assert not _carries_lora(F.tiny_llama(torch.float32))
    assert _carries_lora(F.peft_model("llama", {"plain": plain_dir}, torch.float32))
