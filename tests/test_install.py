"""An isolated ``pip install .`` into a fresh virtualenv imports and runs (issue 12.3).

Slow (a fresh venv, torch installed twice: into pip's isolated build environment and into the
venv, and a compile), so it is marked ``install``: ``make test-install`` (which ``make test``
runs) is where it runs; a plain ``pytest tests`` leaves it out (``addopts`` in pyproject.toml).

CPU-only (``LORA_KERNELS_CPU_ONLY=1`` reaches the isolated build through the environment) so that
CI can afford it; the CUDA build is what ``make build`` checks. Nothing of the project's own
virtualenv is reused: packages come from pip's usual sources (its cache, local wheel folders or
indexes from the pip configuration). The test also checks what the isolated build used: torch
2.14.1 (the ``[build-system]`` pin, installed from a local file, not downloaded), every source of
the parts csrc/build.json lists for a CPU build, compiled with its standard and flags, and no
compiler warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PIN = "2.14.1"
pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "setup.py")), reason="needs the source tree (setup.py)"),
]

# The files a source distribution holds; copied so that the build writes nothing into the
# checkout (setup.py writes lora_kernels/_build.json beside the sources it builds).
TREE = ["setup.py", "pyproject.toml", "README.md", "csrc", "lora_kernels"]

RUN = textwrap.dedent("""
    import json, sys, torch
    import lora_kernels as lk
    from lora_kernels import reference

    torch.manual_seed(0)
    T, H_in, H_out, N, R = 7, 33, 20, 3, 8
    x = torch.randn(T, H_in)
    a = torch.randn(N, R, H_in)
    b = torch.randn(N, H_out, R)
    s = torch.tensor([0.5, 1.0, 2.0])
    ranks = torch.tensor([8, 4, 0], dtype=torch.int32)
    idx = torch.tensor([0, 1, -1, 2, 1, 0, 0], dtype=torch.int32)
    y0 = torch.randn(T, H_out)
    got = lk.add_lora(y0.clone(), x, a, b, s, idx, ranks=ranks)
    want = reference.add_lora(y0.clone().double(), x.double(), a.double(), b.double(), s, idx,
                              ranks=ranks)
    print(json.dumps({"file": lk.__file__, "torch": torch.__version__, "build": lk.build_info(),
                      "max_err": (got.double() - want).abs().max().item()}))
""")


def copy_tree(dest):
    skip = shutil.ignore_patterns("__pycache__", "*.so", "_build.json", "*.egg-info")
    for name in TREE:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=skip)
        else:
            shutil.copy2(src, dest)


def clean_env(**extra):
    # LORA_KERNELS_CUDA=1 (CI: require the CUDA build) would contradict this CPU-only install
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "LORA_KERNELS_CUDA")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"), **extra)
    return env


def compile_lines(log):
    """ninja's compile commands from pip's verbose log, by source file (from csrc/ on)."""
    lines = {}
    for line in log.splitlines():
        m = re.match(r"\s*\[\d+/\d+\] .* -c (\S+/(csrc/\S+\.(?:cpp|cu))) ", line)
        if m:
            lines[m.group(2)] = line
    return lines


def check_pip_log(log):
    """What the isolated build used, from pip's verbose log."""
    # pip's verbose log includes the isolated build environment's install: both it and the venv
    # got the pinned torch from a local file or pip's cache, none downloaded it.
    torch_lines = [line for line in log.splitlines() if re.search(rf"torch-{re.escape(TORCH_PIN)}[-+]\S*\.whl", line)]
    local = [line for line in torch_lines if re.search(r"\b(Processing|Using cached)\b", line)]
    assert len(local) >= 2 and not any("Downloading" in line for line in torch_lines), \
        "torch 2.14.1 was not taken from a local wheel twice (build environment, venv):\n" + "\n".join(torch_lines)

    # Every source of the CPU build's parts, compiled with build.json's standard and flags.
    with open(os.path.join(ROOT, "csrc", "build.json")) as f:
        build = json.load(f)
    compiled = compile_lines(log)
    assert sorted(compiled) == sorted(build["sources"]["torch"] + build["sources"]["cpu"]), sorted(compiled)
    flags = [f"-std=c++{build['cxx_standard']}"] + build["cxx_flags"] + build["warning_flags"]
    for source, line in compiled.items():
        words = line.split()
        assert all(flag in words for flag in flags), (source, [f for f in flags if f not in words])
    warnings = [line for line in log.splitlines() if re.search(r"^\S+:\d+:\d+: warning:", line.strip())]
    assert not warnings, "the isolated build warned:\n" + "\n".join(warnings[:40])


def test_isolated_install_in_a_fresh_venv_imports_and_runs(tmp_path):
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    copy_tree(src)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")

    pip = subprocess.run([py, "-m", "pip", "install", "-v", str(src)], cwd=tmp_path,
                         env=clean_env(LORA_KERNELS_CPU_ONLY="1"), capture_output=True, text=True, timeout=3000)
    log = pip.stdout + pip.stderr
    (tmp_path / "pip.log").write_text(log)
    assert pip.returncode == 0, log[-6000:]

    check_pip_log(log)

    run = subprocess.run([py, "-c", RUN], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["file"].startswith(str(venv)), facts["file"]
    assert facts["torch"].split("+")[0] == TORCH_PIN
    assert facts["build"]["torch"].split("+")[0] == TORCH_PIN and facts["build"]["cuda"] is False
    assert facts["max_err"] < 1e-4
