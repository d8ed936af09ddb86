"""Timing: interleaved ``perf_counter`` runs on CPU, CUDA events around CUDA-graph replays on
CUDA; on both, input sets rotated so that together they exceed the last-level cache (the L2 on a
GPU, the L3 on a CPU), as a server's layers each have their own weights. Each case is compared
with a rate measured in the same run: a device-to-device copy on CUDA, a read of a tensor
larger than the LLC on CPU.

Every timing returns :func:`summarize`'s statistics (median, min, quartiles, runs), so the
report can say where the spread between runs is large."""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .workload import Workload


def summarize(times_us: list[float]) -> dict:
    """{median, min, q1, q3, runs} of a list of times (µs). q1 / q3 are the quartiles
    (inclusive method; equal to the single value when there is one run)."""
    if len(times_us) > 1:
        q1, _, q3 = statistics.quantiles(times_us, n=4, method="inclusive")
    else:
        q1 = q3 = times_us[0]
    return {"median": statistics.median(times_us), "min": min(times_us), "q1": q1, "q3": q3,
            "runs": len(times_us)}


def llc_bytes(default: int = 32 << 20, root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The CPU's last-level cache in bytes: the highest-level data or unified cache listed in
    /sys/devices/system/cpu/cpu0/cache (``default`` where that is not readable)."""
    best = (0, 0)
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return default
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(root, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(root, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(root, entry, "size")) as f:
                size = _parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and (level, size) > best:
            best = (level, size)
    return best[1] or default


def _parse_size(text: str) -> int:
    """'266240K' -> 272629760; '2M' -> 2097152; '512' -> 512."""
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def read_bandwidth(llc: int, reps: int = 10, dry_run: bool = False) -> tuple[float, int]:
    """(GB/s, bytes): the rate at which this process's torch threads read a float32 tensor of
    4x the LLC (256 MiB to 2 GiB) from memory, median of ``reps`` sums. Every CPU case's GB/s is
    reported as a fraction of it."""
    nbytes = (4 << 20) if dry_run else int(min(2 << 30, max(256 << 20, 4 * llc)))
    t = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)  # touched: really allocated
    t.sum()
    times = []
    for _ in range(1 if dry_run else reps):
        t0 = time.perf_counter()
        t.sum()
        times.append(time.perf_counter() - t0)
    del t
    return nbytes / statistics.median(times) / 1e9, nbytes


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_cpu_interleaved(fns: dict[str, Callable], sets: list[Workload], reps: int, warmup: int,
                          budget_s: float, skipped: dict[str, str]) -> dict[str, dict]:
    """CPU timing, candidates interleaved round by round (so a burst of load from elsewhere on a
    shared machine hits all of them alike): {name: :func:`summarize` of its runs, in µs}.
    Every call, whichever the candidate, takes the next input set of ``sets`` in turn, so the
    set a call reads was last touched ``len(sets)`` calls ago: with sets that together exceed
    the LLC, its weights come from memory, as a server's next layer's do. A candidate stops after
    ``reps`` runs, or after 3 once its runs add up to ``budget_s``. A baseline that raises is
    moved to ``skipped``; ``ours`` raising propagates."""
    turn = 0
    for _ in range(warmup):
        for fn in fns.values():
            fn(sets[turn % len(sets)])
            turn += 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    active = list(fns)
    while active:
        for name in list(active):
            w = sets[turn % len(sets)]
            turn += 1
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
    return {name: summarize([x * 1e6 for x in t]) for name, t in times.items()}


def _time_cuda(fn: Callable, sets: list, reps: int, warmup: int,
               target_s: float = 0.03) -> tuple[dict, int, str]:
    """(:func:`summarize` of the µs per call, replays, mode): CUDA events around replays of a
    graph that runs fn over every rotated input set once (eager launches when capture fails, or
    without trying when ``fn.graph_safe`` is False).
    ``reps`` is the most replays timed; fewer (at least 5) when one replay is long, so each
    candidate costs ~``target_s``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            for w in sets:
                fn(w)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph() if getattr(fn, "graph_safe", True) else None
    mode = "graph"
    try:
        if graph is None:  # the candidate says it syncs the host (e.g. torch.nonzero): no capture
            raise RuntimeError("not capturable")
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
    return summarize(times), reps, mode


def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or getattr(props, "l2_cache_size", 0) or 50 << 20)


def _rotation(nbytes: int, l2: int, dry_run: bool, set_bytes: int = 0, memory_cap: int = 0) -> int:
    """How many input sets to rotate through so that together they exceed the last-level cache
    (``l2``) 2x (at least 2, at most 1024; where ``memory_cap`` is given, at most as many sets
    of ``set_bytes`` as fit in it)."""
    if dry_run:
        return 2
    k = int(min(1024, max(2, math.ceil(2 * l2 / max(nbytes, 1)))))
    if memory_cap and set_bytes:
        k = max(2, min(k, memory_cap // max(set_bytes, 1)))
    return k


def _copy_us(nbytes: int, reps: int, warmup: int, l2: int, dry_run: bool) -> float:
    """A device-to-device copy moving ``nbytes`` (half read, half written), timed the same way."""
    numel = max(1, nbytes // 2 // 4)
    k = _rotation(nbytes, l2, dry_run)
    bufs = [(torch.empty(numel, dtype=torch.float32, device="cuda").normal_(),
             torch.empty(numel, dtype=torch.float32, device="cuda")) for _ in range(k)]
    sets = [_CopySet(src, dst) for src, dst in bufs]
    stats, _, _ = _time_cuda(lambda s: s.dst.copy_(s.src), sets, reps, warmup)
    return stats["median"]


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
