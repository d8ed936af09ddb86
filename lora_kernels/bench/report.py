"""What a run prints and writes: the full table, the short summary, the GPU targets, the JSON."""

from __future__ import annotations

import json
import math
import os

BASELINE_ORDER = ("add_lora_per_slice", "sorted_mm", "gather_bmm", "peft_loop", "mm", "grouped_mm", "reference")


def _speedup_cell(r: dict) -> str:
    """'2.31x', with a '*' where the spread between runs is large (see the note under the table)."""
    if not r["speedup"]:
        return "-"
    return f"{r['speedup']:.2f}x" + ("*" if r.get("noisy") else "")


def _spread_cell(r: dict) -> str:
    rng = r.get("speedup_range")
    return f"{rng[0]:.2f}-{rng[1]:.2f}x" if rng else "-"


def spread_note(result: dict) -> str | None:
    """The line under a table about the spread between runs (None on a dry run)."""
    rows = [r for r in result["rows"] if r.get("speedup_range")]
    if result.get("dry_run") or not rows:
        return None
    limit = result.get("noisy_spread") or 1.25
    noisy = [r for r in rows if r.get("noisy")]
    if not noisy:
        return (f"spread between runs: every speedup's interquartile range spans less than "
                f"{limit:g}x, the ratios above hold.")
    return (f"* LARGE SPREAD between runs in {len(noisy)} of {len(rows)} cases (interquartile "
            f"speedup range wider than {limit:g}x, column 'speedup IQR'): the machine was busy "
            f"while measuring, so those speedups are not solid; rerun on a quiet machine "
            f"(or with a larger --repeat) before quoting them.")


def format_table(result: dict) -> str:
    rows = result["rows"]
    names = [b for b in BASELINE_ORDER
             if any(b in r["baselines"] or b in r["skipped"] or b in r["rejected"] for r in rows)]
    names += sorted({b for r in rows for b in (*r["baselines"], *r["rejected"])} - set(names))
    cuda = result.get("device_type") == "cuda"
    header = ["case", "ours us"] + [f"{b} us" for b in names] + ["best baseline", "speedup",
                                                                  "speedup IQR", "GB/s"]
    with_min = any(r.get("speedup_min") for r in rows)
    if with_min:
        header += ["speedup (min runs)"]
    ref = "copy" if cuda else "read"
    with_pct = any(r.get(f"pct_{ref}") is not None for r in rows)
    if with_pct:
        header += [f"% {ref}", f"best baseline % {ref}"]
    lines = []
    for r in rows:
        cells = [r["name"], f"{r['us']:.1f}"]
        for b in names:
            if b in r["baselines"]:
                cells.append(f"{r['baselines'][b]:.1f}")
            elif b in r["rejected"]:
                cells.append("WRONG")
            elif b in r["skipped"]:
                cells.append("skip")
            else:
                cells.append("-")
        cells += [r["best_baseline"] or "-", _speedup_cell(r), _spread_cell(r), f"{r['gbps']:.1f}"]
        if with_min:
            cells.append(f"{r['speedup_min']:.2f}x" if r.get("speedup_min") else "-")
        if with_pct:
            ours_pct = r.get(f"pct_{ref}")
            best_pct = (r.get(f"baselines_pct_{ref}") or {}).get(r["best_baseline"])
            cells += [f"{ours_pct:.0f}%" if ours_pct is not None else "-",
                      f"{best_pct:.0f}%" if best_pct is not None else "-"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(wd) if i == 0 else c.rjust(wd)
                                 for i, (c, wd) in enumerate(zip(cells, widths))) + " |"

    out = [fmt(header), "|" + "|".join(("-" * (wd + 2)) if i == 0 else ("-" * (wd + 1) + ":")
                                        for i, wd in enumerate(widths)) + "|"]
    out += [fmt(c) for c in lines]
    notes = sorted({f"{b}: {why}" for r in rows for b, why in r["skipped"].items()})
    head = (f"device: {result['device']} ({result['device_type']}), torch {result['torch']}"
            f"{', CUDA ' + str(result['cuda']) if cuda else ''}, threads {result['threads']}"
            f"{', copy ' + format(result['copy_gbps'], '.0f') + ' GB/s' if result.get('copy_gbps') else ''}"
            f"{', memory read ' + format(result['read_gbps'], '.1f') + ' GB/s' if result.get('read_gbps') else ''}"
            f"{', last-level cache ' + format(result['llc_bytes'] / 2**20, '.0f') + ' MiB (inputs rotated over 2x it)' if result.get('llc_bytes') else ''}"
            f"{', DRY RUN (tiny sizes, 1 repetition: not a measurement)' if result['dry_run'] else ''}")
    tail = [note for note in (spread_note(result),) if note]
    tail += [f"skipped: {n}" for n in notes[:8]] + (["..."] if len(notes) > 8 else [])
    if result.get("not_run"):
        tail.append(f"not run (time budget): {len(result['not_run'])} cases")
    return "\n".join([head, *out, *tail])


def targets(result: dict) -> list[dict]:
    """The GPU speed targets evaluated on a result: [{target, status, detail}], status in
    {"met", "missed", "n/a"}. They are GPU targets: on a CPU or dry run every one is "n/a"."""
    rows = result["rows"]
    out = []
    if result.get("device_type") != "cuda" or result.get("dry_run"):
        why = "dry run: nothing measured" if result.get("dry_run") else "GPU target; this is a CPU run"
        names = ["every shape faster than every baseline",
                 "calls moving >= 30 MB: >= 80% of copy bandwidth",
                 "calls moving 4-30 MB: >= 50% of copy bandwidth",
                 "calls under 4 MB: <= 1.5x a same-bytes copy",
                 "decode 64/64 r16 4096->4096 add_lora bf16 <= 8 us"]
        return [{"target": t, "status": "n/a", "detail": why} for t in names]
    judged = [r for r in rows if r["speedup"] is not None]
    slower = [r for r in judged if r["speedup"] < 1.0]
    out.append({"target": "every shape faster than every baseline",
                "status": "n/a" if not judged else ("met" if not slower else "missed"),
                "detail": f"{len(judged) - len(slower)}/{len(judged)} cases faster"
                          + (f"; slowest ratio {min(r['speedup'] for r in judged):.2f}x"
                             f" ({min(judged, key=lambda r: r['speedup'])['name']})" if judged else "")})
    for lo, hi, need in ((30e6, math.inf, 80.0), (4e6, 30e6, 50.0)):
        sel = [r for r in rows if lo <= r["bytes"] < hi and r["pct_copy"] is not None]
        bad = [r for r in sel if r["pct_copy"] < need]
        label = f">= {lo / 1e6:.0f} MB" if hi == math.inf else f"{lo / 1e6:.0f}-{hi / 1e6:.0f} MB"
        out.append({"target": f"calls moving {label}: >= {need:.0f}% of copy bandwidth",
                    "status": "n/a" if not sel else ("met" if not bad else "missed"),
                    "detail": f"{len(sel) - len(bad)}/{len(sel)} cases" +
                              (f"; worst {min(r['pct_copy'] for r in sel):.0f}%" if sel else "")})
    sel = [r for r in rows if r["bytes"] < 4e6 and r.get("copy_us")]
    bad = [r for r in sel if r["us"] > 1.5 * r["copy_us"]]
    out.append({"target": "calls under 4 MB: <= 1.5x a same-bytes copy",
                "status": "n/a" if not sel else ("met" if not bad else "missed"),
                "detail": f"{len(sel) - len(bad)}/{len(sel)} cases" +
                          (f"; worst {max(r['us'] / r['copy_us'] for r in sel):.2f}x" if sel else "")})
    key = [r for r in rows if r["kind"] == "decode" and r["op"] == "add_lora" and r["T"] == 64
           and r["n"] == 64 and r["r"] == 16 and r["H_in"] == 4096 and r["H_out"] == 4096
           and r["dtype"] == "bf16"]
    if key and result.get("device_type") == "cuda" and not result.get("dry_run"):
        us = key[0]["us"]
        out.append({"target": "decode 64/64 r16 4096->4096 add_lora bf16 <= 8 us",
                    "status": "met" if us <= 8.0 else "missed", "detail": f"{us:.1f} us"})
    else:
        out.append({"target": "decode 64/64 r16 4096->4096 add_lora bf16 <= 8 us",
                    "status": "n/a", "detail": "not in this run (needs a CUDA run of the sweep)"})
    return out


def format_targets(result: dict) -> str:
    return "\n".join(f"[{t['status']:>6}] {t['target']}: {t['detail']}" for t in targets(result))


def format_summary(result: dict) -> str:
    """A short table (add_lora, first dtype, r = 16 or the smallest r, H_out = the smallest),
    a one-line census of the whole run, and the GPU speed targets."""
    rows = result["rows"]
    sel = [r for r in rows if r["op"] == "add_lora"] or list(rows)
    if sel:
        dt = sel[0]["dtype"]
        rs = {r["r"] for r in sel}
        rp = 16 if 16 in rs else min(rs)
        hp = min(r["H_out"] for r in sel)
        sel = [r for r in sel if r["dtype"] == dt and r["r"] == rp and r["H_out"] == hp]
        sel.sort(key=lambda r: (r["kind"] != "decode", r["T"], r["n"]))
    cuda = result.get("device_type") == "cuda"
    head = ["case", "ours us", "best baseline", "baseline us", "speedup", "GB/s"]
    if cuda:
        head += ["% copy", "x copy"]
    body = []
    for r in sel:
        cells = [r["name"], f"{r['us']:.1f}", r["best_baseline"] or "-",
                 f"{r['best_baseline_us']:.1f}" if r["best_baseline_us"] else "-",
                 _speedup_cell(r), f"{r['gbps']:.1f}"]
        if cuda:
            cells += [f"{r['pct_copy']:.0f}%" if r["pct_copy"] is not None else "-",
                      f"{r['us'] / r['copy_us']:.2f}" if r.get("copy_us") else "-"]
        body.append(cells)
    widths = [max([len(h)] + [len(c[i]) for c in body]) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    judged = [r["speedup"] for r in rows if r["speedup"]]
    census = (f"{len(rows)} cases measured, {len(result.get('not_run', []))} not run (time budget), "
              f"{len(result.get('errors', []))} failed")
    if judged:
        geo = math.exp(sum(math.log(x) for x in judged) / len(judged))
        census += f"; speedup over the best baseline: min {min(judged):.2f}x, geomean {geo:.2f}x"
    lines = [f"{result['device']}, torch {result['torch']}"
             + (f", CUDA {result['cuda']}, copy {result['copy_gbps']:.0f} GB/s" if cuda and result.get("copy_gbps") else "")
             + (" [DRY RUN: not a measurement]" if result.get("dry_run") else ""),
             fmt(head), fmt(["-" * w for w in widths]), *(fmt(c) for c in body), census,
             *[note for note in (spread_note(result),) if note], format_targets(result)]
    if result.get("slices"):
        lines += ["", format_slices_summary(result["slices"])]
    return "\n".join(lines)


SLICES_TITLE = "add_lora_slices on Llama-3-8B's qkv / gate_up against vLLM-style baselines"


def format_slices_summary(slices: dict) -> str:
    """The short table of the ``add_lora_slices`` rows (:mod:`.slices`): every candidate's µs,
    the speedup over the best baseline, GB/s and, on CUDA, the % of the copy rate."""
    rows = slices["rows"]
    names = [b for b in BASELINE_ORDER if any(b in r["baselines"] or b in r["skipped"] for r in rows)]
    names += sorted({b for r in rows for b in r["baselines"]} - set(names))
    cuda = slices.get("device_type") == "cuda"
    head = ["case", "ours us", *(f"{b} us" for b in names), "speedup", "GB/s"] + (["% copy"] if cuda else [])
    body = []
    for r in rows:
        cells = [r["name"].replace(" add_lora_slices", ""), f"{r['us']:.1f}"]
        cells += [f"{r['baselines'][b]:.1f}" if b in r["baselines"] else
                  ("WRONG" if b in r["rejected"] else ("skip" if b in r["skipped"] else "-")) for b in names]
        cells += [_speedup_cell(r), f"{r['gbps']:.1f}"]
        if cuda:
            cells.append(f"{r['pct_copy']:.0f}%" if r.get("pct_copy") is not None else "-")
        body.append(cells)
    widths = [max([len(h)] + [len(c[i]) for c in body]) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    census = (f"{len(rows)} add_lora_slices cases measured, {len(slices.get('not_run', []))} not run "
              f"(time budget), {len(slices.get('errors', []))} failed")
    judged = [r["speedup"] for r in rows if r["speedup"]]
    if judged:
        census += f"; speedup over the best baseline: min {min(judged):.2f}x, max {max(judged):.2f}x"
    notes = sorted({f"{b}: {why}" for r in rows for b, why in r["skipped"].items()})
    lines = [SLICES_TITLE + (" [DRY RUN: not a measurement]" if slices.get("dry_run") else ""),
             fmt(head), fmt(["-" * w for w in widths]), *(fmt(c) for c in body), census,
             *[note for note in (spread_note(slices),) if note], *(f"skipped: {n}" for n in notes[:4])]
    for e in slices.get("errors", []):
        lines.append(f"FAILED: {e['name']}: {e['error'].splitlines()[0][:200]}")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
