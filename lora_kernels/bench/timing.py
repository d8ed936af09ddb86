"""Timing: interleaved ``perf_counter`` runs on CPU; CUDA events around CUDA-graph replays over
rotated input sets on CUDA, and the device-to-device copy every GPU case is compared with."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .workload import Workload


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_cpu_interleaved(fns: dict[str, Callable], w: Workload, reps: int, warmup: int,
                          budget_s: float, skipped: dict[str, str]) -> dict[str, tuple[float, float, int]]:
    """CPU timing, candidates interleaved round by round (so a burst of load from elsewhere on a
    shared machine hits all of them alike): {name: (median us, min us, runs)}. A candidate stops
    after ``reps`` runs, or after 3 once its runs add up to ``budget_s``. A baseline that raises
    is moved to ``skipped``; ``ours`` raising propagates."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(w)
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    active = list(fns)
    while active:
        for name in list(active):
            t0 = time.perf_counter()
            try:
                fns[name](w)
            except Exception as exc:
                if name == "ours":
                    raise
                skipped[name] = f"{type(exc).__name__} while timing: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                active.remove(name)
                del times[name]
                continue
            dt = time.perf_counter() - t0
            times[name].append(dt)
            spent[name] += dt
            n = len(times[name])
            if n >= reps or (n >= min(3, reps) and spent[name] > budget_s):
                active.remove(name)
    return {name: (statistics.median(t) * 1e6, min(t) * 1e6, len(t)) for name, t in times.items()}


def _time_cuda(fn: Callable, sets: list, reps: int, warmup: int,
               target_s: float = 0.03) -> tuple[float, int, str]:
    """Median µs per call: CUDA events around replays of a graph that runs fn over every
    rotated input set once (eager launches when capture fails). ``reps`` is the most replays
    timed; fewer (at least 5) when one replay is long, so each candidate costs ~``target_s``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            for w in sets:
                fn(w)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    mode = "graph"
    try:
        with torch.cuda.graph(graph):
            for w in sets:
                fn(w)
        runner = graph.replay
    except Exception:  # capture unsupported by this candidate: time eager launches instead
        torch.cuda.synchronize()
        graph = None
        mode = "eager"

        def runner():
            for w in sets:
                fn(w)
    for _ in range(warmup):
        runner()
    if reps > 5:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        runner()
        e1.record()
        e1.synchronize()
        one_s = max(e0.elapsed_time(e1) * 1e-3, 1e-7)
        reps = int(min(reps, max(5, target_s / one_s)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for e0, e1 in events:
        e0.record()
        runner()
        e1.record()
    torch.cuda.synchronize()
    times = [e0.elapsed_time(e1) * 1e3 / len(sets) for e0, e1 in events]
    del graph
    return statistics.median(times), reps, mode


def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or getattr(props, "l2_cache_size", 0) or 50 << 20)


def _rotation(nbytes: int, l2: int, dry_run: bool) -> int:
    """How many input sets to rotate through so that together they exceed the L2 cache 2x
    (at least 2, at most 1024)."""
    if dry_run:
        return 2
    return int(min(1024, max(2, math.ceil(2 * l2 / max(nbytes, 1)))))


def _copy_us(nbytes: int, reps: int, warmup: int, l2: int, dry_run: bool) -> float:
    """A device-to-device copy moving ``nbytes`` (half read, half written), timed the same way."""
    numel = max(1, nbytes // 2 // 4)
    k = _rotation(nbytes, l2, dry_run)
    bufs = [(torch.empty(numel, dtype=torch.float32, device="cuda").normal_(),
             torch.empty(numel, dtype=torch.float32, device="cuda")) for _ in range(k)]
    sets = [_CopySet(src, dst) for src, dst in bufs]
    us, _, _ = _time_cuda(lambda s: s.dst.copy_(s.src), sets, reps, warmup)
    return us


@dataclass
class _CopySet:
    src: Tensor
    dst: Tensor


def copy_bandwidth(reps: int = 20, warmup: int = 3, nbytes: int = 1 << 30, dry_run: bool = False) -> float:
    """GB/s of a large device-to-device copy (bytes read + written)."""
    if dry_run:
        nbytes = 1 << 20
    us = _copy_us(nbytes, reps, warmup, _l2_bytes(), dry_run)
    return nbytes / us / 1e3
