"""pytest configuration for the benchmarks (`pytest benchmarks`; tests/ is the test suite).

The benchmark files are named bench_*.py so that the test suite never collects them; this hook
collects them when pytest is pointed at benchmarks/.
"""

from __future__ import annotations

import fnmatch

import pytest


def pytest_collect_file(file_path, parent):
    if not fnmatch.fnmatch(file_path.name, "bench_*.py") or file_path.name == "bench_gpu.py":
        return None
    # Already collected when python_files is configured to match bench_*.py.
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


# The CPU speed targets: ours / best baseline (time ratio as speedup) per workload.
TARGETS = {
    "decode64_distinct64": (1.5, ">= 1.5x the best baseline"),
    "decode64_over8": (1.0, "never slower than the best baseline"),
    "prefill1024_seg8": (1.0, "never slower than the best baseline"),
}
_MEDIANS = pytest.StashKey[dict]()


@pytest.fixture
def record_median(request):
    """record_median(workload, candidate, seconds): kept for the summary at the end."""
    store = request.config.stash.setdefault(_MEDIANS, {})

    def record(workload: str, candidate: str, seconds: float) -> None:
        store.setdefault(workload, {})[candidate] = seconds

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    store = config.stash.get(_MEDIANS, {})
    if not store:
        return
    tr = terminalreporter
    tr.section("lora_kernels CPU speed (median; speedup = best baseline / ours)")
    for workload, times in store.items():
        if "ours" not in times:
            continue
        base = {k: v for k, v in times.items() if k != "ours"}
        if not base:
            continue
        best = min(base, key=base.get)
        speedup = base[best] / times["ours"]
        need, what = TARGETS.get(workload, (None, ""))
        verdict = "" if need is None else (f"  target {what}: " + ("met" if speedup >= need else "MISSED"))
        tr.write_line(f"{workload}: ours {times['ours'] * 1e6:.0f} us, best baseline {best} "
                      f"{base[best] * 1e6:.0f} us, speedup {speedup:.2f}x{verdict}")
