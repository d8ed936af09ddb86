"""The wheel's metadata: torch pinned to the release the extension is compiled against.

The compiled ops use torch's C++ ABI, which changes between releases, so a wheel that said
``torch>=2.6`` would install beside a torch it cannot load with. setup.py computes the pin from
the torch it builds with; ``setup.py egg_info`` writes the same requirements a wheel gets,
without compiling anything.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "setup.py")),
                                reason="needs the source tree (setup.py)")


def test_wheel_requires_the_torch_it_is_built_against(tmp_path):
    # metadata only: no toolkit lookup needed; CI's LORA_KERNELS_CUDA=1 (require CUDA) would
    # contradict LORA_KERNELS_CPU_ONLY=1, so it is left out here
    env = {k: v for k, v in os.environ.items() if k != "LORA_KERNELS_CUDA"}
    env["LORA_KERNELS_CPU_ONLY"] = "1"
    proc = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "lora_kernels.egg-info" / "requires.txt") as f:
        required = [line.strip() for line in f if line.strip()]
    base = required[:required.index("[bench]")] if "[bench]" in required else required
    torch_reqs = [r for r in base if r.startswith("torch")]
    assert torch_reqs == [f"torch=={torch.__version__.split('+')[0]}"]
    assert {"numpy", "safetensors"} <= set(base)


def test_build_requires_the_tested_torch():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert "torch==2.14.1" in meta["build-system"]["requires"]
    assert "dependencies" not in meta["project"]  # computed by setup.py, with the pin
    assert "dependencies" in meta["project"]["dynamic"]
