"""Builds lora_kernels._C.

CUDA build when nvcc and a CUDA build of torch are both present, else CPU only. Environment:
  LORA_KERNELS_CPU_ONLY=1   build the CPU ops only, even where CUDA is available.
  LORA_KERNELS_CUDA=1       require the CUDA build: fail instead of falling back to CPU only.
  TORCH_CUDA_ARCH_LIST      GPU archs (default "8.0;9.0+PTX": sm_80 through sm_90, PTX for the newest).
  CUDA_HOME                 toolkit root; found from `nvcc --dryrun` when unset (the nvcc on
                            PATH may be a wrapper outside the toolkit).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


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

archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS) if with_cuda else ""
cuda_version = torch.version.cuda if with_cuda else ""

sources = ["csrc/torch/module.cpp", "csrc/torch/prepare.cpp", "csrc/torch/ops.cpp", "csrc/cpu/lora_cpu.cpp"]
macros = [
    ("LK_TORCH_VERSION", f'"{torch.__version__}"'),
    ("LK_CUDA_VERSION", f'"{cuda_version}"'),
    ("LK_CUDA_ARCHS", f'"{archs}"'),
]
# -fopenmp: at::parallel_for is inline code that runs serially in a TU built without OpenMP.
cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
extra = {"cxx": cxx_flags}
if with_cuda:
    sources += ["csrc/torch/ops_cuda.cpp"] + sorted(glob.glob("csrc/kernels/*.cu"))
    macros.append(("LK_WITH_CUDA", None))
    # The .cu files include no torch header, so C++17 and no torch flags are all they need.
    extra["nvcc"] = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
    Extension = CUDAExtension
else:
    Extension = CppExtension



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
        Extension(
            "lora_kernels._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc/include")],
            define_macros=macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ],
    install_requires=INSTALL_REQUIRES,
    cmdclass={"build_ext": BuildWithFacts},
    package_data={"lora_kernels": ["_build.json"]},
)
