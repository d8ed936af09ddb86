"""LoRAKernelsPunicaWrapper method by method, against a float64 reference, in vLLM's environment.

The wrapper gets vLLM's own LoRAMapping and stacks shaped as vLLM makes them ([N, 1, R, H_in] and
[N, 1, H_out, R], zero-padded, the scale folded into B). Rows of slot -1 (base requests) must come
back bit for bit; the others must carry the reference update. Plus the plugin switch, the version
and platform refusals, and the installed entry point.
"""

from __future__ import annotations

import importlib.metadata

import pytest

pytest.importorskip("vllm", reason="runs in the vLLM environment: make test-vllm")

import torch  # noqa: E402
from vllm.lora.layers import LoRAMapping  # noqa: E402

from lora_kernels.integrations import vllm as lkv  # noqa: E402

N, R, H_IN = 4, 8, 40
SLOT_IDS = [3, None, 7, 5]  # lora id per slot: slot 1 is free
# lora id per token (0 = no adapter) over 3 requests of 4, 3 and 5 tokens
TOKEN_IDS = [3] * 4 + [0] * 3 + [5] * 5
PROMPT_IDS = [3, 0, 5]
TOKEN_SLOTS = [0] * 4 + [-1] * 3 + [3] * 5
PROMPT_SLOTS = [0, -1, 3]


def wrapper(max_tokens: int = 64) -> lkv.LoRAKernelsPunicaWrapper:
    class Cfg:
        max_loras = N

    w = lkv.LoRAKernelsPunicaWrapper(max_tokens, 8, "cpu", lora_config=Cfg())
    w.update_metadata(LoRAMapping(TOKEN_IDS, PROMPT_IDS, is_prefill=True), SLOT_IDS, N, 100)
    return w


def stacks(h_in: int, h_out: int, seed: int, dtype=torch.float32):
    """vLLM-shaped stacks with adapters of different ranks (zero padding past each)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(N, 1, R, h_in, dtype=dtype)
    b = torch.zeros(N, 1, h_out, R, dtype=dtype)
    for slot, rank in enumerate([8, 0, 3, 5]):
        a[slot, 0, :rank] = torch.randn(rank, h_in, generator=g).to(dtype)
        b[slot, 0, :, :rank] = torch.randn(h_out, rank, generator=g).to(dtype)
    return a, b


def ref_update(x, a, b, slots):
    """float64: (x[t] @ A[a].T) @ B[a].T per row, 0 for slot -1."""
    out = torch.zeros(x.shape[0], b.shape[2], dtype=torch.float64)
    for t, s in enumerate(slots):
        if s >= 0:
            out[t] = (x[t].double() @ a[s, 0].double().T) @ b[s, 0].double().T
    return out


def check(d, d_ref, slots):
    rows = torch.tensor(slots) >= 0
    assert torch.equal(d[~rows], torch.zeros_like(d[~rows])), "rows of slot -1 were written"
    err = (d[rows].double() - d_ref[rows]).norm() / d_ref[rows].norm()
    assert err < 1e-5, err


def per_slice_add_lora_slices(y, x, lora_a, lora_b, scaling, indices=None, **kwargs):
    """DESIGN §2's add_lora_slices, composed of add_lora on each column slice (its definition)."""
    import lora_kernels as lk

    calls.append(len(lora_a))
    offset = 0
    for a, b, s in zip(lora_a, lora_b, scaling):
        lk.add_lora(y[:, offset:offset + b.shape[1]], x, a, b, s, indices, **kwargs)
        offset += b.shape[1]
    return y


calls: list[int] = []


@pytest.fixture(params=["installed", "add_lora_slices"])
def slices_path(request, monkeypatch):
    """The wrapper's fused-layer path: lk.add_lora_slices when the build has it, else per slice.
    Both are run: the second through add_lora_slices's definition where the build lacks it."""
    import lora_kernels as lk

    if request.param == "add_lora_slices" and not hasattr(lk, "add_lora_slices"):
        monkeypatch.setattr(lk, "add_lora_slices", per_slice_add_lora_slices, raising=False)
    calls.clear()
    return request.param


def test_add_lora_linear_fused_slices_and_base_rows(slices_path):
    import lora_kernels as lk

    w = wrapper()
    widths = (24, 8, 8)  # a fused qkv: q wider than k and v
    pairs = [stacks(H_IN, h, seed=i) for i, h in enumerate(widths)]
    x = torch.randn(len(TOKEN_SLOTS), H_IN)
    y = torch.randn(len(TOKEN_SLOTS), sum(widths))
    y0 = y.clone()
    w.add_lora_linear(y, x, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), 1.0, widths)
    d_ref = torch.cat([ref_update(x, a, b, TOKEN_SLOTS) for a, b in pairs], dim=1)
    check(y - y0, d_ref, TOKEN_SLOTS)
    assert w.calls["add_lora_linear"] == 1
    if slices_path == "add_lora_slices" and lk.add_lora_slices is per_slice_add_lora_slices:
        assert calls == [3]  # one call for the three slices


def test_add_lora_linear_scale_and_overwrite():
    w = wrapper()
    a, b = stacks(H_IN, 16, seed=3)
    x = torch.randn(len(TOKEN_SLOTS), H_IN)
    y = torch.randn(len(TOKEN_SLOTS), 16)
    y0 = y.clone()
    w.add_lora_linear(y, x, (a,), (b,), 0.5, (16,))
    check(y - y0, 0.5 * ref_update(x, a, b, TOKEN_SLOTS), TOKEN_SLOTS)
    # add_inputs=False (vLLM's dual-stream path): y = update, zero on base rows
    w.add_lora_linear(y, x, (a,), (b,), 1.0, (16,), add_inputs=False)
    check(y, ref_update(x, a, b, TOKEN_SLOTS), TOKEN_SLOTS)


def test_rows_past_the_batch_are_untouched():
    """A batch padded past the mapping (as for a CUDA graph): the extra rows read slot -1."""
    w = wrapper()
    a, b = stacks(H_IN, 16, seed=4)
    T = len(TOKEN_SLOTS)
    x = torch.randn(T + 5, H_IN)
    y = torch.randn(T + 5, 16)
    y0 = y.clone()
    w.add_lora_linear(y, x, (a,), (b,), 1.0, (16,))
    slots = TOKEN_SLOTS + [-1] * 5
    check(y - y0, ref_update(x, a, b, slots), slots)


def test_lora_dtype_other_than_the_activations():
    w = wrapper()
    a, b = stacks(H_IN, 16, seed=5, dtype=torch.float64)
    x = torch.randn(len(TOKEN_SLOTS), H_IN)
    y = torch.randn(len(TOKEN_SLOTS), 16)
    y0 = y.clone()
    w.add_lora_linear(y, x, (a,), (b,), 1.0, (16,))
    check(y - y0, ref_update(x, a, b, TOKEN_SLOTS), TOKEN_SLOTS)


def test_shrink_then_expand():
    w = wrapper()
    widths = (16, 12)
    pairs = [stacks(H_IN, h, seed=10 + i) for i, h in enumerate(widths)]
    x = torch.randn(len(TOKEN_SLOTS), H_IN)
    buf = tuple(torch.zeros(len(TOKEN_SLOTS), R) for _ in widths)
    w.add_shrink(buf, x, tuple(p[0] for p in pairs), 2.0)
    y = torch.randn(len(TOKEN_SLOTS), 4 + sum(widths))
    y0 = y.clone()
    w.add_expand(y, buf, tuple(p[1] for p in pairs), widths, offset_start=4)
    d_ref = torch.cat([torch.zeros(len(TOKEN_SLOTS), 4, dtype=torch.float64)]
                      + [2.0 * ref_update(x, a, b, TOKEN_SLOTS) for a, b in pairs], dim=1)
    rows = torch.tensor(TOKEN_SLOTS) >= 0
    assert torch.equal(y[:, :4], y0[:, :4])
    check((y - y0)[:, 4:], d_ref[:, 4:], TOKEN_SLOTS)
    assert torch.equal(buf[0][~rows], torch.zeros_like(buf[0][~rows]))


def test_add_lora_embedding():
    """vLLM hands over x = the lora_embedding_A rows it gathered for each token ([T, R])."""
    w = wrapper()
    _, b = stacks(H_IN, 32, seed=6)
    x = torch.randn(len(TOKEN_SLOTS), R)
    y = torch.randn(len(TOKEN_SLOTS), 32)
    y0 = y.clone()
    w.add_lora_embedding(y, x, b, add_input=True)
    d_ref = torch.zeros(len(TOKEN_SLOTS), 32, dtype=torch.float64)
    for t, s in enumerate(TOKEN_SLOTS):
        if s >= 0:
            d_ref[t] = x[t].double() @ b[s, 0].double().T
    check(y - y0, d_ref, TOKEN_SLOTS)


def test_add_lora_logits_per_request_and_padded_vocab():
    w = wrapper()
    vocab = 50
    a, b = stacks(H_IN, vocab, seed=7)
    x = torch.randn(len(PROMPT_SLOTS), H_IN)
    y = torch.randn(len(PROMPT_SLOTS), vocab + 14)  # logits padded past the vocabulary
    y0 = y.clone()
    w.add_lora_logits(y, x, a, b, 1.0)
    assert torch.equal(y[:, vocab:], y0[:, vocab:])
    check((y - y0)[:, :vocab], ref_update(x, a, b, PROMPT_SLOTS), PROMPT_SLOTS)


def test_apply_lora_full_linear():
    w = wrapper()
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(N, 1, 12, H_IN, generator=g)
    bias = torch.randn(N, 12, generator=g)
    enabled = torch.tensor([True, False, False, True])
    x = torch.randn(len(PROMPT_SLOTS), H_IN)
    y = torch.randn(len(PROMPT_SLOTS), 12)
    y0 = y.clone()
    w.apply_lora_full_linear(y, x, weight, bias, enabled)
    assert torch.equal(y[1], y0[1])  # base request
    for row, slot in ((0, 0), (2, 3)):
        expected = x[row].double() @ weight[slot, 0].double().T + bias[slot].double()
        assert torch.allclose(y[row].double(), expected, rtol=1e-5, atol=1e-5)


def test_register_switches_the_platform_only_when_asked(monkeypatch):
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    monkeypatch.setattr(platform_cls, "get_punica_wrapper", platform_cls.get_punica_wrapper)
    monkeypatch.delattr(platform_cls, "_lora_kernels_patched", raising=False)
    own = current_platform.get_punica_wrapper()
    monkeypatch.delenv("LORA_KERNELS_VLLM", raising=False)
    lkv.register()
    assert current_platform.get_punica_wrapper() == own
    monkeypatch.setenv("LORA_KERNELS_VLLM", "1")
    lkv.register()
    lkv.register()  # vLLM may load plugins more than once
    assert current_platform.get_punica_wrapper() == "lora_kernels.integrations.vllm.LoRAKernelsPunicaWrapper"
    from vllm.lora.punica_wrapper import get_punica_wrapper

    class Cfg:
        max_loras = 2

    assert isinstance(get_punica_wrapper(16, 4, device="cpu", lora_config=Cfg()), lkv.LoRAKernelsPunicaWrapper)


def test_refuses_an_untested_vllm_version(monkeypatch):
    monkeypatch.setenv("LORA_KERNELS_VLLM", "1")
    monkeypatch.setattr(lkv.vllm, "__version__", "0.31.2")
    with pytest.raises(RuntimeError, match=r"vLLM 0\.31\.2 is installed and only vLLM 0\.32\.x was tested"):
        lkv.register()


def test_refuses_a_platform_other_than_cpu_and_cuda(monkeypatch):
    from vllm.platforms import current_platform

    monkeypatch.setenv("LORA_KERNELS_VLLM", "1")
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    with pytest.raises(RuntimeError, match=r"CPU and CUDA platforms only, but this process runs on vLLM's"):
        lkv.register()


def test_entry_point_is_installed():
    points = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert {p.name: p.value for p in points}.get("lora_kernels") == "lora_kernels.integrations.vllm:register"
