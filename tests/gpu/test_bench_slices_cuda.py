"""The add_lora_slices benchmark's CUDA path (CUDA-graph timing, the eager fallback, the same-run
copy) at dry-run sizes: run by `pytest -m cuda` in benchmarks/gpu_check.sh before the timed run."""

from __future__ import annotations

import torch

from lora_kernels.bench import slices


def test_slices_bench_dry_run_on_cuda():
    res = slices.run_slices(slices.slices_cases(dry_run=True), "cuda", dry_run=True, progress=lambda m: None)
    assert res["errors"] == [] and len(res["rows"]) == 8
    assert res["copy_gbps"] > 0 and res["l2_bytes"] > 0
    for r in res["rows"]:
        assert r["rejected"] == {}, (r["name"], r["rejected"])
        assert r["timing"]["ours"] == "graph" and r["timing"]["add_lora_per_slice"] == "graph"
        assert r["timing"]["reference"] == "eager"  # torch.nonzero syncs: never captured
        assert ("mm" in r["baselines"]) == (r["n"] == 1)
        assert "grouped_mm" in r["baselines"] or r["skipped"]["grouped_mm"]
        assert r["pct_copy"] > 0 and r["copy_us"] > 0
    torch.cuda.synchronize()
