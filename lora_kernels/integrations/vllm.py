"""lora_kernels as vLLM's LoRA backend: a punica wrapper whose every method runs on our ops.

vLLM routes all of its LoRA math through one object per model, the *punica wrapper*, whose class
the platform names (``Platform.get_punica_wrapper()``). :class:`LoRAKernelsPunicaWrapper` is that
object, built on ``lora_kernels.add_lora`` / ``bgmv_shrink`` / ``bgmv_expand``. It is switched on
without editing vLLM: our package declares a ``vllm.general_plugins`` entry point
(:func:`register`), which vLLM runs in each of its processes; when ``LORA_KERNELS_VLLM=1`` is set,
it makes the platform name our wrapper. Without the switch it does nothing.

How vLLM (0.32) calls the wrapper, checked in its sources:

- stacks per layer and slice: ``lora_a [max_loras, 1, R, H_in]``, ``lora_b [max_loras, 1, H_out,
  R]``, zero-padded to ``R = max_lora_rank``, in ``lora_dtype``;
- vLLM folds each adapter's scale into ``lora_b`` when it loads it and passes ``scale = 1.0``;
- slot ``-1`` means "no adapter" (a base request): such rows are left untouched here;
- ``token_lora_indices`` gives the slot of every token, ``sampler_indices`` the slot of every
  sampled row (for the logits).

Every op is called with per-token slot indices, never with data-dependent shapes or a host sync:
the index buffer past the current batch is set to ``-1`` once per step, so a batch padded by vLLM
(CUDA graphs) is served by the same calls. This module imports vLLM: only vLLM's plugin loader and
its platform (by the class's qualified name) import it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

import vllm
from vllm.lora.punica_wrapper.punica_base import PunicaWrapperBase

import lora_kernels as lk

__all__ = ["LoRAKernelsPunicaWrapper", "register", "ENV_SWITCH", "TESTED_VLLM"]

# Under vLLM's logger, so that the line comes out with vLLM's own format and level.
logger = logging.getLogger("vllm.plugins.lora_kernels")

#: The one switch: set to 1 to serve vLLM's LoRA layers with lora_kernels.
ENV_SWITCH = "LORA_KERNELS_VLLM"
#: Testing aid: a folder where each process using the wrapper writes its call counts (JSON).
ENV_CALL_LOG = "LORA_KERNELS_VLLM_CALL_LOG"
#: vLLM releases whose wrapper interface this module was checked against ("major.minor").
TESTED_VLLM = ("0.32",)
QUALNAME = f"{__name__}.LoRAKernelsPunicaWrapper"


def switch_on() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip() not in ("", "0")


def check_vllm_version(version: str) -> None:
    """Refuse a vLLM release outside the tested range, with a message that says what to do."""
    if ".".join(version.split(".")[:2]) not in TESTED_VLLM:
        raise RuntimeError(
            f"lora_kernels {lk.__version__}: {ENV_SWITCH}=1 asks to serve vLLM's LoRA layers with "
            f"lora_kernels, but vLLM {version} is installed and only vLLM "
            f"{', '.join(v + '.x' for v in TESTED_VLLM)} was tested. Install a tested vLLM, or unset "
            f"{ENV_SWITCH} to use vLLM's own LoRA ops."
        )


def register() -> None:
    """The ``vllm.general_plugins`` entry point, run by vLLM in each of its processes.

    With ``LORA_KERNELS_VLLM=1``: checks the vLLM version and the platform, then makes the platform
    name :class:`LoRAKernelsPunicaWrapper` as its punica wrapper. Otherwise does nothing. Safe to
    run more than once in a process.
    """
    if not switch_on():
        return
    check_vllm_version(vllm.__version__)
    from vllm.platforms import current_platform

    if not (current_platform.is_cpu() or current_platform.is_cuda()):
        raise RuntimeError(
            f"lora_kernels: {ENV_SWITCH}=1 serves vLLM's LoRA layers on its CPU and CUDA platforms "
            f"only, but this process runs on vLLM's {type(current_platform).__name__}. Unset "
            f"{ENV_SWITCH} to use that platform's own LoRA ops."
        )
    platform_cls = type(current_platform)
    if getattr(platform_cls, "_lora_kernels_patched", False):
        return
    platform_cls.get_punica_wrapper = classmethod(lambda cls: QUALNAME)
    platform_cls._lora_kernels_patched = True


class LoRAKernelsPunicaWrapper(PunicaWrapperBase):
    """vLLM's punica wrapper on lora_kernels' ops (``LORA_KERNELS_VLLM=1`` selects it)."""

    _announced = False

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device: torch.device | str, **kwargs):
        PunicaWrapperBase.__init__(self, max_num_batched_tokens, max_batches, device)
        # Rows past the current batch read slot -1 (see update_metadata).
        self._token_lora_indices.fill_(-1)
        self._sampler_indices.fill_(-1)
        # The per-slot fp32 scale our ops take: all ones, as vLLM folds each adapter's scale into
        # lora_b. Made here, not per call, so a traced or captured forward sees one tensor.
        lora_config = kwargs.get("lora_config")
        num_slots = lora_config.max_loras if lora_config is not None else 0
        self._ones_vec = torch.ones(num_slots, dtype=torch.float32, device=device)
        self.calls: dict[str, int] = {}
        self._call_log = os.environ.get(ENV_CALL_LOG) or None
        if not LoRAKernelsPunicaWrapper._announced:
            LoRAKernelsPunicaWrapper._announced = True
            logger.info(
                "lora_kernels %s is active: vLLM %s runs its LoRA layers on lora_kernels' ops (%s=1, "
                "device %s).", lk.__version__, vllm.__version__, ENV_SWITCH, device,
            )

    # -- metadata ------------------------------------------------------------------------------
    def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
        PunicaWrapperBase.update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        self._token_lora_indices[self.indices_len[0]:].fill_(-1)
        self._sampler_indices[self.indices_len[1]:].fill_(-1)
        self._count("update_metadata")

    def _count(self, name: str) -> None:
        if torch.compiler.is_compiling():  # counted in eager mode only
            return
        self.calls[name] = self.calls.get(name, 0) + 1
        if self._call_log:  # testing aid: a small file rewritten on each call
            self._write_call_log()

    def _write_call_log(self) -> None:
        os.makedirs(self._call_log, exist_ok=True)
        path = os.path.join(self._call_log, f"calls-{os.getpid()}-{id(self)}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.calls, f)
        os.replace(path + ".tmp", path)

    def _token_indices(self, rows: int) -> torch.Tensor:
        return self._token_lora_indices[:rows]

    def _ones(self, num_slots: int, scale: float, device: torch.device) -> torch.Tensor:
        """The per-slot fp32 scaling vector: ``scale`` for every slot."""
        vec = self._ones_vec
        if vec.shape[0] != num_slots or vec.device != torch.device(device):
            vec = torch.ones(num_slots, dtype=torch.float32, device=device)
        return vec if scale == 1.0 else vec * scale

    # -- the ops -------------------------------------------------------------------------------
    def _add_lora(self, y, x, lora_a, lora_b, scale, indices):
        """y += scale * (x @ lora_a[a].T) @ lora_b[a].T per row, a = indices[row]; -1 rows untouched."""
        a, b = _stack3(lora_a), _stack3(lora_b)
        scaling = self._ones(a.shape[0], scale, a.device)
        if x.dtype == a.dtype and y.dtype == a.dtype:
            lk.add_lora(y, x, a, b, scaling, indices)
        else:  # lora_dtype differs from the activations: compute in lora_dtype, round into y once
            delta = torch.zeros(y.shape, dtype=a.dtype, device=y.device)
            lk.add_lora(delta, x.to(a.dtype), a, b, scaling, indices)
            y += delta.to(y.dtype)

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *,
                        buffer=None, **kwargs):
        """y[:, slice i] += scale * (x @ A_i[a].T) @ B_i[a].T for every slice (fused qkv, gate_up)."""
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        self._count("add_lora_linear")
        x = x.view(-1, x.shape[-1])
        y2 = y.view(-1, y.shape[-1])
        if not kwargs.get("add_inputs", True):
            y2.zero_()
        indices = self._token_indices(x.shape[0])
        a_list = [_stack3(a) for a in lora_a_stacked]
        b_list = [_stack3(b) for b in lora_b_stacked]
        if len(a_list) > 1 and all(t.dtype == x.dtype == y2.dtype for t in a_list + b_list):
            # Every slice of a fused layer (qkv, gate_up) in one call (DESIGN §2).
            scaling = self._ones(a_list[0].shape[0], scale, x.device)
            lk.add_lora_slices(y2[:, : sum(output_slices)], x, a_list, b_list, [scaling] * len(a_list), indices)
            return y
        # A single slice, or a LoRA dtype other than the activations' (each _add_lora casts):
        # one add_lora per slice, each writing its column slice of y in place.
        offset = 0
        for a, b, width in zip(a_list, b_list, output_slices):
            self._add_lora(y2[:, offset:offset + width], x, a, b, scale, indices)
            offset += width
        return y

    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs):
        """y[i] += scale * x @ A_i[a].T (fp32 [T, R] buffers); rows of slot -1 get nothing."""
        self._count("add_shrink")
        x = x.view(-1, x.shape[-1])
        indices = self._token_indices(x.shape[0])
        for out, a in zip(y, lora_a_stacked):
            a = _stack3(a)
            v = lk.bgmv_shrink(x if x.dtype == a.dtype else x.to(a.dtype), a, indices)
            out = out.view(-1, out.shape[-1])
            out[:, : v.shape[1]].add_(v.to(out.dtype), alpha=scale)
        return y

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0, add_inputs=True, **kwargs):
        """y[:, slice i] += x[i] @ B_i[a].T, slices side by side from ``offset_start``."""
        self._count("add_expand")
        y2 = y.view(-1, y.shape[-1])
        offset = offset_start
        for v, b, width in zip(x, lora_b_stacked, output_slices):
            out = y2[:, offset:offset + width]
            if not add_inputs:
                out.zero_()
            self._expand(out, v, _stack3(b))
            offset += width
        return y

    def _expand(self, y, v, b):
        v = v.view(-1, v.shape[-1])
        indices = self._token_indices(v.shape[0])
        acc = torch.float64 if b.dtype == torch.float64 else torch.float32
        scaling = self._ones(b.shape[0], 1.0, b.device)
        if y.dtype == b.dtype:
            lk.bgmv_expand(y, v.to(acc), b, indices, scaling)
        else:
            delta = torch.zeros(y.shape, dtype=b.dtype, device=y.device)
            lk.bgmv_expand(delta, v.to(acc), b, indices, scaling)
            y += delta.to(y.dtype)

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs):
        """y += x @ B[a].T, where vLLM already gathered x = lora_embedding_A rows of each token."""
        self._count("add_lora_embedding")
        y2 = y.view(-1, y.shape[-1])
        if not add_inputs:
            y2.zero_()
        self._expand(y2, x, _stack3(lora_b_stacked))
        return y

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs):
        """logits += scale * (x @ A[a].T) @ B[a].T, a = the slot of each sampled row."""
        self._count("add_lora_logits")
        y2 = y.view(-1, y.shape[-1])
        x = x.view(-1, x.shape[-1])
        b = _stack3(lora_b_stacked)
        width = min(y2.shape[1], b.shape[1])  # the logits may be padded past the vocabulary
        if width < b.shape[1]:
            b = b[:, :width].contiguous()
        self._add_lora(y2[:, :width], x, lora_a_stacked, b, scale, self._sampler_indices[: x.shape[0]])
        return y

    def apply_lora_full_linear(self, y, x, weight_stacked, bias_stacked, module_enabled):
        """Rows whose adapter replaces this layer: y = x @ W[a].T + bias[a] (our shrink is a
        per-row matmul with the slot's [H_out, H_in] matrix); other rows keep y."""
        self._count("apply_lora_full_linear")
        w = _stack3(weight_stacked)
        indices = self.sampler_indices
        adapter_y = lk.bgmv_shrink(x if x.dtype == w.dtype else x.to(w.dtype), w, indices)
        y.copy_(self._select_full_linear_output(y, adapter_y, bias_stacked, module_enabled))
        return y


def _stack3(t: torch.Tensor) -> torch.Tensor:
    """vLLM's [N, 1, rows, cols] stack as our [N, rows, cols] (a view)."""
    return t.squeeze(1) if t.dim() == 4 else t
