"""The devices the op tests run on, and per-device parameter tables."""

from __future__ import annotations

import pytest

# The cuda parameter carries the `cuda` mark: tests/conftest.py skips it without a CUDA device or build.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
_MARKS = {"cpu": (), "cuda": (pytest.mark.cuda,)}


def per_device(table: dict[str, dict[str, object]]) -> list:
    """`{device: {id: value}}` as (device, value) parameters with ids `device-id`, cuda ones marked.

    For cases whose sizes differ per device (large shapes only on the GPU, CPU-path shapes only
    on the CPU)."""
    return [pytest.param(dev, value, id=f"{dev}-{name}", marks=_MARKS[dev])
            for dev, cases in table.items() for name, value in cases.items()]


def on_busy_side_stream(update, y):
    """Runs update(y) on a side stream kept busy first and returns y as that stream left it: an
    op that launched on the default stream instead would race with the sleep and read or write
    too early."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(1_000_000)  # keep the side stream busy: a default-stream launch would race
        update(y)
        out = y.clone()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return out
