"""The benchmark harness (lora_kernels.bench) in `--device cpu --dry-run` mode.

Dry-run mode runs every case's construction, correctness check and JSON row layout at tiny
sizes with one repetition: it checks the harness, it measures nothing.
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
from lora_kernels.__main__ import main as cli_main

ROW_KEYS = {
    "name", "op", "dtype", "T", "n", "r", "H_in", "H_out", "bytes", "us", "gbps", "pct_copy",
    "baselines", "speedup", "rel_err", "best_baseline", "skipped", "rejected",
}
TOP_KEYS = {"device", "torch", "cuda", "date", "rows", "dry_run", "device_type"}
# The directory holding the lora_kernels package this process imported (repo or site-packages).
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__))))


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def default_result(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "cpu.json"
    assert bench.main(["--device", "cpu", "--dry-run", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def _reference_ops(**override) -> types.SimpleNamespace:
    """Our ops replaced by the reference, with some functions overridden (to inject bugs)."""
    names = ("add_lora", "bgmv_shrink", "bgmv_expand", "sgmv_shrink", "sgmv_expand")
    ops = {n: getattr(reference, n) for n in names}
    ops.update(override)
    return types.SimpleNamespace(**ops)


def test_default_dry_run_json_layout(default_result):
    res = default_result
    assert TOP_KEYS <= res.keys()
    assert res["dry_run"] is True and res["device_type"] == "cpu"
    assert res["torch"] == torch.__version__
    rows = res["rows"]
    assert [(r["op"], r["n"]) for r in rows] == [("add_lora", 8), ("add_lora", 4), ("add_lora", 1), ("add_lora", 4)]
    assert [r["kind"] for r in rows] == ["decode", "decode", "decode", "prefill"]
    for r in rows:
        assert ROW_KEYS <= r.keys(), ROW_KEYS - r.keys()
        assert r["dtype"] == "fp32"
        assert r["pct_copy"] is None  # no copy bandwidth on CPU
        assert r["rel_err"] < 1e-5
        assert r["rejected"] == {}
        assert {"sorted_mm", "gather_bmm", "peft_loop"} <= r["baselines"].keys()
        assert ("mm" in r["baselines"]) == (r["n"] == 1)
        assert "grouped_mm" not in r["baselines"]  # CUDA only
        assert all(e < 1e-5 for e in r["baseline_rel_err"].values())
        best = min(r["baselines"], key=r["baselines"].get)
        assert r["best_baseline"] == best
        assert math.isclose(r["speedup"], r["baselines"][best] / r["us"])
        assert math.isclose(r["gbps"], r["bytes"] / r["us"] / 1e3)
        assert r["baselines_min"].keys() == r["baselines"].keys()
        assert math.isclose(r["speedup_min"], min(r["baselines_min"].values()) / r["us_min"])
        assert r["bytes"] == 4 * (r["T"] * r["H_in"] + r["n"] * r["r"] * (r["H_in"] + r["H_out"])
                                  + 2 * r["T"] * r["H_out"])


def test_default_workload_at_full_size():
    cpu = bench.default_cases("cpu")
    assert [(c.kind, c.T, c.n, c.r, c.H_in, c.H_out, c.dtype) for c in cpu] == [
        ("decode", 64, 64, 16, 4096, 4096, torch.float32),
        ("decode", 64, 8, 16, 4096, 4096, torch.float32),
        ("decode", 64, 1, 16, 4096, 4096, torch.float32),
        ("prefill", 2048, 8, 16, 4096, 4096, torch.float32),
    ]
    assert {c.dtype for c in bench.default_cases("cuda")} == {torch.bfloat16}


def test_min_bytes_match_the_anchors_table():
    # ANCHORS: decode 64 tokens, 64 distinct adapters, r 16, 4096 -> 4096, bf16, fused: 18.4 MB
    case = bench.Case("decode", "add_lora", 64, 64, 16, 4096, 4096, torch.bfloat16)
    assert bench.min_bytes(case) == 2 * (64 * 4096 + 64 * 16 * 8192 + 2 * 64 * 4096) == 18_350_080
    shrink = bench.Case("decode", "shrink", 64, 64, 16, 4096, 4096, torch.bfloat16)
    expand = bench.Case("decode", "expand", 64, 64, 16, 4096, 4096, torch.bfloat16)
    assert bench.min_bytes(shrink) == 2 * (64 * 4096 + 64 * 16 * 4096) + 4 * 64 * 16
    assert bench.min_bytes(expand) == 2 * (64 * 16 * 4096 + 2 * 64 * 4096) + 4 * 64 * 16


def test_full_sweep_shape_list():
    cases = bench.full_cases()
    assert len(cases) == len({c.name for c in cases}) == 624
    dec = {(c.T, c.n) for c in cases if c.kind == "decode"}
    assert dec == {(1, 1), (16, 1), (16, 8), (16, 16), (64, 1), (64, 8), (64, 64),
                   (256, 1), (256, 8), (256, 256)}
    assert {c.r for c in cases} == {8, 16, 64, 128}
    assert {c.H_out for c in cases} == {4096, 14336}
    assert {(c.T, c.n) for c in cases if c.kind == "prefill"} == {(4096, 1), (4096, 8), (4096, 32)}
    assert {c.op for c in cases} == {"add_lora", "shrink", "expand"}
    assert {c.dtype for c in cases} == {torch.bfloat16, torch.float16}
    assert cases[0].op == "add_lora" and cases[0].dtype == torch.bfloat16  # most important first


def test_full_dry_run_on_cpu_checks_every_case(tmp_path):
    path = tmp_path / "full.json"
    assert bench.run_from_args(
        bench.add_arguments(argparse.ArgumentParser()).parse_args(
            ["--device", "cpu", "--dry-run", "--full", "--json", str(path)]),
        progress=_quiet, out=lambda s: None) == 0
    res = json.loads(path.read_text())
    rows = res["rows"]
    assert len(rows) == 624 and res["not_run"] == []
    assert {(r["op"], r["dtype"]) for r in rows} == {
        (op, dt) for op in ("add_lora", "shrink", "expand") for dt in ("bf16", "fp16")}
    for r in rows:
        assert ROW_KEYS <= r.keys()
        assert r["rejected"] == {}, (r["name"], r["rejected"])
        assert r["rel_err"] < 1e-2
        assert r["baselines"], r["name"]


@pytest.mark.parametrize(
    "bug",
    ["no_scaling", "off_by_0.1_percent", "last_token_dropped", "shrink_wrong_slot"],
)
def test_a_wrong_op_is_caught_before_timing(bug):
    def add_lora(y, x, a, b, s, indices=None, **kw):
        if bug == "no_scaling":
            return reference.add_lora(y, x, a, b, torch.ones_like(s), indices, **kw)
        if bug == "off_by_0.1_percent":
            return reference.add_lora(y, x, a, b, s * 1.001, indices, **kw)
        if bug == "last_token_dropped":
            y_last = y[-1].clone()
            reference.add_lora(y, x, a, b, s, indices, **kw)
            y[-1] = y_last
            return y
        return reference.add_lora(y, x, a, b, s, indices, **kw)

    def bgmv_shrink(x, a, indices, ranks=None):
        if bug == "shrink_wrong_slot":
            return reference.bgmv_shrink(x, a, (indices + 1) % a.shape[0], ranks)
        return reference.bgmv_shrink(x, a, indices, ranks)

    ops = _reference_ops(add_lora=add_lora, bgmv_shrink=bgmv_shrink)
    op = "shrink" if bug == "shrink_wrong_slot" else "add_lora"
    cases = [bench.Case("decode", op, 8, 4, 4, 32, 48, torch.float32)]
    with pytest.raises(bench.CorrectnessError, match="differs from the float64 reference"):
        bench.run(cases, "cpu", ops=ops, dry_run=True, progress=_quiet)


def test_a_wrong_op_fails_the_command(capsys):
    ops = _reference_ops(add_lora=lambda y, x, a, b, s, indices=None, **kw:
                         reference.add_lora(y, x, a, b, 2 * s, indices, **kw))
    args = bench.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--device", "cpu", "--dry-run"])
    assert bench.run_from_args(args, ops=ops, progress=_quiet) == 1
    assert "differs from the float64 reference" in capsys.readouterr().err


def test_a_wrong_or_failing_baseline_is_left_out_of_the_timing():
    def wrong(w):  # adds the update twice
        bench._sorted_mm(w)
        return bench._sorted_mm(w)

    def raising(w):
        raise RuntimeError("no kernel for this dtype")

    cases = [bench.Case("prefill", "add_lora", 16, 2, 4, 32, 32, torch.float32)]
    res = bench.run(cases, "cpu", ops=_reference_ops(), dry_run=True, progress=_quiet,
                    extra_baselines={"wrong": wrong, "raising": raising})
    row = res["rows"][0]
    assert "wrong" in row["rejected"] and "wrong" not in row["baselines"]
    assert row["baseline_rel_err"]["wrong"] > 0.5
    assert row["skipped"]["raising"].startswith("RuntimeError: no kernel")
    assert "raising" not in row["baselines"]
    assert row["best_baseline"] not in ("wrong", "raising")
    table = bench.format_table(res)
    assert "WRONG" in table


def test_full_on_cpu_without_dry_run_is_refused(capsys):
    assert cli_main(["bench", "--device", "cpu", "--full"]) == 2
    err = capsys.readouterr().err
    assert "--full is the GPU sweep" in err and "--dry-run" in err
    assert "issue" not in err.lower()


def test_time_budget_lists_the_cases_not_run():
    cases = bench.default_cases("cpu", dry_run=True)
    res = bench.run(cases, "cpu", ops=_reference_ops(), dry_run=True, time_budget_s=0.0,
                    progress=_quiet)
    assert res["rows"] == [] and res["not_run"] == [c.name for c in cases]


def test_targets_have_nothing_to_judge_on_cpu(default_result):
    status = [t["status"] for t in bench.targets(default_result)]
    assert status == ["n/a"] * 5  # GPU targets: a CPU dry run judges nothing
    summary = bench.format_summary(default_result)
    assert "DRY RUN" in summary and "4 cases measured" in summary


def test_table_and_plot(default_result, tmp_path):
    table = bench.format_table(default_result)
    assert "DRY RUN" in table and "speedup" in table and "peft_loop" in table
    assert len(table.splitlines()) >= 2 + len(default_result["rows"])
    png = tmp_path / "plot.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert bench.write_plot(default_result, str(png)) is None
    else:
        assert bench.write_plot(default_result, str(png)) == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_dash_m_lora_kernels_bench(tmp_path):
    path = tmp_path / "cli.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PKG_PARENT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "lora_kernels", "bench", "--device", "cpu", "--dry-run",
         "--json", str(path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[4/4]" in proc.stderr  # one progress line per case, on stderr
    assert "best baseline" in proc.stdout
    assert len(json.loads(path.read_text())["rows"]) == 4


@pytest.mark.parametrize("command", ["bench", "inspect", "check"])
def test_help_never_refers_to_the_issue_tracker(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    assert "issue" not in out.lower(), out


def test_bench_docstrings_never_refer_to_the_issue_tracker():
    import pkgutil
    import importlib

    names = ["lora_kernels.bench"] + [f"lora_kernels.bench.{m.name}" for m in pkgutil.iter_modules(bench.__path__)
                                      if m.name != "__main__"]
    for name in names:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""] + [getattr(obj, "__doc__", None) or "" for obj in vars(mod).values()
                                      if callable(obj) and getattr(obj, "__module__", None) == name]
        for doc in docs:
            assert "issue" not in doc.lower(), (name, doc)


# --- CPU input rotation, the memory read rate, the spread between runs ------------------------


def test_llc_size_is_read_from_sysfs(tmp_path):
    from lora_kernels.bench.timing import llc_bytes

    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                             (2, "Unified", "2048K"), (3, "Unified", "266240K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert llc_bytes(root=str(tmp_path)) == 266240 << 10
    assert llc_bytes(default=123, root=str(tmp_path / "missing")) == 123


def test_cpu_calls_rotate_over_the_input_sets():
    from lora_kernels.bench.timing import _time_cpu_interleaved

    sets = [object() for _ in range(5)]
    calls: list[tuple[str, int]] = []
    fns = {name: (lambda w, name=name: calls.append((name, sets.index(w)))) for name in ("ours", "a", "b")}
    stats = _time_cpu_interleaved(fns, sets, reps=6, warmup=1, budget_s=10.0, skipped={})
    assert {k: v["runs"] for k, v in stats.items()} == {"ours": 6, "a": 6, "b": 6}
    # every call, whichever candidate makes it, reads the set no call touched for the longest
    assert [i for _, i in calls] == [k % len(sets) for k in range(len(calls))]
    assert {name for name, _ in calls} == {"ours", "a", "b"}


def test_cpu_run_rotates_more_than_the_llc_and_reports_the_read_rate(monkeypatch):
    from lora_kernels.bench import harness

    monkeypatch.setattr(harness, "llc_bytes", lambda: 1 << 20)  # a 1 MiB cache: several sets
    case = bench.Case("decode", "add_lora", 8, 4, 4, 256, 256, torch.float32)
    res = bench.run([case], "cpu", ops=_reference_ops(), repeat=3, progress=_quiet)
    assert res["llc_bytes"] == 1 << 20
    assert res["read_bytes"] >= 4 * res["llc_bytes"] and res["read_gbps"] > 0
    row = res["rows"][0]
    w = bench.make_workload(case, "cpu")
    set_bytes = sum(t.numel() * t.element_size() for t in (w.x, w.y, w.v, w.lora_a, w.lora_b))
    assert row["rotate"] >= 2 and row["rotate"] * set_bytes >= 2 * res["llc_bytes"]
    assert math.isclose(row["pct_read"], 100 * row["gbps"] / res["read_gbps"])
    assert row["baselines_pct_read"].keys() == row["baselines"].keys()
    for name, us in row["baselines"].items():
        assert math.isclose(row["baselines_pct_read"][name], 100 * row["bytes"] / us / 1e3 / res["read_gbps"])
    table = bench.format_table(res)
    assert "memory read" in table and "% read" in table and "best baseline % read" in table


def test_rows_carry_the_spread_between_runs(default_result):
    for r in default_result["rows"]:
        lo, hi = r["speedup_range"]
        assert lo <= r["speedup"] * (1 + 1e-9) and hi >= r["speedup"] * (1 - 1e-9)
        assert r["noisy"] is False  # one run: no spread
        assert r["us_iqr"][0] <= r["us"] <= r["us_iqr"][1]


def _with_spread(result: dict, noisy_row: int | None) -> dict:
    res = json.loads(json.dumps(result))
    res["dry_run"] = False
    for i, r in enumerate(res["rows"]):
        s = r["speedup"]
        r["speedup_range"] = [s * 0.5, s * 3.0] if i == noisy_row else [s * 0.95, s * 1.05]
        r["noisy"] = i == noisy_row
    return res


def test_a_large_spread_is_said_next_to_the_table(default_result):
    noisy = _with_spread(default_result, noisy_row=1)
    table = bench.format_table(noisy)
    row = next(line for line in table.splitlines() if line.startswith(f"| {noisy['rows'][1]['name']}"))
    assert f"{noisy['rows'][1]['speedup']:.2f}x*" in row
    assert "LARGE SPREAD between runs in 1 of 4 cases" in table and "not solid" in table
    assert "LARGE SPREAD" in bench.format_summary(noisy)

    quiet = _with_spread(default_result, noisy_row=None)
    table = bench.format_table(quiet)
    assert "x*" not in table and "LARGE SPREAD" not in table
    assert "the ratios above hold" in table


def test_plot_has_prefill_and_a_legend_outside_the_panels(default_result):
    pytest.importorskip("matplotlib")
    from lora_kernels.bench.plot import make_figure

    fig = make_figure(default_result)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["decode T=8", "prefill T=32"]
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][0] == "lora_kernels"
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in axes)


def test_make_bench_writes_the_json_and_the_plot():
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if shutil.which("make") is None or not os.path.exists(os.path.join(root, "Makefile")):
        pytest.skip("needs make and the source tree")
    proc = subprocess.run(["make", "-n", "bench", "BENCH_OUT=/tmp/out"], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "-m lora_kernels bench" in line)
    assert "--json /tmp/out/" in line and "--plot /tmp/out/" in line


def test_cuda_rows_are_given_as_a_percentage_of_the_copy(default_result):
    # the table of a CUDA result (made from the CPU dry run: no GPU needed to check the layout)
    res = json.loads(json.dumps(default_result))
    res.update(device_type="cuda", copy_gbps=4000.0, read_gbps=None, llc_bytes=None)
    for r in res["rows"]:
        r["pct_copy"], r["pct_read"] = 100 * r["gbps"] / 4000.0, None
        r["baselines_pct_copy"] = {k: 100 * r["bytes"] / us / 1e3 / 4000.0 for k, us in r["baselines"].items()}
        r["baselines_pct_read"] = None
        r["copy_us"] = r["us"] / 2
    table = bench.format_table(res)
    assert "% copy" in table and "best baseline % copy" in table and "% read" not in table
    assert "copy 4000 GB/s" in table
    assert "% copy" in bench.format_summary(res)
