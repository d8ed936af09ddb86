"""Benchmark engine: our ops against the plain-torch compositions a user would write.

Every call of a multi-LoRA op is memory-bound, so each case reports the minimum bytes the call
must move (each input read once, ``y`` read and written once; ``e`` bytes per element, ``n``
distinct adapters, ``R`` the rank)::

    add_lora (fused)  e*(T*H_in + n*R*(H_in + H_out) + 2*T*H_out)
    shrink            e*(T*H_in + n*R*H_in) + 4*T*R          (v is fp32)
    expand            e*(n*R*H_out + 2*T*H_out) + 4*T*R

and the achieved GB/s. Baselines run in the same process, on the same data:

    sorted_mm    (a) tokens sorted by adapter + one mm pair per adapter + index_add_ (for
                 prefill the tokens are already grouped: a loop over segments with addmm_)
    gather_bmm   (b) per-token gather of the weights + bmm (skipped when the gather is too big)
    peft_loop    (c) PEFT's loop: for each adapter, its rows, (x[m] @ A.T) @ B.T * s, add back
    mm           one torch.mm pair, when every token uses the same adapter
    grouped_mm   torch._grouped_mm (CUDA only, where the torch build has it)

Every candidate is checked first against the float64 reference (:mod:`lora_kernels.reference`)
on the update itself, ``d = y_out - y_in``: a wrong ``ours`` stops the run
(:class:`CorrectnessError`), a wrong baseline is left out of the timing and listed under
``rejected``. Timing: on CPU the median (and the minimum) of repeated ``time.perf_counter``
runs after a warmup, candidates interleaved run by run; on CUDA CUDA events around CUDA-graph
replays (eager when capture fails), median. On both, every call reads one of several input sets
in turn, sets that together exceed twice the last-level cache (the GPU's L2, the CPU's L3), so
the weights come from memory as a server's next layer's do; and each case's GB/s is given as a
percentage of a rate measured in the same run: a device-to-device copy on CUDA (``pct_copy``),
a read of a tensor 4x the LLC on CPU (``pct_read``), for ours and for every baseline
(``baselines_pct_copy`` / ``baselines_pct_read``). Each row also carries the spread between
runs (``us_iqr``, ``baselines_iqr``, ``speedup_range``: best baseline's quartiles over ours');
a speedup range wider than ``NOISY_SPREAD`` (1.25x) marks the row ``noisy``, and the table
says so under it rather than printing the ratio as if it were solid.

Entry points: ``python -m lora_kernels bench`` (:func:`main`), ``benchmarks/bench_gpu.py``.

One concern per module:

    cases.py        Case, the default workload, the full GPU sweep, min_bytes / flops
    workload.py     random data for a case + the baselines' per-batch metadata
    baselines.py    our op as a candidate, and the plain-torch compositions
    correctness.py  the float64 reference check every candidate passes before it is timed
    timing.py       CPU and CUDA timing, input rotation, the copy bandwidth
    harness.py      run(): check and time every case, the JSON-ready result
    report.py       the table, the summary, the GPU targets, the JSON file
    plot.py         the PNG plot
    slices.py       add_lora_slices on Llama-3-8B's qkv / gate_up against vLLM-style baselines
                    (``bench --slices``; the same check, timing and row layout)
    cli.py          the command-line options and run_from_args / main
"""

from __future__ import annotations

from .baselines import (
    GATHER_LIMIT,
    _gather_bmm,
    _grouped_mm,
    _peft_loop,
    _single_mm,
    _sorted_mm,
    baseline_candidates,
    ours_candidate,
)
from .cases import DTYPE_NAMES, DTYPES, OPS, Case, default_cases, flops, full_cases, min_bytes
from .cli import add_arguments, main, run_from_args
from .correctness import REF_CHUNK_BYTES, CorrectnessError, _reference, check_candidate
from .harness import BenchUsageError, run
from .plot import slices_plot_path, write_plot, write_slices_plot  # noqa: F401
from .report import (
    BASELINE_ORDER,
    format_slices_summary,
    format_summary,
    format_table,
    format_targets,
    targets,
    write_json,
)
from .slices import SliceCase, make_slices_workload, run_slices, slices_cases, slices_min_bytes
from .timing import copy_bandwidth
from .workload import Workload, make_workload

__all__ = [
    "Case",
    "Workload",
    "CorrectnessError",
    "default_cases",
    "full_cases",
    "make_workload",
    "min_bytes",
    "baseline_candidates",
    "ours_candidate",
    "check_candidate",
    "run",
    "format_table",
    "format_summary",
    "targets",
    "write_plot",
    "SliceCase",
    "slices_cases",
    "slices_min_bytes",
    "make_slices_workload",
    "run_slices",
    "write_slices_plot",
    "add_arguments",
    "run_from_args",
    "main",
]
