"""One build definition: setup.py and CMakeLists.txt compile what csrc/build.json lists, with its
C++ standard and flags (issue 12.3).

CMake's side is checked from a configure run (compile_commands.json, no compiling); setup.py's
from the ninja file of the last extension build in this checkout (``make build`` or
``setup.py build_ext``), and, for an isolated build, by tests/test_install.py.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "setup.py")),
                                reason="needs the source tree (setup.py)")


def build_def():
    with open(os.path.join(ROOT, "csrc", "build.json")) as f:
        return json.load(f)


def rel(path):
    return os.path.relpath(os.path.realpath(path), os.path.realpath(ROOT))


def nvcc_path():
    """The toolkit's nvcc, as the Makefile finds it (the nvcc on PATH may be a wrapper)."""
    if shutil.which("nvcc") is None:
        return None
    out = subprocess.run(["nvcc", "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True)
    m = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    return os.path.join(os.path.realpath(m.group(1)), "bin", "nvcc") if m else None


@pytest.mark.parametrize("with_cuda", [False, True], ids=["cpu", "cuda"])
def test_cmake_compiles_the_listed_parts_with_the_listed_flags(tmp_path, with_cuda):
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    nvcc = nvcc_path()
    if with_cuda and nvcc is None:
        pytest.skip("needs nvcc")
    cuda = [f"-DCMAKE_CUDA_COMPILER={nvcc}"] if with_cuda else ["-DLORA_KERNELS_WITH_CUDA=OFF"]
    proc = subprocess.run(["cmake", "-S", ROOT, "-B", str(tmp_path), "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"] + cuda,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "compile_commands.json") as f:
        commands = {rel(entry["file"]): shlex.split(entry["command"]) for entry in json.load(f)}

    build = build_def()
    parts = ["cpu"] + (["cuda_kernels"] if with_cuda else [])
    listed = sorted(src for part in parts for src in build["sources"][part])
    assert sorted(f for f in commands if f.startswith("csrc/")) == listed
    tests = ["tests/cpp/test_cpu.cpp"] + (["tests/cpp/test_cuda.cpp"] if with_cuda else [])
    assert sorted(f for f in commands if f.startswith("tests/")) == sorted(tests)

    std = f"-std=c++{build['cxx_standard']}"
    host = [std] + build["cxx_flags"] + build["warning_flags"]
    device = [std] + build["cuda_flags"] + ["-Xcompiler=" + ",".join(build["warning_flags"])]
    for source, words in commands.items():
        want = device if source.endswith(".cu") else host
        assert [f for f in want if f not in words] == [], source
        assert not any(w.startswith("-std=") and w != std for w in words), (source, words)
    if with_cuda:
        words = commands[build["sources"]["cuda_kernels"][0]]
        # "8.0;9.0+PTX": SASS for sm_80 and sm_90, PTX for compute_90 only.
        assert "--generate-code=arch=compute_80,code=[sm_80]" in words, words
        assert "--generate-code=arch=compute_90,code=[compute_90,sm_90]" in words, words


def last_setup_py_build():
    """The ninja file torch's BuildExtension wrote for the newest build of this checkout."""
    files = glob.glob(os.path.join(ROOT, "build", "temp*", "build.ninja"))
    return max(files, key=os.path.getmtime) if files else None


def test_setup_py_compiled_the_listed_parts_with_the_listed_flags():
    ninja = last_setup_py_build()
    if ninja is None:
        pytest.skip("no extension build in this checkout (make build writes build/temp-editable)")
    with open(ninja) as f:
        text = f.read()
    variables = dict(re.findall(r"^(\w+) = (.*)$", text, re.M))
    compiled = {rel(src): rule for rule, src in re.findall(r"^build \S+: (compile|cuda_compile) (\S+)$", text, re.M)}

    build = build_def()
    with_cuda = "cuda_compile" in compiled.values()
    parts = ["torch", "cpu"] + (["torch_cuda", "cuda_kernels"] if with_cuda else [])
    assert sorted(compiled) == sorted(src for part in parts for src in build["sources"][part])

    std = f"-std=c++{build['cxx_standard']}"
    host = shlex.split(variables["post_cflags"])
    assert [f for f in [std] + build["cxx_flags"] + build["warning_flags"] if f not in host] == []
    # torch's headers come in as system headers: -Wall -Wextra judge our code only.
    torch_includes = [host[i + 1] for i, w in enumerate(host[:-1]) if w == "-isystem"]
    assert any(p.endswith(os.path.join("torch", "include")) for p in torch_includes), host
    assert "torch/include" not in variables["cflags"]
    if with_cuda:
        device = shlex.split(variables["cuda_post_cflags"])
        want = [std] + build["cuda_flags"] + ["-Xcompiler=" + ",".join(build["warning_flags"])]
        assert [f for f in want if f not in device] == []
