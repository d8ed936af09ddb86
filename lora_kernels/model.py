"""MultiLoRAModel: serve many PEFT LoRA adapters in one batch, outputs equal to PEFT's.

For every targeted module (``nn.Linear``, ``nn.Embedding``, transformers' GPT-2 ``Conv1D``) and
every batch row ``b`` served by adapter ``a`` (``"__base__"`` = none)::

    y[b] = base(x[b]) + scaling[a] * ((x[b] @ lora_A[a].T) @ lora_B[a].T + lora_bias[a])
    y[b] = base(ids[b]) + scaling[a] * embed_scale * lora_B[a] @ lora_A[a][:, ids[b]]   (embedding)

which is PEFT's mixed-batch forward (``model(..., adapter_names=[...])``). The scale of each
(adapter, module) comes from :func:`lora_kernels.load_peft_adapter` (rsLoRA, ``rank_pattern``,
``alpha_pattern`` resolved there, once).

Layout: one :class:`~lora_kernels.LoRAPool` per wrapped module, one slot numbering shared by all
of them (slot ``k`` is the same adapter in every pool; a module that adapter does not target has
rank 0 in slot ``k``, which contributes nothing). So the batch metadata
(:class:`~lora_kernels.BatchMetadata`: per-token slots and per-row segments) is built once per
forward (per distinct row length, e.g. the prompt and the last-token ``lm_head``) and shared by
every layer unchanged. Rows with more than one token use the SGMV path (segments), one-token
decode steps the BGMV path (per-token indices). The base model's weights are never modified.
Inference only: forward and generate run under ``torch.no_grad()``.

Each forward / generate call keeps its rows in its own :class:`_Batch`, published in a context
variable for the call, and pins the slots it reads; ``remove_adapter`` frees a pinned slot only
when the last call reading it ends. See :class:`MultiLoRAModel` for what is safe from threads.

Example::

    model = lk.MultiLoRAModel(base_model, {"sql": "adapters/sql", "chat": "adapters/chat"})
    out = model(input_ids=ids, adapter_names=["sql", "__base__", "chat"])
    gen = model.generate(input_ids=ids, adapter_names=["sql", "__base__", "chat"], max_new_tokens=8)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .metadata import BatchMetadata
from .peft import LoRAModule, PeftAdapter, PeftAdapterError, load_peft_adapter, selected_modules_without_tensors
from .pool import LoRAPool

__all__ = ["MultiLoRAModel", "LoRALayer", "BASE_ADAPTER_NAME"]

BASE_ADAPTER_NAME = "__base__"


def _default_ops():
    from . import ops

    return ops


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 style Conv1D (weight [nx, nf], y = x @ W + b), without importing it."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and hasattr(module, "nx")
        and isinstance(getattr(module, "weight", None), Tensor)
        and tuple(module.weight.shape) == (module.nx, module.nf)
    )


def _module_kind(module: nn.Module) -> tuple[str, int, int] | None:
    """("linear" | "embedding", H_in, H_out) of a module we can serve, or None."""
    if isinstance(module, nn.Linear):
        return "linear", int(module.in_features), int(module.out_features)
    if _is_conv1d(module):
        return "linear", int(module.nx), int(module.nf)
    if isinstance(module, nn.Embedding):
        return "embedding", int(module.num_embeddings), int(module.embedding_dim)
    return None


def _same_values(saved: Tensor, served: Tensor) -> bool:
    """Equal, up to the one dtype cast between the saved copy and the served weight."""
    if tuple(saved.shape) != tuple(served.shape):
        return False
    served = served.detach()
    saved = saved.to(served.device)
    if saved.dtype == served.dtype:
        return torch.equal(saved, served)
    return torch.equal(saved.to(served.dtype), served) or torch.equal(saved, served.to(saved.dtype))


class _Batch:
    """The row state of one ``forward`` / ``generate`` call: the slot that serves each batch row.

    Every call builds its own and publishes it in a context variable (:data:`_BATCHES`) for the
    duration of the call, so forwards running at the same time in several threads, and a forward
    started inside another one, never see each other's rows.
    """

    def __init__(self, rows: list[int] | None, uniform: int, expand: bool) -> None:
        self.rows = rows  # slot per batch row (-1 = base); None: every row is served by `uniform`
        self.uniform = uniform
        self.slot_set = frozenset(s for s in (rows if rows is not None else [uniform]) if s >= 0)
        self.expand = expand  # generate(): rows may be repeated (beam search, num_return_sequences)
        self.cache: dict[tuple, BatchMetadata] = {}

    def rows_for(self, batch: int, layer: str) -> list[int]:
        rows = self.rows
        if rows is None:
            return [self.uniform] * batch
        if batch == len(rows):
            return rows
        if self.expand and len(rows) > 0 and batch % len(rows) == 0:
            k = batch // len(rows)  # generate() repeats every row k times, consecutively
            return [s for s in rows for _ in range(k)]
        raise ValueError(
            f"MultiLoRAModel: module {layer!r} received a batch of {batch} rows, but "
            f"adapter_names has {len(rows)} entries (one per batch row)."
        )

    def metadata(
        self, batch: int, tokens_per_row: int, device: torch.device, layer: str, num_slots: int
    ) -> BatchMetadata:
        key = (batch, tokens_per_row, device)
        meta = self.cache.get(key)
        if meta is None:
            slots: list[int] = []
            lengths: list[int] = []
            for s in self.rows_for(batch, layer):
                if slots and slots[-1] == s:  # neighbouring rows of one adapter: one segment
                    lengths[-1] += tokens_per_row
                else:
                    slots.append(s)
                    lengths.append(tokens_per_row)
            meta = BatchMetadata.from_requests(slots, lengths, device=device, num_slots=max(num_slots, 1))
            self.cache[key] = meta
        return meta


# The calls in progress in this thread / task: MultiLoRAModel state -> that call's rows.
_BATCHES: contextvars.ContextVar[dict[Any, _Batch] | None] = contextvars.ContextVar(
    "lora_kernels_model_batches", default=None
)


class _State:
    """What the model and all its LoRA layers share: the adapter registry, behind one lock.

    ``slots`` / ``adapters`` hold the loaded adapters. A slot some forward in flight still reads
    (``pins``) is not freed by ``remove_adapter``: its adapter moves to ``retired`` and the slot
    is released (zeroed in every pool, reusable) when the last such forward ends.
    """

    def __init__(self, ops: Any) -> None:
        self.ops = ops
        self.lock = threading.RLock()
        self.slots: dict[str, int] = {}  # loaded adapter name -> slot (same in every pool)
        self.adapters: dict[str, PeftAdapter] = {}
        self.retired: dict[int, PeftAdapter] = {}  # removed, still read by forwards in flight
        self.pins: Counter[int] = Counter()  # slot -> forwards in flight that read it
        self.in_flight = 0  # forward / generate calls running
        self.max_adapters = 0
        self.active: str | None = None  # the adapter of every row when no adapter_names is given

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy / torch.save of the model
        state = dict(self.__dict__)
        del state["lock"]
        state["pins"], state["in_flight"] = Counter(), 0  # a copy runs no forward
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    def occupied(self) -> dict[int, PeftAdapter]:
        """Slot -> adapter, for every slot the pools must hold: loaded and retired adapters."""
        out = {s: self.adapters[n] for n, s in self.slots.items()}
        out.update(self.retired)
        return out

    def current(self) -> _Batch | None:
        """The rows of the innermost forward of this model running in the caller's context."""
        batches = _BATCHES.get()
        return None if batches is None else batches.get(self)


class LoRALayer(nn.Module):
    """One wrapped module: ``base_layer`` plus a :class:`LoRAPool` of the adapters targeting it.

    ``forward`` returns ``base_layer(x)`` plus, for the rows of the current
    :class:`MultiLoRAModel` forward, their adapter's LoRA update (computed by
    :func:`lora_kernels.add_lora` / :func:`lora_kernels.add_lora_embedding` in place).
    Outside such a forward it is exactly ``base_layer``.

    What a forward reads (pool, scale vector, targeting slots) is published as one tuple and
    read once per call, so an adapter added or removed by another thread meanwhile never gives
    a call a pool from one version and a scale vector from another.
    """

    def __init__(self, base_layer: nn.Module, name: str, state: _State) -> None:
        super().__init__()
        kind = _module_kind(base_layer)
        if kind is None:  # pragma: no cover - MultiLoRAModel validates every module first
            raise TypeError(
                f"LoRALayer: module {name!r} is a {type(base_layer).__name__}; lora_kernels serves "
                f"LoRA on nn.Linear, nn.Embedding and transformers' Conv1D."
            )
        self.base_layer = base_layer
        self.lora_module_name = name
        self.kind, self.lora_in_features, self.lora_out_features = kind
        self._state = state
        # (pool, scale vector for the ops, slots whose adapter targets this module), or None
        self._served: tuple[LoRAPool, Tensor, frozenset[int]] | None = None
        es = getattr(base_layer, "embed_scale", None) if self.kind == "embedding" else None
        if isinstance(es, Tensor) and es.numel() != 1:
            es = None  # PEFT ignores a non-scalar embed_scale too
        self._embed_scale = None if es is None else float(es)

    # attributes transformers / users read from the module they wrapped
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = (self.__dict__.get("_modules") or {}).get("base_layer")
            if base is None or name.startswith("__"):
                raise
            return getattr(base, name)

    def extra_repr(self) -> str:
        pool = self.pool
        return (
            f"{self.kind}, adapters={sorted(self.targeting)}, "
            f"max_rank={pool.max_rank if pool else 0}"
        )

    @property
    def pool(self) -> LoRAPool | None:
        """The :class:`LoRAPool` of this module (``None`` before any adapter targets it)."""
        served = self._served
        return None if served is None else served[0]

    @property
    def targeting(self) -> frozenset[int]:
        """Slots whose adapter targets this module."""
        served = self._served
        return frozenset() if served is None else served[2]

    # --- pools ----------------------------------------------------------------------------

    def _target_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        w = self.base_layer.weight
        if not w.is_floating_point():
            raise PeftAdapterError(
                f"MultiLoRAModel: module {self.lora_module_name!r} has a {w.dtype} weight; "
                f"LoRA is served on floating-point layers only."
            )
        return w.dtype, w.device

    def _add_to(self, pool: LoRAPool, m: LoRAModule | None) -> int:
        if m is None:  # this adapter does not target this module: its slot stays rank 0
            return pool.reserve()
        return pool.add(m.lora_A, m.lora_B, m.scaling, lora_bias=m.lora_bias)

    def module_of(self, adapter: PeftAdapter) -> LoRAModule | None:
        return adapter.modules.get(self.lora_module_name)

    def build_pool(self, max_adapters: int, max_rank: int, bias: bool) -> tuple[LoRAPool, set[int]]:
        """A new pool holding every registered adapter in its slot (the registry is the truth)."""
        dtype, device = self._target_dtype_device()
        pool = LoRAPool(
            self.lora_in_features,
            self.lora_out_features,
            max_adapters,
            max_rank,
            dtype=dtype,
            device=device,
            bias=bias,
        )
        occupied = self._state.occupied()  # loaded adapters and those forwards in flight still read
        holes: list[int] = []
        targeting: set[int] = set()
        for slot in range(max(occupied, default=-1) + 1):
            adapter = occupied.get(slot)
            m = self.module_of(adapter) if adapter is not None else None
            got = self._add_to(pool, m)
            if got != slot:  # pragma: no cover - LoRAPool fills the lowest free slot
                raise RuntimeError(f"internal error: pool slot {got} != expected {slot}")
            if adapter is None:
                holes.append(slot)
            elif m is not None:
                targeting.add(slot)
        for slot in holes:
            pool.remove(slot)
        return pool, targeting

    def install(self, pool: LoRAPool, targeting: set[int] | frozenset[int]) -> None:
        """Publish ``pool`` and the slots targeting this module, in one assignment.

        The scale vector the ops get is ``pool.scaling`` (float64 in a float64 pool), except that
        an embedding with ``embed_scale`` (Gemma 3) gets a copy, ``scaling * embed_scale``, as
        PEFT applies it; call ``install`` again after changing ``pool`` in place.
        """
        scaling = pool.scaling if self._embed_scale is None else pool.scaling * self._embed_scale
        self._served = (pool, scaling, frozenset(targeting))

    @property
    def scaling(self) -> Tensor | None:
        """``[N]`` per-slot scale passed to the ops."""
        served = self._served
        return None if served is None else served[1]

    def _apply(self, fn, recurse=True):  # .to() / .cuda() / .half() / .double(): follow the base
        out = super()._apply(fn, recurse)
        with self._state.lock:
            pool = self.pool
            if pool is not None:
                dtype, device = self._target_dtype_device()
                if pool.dtype != dtype or pool.device != device:
                    self.install(*self.build_pool(pool.max_adapters, pool.max_rank, pool.has_bias))
        return out

    # --- forward --------------------------------------------------------------------------

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        y = self.base_layer(x, *args, **kwargs)
        served = self._served  # read once: another thread may publish a new pool meanwhile
        if served is None:
            return y
        st = self._state
        batch = st.current()
        pool, scaling, targeting = served
        if batch is None or not (batch.slot_set & targeting):
            return y
        name = self.lora_module_name
        if x.dim() == 0:
            raise ValueError(f"MultiLoRAModel: module {name!r} received a 0-d input.")
        rows = int(x.shape[0])
        H_in, H_out = self.lora_in_features, self.lora_out_features
        if self.kind == "embedding":
            T = x.numel()
        else:
            if x.shape[-1] != H_in:
                return y  # the base layer would have failed; keep its behaviour
            T = x.numel() // H_in
        if T == 0:
            return y
        if rows == 0 or T % rows != 0:
            raise ValueError(
                f"MultiLoRAModel: module {name!r} received an input of shape {list(x.shape)} "
                f"whose tokens do not split evenly over {rows} batch rows."
            )
        L = T // rows
        meta = batch.metadata(rows, L, x.device, name, pool.max_adapters)
        ops = st.ops or _default_ops()
        if y.dtype != pool.dtype:
            raise TypeError(
                f"MultiLoRAModel: module {name!r} computes in {y.dtype} but its adapters are "
                f"stored in {pool.dtype}; move or cast the model through MultiLoRAModel "
                f"(model.to(...)) so the adapters follow."
            )
        if not y.is_contiguous():
            y = y.contiguous()
        y2 = y.view(-1, H_out)
        with torch.no_grad():
            if self.kind == "embedding":
                ops.add_lora_embedding(
                    y2, x.reshape(-1), pool.lora_a, pool.lora_b, scaling, meta.indices,
                    ranks=pool.ranks,
                )
            else:
                if x.dtype != pool.dtype:
                    raise TypeError(
                        f"MultiLoRAModel: module {name!r} received {x.dtype} input but its "
                        f"adapters are stored in {pool.dtype}."
                    )
                x2 = x.reshape(-1, H_in)
                if x2.stride(-1) != 1:
                    x2 = x2.contiguous()
                if L == 1:  # decode step: one token per row -> BGMV
                    ops.add_lora(
                        y2, x2, pool.lora_a, pool.lora_b, scaling, meta.indices,
                        ranks=pool.ranks, lora_bias=pool.lora_bias,
                    )
                else:  # prefill: a segment per run of rows sharing an adapter -> SGMV
                    ops.add_lora(
                        y2, x2, pool.lora_a, pool.lora_b, scaling,
                        seg_indptr=meta.seg_indptr, seg_adapter=meta.seg_adapter,
                        ranks=pool.ranks, lora_bias=pool.lora_bias,
                    )
        return y


class MultiLoRAModel(nn.Module):
    """Serve several PEFT LoRA adapters on one base model, one adapter per batch row.

    Args:
        base_model: a PyTorch / transformers model; the modules the adapters target are
            wrapped in place (their weights are never modified).
        adapters: adapter name -> directory saved by PEFT, or a loaded
            :class:`~lora_kernels.peft.PeftAdapter`.
        max_adapters: pool capacity (slots); ``None`` grows the pools as adapters are added.
            Give it (and ``max_rank``) to keep every pool tensor fixed, e.g. for CUDA graphs.
        max_rank: the largest rank any pool holds; ``None`` sizes each pool to its adapters.
        ops: the op backend (a module with ``add_lora`` / ``add_lora_embedding``); default
            :mod:`lora_kernels.ops`. ``lora_kernels.reference`` works too.

    ``model(..., adapter_names=[...])`` and ``model.generate(..., adapter_names=[...])`` take
    PEFT's argument: one adapter name per batch row, ``"__base__"`` for none; an unknown name
    or a list of the wrong length is an error before any compute.

    Without ``adapter_names`` every row is served by the *active adapter*, as in PEFT: the first
    adapter added (the first of ``adapters``, like ``PeftModel.from_pretrained``; adding more
    does not change it), or the one chosen with :meth:`set_adapter` (``"__base__"`` for the
    plain base model). Removing the active adapter makes the first remaining name in sorted
    order active, with a warning (PEFT's ``delete_adapter`` does the same); with no adapter
    left, rows run the plain base model. :attr:`active_adapter` says which it is.

    Inference only: ``forward`` and ``generate`` run under ``torch.no_grad()`` (outputs carry no
    autograd graph, whatever the grad mode), and nothing here trains or merges adapters.

    Threads: one model may be called from several threads at once.

    - ``forward`` / ``generate`` concurrently with each other: each call serves its own
      ``adapter_names`` (each keeps its row state in a context variable), also when nested.
    - ``add_adapter`` / ``remove_adapter`` / ``set_adapter`` concurrently with forwards: a
      forward serves every row with the adapter its name denoted when the forward started, until
      it returns; a removed adapter's weights stay in their slot until the last forward reading
      them has returned (with ``max_adapters`` fixed, that slot counts as used meanwhile), and
      the other rows are unaffected. A forward started after ``remove_adapter`` returned refuses
      the removed name.
    - adapter changes concurrently with each other: serialized by one lock.
    - not while forwards run: ``unload`` (refused while one is in flight), ``.to()`` /
      ``.cuda()`` / ``.half()`` and changes to the base model's own weights.

    The layers find their call's rows through a context variable: modules run by the calling
    thread see them; a wrapper that runs the modules on threads of its own (such as
    ``torch.nn.DataParallel``) is not supported.

    On CUDA a freed slot is zeroed after ``torch.cuda.synchronize``, so kernels queued by earlier
    forwards on any stream are done; a pool replaced when it grows is freed through torch's
    caching allocator (reuse ordered on its allocation stream): with forwards on streams of your
    own, give ``max_adapters`` and ``max_rank`` so that pools never grow.

    Example::

        model = MultiLoRAModel(base, {"a": "adapters/a", "b": "adapters/b"})
        logits = model(input_ids=ids, adapter_names=["a", "__base__", "b"]).logits
        model.add_adapter("c", "adapters/c"); model.remove_adapter("a")
    """

    def __init__(
        self,
        base_model: nn.Module,
        adapters: Mapping[str, Any] | None = None,
        *,
        max_adapters: int | None = None,
        max_rank: int | None = None,
        ops: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(base_model, nn.Module):
            raise TypeError(
                f"MultiLoRAModel: base_model must be a torch.nn.Module, got {type(base_model).__name__}."
            )
        if isinstance(base_model, MultiLoRAModel):
            raise TypeError(
                "MultiLoRAModel: base_model is already a MultiLoRAModel; add adapters to it with "
                "add_adapter(name, path) instead of wrapping it again."
            )
        wrapped = next((n for n, m in base_model.named_modules() if isinstance(m, LoRALayer)), None)
        if wrapped is not None:
            raise ValueError(
                f"MultiLoRAModel: base_model is already wrapped by another MultiLoRAModel (its "
                f"module {wrapped!r} is a LoRALayer of it); add adapters to that MultiLoRAModel with "
                f"add_adapter(name, path), or call its unload() first to get the plain model back."
            )
        for arg, value in (("max_adapters", max_adapters), ("max_rank", max_rank)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"MultiLoRAModel: {arg} must be a positive int or None, got {value!r}.")
        self.base_model = base_model
        self._state = _State(ops)
        self._fixed_adapters = max_adapters
        self._fixed_rank = max_rank
        self._state.max_adapters = max_adapters or 0
        self._layers: dict[str, LoRALayer] = {}
        self._rank_hint: dict[str, int] = {}
        adapters = dict(adapters or {})
        loaded = {}
        for name, source in adapters.items():
            self._check_new_name(name)
            loaded[name] = self._load(source)
        if max_adapters is None:
            self._state.max_adapters = max(len(loaded), 1)
        for adapter in loaded.values():
            for mname, m in adapter.modules.items():
                self._rank_hint[mname] = max(self._rank_hint.get(mname, 0), m.r)
        for name, adapter in loaded.items():
            self.add_adapter(name, adapter)

    # --- delegation ------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = (self.__dict__.get("_modules") or {}).get("base_model")
            if base is None or name.startswith("__"):
                raise
            return getattr(base, name)

    @property
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, in slot order."""
        with self._state.lock:
            return sorted(self._state.slots, key=self._state.slots.get)

    @property
    def adapters(self) -> dict[str, PeftAdapter]:
        with self._state.lock:
            return dict(self._state.adapters)

    @property
    def active_adapter(self) -> str | None:
        """The adapter that serves every row of a call without ``adapter_names`` (PEFT's
        ``active_adapter``); ``None`` when the plain base model does."""
        return self._state.active

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter (``"__base__"``: the plain base model), as
        PEFT's ``set_adapter``. Forwards already running keep the one they started with."""
        st = self._state
        with st.lock:
            if adapter_name != BASE_ADAPTER_NAME and adapter_name not in st.slots:
                raise ValueError(
                    f"MultiLoRAModel.set_adapter: adapter_name must be a loaded adapter or "
                    f"{BASE_ADAPTER_NAME!r}, got {adapter_name!r}; loaded: {self.adapter_names}."
                )
            st.active = None if adapter_name == BASE_ADAPTER_NAME else adapter_name

    @property
    def lora_layers(self) -> dict[str, LoRALayer]:
        """Wrapped module name -> its :class:`LoRALayer`."""
        return dict(self._layers)

    # --- adapters ---------------------------------------------------------------------------

    def _check_new_name(self, name: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"MultiLoRAModel: an adapter name must be a non-empty str, got {name!r}.")
        if name == BASE_ADAPTER_NAME:
            raise ValueError(
                f"MultiLoRAModel: {BASE_ADAPTER_NAME!r} is reserved (it means 'no adapter')."
            )
        if name in self._state.slots:
            raise ValueError(
                f"MultiLoRAModel: an adapter named {name!r} is already loaded; remove it first."
            )

    @staticmethod
    def _load(source: Any) -> PeftAdapter:
        if isinstance(source, PeftAdapter):
            return source
        if isinstance(source, (str, os.PathLike)):
            return load_peft_adapter(source)
        raise TypeError(
            f"MultiLoRAModel: an adapter must be a directory path or a PeftAdapter, "
            f"got {type(source).__name__}."
        )

    def _served_module(self, name: str) -> nn.Module | None:
        try:
            module = self.base_model.get_submodule(name)
        except AttributeError:
            return None
        return module.base_layer if isinstance(module, LoRALayer) else module

    def _base_named_modules(self):
        """The base model's (name, module) pairs as they were before wrapping."""
        inside = None
        for mname, module in self.base_model.named_modules():
            if inside is not None and mname.startswith(inside):
                continue
            if isinstance(module, LoRALayer):
                inside, module = mname + ".", module.base_layer
            yield mname, module

    def _validate(self, name: str, adapter: PeftAdapter) -> None:
        """Everything that can refuse the adapter, checked before anything changes."""
        problems: list[str] = []
        for mname, m in adapter.modules.items():
            module = self._served_module(mname)
            if module is None:
                problems.append(f"it targets module {mname!r}, which the served model does not have")
                continue
            kind = _module_kind(module)
            if kind is None:
                problems.append(
                    f"module {mname!r} is a {type(module).__name__}; lora_kernels serves LoRA on "
                    f"nn.Linear, nn.Embedding and transformers' Conv1D"
                )
                continue
            if kind[0] != m.kind:
                problems.append(
                    f"module {mname!r} is a {type(module).__name__} but the adapter holds "
                    f"{m.kind} LoRA weights for it"
                )
                continue
            if (kind[1], kind[2]) != (m.in_features, m.out_features):
                what = "[vocab, dim]" if m.kind == "embedding" else "[H_in, H_out]"
                problems.append(
                    f"module {mname!r}: the served layer is {what} = [{kind[1]}, {kind[2]}] but "
                    f"the adapter's lora_A {list(m.lora_A.shape)} / lora_B {list(m.lora_B.shape)} "
                    f"are for [{m.in_features}, {m.out_features}]"
                )
                continue
            if m.kind == "embedding" and getattr(module, "max_norm", None) is not None:
                problems.append(
                    f"module {mname!r} is an nn.Embedding with max_norm set, which renormalizes "
                    f"the LoRA weights during lookup; not served"
                )
            if not module.weight.is_floating_point():
                problems.append(
                    f"module {mname!r} has a {module.weight.dtype} weight; LoRA is served on "
                    f"floating-point layers only"
                )
            if self._fixed_rank is not None and m.r > self._fixed_rank:
                problems.append(f"module {mname!r} has rank {m.r} > max_rank = {self._fixed_rank}")
        # Modules PEFT's config selects but the adapter has no tensors for (issue 13, item 6).
        problems += selected_modules_without_tensors(adapter, self._base_named_modules())
        for copies, attr in ((adapter.base_weights, "weight"), (adapter.base_biases, "bias")):
            for mname, saved in copies.items():
                module = self._served_module(mname)
                served = getattr(module, attr, None) if module is not None else None
                if not isinstance(served, Tensor):
                    problems.append(
                        f"it carries a copy of the base {attr} of {mname!r}, which the served "
                        f"model does not have"
                    )
                elif tuple(saved.shape) != tuple(served.shape):
                    problems.append(
                        f"its saved copy of the base {attr} of {mname!r} has shape "
                        f"{list(saved.shape)}, the served model's has {list(served.shape)} (a "
                        f"resized vocabulary?); a base model shared by every request cannot "
                        f"serve it"
                    )
                elif not _same_values(saved, served):
                    diff = (saved.to(served.device, torch.float64) - served.detach().double()).abs().max()
                    problems.append(
                        f"its saved copy of the base {attr} of {mname!r} differs from the served "
                        f"model's (max abs difference {float(diff):.3g}); PEFT would load that "
                        f"copy into the base model for every request, which a base model shared "
                        f"by every request cannot do"
                    )
        held = len(self._state.retired)
        if self._fixed_adapters is not None and len(self._state.slots) + held >= self._fixed_adapters:
            problems.append(
                f"all max_adapters = {self._fixed_adapters} slots are in use"
                + (f" ({held} by removed adapters that forwards in flight still read)" if held else "")
            )
        if problems:
            where = adapter.path or "(in memory)"
            lines = "\n".join(f"  - {p}" for p in problems)
            raise PeftAdapterError(
                f"MultiLoRAModel: cannot add adapter {name!r} ({where}):\n{lines}"
            )

    def add_adapter(self, name: str, adapter: Any) -> None:
        """Load (if a path) and add an adapter under ``name``; a refused adapter changes nothing.

        Safe while other threads run forwards: their rows never read the new slot, and a pool
        that grows is rebuilt and published whole, with every slot they read unchanged.
        """
        self._check_new_name(name)
        adapter = self._load(adapter)  # file I/O outside the lock
        with self._state.lock:
            self._check_new_name(name)
            self._validate(name, adapter)
            self._add_validated(name, adapter)

    def _add_validated(self, name: str, adapter: PeftAdapter) -> None:
        st = self._state
        had_any = bool(st.slots)
        used = set(st.occupied())  # a retired slot is still read by forwards in flight
        slot = min(set(range(len(used) + 1)) - used)
        old_n = st.max_adapters
        new_n = old_n if slot < old_n else max(slot + 1, 2 * old_n)
        if self._fixed_adapters is not None:
            new_n = self._fixed_adapters

        # Plan: new wrappers, pools to (re)build, pools to add to in place.
        new_layers: dict[str, LoRALayer] = {}
        for mname in adapter.modules:
            if mname not in self._layers:
                new_layers[mname] = LoRALayer(self.base_model.get_submodule(mname), mname, st)

        st.slots[name] = slot
        st.adapters[name] = adapter
        st.max_adapters = new_n
        rebuilt: dict[str, tuple[LoRAPool, set[int]]] = {}
        added: list[LoRALayer] = []
        installed: list[str] = []
        try:
            for mname, layer in list(self._layers.items()) + list(new_layers.items()):
                m = layer.module_of(adapter)
                pool = layer.pool
                if pool is None:  # a module no adapter targeted so far
                    rank = self._fixed_rank or max(self._rank_hint.get(mname, 0), m.r)
                    rebuilt[mname] = layer.build_pool(new_n, rank, m.lora_bias is not None)
                    continue
                grow_rank = m is not None and m.r > pool.max_rank
                grow_bias = m is not None and m.lora_bias is not None and not pool.has_bias
                if pool.max_adapters != new_n or grow_rank or grow_bias:
                    rank = max(pool.max_rank, m.r if m is not None else 0)
                    rebuilt[mname] = layer.build_pool(new_n, rank, pool.has_bias or grow_bias)
            for mname, layer in self._layers.items():
                if mname in rebuilt:
                    continue
                got = layer._add_to(layer.pool, layer.module_of(adapter))
                added.append(layer)
                if got != slot:  # pragma: no cover
                    raise RuntimeError(f"internal error: pool slot {got} != expected {slot}")
            # commit
            for mname, layer in new_layers.items():
                parent_name, _, child = mname.rpartition(".")
                parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
                setattr(parent, child, layer)
                installed.append(mname)
        except BaseException:
            for layer in added:
                layer.pool.remove(slot)
            for mname in installed:
                parent_name, _, child = mname.rpartition(".")
                parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
                setattr(parent, child, new_layers[mname].base_layer)
            del st.slots[name]
            del st.adapters[name]
            st.max_adapters = old_n
            raise
        for mname, layer in list(self._layers.items()) + list(new_layers.items()):
            if mname in rebuilt:
                layer.install(*rebuilt[mname])
            else:
                targets = {slot} if layer.module_of(adapter) is not None else set()
                layer.install(layer.pool, layer.targeting | targets)
        self._layers.update(new_layers)
        if not had_any:
            st.active = name  # the first adapter is the active one, as in PeftModel.from_pretrained

    def remove_adapter(self, name: str) -> None:
        """Remove adapter ``name``: forwards started from now on refuse the name; its slot is
        zeroed in every pool and becomes free once no forward in flight reads it any more
        (at once when none does)."""
        st = self._state
        with st.lock:
            if name not in st.slots:
                raise ValueError(
                    f"MultiLoRAModel.remove_adapter: no adapter named {name!r}; loaded: {self.adapter_names}."
                )
            slot = st.slots.pop(name)
            adapter = st.adapters.pop(name)
            if st.pins[slot] > 0:
                st.retired[slot] = adapter  # released by the last forward reading it
            else:
                self._release(slot)
            if st.active == name:
                st.active = min(st.slots) if st.slots else None
                if st.active is not None:
                    warnings.warn(
                        f"MultiLoRAModel: adapter {name!r} was the active adapter and is removed; "
                        f"the active adapter is now {st.active!r} (the first remaining name in sorted "
                        f"order, as PEFT does). Choose another with set_adapter(...).",
                        stacklevel=2,
                    )

    def _release(self, slot: int) -> None:
        """Zero ``slot`` in every pool and make it free (the caller holds the lock, and no forward
        in flight reads the slot)."""
        st = self._state
        st.retired.pop(slot, None)
        pools = [layer.pool for layer in self._layers.values()]
        for device in {p.device for p in pools if p.device.type == "cuda"}:
            # kernels of forwards that already returned may still be queued, on any stream
            if not torch.cuda.is_current_stream_capturing():
                torch.cuda.synchronize(device)
        for layer in self._layers.values():
            layer.pool.remove(slot)
            layer.install(layer.pool, layer.targeting - {slot})

    def unload(self) -> nn.Module:
        """Put the original modules back and return the base model (this object is then empty).

        Refused while a forward or generate is running on this model (its remaining layers would
        run without adapters)."""
        st = self._state
        with st.lock:
            if st.in_flight:
                raise RuntimeError(
                    f"MultiLoRAModel.unload: {st.in_flight} forward(s) are still running on this "
                    f"model; unload once they have returned (their remaining layers would run "
                    f"without adapters)."
                )
            for mname, layer in self._layers.items():
                parent_name, _, child = mname.rpartition(".")
                parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
                setattr(parent, child, layer.base_layer)
            self._layers.clear()
            st.slots.clear()
            st.adapters.clear()
            st.retired.clear()
            st.active = None
        return self.base_model

    # --- forward ------------------------------------------------------------------------------

    @staticmethod
    def _batch_size(args: tuple, kwargs: dict) -> int | None:
        for key in ("input_ids", "inputs_embeds"):
            value = kwargs.get(key)
            if isinstance(value, Tensor) and value.dim() >= 1:
                return int(value.shape[0])
        for value in args:
            if isinstance(value, Tensor) and value.dim() >= 1:
                return int(value.shape[0])
        return None

    def _rows(self, adapter_names: Any, batch: int | None) -> list[int]:
        if isinstance(adapter_names, (str, bytes)) or not isinstance(adapter_names, Sequence):
            raise TypeError(
                f"MultiLoRAModel: adapter_names must be a list of adapter names (one per batch "
                f"row, {BASE_ADAPTER_NAME!r} for none), got {type(adapter_names).__name__}."
            )
        slots = self._state.slots
        unknown = sorted({n for n in adapter_names if n != BASE_ADAPTER_NAME and n not in slots}, key=str)
        if unknown:
            raise ValueError(
                f"MultiLoRAModel: unknown adapter name(s) {unknown} in adapter_names; loaded: "
                f"{self.adapter_names} (and {BASE_ADAPTER_NAME!r} for none)."
            )
        if batch is not None and len(adapter_names) != batch:
            raise ValueError(
                f"MultiLoRAModel: adapter_names must have one entry per batch row: got "
                f"{len(adapter_names)} names for a batch of {batch} rows."
            )
        return [slots[n] if n != BASE_ADAPTER_NAME else -1 for n in adapter_names]

    @contextlib.contextmanager
    def _serving(self, adapter_names: Any, batch: int | None, expand: bool):
        """Run the body as one call of this model: its own row state (a context variable), and
        the slots it reads pinned, so a concurrent ``remove_adapter`` leaves them intact."""
        st = self._state
        with st.lock:  # names -> slots and the pins, atomically with respect to add / remove
            if adapter_names is None:
                b = _Batch(None, st.slots[st.active] if st.active is not None else -1, expand)
            else:
                b = _Batch(self._rows(adapter_names, batch), -1, expand)
            pinned = sorted(b.slot_set)
            st.pins.update(pinned)
            st.in_flight += 1
        token = _BATCHES.set({**(_BATCHES.get() or {}), st: b})
        try:
            yield
        finally:
            _BATCHES.reset(token)
            with st.lock:
                st.in_flight -= 1
                for s in pinned:
                    st.pins[s] -= 1
                    if st.pins[s] == 0:
                        del st.pins[s]
                        if s in st.retired:  # removed meanwhile: this was its last reader
                            self._release(s)

    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """``base_model(*args, **kwargs)`` with each row's adapter applied (PEFT's mixed batch).

        ``adapter_names``: one name per batch row (``"__base__"`` for none); without it every
        row is served by :attr:`active_adapter` (the plain base model when that is ``None``).
        Runs under ``torch.no_grad()``.
        """
        with self._serving(adapter_names, self._batch_size(args, kwargs), expand=False), torch.no_grad():
            return self.base_model(*args, **kwargs)

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """``base_model.generate(...)`` with each row's adapter applied at every step.

        Rows repeated by generation (``num_beams``, ``num_return_sequences``) keep their
        adapter, as in PEFT. Without ``adapter_names`` every row is served by
        :attr:`active_adapter`, as in ``forward``.
        """
        with self._serving(adapter_names, self._batch_size(args, kwargs), expand=True), torch.no_grad():
            return self.base_model.generate(*args, **kwargs)
