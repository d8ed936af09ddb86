"""Shared fixtures for tests/: the `device` parametrization and the CUDA skip.

Tests that run on both devices take the `device` fixture (cpu, cuda) or build their parameters
with `helpers.devices.per_device`; CUDA-only tests carry `@pytest.mark.cuda`, and everything in
tests/gpu/ counts as CUDA-only. Where no CUDA device or no CUDA build is present those are
reported as skipped, with the reason, never silently left out. `pytest -m cuda` selects every
test that needs CUDA (benchmarks/gpu_check.sh runs that).
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `helpers` is a package in tests/

from helpers.devices import DEVICES  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device and a CUDA build of lora_kernels")


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device available"
    import lora_kernels as lk

    if not lk.build_info()["cuda"]:
        return "lora_kernels was built without CUDA kernels"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_dir = Path(__file__).resolve().parent / "gpu"
    for item in items:
        if gpu_dir in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.cuda)
    reason = _cuda_skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason=f"cuda: {reason}"))


@pytest.fixture(params=DEVICES)
def device(request):
    """"cpu" or "cuda"; the cuda parameter is skipped, visibly, without CUDA."""
    return request.param
