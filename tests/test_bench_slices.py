"""The add_lora_slices benchmark (lora_kernels.bench.slices, `bench --slices`, what
benchmarks/gpu_check.sh runs after the sweep) in `--device cpu --dry-run` mode: tiny sizes, one
repetition; it checks the cases, the baselines, the correctness check and the row layout, and
measures nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch

from lora_kernels import bench, reference
from lora_kernels.bench import slices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__))))


def _quiet(_msg: str) -> None:
    pass


def _reference_ops(**override) -> types.SimpleNamespace:
    names = ("add_lora", "add_lora_slices", "bgmv_shrink", "bgmv_expand", "sgmv_shrink", "sgmv_expand")
    ops = {n: getattr(reference, n) for n in names}
    ops.update(override)
    return types.SimpleNamespace(**ops)


@pytest.fixture(scope="module")
def dry() -> dict:
    return slices.run_slices(slices.slices_cases(dry_run=True), "cpu", dry_run=True, progress=_quiet)


def test_cases_are_llama3_8b_qkv_and_gate_up():
    cases = slices.slices_cases()
    assert [(c.proj, c.kind, c.T, c.n) for c in cases] == [
        ("qkv", "decode", 64, 64), ("gate_up", "decode", 64, 64),
        ("qkv", "decode", 64, 8), ("gate_up", "decode", 64, 8),
        ("qkv", "decode", 64, 1), ("gate_up", "decode", 64, 1),
        ("qkv", "prefill", 2048, 8), ("gate_up", "prefill", 2048, 8),
    ]
    for c in cases:
        assert c.H_in == 4096 and c.dtype == torch.bfloat16 and c.op == "add_lora_slices"
        assert c.widths == {"qkv": (4096, 1024, 1024), "gate_up": (14336, 14336)}[c.proj]
        assert c.ranks == (16,) * len(c.widths)
    assert cases[0].name == "qkv decode T=64 adapters=64 r=16/16/16 4096->4096+1024+1024 add_lora_slices bf16"
    dry = slices.slices_cases(dry_run=True)
    assert [(c.proj, c.kind, c.T, c.n) for c in dry] == [
        ("qkv", "decode", 8, 8), ("gate_up", "decode", 8, 8),
        ("qkv", "decode", 8, 4), ("gate_up", "decode", 8, 4),
        ("qkv", "decode", 8, 1), ("gate_up", "decode", 8, 1),
        ("qkv", "prefill", 32, 4), ("gate_up", "prefill", 32, 4),
    ]
    assert dry[0].widths == (32, 8, 8) and dry[1].widths == (112, 112)


def test_min_bytes_of_a_fused_qkv_call():
    # decode 64 tokens over 64 adapters, bf16: x once, each slice's A and B of 64 adapters once,
    # y (6144 columns) read and written once
    case = slices.slices_cases()[0]
    a = 64 * 16 * 4096 * 3
    b = 64 * 16 * (4096 + 1024 + 1024)
    assert slices.slices_min_bytes(case) == 2 * (64 * 4096 + a + b + 2 * 64 * 6144) == 39_845_888


def test_dry_run_checks_and_times_every_case(dry):
    rows = dry["rows"]
    assert len(rows) == 8 and dry["not_run"] == [] and dry["errors"] == []
    assert dry["device_type"] == "cpu" and dry["dry_run"] is True and dry["read_gbps"] > 0
    for r, c in zip(rows, slices.slices_cases(dry_run=True)):
        assert r["name"] == c.name and r["op"] == "add_lora_slices" and r["proj"] == c.proj
        assert r["widths"] == list(c.widths) and r["H_out"] == sum(c.widths) and r["ranks"] == [16] * len(c.widths)
        assert r["bytes"] == slices.slices_min_bytes(c)
        assert math.isclose(r["gbps"], r["bytes"] / r["us"] / 1e3)
        assert math.isclose(r["pct_read"], 100 * r["gbps"] / dry["read_gbps"])
        assert r["rejected"] == {}, r["rejected"]
        assert r["rel_err"] < 1e-2
        expected = {"add_lora_per_slice", "reference"} | ({"grouped_mm"} if hasattr(torch, "_grouped_mm") else set())
        assert expected <= r["baselines"].keys() | r["skipped"].keys()
        assert "add_lora_per_slice" in r["baselines"] and "reference" in r["baselines"]
        assert ("mm" in r["baselines"]) == (r["n"] == 1)
        assert all(e < 1e-2 for e in r["baseline_rel_err"].values())
        best = min(r["baselines"], key=r["baselines"].get)
        assert r["best_baseline"] == best and math.isclose(r["speedup"], r["baselines"][best] / r["us"])


def test_grouped_mm_runs_on_this_torch_or_says_why_not(dry):
    for r in dry["rows"]:
        assert "grouped_mm" in r["baselines"] or r["skipped"]["grouped_mm"], r["name"]


def test_grouped_mm_is_left_out_with_the_reason_where_torch_lacks_it(monkeypatch):
    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    case = slices.slices_cases(dry_run=True)[0]
    cands, skipped = slices.slices_baselines(case, "cpu", _reference_ops())
    assert "grouped_mm" not in cands
    assert skipped["grouped_mm"] == f"torch {torch.__version__} has no torch._grouped_mm"


def test_the_reference_is_left_out_when_its_gather_is_too_big(monkeypatch):
    monkeypatch.setitem(slices.GATHER_LIMIT, "cpu", 1024)
    case = slices.slices_cases(dry_run=True)[1]
    cands, skipped = slices.slices_baselines(case, "cpu", _reference_ops())
    assert "reference" not in cands and skipped["reference"].startswith("gather needs ")


@pytest.mark.parametrize("bug", ["last_slice_dropped", "slices_swapped_scales"])
def test_a_wrong_slices_op_is_caught_before_timing(bug):
    def add_lora_slices(y, x, a, b, s, indices=None, **kw):
        if bug == "last_slice_dropped":
            w = b[-1].shape[1]
            keep = y[:, -w:].clone()
            reference.add_lora_slices(y, x, a, b, s, indices, **kw)
            y[:, -w:] = keep
            return y
        return reference.add_lora_slices(y, x, a, b, list(reversed(s)), indices, **kw)

    cases = slices.slices_cases(dry_run=True)[:1]
    with pytest.raises(bench.CorrectnessError, match="our op differs from the float64 reference"):
        slices.run_slices(cases, "cpu", ops=_reference_ops(add_lora_slices=add_lora_slices), dry_run=True,
                          progress=_quiet)
    res = slices.run_slices(cases, "cpu", ops=_reference_ops(add_lora_slices=add_lora_slices), dry_run=True,
                            progress=_quiet, keep_going=True)
    assert res["rows"] == [] and [e["name"] for e in res["errors"]] == [cases[0].name]


def test_a_wrong_baseline_is_rejected_not_timed():
    def half_again(w):
        y0 = w.y.clone()
        slices._reference_slices(w)
        w.y.copy_(y0 + (w.y - y0) * 1.5)
        return w.y

    res = slices.run_slices(slices.slices_cases(dry_run=True)[:1], "cpu", ops=_reference_ops(), dry_run=True,
                            progress=_quiet, extra_baselines={"wrong": half_again})
    (row,) = res["rows"]
    assert "wrong" in row["rejected"] and "wrong" not in row["baselines"]


def test_time_budget_lists_the_slices_cases_not_run():
    cases = slices.slices_cases(dry_run=True)
    res = slices.run_slices(cases, "cpu", ops=_reference_ops(), dry_run=True, time_budget_s=0.0, progress=_quiet)
    assert res["rows"] == [] and res["not_run"] == [c.name for c in cases]


def test_the_rates_of_the_sweep_are_reused():
    rates = {"copy_gbps": None, "l2_bytes": None, "llc_bytes": 1 << 20, "read_gbps": 12.5, "read_bytes": 4 << 20}
    res = slices.run_slices(slices.slices_cases(dry_run=True)[:1], "cpu", ops=_reference_ops(), dry_run=True,
                            progress=_quiet, rates=rates)
    assert res["read_gbps"] == 12.5 and res["llc_bytes"] == 1 << 20
    assert math.isclose(res["rows"][0]["pct_read"], 100 * res["rows"][0]["gbps"] / 12.5)


def test_bench_slices_writes_the_rows_the_table_and_the_plot(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    png = tmp_path / "cpu.png"
    args = bench.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--device", "cpu", "--dry-run", "--slices", "--json", str(path), "--plot", str(png)])
    out: list[str] = []
    assert bench.run_from_args(args, progress=_quiet, out=out.append) == 0
    res = json.loads(path.read_text())
    assert len(res["rows"]) == 4 and len(res["slices"]["rows"]) == 8
    printed = "\n".join(out)
    assert "add_lora_slices on Llama-3-8B's qkv / gate_up" in printed and "add_lora_per_slice us" in printed
    summary = bench.format_summary(res)
    assert "8 add_lora_slices cases measured, 0 not run (time budget), 0 failed" in summary
    assert "qkv decode T=8 adapters=8 r=16/16/16 32->32+8+8 bf16" in summary
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "cpu-slices.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slices_plot_has_a_panel_per_projection_and_kind(dry):
    pytest.importorskip("matplotlib")
    from lora_kernels.bench.plot import make_slices_figure

    fig = make_slices_figure(dry)
    assert [ax.get_title() for ax in fig.axes] == [
        "qkv 32->32+8+8\ndecode T=8", "gate_up 32->112+112\ndecode T=8",
        "qkv 32->32+8+8\nprefill T=32", "gate_up 32->112+112\nprefill T=32"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][:2] == ["lora_kernels", "add_lora_per_slice"]


def test_slices_summary_of_a_cuda_result_gives_the_copy_fraction(dry):
    res = json.loads(json.dumps(dry))
    res.update(device_type="cuda", copy_gbps=4000.0)
    for r in res["rows"]:
        r["pct_copy"] = 100 * r["gbps"] / 4000.0
    text = bench.format_slices_summary(res)
    assert "% copy" in text.splitlines()[1]
    assert f"{res['rows'][0]['pct_copy']:.0f}%" in text.splitlines()[3]


def test_slices_on_cpu_without_dry_run_is_refused(capsys):
    args = bench.add_arguments(argparse.ArgumentParser()).parse_args(["--device", "cpu", "--slices"])
    assert bench.run_from_args(args, progress=_quiet, out=lambda s: None) == 2
    assert "--slices times Llama-3-8B-sized bf16 projections" in capsys.readouterr().err


def test_bench_gpu_runs_the_slices_after_the_sweep(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PKG_PARENT, os.environ.get("PYTHONPATH")])))
    script = os.path.join(ROOT, "benchmarks", "bench_gpu.py")
    proc = subprocess.run([sys.executable, script, "--device", "cpu", "--dry-run", "--time-budget", "0",
                           "--slices-budget", "120", "--outdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "cpu-dry-run.json").read_text())
    assert res["rows"] == [] and len(res["not_run"]) == 624  # the sweep had no time
    assert len(res["slices"]["rows"]) == 8
    assert "8 add_lora_slices cases measured" in proc.stdout
    summary = subprocess.run([sys.executable, script, "--summary", str(tmp_path / "cpu-dry-run.json")],
                             capture_output=True, text=True, timeout=120, env=env)
    assert summary.returncode == 0 and "add_lora_slices on Llama-3-8B" in summary.stdout


def test_gpu_check_gives_the_slices_a_time_box():
    path = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    text = open(path).read()
    assert '--slices-budget "$SLICES"' in text
    # the budget arithmetic, run on its own: a sixth of what is left (10 to 45 s) for the slices,
    # the rest (60 to 300 s) for the sweep
    lines = [line for line in text.splitlines() if line.startswith(("REMAIN=", "clamp()", "SLICES=", "BUDGET="))]
    assert len(lines) == 4
    for elapsed, want in ((60, (45, 285)), (150, (40, 200)), (360, (10, 60)), (600, (10, 60))):
        script = f"START=0; DEADLINE=420; ELAPSED={elapsed}\n" + "\n".join(lines) + '\necho "$SLICES $BUDGET"'
        got = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
        assert tuple(map(int, got.stdout.split())) == want, (elapsed, got.stdout, got.stderr)
