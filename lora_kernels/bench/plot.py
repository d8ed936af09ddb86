"""The Punica-style PNG plot (needs matplotlib)."""

from __future__ import annotations

import sys

from .report import BASELINE_ORDER


def write_plot(result: dict, path: str) -> str | None:
    """Punica-style plot: add_lora latency against the number of distinct adapters, one panel
    per token count, ours against each baseline. Returns the path, or None (with a printed
    note) when matplotlib is not installed or nothing fits."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return None
    rows = [r for r in result["rows"] if r["op"] == "add_lora"]
    if not rows:
        rows = list(result["rows"])
    if not rows:
        print("note: no rows to plot", file=sys.stderr)
        return None
    dtype = rows[0]["dtype"]
    rs = sorted({r["r"] for r in rows})
    r_pick = 16 if 16 in rs else rs[0]
    h_pick = min(r["H_out"] for r in rows)
    rows = [r for r in rows if r["dtype"] == dtype and r["r"] == r_pick and r["H_out"] == h_pick]
    panels = sorted({(r["kind"], r["T"]) for r in rows}, key=lambda k: (k[0] != "decode", k[1]))
    multi = [p for p in panels if len({r["n"] for r in rows if (r["kind"], r["T"]) == p}) > 1]
    panels = multi or panels  # a panel with a single point (T = 1) says nothing about n
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (kind, T) in zip(axes[0], panels):
        sel = sorted((r for r in rows if r["kind"] == kind and r["T"] == T), key=lambda r: r["n"])
        ns = [r["n"] for r in sel]
        ax.plot(ns, [r["us"] for r in sel], "o-", lw=2, label="lora_kernels")
        for b in BASELINE_ORDER + tuple(sorted({b for r in sel for b in r["baselines"]} - set(BASELINE_ORDER))):
            pts = [(r["n"], r["baselines"][b]) for r in sel if b in r["baselines"]]
            if pts:
                ax.plot(*zip(*pts), "s--", lw=1, label=b)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("distinct adapters" if kind == "decode" else "segments (one adapter each)")
        ax.set_ylabel("latency (us)")
        ax.set_title(f"{kind} T={T}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"add_lora, r={r_pick}, {rows[0]['H_in'] if rows else ''}->{h_pick}, {dtype}, "
                 f"{result['device']}{' (DRY RUN)' if result['dry_run'] else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
