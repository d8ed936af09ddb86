"""pytest-benchmark: our CPU ops against the plain-torch compositions (`pytest benchmarks`).

Workloads (H_in = H_out = 4096, r = 16, fp32; the CPU speed targets):
    decode 64 tokens over 64 distinct adapters   (target: ours >= 1.5x the best baseline)
    decode 64 tokens over 8 adapters             (target: never slower than the best baseline)
    prefill 1024 tokens in 8 segments            (target: never slower than the best baseline)

Candidates: ``ours`` (lora_kernels.add_lora: BGMV path for decode, SGMV path for prefill),
``sorted_mm`` (sort by adapter + one mm pair per adapter + index_add_; a loop over segments
for prefill), ``gather_bmm`` (gather + bmm), ``peft_loop`` (PEFT's per-adapter masked loop).
Each candidate is checked against the float64 reference before it is timed. Results are
grouped per workload; compare the "ours" row with the others in each group, e.g.::

    pytest benchmarks --benchmark-group-by=group --benchmark-sort=mean
"""

from __future__ import annotations

import pytest
import torch

from lora_kernels import bench

H, R = 4096, 16
WORKLOADS = {
    "decode64_distinct64": bench.Case("decode", "add_lora", 64, 64, R, H, H, torch.float32),
    "decode64_over8": bench.Case("decode", "add_lora", 64, 8, R, H, H, torch.float32),
    "prefill1024_seg8": bench.Case("prefill", "add_lora", 1024, 8, R, H, H, torch.float32),
}
CANDIDATES = ("ours", "sorted_mm", "gather_bmm", "peft_loop")

_cache: dict[str, tuple] = {}


def _workload(key: str):
    """One workload (tensors + float64 reference update) per key, shared by its candidates."""
    if key not in _cache:
        case = WORKLOADS[key]
        w = bench.make_workload(case, "cpu", seed=hash(key) % 1000)
        with torch.inference_mode():
            expected = bench._reference(w, bench.REF_CHUNK_BYTES["cpu"])
        _cache[key] = (w, expected)
    return _cache[key]


def _candidate(name: str, case: bench.Case):
    if name == "ours":
        import lora_kernels

        return bench.ours_candidate(case, lora_kernels)
    cands, skipped = bench.baseline_candidates(case, "cpu")
    if name not in cands:
        pytest.skip(f"{name}: {skipped.get(name, 'not applicable')}")
    return cands[name]


@pytest.mark.parametrize("candidate", CANDIDATES)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_cpu(benchmark, record_median, workload, candidate):
    w, expected = _workload(workload)
    fn = _candidate(candidate, w.case)
    with torch.inference_mode():
        err, tol = bench.check_candidate(fn, w, expected)
    assert err <= tol, f"{candidate} on {workload}: relative error {err:.3g} > {tol:.3g}"
    benchmark.group = f"{workload} ({w.case.name})"
    benchmark.extra_info.update(bytes=bench.min_bytes(w.case), rel_err=err)

    def call():
        with torch.inference_mode():
            fn(w)

    benchmark.pedantic(call, rounds=10 if candidate != "gather_bmm" else 3, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        record_median(workload, candidate, stats.stats.median)
