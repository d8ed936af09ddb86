"""The Punica-style PNG plot (needs matplotlib)."""

from __future__ import annotations

import importlib.util
import os
import sys

from .report import BASELINE_ORDER


# One color per candidate, the same in every panel; ours drawn last, on top.
_COLORS = {"lora_kernels": "C3", "sorted_mm": "C0", "gather_bmm": "C1", "peft_loop": "C2", "mm": "C4",
           "grouped_mm": "C5", "add_lora_per_slice": "C6", "reference": "C7"}


def _panels(rows: list[dict]) -> list[tuple[str, int]]:
    """(kind, T) panels: every prefill token count, and the decode token counts that have more
    than one number of adapters (a single point, T = 1, says nothing about n; kept when it is
    all there is)."""
    panels = sorted({(r["kind"], r["T"]) for r in rows}, key=lambda k: (k[0] != "decode", k[1]))
    decode = [p for p in panels if p[0] == "decode"]
    multi = [p for p in decode if len({r["n"] for r in rows if (r["kind"], r["T"]) == p}) > 1]
    return (multi or decode) + [p for p in panels if p[0] != "decode"]


def _draw_panel(ax, sel: list[dict], title: str, kind: str, handles: dict) -> None:
    """One panel: each candidate's latency against the number of distinct adapters (segments
    for prefill), ours on top; the lines' handles go to ``handles`` (one per candidate)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names = BASELINE_ORDER + tuple(sorted({b for r in sel for b in r["baselines"]} - set(BASELINE_ORDER)))
    for b in names:
        pts = [(r["n"], r["baselines"][b]) for r in sel if b in r["baselines"]]
        if pts:
            (line,) = ax.plot(*zip(*pts), "s--", lw=1, ms=5, color=_COLORS.get(b), label=b, zorder=2)
            handles.setdefault(b, line)
    (line,) = ax.plot([r["n"] for r in sel], [r["us"] for r in sel], "o-", lw=2.5, ms=7,
                      color=_COLORS["lora_kernels"], label="lora_kernels", zorder=3)
    handles.setdefault("lora_kernels", line)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ns = sorted({r["n"] for r in sel})
    ax.set_xticks(ns, [str(n) for n in ns])
    if len(ns) == 1:
        ax.set_xlim(ns[0] / 2, ns[0] * 2)
    ax.set_xlabel("distinct adapters" if kind == "decode" else "segments (one adapter each)")
    ax.set_ylabel("latency (us)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def _legend(fig, handles: dict) -> None:
    order = ["lora_kernels"] + [b for b in handles if b != "lora_kernels"]
    # below the panels, so it never covers a line
    fig.legend([handles[b] for b in order], order, loc="outside lower center", ncols=len(order),
               fontsize=8, frameon=False)


def make_figure(result: dict):
    """The matplotlib figure of :func:`write_plot` (None when there is nothing to plot).
    Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["op"] == "add_lora"] or list(result["rows"])
    if not rows:
        return None
    dtype = rows[0]["dtype"]
    rs = sorted({r["r"] for r in rows})
    r_pick = 16 if 16 in rs else rs[0]
    h_pick = min(r["H_out"] for r in rows)
    rows = [r for r in rows if r["dtype"] == dtype and r["r"] == r_pick and r["H_out"] == h_pick]
    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False,
                             layout="constrained")
    handles: dict[str, object] = {}
    for ax, (kind, T) in zip(axes[0], panels):
        sel = sorted((r for r in rows if r["kind"] == kind and r["T"] == T), key=lambda r: r["n"])
        _draw_panel(ax, sel, f"{kind} T={T}", kind, handles)
    _legend(fig, handles)
    fig.suptitle(f"add_lora, r={r_pick}, {rows[0]['H_in'] if rows else ''}->{h_pick}, {dtype}, "
                 f"{result['device']}{' (DRY RUN)' if result['dry_run'] else ''}", fontsize=9)
    return fig


def write_plot(result: dict, path: str) -> str | None:
    """Punica-style plot: add_lora latency against the number of distinct adapters, one panel
    per decode token count and one per prefill length, ours against each baseline, the legend
    below the panels. Returns the path, or None (with a printed note) when matplotlib is not
    installed or nothing fits."""
    if importlib.util.find_spec("matplotlib") is None:
        print("note: matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return None
    fig = make_figure(result)
    if fig is None:
        print("note: no rows to plot", file=sys.stderr)
        return None
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_slices_figure(slices: dict):
    """The matplotlib figure of :func:`write_slices_plot` (None when there are no rows): one
    panel per projection and kind (``add_lora_slices`` rows, :mod:`.slices`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(slices["rows"])
    if not rows:
        return None
    panels = list(dict.fromkeys((r["proj"], r["kind"], r["T"]) for r in rows))
    panels.sort(key=lambda p: p[1] != "decode")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False,
                             layout="constrained")
    handles: dict[str, object] = {}
    for ax, (proj, kind, T) in zip(axes[0], panels):
        sel = sorted((r for r in rows if (r["proj"], r["kind"], r["T"]) == (proj, kind, T)), key=lambda r: r["n"])
        widths = "+".join(str(w) for w in sel[0]["widths"])
        _draw_panel(ax, sel, f"{proj} {sel[0]['H_in']}->{widths}\n{kind} T={T}", kind, handles)
    _legend(fig, handles)
    fig.suptitle(f"add_lora_slices, r={'/'.join(str(r) for r in rows[0]['ranks'])}, {rows[0]['dtype']}, "
                 f"{slices['device']}{' (DRY RUN)' if slices['dry_run'] else ''}", fontsize=9)
    return fig


def slices_plot_path(path: str) -> str:
    """Where the slices plot goes beside the sweep's plot: 'h200.png' -> 'h200-slices.png'."""
    root, ext = os.path.splitext(path)
    return f"{root}-slices{ext or '.png'}"


def write_slices_plot(slices: dict, path: str) -> str | None:
    """The ``add_lora_slices`` rows as a PNG (as :func:`write_plot`). Returns the path, or None."""
    if importlib.util.find_spec("matplotlib") is None:
        print("note: matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return None
    fig = make_slices_figure(slices)
    if fig is None:
        print("note: no add_lora_slices rows to plot", file=sys.stderr)
        return None
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
