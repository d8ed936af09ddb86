"""vLLM's own engine generating with lora_kernels as its LoRA backend, checked against PEFT.

One tiny random Llama, four adapters saved by PEFT (rsLoRA r 8; rank_pattern / alpha_pattern;
plain r 4; embed_tokens + lm_head), one mixed batch with base requests, greedy with logprobs.
Passes when our wrapper was called in vLLM's worker process and every request's tokens equal
PEFT's greedy generation (a step where PEFT's two best logits are within 1e-4 is a tie: reported,
not failed), with the chosen tokens' logprobs within fp32 tolerance. vLLM's own CPU wrapper runs the
same batch and is reported, not asserted. Runs in the environment of tests/in_vllm/setup_env.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="runs in the vLLM environment: make test-vllm")
pytest.importorskip("peft")

import vllm_e2e  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# fp32 end to end; vLLM and PyTorch order the sums differently (fused qkv, its attention kernel).
LOGPROB_TOL = 1e-4


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vllm_e2e"))
    vllm_e2e.build_fixtures(root)
    return root, vllm_e2e.peft_reference(root)


def run_backend(root: str, backend: str) -> dict:
    env = dict(os.environ)
    # The engine runs from the work folder: no in-tree lora_kernels/ on its path.
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "vllm_e2e.py"), root, backend],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"the vLLM engine ({backend}) exited with {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    with open(os.path.join(root, f"{backend}.json")) as f:
        result = json.load(f)
    result["log"] = proc.stdout + proc.stderr
    return result


def describe(report: dict) -> str:
    return (
        f"{report['steps']} steps compared, largest logprob difference {report['max_logprob_diff']:.2e} "
        f"(base rows {report['base_max_logprob_diff']:.2e}), ties {report['ties']}, mismatches {report['mismatches']}"
    )


def test_vllm_engine_on_lora_kernels_equals_peft(work):
    root, reference = work
    result = run_backend(root, "lora_kernels")
    # Our plugin switched the wrapper in the engine's worker process, and our ops ran there.
    assert "lora_kernels" in result["log"] and "is active" in result["log"]
    counts = vllm_e2e.read_call_counts(os.path.join(root, "calls"))
    assert counts, "no process wrote lora_kernels call counts: the wrapper never ran"
    assert str(result["script_pid"]) not in counts, "the wrapper ran in the script, not in vLLM's worker"
    total = {}
    for per_process in counts.values():
        for name, n in per_process.items():
            total[name] = total.get(name, 0) + n
    for method in ("update_metadata", "add_lora_linear", "add_lora_embedding", "add_lora_logits"):
        assert total.get(method, 0) > 0, f"{method} was never called: {total}"
    report = vllm_e2e.compare(reference, result["rows"], LOGPROB_TOL)
    print(f"\nvLLM on lora_kernels vs PEFT: {describe(report)}; calls {total}")
    assert not report["mismatches"], describe(report)
    assert report["steps"] >= len(reference) * vllm_e2e.MAX_TOKENS // 2


def test_report_vllm_own_cpu_wrapper(work):
    """Not asserted: how vLLM's own CPU wrapper does on the same batch."""
    root, reference = work
    result = run_backend(root, "vllm")
    report = vllm_e2e.compare(reference, result["rows"], LOGPROB_TOL)
    with open(os.path.join(root, "vllm_own_report.json"), "w") as f:
        json.dump(report, f)
    print(f"\nREPORT vLLM's own CPU wrapper vs PEFT (not asserted): {describe(report)}")
