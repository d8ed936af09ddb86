import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers


def pytest_collection_modifyitems(config, items):
    import lora_kernels as lk

    if torch.cuda.is_available() and lk.build_info()["cuda"]:
        return
    reason = (
        "no CUDA device available" if not torch.cuda.is_available()
        else "lora_kernels was built without CUDA kernels"
    )
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.skip(reason=f"tests/gpu: {reason}"))
