"""Builds lora_kernels._C from the parts csrc/build.json lists (CMakeLists.txt reads it too).

CUDA build when nvcc and a CUDA build of torch are both present, else CPU only. Environment:
  LORA_KERNELS_CPU_ONLY=1   build the CPU ops only, even where CUDA is available.
  LORA_KERNELS_CUDA=1       require the CUDA build: fail instead of falling back to CPU only.
  TORCH_CUDA_ARCH_LIST      GPU archs (default: cuda_archs in csrc/build.json, "8.0;9.0+PTX":
                            sm_80 through sm_90, PTX for the newest).
  CUDA_HOME                 toolkit root; found from `nvcc --dryrun` when unset (the nvcc on
                            PATH may be a wrapper outside the toolkit).
"""

import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    """The toolkit root: $CUDA_HOME, else the TOP= line that `nvcc --dryrun` prints."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    return os.path.realpath(match.group(1)) if match else None


def env_flag(name):
    return os.environ.get(name, "").strip() not in ("", "0")


cuda_home = None if env_flag("LORA_KERNELS_CPU_ONLY") else find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # must be set before torch.utils.cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

cuda_asked = env_flag("LORA_KERNELS_CUDA")
if env_flag("LORA_KERNELS_CPU_ONLY"):
    if cuda_asked:
        sys.exit("lora_kernels: LORA_KERNELS_CPU_ONLY=1 and LORA_KERNELS_CUDA=1 contradict each other.")
    with_cuda, why_not = False, "LORA_KERNELS_CPU_ONLY=1"
elif torch.version.cuda is None:
    with_cuda, why_not = False, f"the installed torch {torch.__version__} is a CPU-only build"
elif cuda_home is None:
    with_cuda, why_not = False, "no CUDA toolkit found (no nvcc on PATH and CUDA_HOME unset)"
else:
    with_cuda, why_not = True, ""
if cuda_asked and not with_cuda:
    sys.exit(f"lora_kernels: LORA_KERNELS_CUDA=1 asked for the CUDA build, but {why_not}.")
if not with_cuda:
    print(f"lora_kernels: building the CPU ops only, because {why_not}.", file=sys.stderr)


def read_build_definition():
    """csrc/build.json: the sources per part, the C++ standard and the flags; CMakeLists.txt
    reads the same file, so both builds compile the same files the same way."""
    with open(os.path.join(HERE, "csrc", "build.json")) as f:
        return json.load(f)


BUILD = read_build_definition()
if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", BUILD["cuda_archs"])
archs = os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else ""
cuda_version = torch.version.cuda if with_cuda else ""

parts = ["torch", "cpu"] + (["torch_cuda", "cuda_kernels"] if with_cuda else [])
sources = [src for part in parts for src in BUILD["sources"][part]]
macros = [
    ("LK_TORCH_VERSION", f'"{torch.__version__}"'),
    ("LK_CUDA_VERSION", f'"{cuda_version}"'),
    ("LK_CUDA_ARCHS", f'"{archs}"'),
]
std = f"-std=c++{BUILD['cxx_standard']}"
# -fopenmp (in cxx_flags): at::parallel_for is inline code that runs serially in a TU built
# without OpenMP.
extra = {"cxx": [std] + BUILD["cxx_flags"] + BUILD["warning_flags"]}
if with_cuda:
    macros.append(("LK_WITH_CUDA", None))
    # The .cu files include no torch header (they do not get its include paths, below); the
    # warning flags reach the host compiler.
    extra["nvcc"] = [std] + BUILD["cuda_flags"] + ["-Xcompiler=" + ",".join(BUILD["warning_flags"])]
    Extension = CUDAExtension
else:
    Extension = CppExtension


def as_system_includes(ext):
    """Moves the include paths torch's extension classes add (torch's headers, and CUDA's for a
    CUDA build) from -I to -isystem for the C++ compiler, so that -Wall -Wextra report warnings
    in our code only, not in those headers. nvcc gets none of them: the .cu files are torch-free
    and nvcc finds its own headers."""
    ours = [os.path.join(HERE, d) for d in BUILD["include_dirs"]]
    theirs = [d for d in ext.include_dirs if d not in ours]
    ext.include_dirs = ours
    ext.extra_compile_args["cxx"] += [f for d in theirs for f in ("-isystem", d)]
    return ext


def torch_requirement(version: str) -> str:
    """The wheel's torch requirement: the release the extension is compiled against, without
    the local tag ('2.14.1+cu130' -> 'torch==2.14.1', which any 2.14.1 build satisfies). The
    binary uses torch's C++ ABI, which changes between releases, so it loads with no other
    (lora_kernels/_build.py refuses a source build used under another torch at import)."""
    return "torch==" + version.split("+")[0]


# google-re2: pinned to the release tested, as lora_kernels/_regex.py calls its low-level API.
INSTALL_REQUIRES = [torch_requirement(torch.__version__), "numpy", "safetensors", "google-re2==1.1.20251105"]

BUILD_FACTS = {"torch": torch.__version__, "cuda": with_cuda, "cuda_version": cuda_version, "archs": archs}


class BuildWithFacts(BuildExtension):
    """Also writes lora_kernels/_build.json, read at import to explain a load failure.

    An editable install (``pip install -e .``, what ``make build`` runs) compiles in a fixed
    folder, build/temp-editable: setuptools hands build_ext a fresh temporary folder on every
    editable build, so ninja found no object of the last build and recompiled every file even
    when nothing had changed. In a fixed folder ninja recompiles only the changed sources."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            self.build_temp = os.path.join(HERE, "build", "temp-editable")

    def run(self):
        super().run()
        targets = [os.path.join(HERE, "lora_kernels")]
        if not self.inplace:
            targets.append(os.path.join(self.build_lib, "lora_kernels"))
        for folder in targets:
            if os.path.isdir(folder):
                with open(os.path.join(folder, "_build.json"), "w") as f:
                    json.dump(BUILD_FACTS, f)


setup(
    ext_modules=[
        as_system_includes(Extension(
            "lora_kernels._C",
            sources,
            include_dirs=[os.path.join(HERE, d) for d in BUILD["include_dirs"]],
            define_macros=macros,
            extra_compile_args=extra,
            extra_link_args=BUILD["link_flags"],
        ))
    ],
    install_requires=INSTALL_REQUIRES,
    cmdclass={"build_ext": BuildWithFacts},
    package_data={"lora_kernels": ["_build.json"]},
)
