"""The run: check then time every candidate of every case, and gather the JSON-ready result."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
import time
from typing import Any, Callable

import torch

from .baselines import baseline_candidates, ours_candidate
from .cases import Case, flops, min_bytes
from .correctness import REF_CHUNK_BYTES, CorrectnessError, _reference, check_candidate
from .timing import (
    _copy_us,
    _l2_bytes,
    _rotation,
    _sync,
    _time_cpu_interleaved,
    _time_cuda,
    copy_bandwidth,
    llc_bytes,
    read_bandwidth,
)

# A speedup whose interquartile range (best baseline's quartiles over ours') spans more than this
# factor is flagged as noisy: the machine was busy while measuring, the ratio is not solid.
NOISY_SPREAD = 1.25
# Most memory the CPU input rotation may allocate for one case.
CPU_ROTATION_MEMORY = 2 << 30
from .workload import make_workload


class BenchUsageError(ValueError):
    """A combination of options the benchmark refuses (e.g. --full on CPU without --dry-run)."""


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _lk_version() -> str | None:
    try:
        from .. import __version__
        return str(__version__)
    except Exception:
        return None


def _progress_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    cases: list[Case],
    device: str,
    *,
    ops: Any = None,
    repeat: int | None = None,
    dry_run: bool = False,
    time_budget_s: float | None = None,
    extra_baselines: dict[str, Callable] | None = None,
    progress: Callable[[str], None] = _progress_default,
    cpu_budget_s: float = 2.0,
    keep_going: bool = False,
    rates: dict | None = None,
    run_case: Callable[..., dict] | None = None,
) -> dict:
    """Check then time every candidate of every case; return the JSON-ready result.

    ``ops`` supplies our functions (default: the ``lora_kernels`` package). ``extra_baselines``
    ({name: fn(w)}) joins the plain-torch compositions (the tests inject a wrong one).
    ``time_budget_s`` stops starting new cases once exceeded; their names go to ``not_run``.
    Raises :class:`CorrectnessError` when our op is wrong; with ``keep_going`` (the sweep)
    a case that fails in any way is listed under ``errors`` and the run goes on. ``rates``
    (:func:`reference_rates`' dict, from an earlier run in this process) spares measuring the
    copy / read rate again; ``run_case`` replaces the per-case check and timing (the
    ``add_lora_slices`` cases use their own, see :mod:`.slices`).
    """
    if ops is None:
        import lora_kernels as ops  # the compiled ops
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchUsageError("--device cuda: torch sees no CUDA device here.")
    if repeat is None:
        repeat = 1 if dry_run else (100 if device == "cuda" else 20)
    warmup = 0 if dry_run else (3 if device == "cuda" else 1)
    threads = torch.get_num_threads()
    if dry_run and device == "cpu":
        # Tiny shapes measure nothing; one thread keeps them fast on a loaded machine.
        torch.set_num_threads(1)
    try:
        return _run(cases, device, ops, repeat, warmup, dry_run, time_budget_s, extra_baselines,
                    progress, cpu_budget_s, keep_going, rates, run_case or _run_case)
    finally:
        torch.set_num_threads(threads)


def _run(cases, device, ops, repeat, warmup, dry_run, time_budget_s, extra_baselines, progress,
         cpu_budget_s, keep_going, rates, run_case) -> dict:
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": _device_name(device),
        "device_type": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lora_kernels": _lk_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": dry_run,
        "threads": torch.get_num_threads(),
        "repeat": repeat,
        "command": " ".join(sys.argv),
        "copy_gbps": None,
        "l2_bytes": None,
        "llc_bytes": None,
        "read_gbps": None,
        "read_bytes": None,
        "noisy_spread": NOISY_SPREAD,
        "rows": [],
        "not_run": [],
        "errors": [],
    }
    if rates is not None:
        result.update({k: rates.get(k) for k in RATE_KEYS})
    else:
        result.update(reference_rates(device, repeat, dry_run, progress))
    l2 = result["l2_bytes"] if device == "cuda" else result["llc_bytes"]
    with torch.inference_mode():
        for i, case in enumerate(cases):
            if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
                result["not_run"] = [c.name for c in cases[i:]]
                progress(f"time budget of {time_budget_s:.0f} s spent: {len(cases) - i} cases not run")
                break
            try:
                row = run_case(case, device, ops, repeat, warmup, dry_run, l2,
                                result["copy_gbps"] if device == "cuda" else result["read_gbps"],
                                extra_baselines, cpu_budget_s, seed=1000 + i)
            except Exception as exc:
                if not keep_going:
                    raise
                msg = f"{type(exc).__name__}: {exc}"
                result["errors"].append({"name": case.name, "error": msg})
                progress(f"[{i + 1}/{len(cases)}] {case.name}: FAILED: {msg.splitlines()[0][:300]}")
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                continue
            result["rows"].append(row)
            progress(f"[{i + 1}/{len(cases)}] {_progress_line(row)}")
            if device == "cuda":
                torch.cuda.empty_cache()
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    return result


RATE_KEYS = ("copy_gbps", "l2_bytes", "llc_bytes", "read_gbps", "read_bytes")


def reference_rates(device: str, repeat: int, dry_run: bool, progress: Callable[[str], None]) -> dict:
    """The rate every case is a fraction of, measured now, and the cache the inputs are rotated
    over: on CUDA the device-to-device copy (``copy_gbps``) and the L2 (``l2_bytes``); on CPU
    the memory read (``read_gbps``, ``read_bytes``) and the last-level cache (``llc_bytes``).
    The keys of :data:`RATE_KEYS`, None where they do not apply."""
    rates: dict[str, Any] = dict.fromkeys(RATE_KEYS)
    if device == "cuda":
        l2 = _l2_bytes()
        rates["l2_bytes"] = l2
        rates["copy_gbps"] = copy_bandwidth(reps=max(3, min(repeat, 20)), dry_run=dry_run)
        progress(f"device-to-device copy: {rates['copy_gbps']:.0f} GB/s, L2 {l2 / 2**20:.0f} MiB")
    else:
        l2 = llc_bytes()
        rates["llc_bytes"] = l2
        with torch.inference_mode():
            rates["read_gbps"], rates["read_bytes"] = read_bandwidth(l2, dry_run=dry_run)
        progress(f"memory read ({torch.get_num_threads()} threads, {rates['read_bytes'] / 2**20:.0f} MiB): "
                 f"{rates['read_gbps']:.1f} GB/s, last-level cache {l2 / 2**20:.0f} MiB")
    return rates


def _set_bytes(w) -> int:
    return sum(t.numel() * t.element_size() for t in (w.x, w.y, w.v, w.lora_a, w.lora_b))


def _run_case(case, device, ops, repeat, warmup, dry_run, l2, ref_gbps, extra, cpu_budget_s, seed) -> dict:
    """One case: check, then time. ``l2`` is the last-level cache (L2 on CUDA, L3 on CPU) the
    inputs are rotated over; ``ref_gbps`` the rate every GB/s is a fraction of (the copy on
    CUDA, the memory read on CPU)."""
    w = make_workload(case, device, seed=seed)
    expected = _reference(w, REF_CHUNK_BYTES[device])
    cands, skipped = baseline_candidates(case, device)
    if extra:
        cands.update(extra)
    nbytes = min_bytes(case)
    return {
        "name": case.name,
        "kind": case.kind,
        "op": case.op,
        "dtype": case.dtype_name,
        "T": case.T,
        "n": case.n,
        "S": case.n if case.kind == "prefill" else None,
        "r": case.r,
        "H_in": case.H_in,
        "H_out": case.H_out,
        "bytes": nbytes,
        "flops": flops(case),
        **measure(case.name, w, expected, ours_candidate(case, ops), cands, skipped, device, nbytes,
                  _set_bytes(w), repeat, warmup, dry_run, l2, ref_gbps, cpu_budget_s, seed),
    }


def measure(name: str, w, expected, ours: Callable, cands: dict[str, Callable], skipped: dict[str, str],
            device: str, nbytes: int, set_bytes: int, repeat: int, warmup: int, dry_run: bool, l2: int,
            ref_gbps: float | None, cpu_budget_s: float, seed: int) -> dict:
    """Check ``ours`` and every baseline of ``cands`` on the workload ``w`` against ``expected``
    (:func:`check_candidate`), then time ours and the correct baselines over input sets rotated
    past the last-level cache (``w.with_fresh_buffers`` makes the other sets). Returns the
    row's columns from the timing on (:func:`timing_fields`, the errors, the skipped and
    rejected baselines, the timing mode, the rotation, on CUDA the same-bytes copy). Raises
    :class:`CorrectnessError` when ours is wrong; a baseline that raises goes to ``skipped``,
    a wrong one to ``rejected``."""
    cands = dict(cands)
    rejected: dict[str, str] = {}
    errs: dict[str, float] = {}
    err, tol = check_candidate(ours, w, expected)
    if not err <= tol:
        raise CorrectnessError(
            f"{name}: our op differs from the float64 reference: relative error of the "
            f"update {err:.3g} > tolerance {tol:.3g}"
        )
    our_err = err
    for cand, fn in list(cands.items()):
        try:
            e, t = check_candidate(fn, w, expected)
        except Exception as exc:  # e.g. grouped_mm without a kernel for this dtype / GPU
            skipped[cand] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            del cands[cand]
            continue
        errs[cand] = e
        if not e <= t:
            rejected[cand] = f"relative error {e:.3g} > tolerance {t:.3g}"
            del cands[cand]
    _sync(device)

    timing: dict[str, str] = {}
    stats: dict[str, dict] = {}
    if device == "cuda":
        rotate = _rotation(nbytes, l2, dry_run)
        sets = [w] + [w.with_fresh_buffers(_gen(device, seed + 7 + k)) for k in range(rotate - 1)]
        stats["ours"], _, timing["ours"] = _time_cuda(ours, sets, repeat, warmup)
        for cand, fn in cands.items():
            try:
                stats[cand], _, timing[cand] = _time_cuda(fn, sets, repeat, warmup)
            except Exception as exc:
                skipped[cand] = f"{type(exc).__name__} while timing: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    else:
        # the sets' own bytes (each tensor once) together exceed 2x the LLC
        rotate = _rotation(set_bytes, l2, dry_run, set_bytes, CPU_ROTATION_MEMORY)
        sets = [w] + [w.with_fresh_buffers(_gen(device, seed + 7 + k)) for k in range(rotate - 1)]
        stats = _time_cpu_interleaved({"ours": ours, **cands}, sets, repeat, warmup, cpu_budget_s, skipped)
        timing = {cand: "perf_counter" for cand in stats}
    del sets
    out = {
        **timing_fields(stats, nbytes, device, ref_gbps),
        "rel_err": our_err,
        "baseline_rel_err": errs,
        "skipped": skipped,
        "rejected": rejected,
        "timing": timing,
        "rotate": rotate,
    }
    if device == "cuda":
        out["copy_us"] = _copy_us(nbytes, repeat, warmup, l2, dry_run)
    return out


def timing_fields(stats: dict[str, dict], nbytes: int, device: str, ref_gbps: float | None) -> dict:
    """The timing columns of a row from the candidates' statistics ({name: summarize(...)},
    "ours" among them): µs, GB/s, % of the reference rate (the copy on CUDA, the memory read
    on CPU), the baselines, the best one and the speedup, and the spread between runs."""
    us = stats["ours"]["median"]
    base = {k: v for k, v in stats.items() if k != "ours"}
    base_us = {k: v["median"] for k, v in base.items()}
    mins = {k: v["min"] for k, v in stats.items()} if device == "cpu" else {}
    best = min(base_us, key=base_us.get) if base_us else None
    speedup_range = None
    if best:
        speedup_range = [base[best]["q1"] / stats["ours"]["q3"], base[best]["q3"] / stats["ours"]["q1"]]
    pct = (lambda us_: 100.0 * nbytes / us_ / 1e3 / ref_gbps) if ref_gbps else (lambda us_: None)
    return {
        "us": us,
        "gbps": nbytes / us / 1e3,
        "pct_copy": pct(us) if device == "cuda" else None,
        # CPU: GB/s as a percentage of the memory read rate measured in the same run
        "pct_read": pct(us) if device == "cpu" else None,
        "baselines_pct_copy": {k: pct(v) for k, v in base_us.items()} if device == "cuda" else None,
        "baselines_pct_read": {k: pct(v) for k, v in base_us.items()} if device == "cpu" else None,
        "copy_us": None,
        "baselines": base_us,
        "best_baseline": best,
        "best_baseline_us": base_us[best] if best else None,
        "speedup": (base_us[best] / us) if best else None,
        # the spread between runs: quartiles of each candidate's times, and the speedup range
        # they allow (best baseline's q1 / our q3 to its q3 / our q1); "noisy" when that range
        # spans more than NOISY_SPREAD
        "runs": stats["ours"]["runs"],
        "us_iqr": [stats["ours"]["q1"], stats["ours"]["q3"]],
        "baselines_iqr": {k: [v["q1"], v["q3"]] for k, v in base.items()},
        "speedup_range": speedup_range,
        "noisy": bool(speedup_range and speedup_range[1] > NOISY_SPREAD * speedup_range[0]),
        # CPU only: the fastest run of each candidate, and the speedup they give (on a machine
        # shared with other work the minimum is the steadier statistic)
        "us_min": mins.get("ours"),
        "baselines_min": {k: v for k, v in mins.items() if k != "ours"} or None,
        "speedup_min": (min(v for k, v in mins.items() if k != "ours") / mins["ours"])
                       if len(mins) > 1 else None,
    }


def _gen(device: str, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _progress_line(row: dict) -> str:
    s = f"{row['name']}: ours {row['us']:.1f} us ({row['gbps']:.1f} GB/s)"
    if row["best_baseline"]:
        s += f", best baseline {row['best_baseline']} {row['best_baseline_us']:.1f} us, {row['speedup']:.2f}x"
        if row["noisy"]:
            lo, hi = row["speedup_range"]
            s += f" (runs spread: {lo:.2f}x to {hi:.2f}x)"
    if row["rejected"]:
        s += f"; REJECTED (wrong): {', '.join(row['rejected'])}"
    return s
