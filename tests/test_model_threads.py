"""MultiLoRAModel from several threads: the thread-safety contract of the README, tested with
real threads (tiny float64 Llama, adapters saved by PEFT).

Where interleaving matters the threads are put in step with events and barriers set from forward
hooks (deterministic); the free-running parts are bounded loops. Every wait has a timeout, so a
bug fails a test instead of hanging it. The whole file runs in well under a minute.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

F = pytest.importorskip("helpers.hf_fixtures")  # skips the module without peft / transformers

from lora_kernels.model import MultiLoRAModel  # noqa: E402
from lora_kernels.peft import PeftAdapterError, load_peft_adapter  # noqa: E402

WAIT = 20.0  # seconds; only reached when something is broken
DT = torch.float64


@pytest.fixture(scope="module", autouse=True)
def _versions():
    F.check_versions()


@pytest.fixture(scope="module")
def ads(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("thread_adapters"))
    return F.make_adapters("llama", root, ["plain", "rs8", "patterns", "bias"])


def row_errors(out: torch.Tensor, ref: torch.Tensor) -> list[float]:
    return [((o - r).norm() / r.norm()).item() for o, r in zip(out.double(), ref.double())]


def assert_same_rows(out, ref, what, tol=1e-12):
    errs = row_errors(out, ref)
    assert max(errs) <= tol, f"{what}: per-row relative errors {['%.2e' % e for e in errs]}"


def run_threads(targets) -> list[BaseException]:
    """Start one thread per callable, join them all (bounded), return what they raised."""
    errors: list[BaseException] = []

    def wrap(fn):
        def body():
            try:
                fn()
            except BaseException as e:  # reported by the test, not lost in the thread
                errors.append(e)

        return body

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (deadlock?)"
    return errors


def once_per_thread(fn):
    """A forward pre-hook that runs ``fn`` the first time each thread reaches the module."""
    seen = threading.local()

    def hook(module, args):
        if not getattr(seen, "done", False):
            seen.done = True
            fn()

    return hook


# --- forwards concurrently with forwards ---------------------------------------------------------


def test_concurrent_forwards_keep_their_own_adapter_names(ads):
    """Two forwards and a generate in three threads, all inside the model at once (a barrier in
    the first decoder layer), then free-running loops: every output equals the same call made
    alone. The per-forward row state used to be shared, and one thread's rows served the other's."""
    model = MultiLoRAModel(F.tiny_llama(DT), {n: ads[n] for n in ("plain", "rs8", "bias")})
    rows1 = ["plain", "rs8", "__base__"]
    rows2 = ["bias", "__base__", "plain", "rs8", "bias"]
    rows3 = ["rs8", "bias"]
    ids1, ids2, ids3 = F.input_ids(3, 6, seed=1), F.input_ids(5, 4, seed=2), F.input_ids(2, 3, seed=3)
    gen_kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    ref1 = model(input_ids=ids1, adapter_names=rows1).logits
    ref2 = model(input_ids=ids2, adapter_names=rows2).logits
    ref3 = model.generate(input_ids=ids3, adapter_names=rows3, **gen_kw)
    # the rows really differ by adapter (else a mix-up would go unseen)
    alone = model(input_ids=ids1, adapter_names=["rs8", "plain", "bias"]).logits
    assert min(row_errors(alone, ref1)) > 1e-2

    barrier = threading.Barrier(3, timeout=WAIT)
    handle = model.base_model.model.layers[0].register_forward_pre_hook(once_per_thread(barrier.wait))
    got = {}

    def fwd(key, ids, rows, n):
        def body():
            for i in range(n):
                got[(key, i)] = model(input_ids=ids, adapter_names=rows).logits

        return body

    def gen(n):
        def body():
            for i in range(n):
                got[("gen", i)] = model.generate(input_ids=ids3, adapter_names=rows3, **gen_kw)

        return body

    try:
        errors = run_threads([fwd("a", ids1, rows1, 25), fwd("b", ids2, rows2, 25), gen(4)])
    finally:
        handle.remove()
    assert errors == []
    for i in range(25):
        assert_same_rows(got[("a", i)], ref1, f"thread a, call {i}")
        assert_same_rows(got[("b", i)], ref2, f"thread b, call {i}")
    for i in range(4):
        assert torch.equal(got[("gen", i)], ref3), f"generate, call {i}"


def test_nested_forward_restores_the_outer_rows(ads):
    """A forward started inside another one (here from a hook) serves its own rows, and the outer
    forward goes on with its own afterwards."""
    model = MultiLoRAModel(F.tiny_llama(DT), {n: ads[n] for n in ("plain", "rs8")})
    outer_rows, inner_rows = ["plain", "__base__", "rs8"], ["rs8", "plain"]
    ids_o, ids_i = F.input_ids(3, 5, seed=4), F.input_ids(2, 3, seed=5)
    ref_o = model(input_ids=ids_o, adapter_names=outer_rows).logits
    ref_i = model(input_ids=ids_i, adapter_names=inner_rows).logits
    inner = []

    def call_inner():
        inner.append(model(input_ids=ids_i, adapter_names=inner_rows).logits)

    handle = model.base_model.model.layers[1].register_forward_pre_hook(once_per_thread(call_inner))
    try:
        out = model(input_ids=ids_o, adapter_names=outer_rows).logits
    finally:
        handle.remove()
    assert_same_rows(inner[0], ref_i, "inner forward")
    assert_same_rows(out, ref_o, "outer forward")


# --- adapter changes concurrently with forwards -------------------------------------------------


class Paused:
    """Runs ``call()`` (a forward or generate of ``model``) in a thread that stops before the
    second decoder layer's ``nth`` call (the first layer has used every adapter by then) until
    released."""

    def __init__(self, model, call, nth=1):
        self.midway, self.go = threading.Event(), threading.Event()
        self.out: list = []
        self.errors: list[BaseException] = []
        calls = []

        def pause(module, args):
            if threading.current_thread() is self.thread:
                calls.append(1)
                if len(calls) == nth:
                    self.midway.set()
                    assert self.go.wait(WAIT)

        self.handle = model.base_model.model.layers[1].register_forward_pre_hook(pause)

        def body():
            try:
                self.out.append(call())
            except BaseException as e:
                self.errors.append(e)

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()
        assert self.midway.wait(WAIT), "the call never reached the second layer"

    def finish(self):
        self.go.set()
        self.thread.join(WAIT)
        self.handle.remove()
        assert not self.thread.is_alive()
        assert self.errors == []
        return self.out[0]


def paused_forward(model, ids, rows):
    return Paused(model, lambda: model(input_ids=ids, adapter_names=rows).logits)


def _assert_pools_hold_exactly_the_loaded_adapters(model):
    live = sorted(model._state.slots.values())
    for name, layer in model.lora_layers.items():
        pool = layer.pool
        assert pool.used_slots == live, name
        for slot in set(range(pool.max_adapters)) - set(live):
            assert int(pool.ranks[slot]) == 0 and not pool.lora_a[slot].any() and not pool.lora_b[slot].any(), name


def test_remove_and_readd_during_a_forward_keeps_the_old_adapter(ads):
    """While a forward that serves B is between two layers, another thread removes B, adds a
    different adapter under the name B (more slots and a bias: every pool is rebuilt), and adds C
    (new modules, a higher rank). The forward ends with the old B on its B rows, exactly as if
    nothing had happened; the next forward serves the new B; the old slot is freed once the
    forward that read it has ended."""
    model = MultiLoRAModel(F.tiny_llama(DT), {"A": ads["plain"], "B": ads["rs8"]})
    rows = ["B", "A", "__base__", "B"]
    ids = F.input_ids(len(rows), 5, seed=6)
    ref_old = model(input_ids=ids, adapter_names=rows).logits
    old_slot = model._state.slots["B"]

    pools_before = {n: layer.pool for n, layer in model.lora_layers.items()}
    paused = paused_forward(model, ids, rows)
    model.remove_adapter("B")
    model.add_adapter("B", ads["bias"])
    model.add_adapter("C", ads["patterns"])
    assert all(model.lora_layers[n].pool is not p for n, p in pools_before.items())  # all rebuilt
    out = paused.finish()
    assert_same_rows(out, ref_old, "the forward in flight during remove / re-add")
    assert torch.equal(out[2], ref_old[2])  # the base row stays bit-exact
    assert model._state.slots["B"] != old_slot  # the slot the paused forward read was not reused

    # afterwards: the new B, and the old slot is free and zero in every pool
    rows_new = ["B", "A", "C", "__base__"]
    fresh = MultiLoRAModel(F.tiny_llama(DT), {"A": ads["plain"], "B": ads["bias"], "C": ads["patterns"]})
    ref_new = fresh(input_ids=ids, adapter_names=rows_new).logits
    assert_same_rows(model(input_ids=ids, adapter_names=rows_new).logits, ref_new, "after the change", 1e-10)
    _assert_pools_hold_exactly_the_loaded_adapters(model)
    model.add_adapter("D", ads["rs8"])
    assert model._state.slots["D"] == old_slot  # reused once nothing reads it


def test_generate_keeps_its_adapters_for_every_step(ads):
    """A generate is many forwards: an adapter removed and re-added between two of its decode
    steps still serves that generate's rows at every later step (same scores, same tokens)."""
    model = MultiLoRAModel(F.tiny_llama(DT), {"A": ads["plain"], "B": ads["rs8"]})
    rows = ["B", "A", "B"]
    ids = F.input_ids(len(rows), 4, seed=11)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    ref = model.generate(input_ids=ids, adapter_names=rows, **kw)
    paused = Paused(model, lambda: model.generate(input_ids=ids, adapter_names=rows, **kw), nth=3)
    model.remove_adapter("B")
    model.add_adapter("B", ads["bias"])
    out = paused.finish()
    assert len(out.logits) == len(ref.logits) == 5
    for step, (got, want) in enumerate(zip(out.logits, ref.logits)):
        assert_same_rows(got, want, f"decode step {step}")
    assert torch.equal(out.sequences, ref.sequences)


def test_fixed_capacity_counts_slots_still_read_by_a_forward(ads):
    """With max_adapters fixed, the slot of an adapter removed during a forward stays taken (its
    weights are still being read) until that forward ends: adding is refused meanwhile."""
    model = MultiLoRAModel(F.tiny_llama(DT), {"A": ads["plain"], "B": ads["rs8"]}, max_adapters=2, max_rank=16)
    rows = ["B", "A"]
    ids = F.input_ids(2, 4, seed=7)
    ref = model(input_ids=ids, adapter_names=rows).logits
    paused = paused_forward(model, ids, rows)
    model.remove_adapter("B")
    try:
        with pytest.raises(
            PeftAdapterError,
            match=r"all max_adapters = 2 slots are in use \(1 by removed adapters that forwards in flight still read\)",
        ):
            model.add_adapter("C", ads["patterns"])
    finally:
        out = paused.finish()
    assert_same_rows(out, ref, "the forward in flight")
    model.add_adapter("C", ads["patterns"])
    assert sorted(model._state.slots.values()) == [0, 1]


def test_unload_is_refused_while_a_forward_is_in_flight(ads):
    model = MultiLoRAModel(F.tiny_llama(DT), {"A": ads["plain"]})
    ids = F.input_ids(2, 4, seed=8)
    paused = paused_forward(model, ids, ["A", "__base__"])
    try:
        with pytest.raises(RuntimeError, match=r"unload: 1 forward\(s\) are still running on this model"):
            model.unload()
    finally:
        paused.finish()
    model.unload()


def test_add_remove_cycles_against_running_forwards(ads):
    """Free-running: two threads serve batches that use B while a third swaps B between two
    adapters (waiting for a few forwards after each swap) and adds / removes another. Every row
    is exactly the old B, the new B (whichever B was when that forward started) or, for other
    rows, their own adapter; a forward that starts while B is absent is refused by name before
    any compute. Never a mix."""
    a_plain = ads["plain"]
    b_versions = [load_peft_adapter(ads["rs8"]), load_peft_adapter(ads["bias"])]
    x_adapter = load_peft_adapter(ads["patterns"])
    model = MultiLoRAModel(F.tiny_llama(DT), {"A": a_plain, "B": b_versions[0]})
    rows = ["B", "A", "__base__", "B"]
    ids = F.input_ids(len(rows), 4, seed=9)
    refs = [
        MultiLoRAModel(F.tiny_llama(DT), {"A": a_plain, "B": b})(input_ids=ids, adapter_names=rows).logits
        for b in b_versions
    ]
    assert min(row_errors(refs[0][[0, 3]], refs[1][[0, 3]])) > 1e-2
    results, refused = [], []
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                results.append(model(input_ids=ids, adapter_names=rows).logits)
            except ValueError as e:
                assert "unknown adapter name(s) ['B']" in str(e)
                refused.append(1)
                time.sleep(0.001)

    def mutate():
        try:
            for i in range(12):
                model.remove_adapter("B")
                model.add_adapter("B", b_versions[(i + 1) % 2])
                if i % 3 == 0:
                    model.add_adapter("X", x_adapter)
                    model.remove_adapter("X")
                n, deadline = len(results), time.monotonic() + WAIT
                while len(results) < n + 3 and time.monotonic() < deadline:
                    time.sleep(0.001)  # let some forwards run with this B
        finally:
            done.set()

    errors = run_threads([serve, serve, mutate])
    assert errors == []
    seen = set()
    for k, out in enumerate(results):
        for i in (1, 2):
            assert row_errors(out[i : i + 1], refs[0][i : i + 1])[0] <= 1e-10, f"result {k}, row {i}"
        errs = [max(row_errors(out[[0, 3]], ref[[0, 3]])) for ref in refs]
        assert min(errs) <= 1e-10, f"result {k}: the B rows match neither B (errors {errs})"
        seen.add(errs.index(min(errs)))
    assert seen == {0, 1} and len(results) >= 36
    _assert_pools_hold_exactly_the_loaded_adapters(model)


def test_copies_of_the_model_get_their_own_lock(ads):
    """The registry lock is not copied: copy.deepcopy and torch.save / torch.load still work,
    each copy with a lock of its own and no forward in flight."""
    import copy
    import io

    model = MultiLoRAModel(F.tiny_llama(DT), {"A": ads["plain"], "B": ads["rs8"]})
    ids, rows = F.input_ids(2, 4, seed=10), ["B", "A"]
    ref = model(input_ids=ids, adapter_names=rows).logits
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        assert copied._state.lock is not model._state.lock
        assert torch.equal(copied(input_ids=ids, adapter_names=rows).logits, ref)
        copied.remove_adapter("B")  # a copy runs no forward: the slot is freed at once
        assert copied.adapter_names == ["A"] and model.adapter_names == ["A", "B"]
