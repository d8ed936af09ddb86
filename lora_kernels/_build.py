"""Loads the compiled ops (lora_kernels._C) and refuses a build made for another torch."""

from __future__ import annotations

import json
import os

import torch

from ._version import __version__

REBUILD_HINT = (
    "Rebuild lora_kernels against the installed torch: "
    "`pip install --no-build-isolation --force-reinstall --no-deps .` in its source tree "
    "(or `make build`)."
)


def _recorded_build() -> dict:
    path = os.path.join(os.path.dirname(__file__), "_build.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _base_version(version: str) -> str:
    """'2.14.1+cu130' -> '2.14.1': the local tag does not change the C++ ABI."""
    return version.split("+")[0]


def check_torch_version(built: str, installed: str) -> None:
    """Raise ImportError when the extension was compiled against a different torch release."""
    if _base_version(built) != _base_version(installed):
        raise ImportError(
            f"lora_kernels was compiled against torch {built}, but torch {installed} is installed. "
            + REBUILD_HINT
        )


try:
    from . import _C  # registers torch.ops.lora_kernels.*
except ImportError as error:  # most often: undefined symbols after a torch upgrade
    built = _recorded_build().get("torch")
    if built and _base_version(built) != _base_version(torch.__version__):
        raise ImportError(
            f"lora_kernels could not load its compiled ops ({error}): they were compiled against torch "
            f"{built}, but torch {torch.__version__} is installed. " + REBUILD_HINT
        ) from error
    raise ImportError(
        f"lora_kernels could not load its compiled ops ({error}). Build them first "
        "(`make build`, or `pip install --no-build-isolation .`)."
    ) from error

check_torch_version(_C.TORCH_VERSION, torch.__version__)


def build_info() -> dict:
    """What this build supports: {'version', 'torch', 'cuda', 'cuda_version', 'archs', 'cpu'}.

    ``cuda`` is True when the CUDA kernels were compiled in (the GPU itself may still be absent);
    ``archs`` is the TORCH_CUDA_ARCH_LIST they were compiled for; ``cpu`` is always True.
    """
    return {
        "version": __version__,
        "torch": _C.TORCH_VERSION,
        "cuda": bool(_C.WITH_CUDA),
        "cuda_version": _C.CUDA_VERSION or None,
        "archs": [a for a in _C.CUDA_ARCHS.split(";") if a],
        "cpu": True,
    }
