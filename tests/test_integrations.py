"""`import lora_kernels` never imports a serving engine: lora_kernels.integrations.* are reached only
through the engines' own plugin hooks (the vLLM one is tested in tests/in_vllm, `make test-vllm`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_lora_kernels_imports_no_engine():
    code = (
        "import sys, lora_kernels, lora_kernels.integrations\n"
        "engines = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'sglang'))\n"
        "assert not engines, engines\n"
        "assert 'lora_kernels.integrations.vllm' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_vllm_plugin_is_declared():
    """The entry point vLLM looks for, in the metadata our package ships."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    points = meta["project"]["entry-points"]["vllm.general_plugins"]
    assert points == {"lora_kernels": "lora_kernels.integrations.vllm:register"}
    assert "lora_kernels.integrations" in meta["tool"]["setuptools"]["packages"]
