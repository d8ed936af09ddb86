"""Load a PEFT LoRA adapter from disk, with every module's scale resolved exactly as PEFT does.

Never imports ``peft``. Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (or an
``adapter_model.bin`` through ``torch.load(weights_only=True)``), and returns a
:class:`PeftAdapter`: per module (name relative to the base model, e.g.
``model.layers.0.self_attn.q_proj``)::

    lora_A [r, H_in]   lora_B [H_out, r]   lora_bias [H_out] or None     (kind "linear")
    lora_A [r, vocab]  lora_B [dim, r]                                   (kind "embedding")
    scaling = alpha / r,  or alpha / sqrt(r) with use_rslora

where ``r`` and ``alpha`` are the module's own values after PEFT's ``rank_pattern`` /
``alpha_pattern``: key ``k`` matches module name ``m`` when ``re.match(rf"(.*\\.)?({k})$", m)``
(a dot-aligned suffix or the whole name; keys are regexes), the first matching key in the
dict's order wins, and r and alpha are looked up independently (PEFT >= 0.15; pinned against
PEFT 0.21.2 in the tests). ``r`` is checked against the tensor shapes.

The modules served are the ones PEFT 0.21.2 puts a LoRA layer on: those the config's
``target_modules`` / ``exclude_modules`` / ``layers_to_transform`` / ``layers_pattern`` select
(:func:`config_selects`); PEFT ignores the saved tensors of any other module, and so does the
loader (``PeftAdapter.ignored_modules``). Every regex of a config runs in linear time (parsed by
Python's ``re`` parser, run by RE2; see :mod:`lora_kernels._regex`), and a config is refused past
the limits ``MAX_CONFIG_BYTES``, ``MAX_PATTERN_KEYS``, ``MAX_REGEX_KEYS``,
``MAX_PATTERN_LENGTH``, ``MAX_NAME_LENGTH``, ``MAX_PATTERN_MATCHES``, ``MAX_REGEX_MATCHES`` and
``MAX_INT_DIGITS``: a server can load adapters that users upload.

Anything the kernels would not reproduce exactly is refused with a :class:`PeftAdapterError`
that names it and says why: DoRA, ``modules_to_save``, ``target_parameters``,
``layer_replication``, trainable tokens, other LoRA variants, base-weight-modifying
initialisations (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA), unknown config fields set to a
non-default value, unknown tensor keys, rank / shape disagreements, truncated or malformed files.
Copies of base-layer weights that PEFT saves inside the adapter (``embed_tokens`` / ``lm_head``
when they are targeted, or a resized vocabulary) are kept in ``base_weights`` and checked against
the served model when the adapter joins a :class:`~lora_kernels.MultiLoRAModel`.

Example::

    adapter = lk.load_peft_adapter("my-adapter/")
    m = adapter.modules["model.layers.0.self_attn.q_proj"]
    m.r, m.alpha, m.use_rslora, m.scaling      # e.g. 16, 32.0, True, 8.0
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import functools
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from . import _regex
from .scaling import lora_scaling

__all__ = [
    "PeftAdapterError",
    "LoRAModule",
    "PeftAdapter",
    "load_peft_adapter",
    "adapter_from_state_dict",
    "check_lora_config",
    "match_pattern_key",
    "compile_pattern_key",
    "config_selects",
    "selected_modules_without_tensors",
    "resolve_rank_alpha",
    "read_safetensors",
    "CONFIG_NAME",
    "SAFETENSORS_NAME",
    "BIN_NAME",
    "KEY_PREFIX",
    "MAX_CONFIG_BYTES",
    "MAX_PATTERN_KEYS",
    "MAX_REGEX_KEYS",
    "MAX_PATTERN_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_INT_DIGITS",
    "MAX_PATTERN_MATCHES",
    "MAX_REGEX_MATCHES",
]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
KEY_PREFIX = "base_model.model."  # PEFT's prefix of every saved tensor key

# Limits on an adapter config (a server loads adapters that users upload). Each is far above
# any real adapter: a real adapter_config.json is a few KB (a per-module rank_pattern of a
# huge model a few hundred KB), nests 3 levels, has at most a few thousand pattern keys of at
# most a few hundred characters, and module names of about 100 characters.
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # bytes of adapter_config.json
MAX_PATTERN_KEYS = 10_000  # keys of rank_pattern, of alpha_pattern (each)
MAX_REGEX_KEYS = 1_000  # of which keys with regex syntax (beyond letters, digits, "_", "-", ".")
MAX_PATTERN_LENGTH = 16_384  # characters of one pattern key / target / exclude / layers_pattern entry
MAX_NAME_LENGTH = 4_096  # characters of a module name (from a tensor key)
MAX_INT_DIGITS = 100  # digits of an integer in the config
# Matching a rank_pattern / alpha_pattern to the adapter's modules, per pattern: groups of plain
# keys x modules (a dict lookup each, under 1 us; a real per-module pattern of a huge model,
# 50k modules whose names are the keys, has about 20 groups) and regex keys x modules (an RE2
# run each, a few us; real patterns have a handful of regex keys).
MAX_PATTERN_MATCHES = 5_000_000
MAX_REGEX_MATCHES = 500_000


class PeftAdapterError(ValueError):
    """An adapter lora_kernels cannot serve exactly as PEFT would; the message says why."""


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class LoRAModule:
    """One module's LoRA weights, in PEFT's layouts, with its resolved scale.

    ``kind == "linear"`` (``nn.Linear``, GPT-2 ``Conv1D``): ``lora_A`` ``[r, H_in]``,
    ``lora_B`` ``[H_out, r]``, ``lora_bias`` ``[H_out]`` (PEFT's ``lora_B.bias``) or ``None``.
    ``kind == "embedding"``: ``lora_A`` = ``lora_embedding_A`` ``[r, vocab]``, ``lora_B`` =
    ``lora_embedding_B`` ``[dim, r]``, no bias.
    ``scaling == lora_scaling(alpha, r, use_rslora)``.
    """

    name: str
    kind: str
    lora_A: Tensor
    lora_B: Tensor
    lora_bias: Tensor | None
    r: int
    alpha: float
    use_rslora: bool
    scaling: float

    @property
    def in_features(self) -> int:
        """``H_in`` (``vocab`` for an embedding)."""
        return int(self.lora_A.shape[1])

    @property
    def out_features(self) -> int:
        """``H_out`` (``dim`` for an embedding)."""
        return int(self.lora_B.shape[0])

    @property
    def plain_scaling(self) -> float:
        """What a server that ignores rsLoRA would use: ``alpha / r``."""
        return lora_scaling(self.alpha, self.r, False)


@dataclass
class PeftAdapter:
    """A loaded PEFT LoRA adapter (see :func:`load_peft_adapter`).

    - ``path``: the directory it was read from (``None`` when built from memory).
    - ``config``: ``adapter_config.json`` as read (a dict, key order kept).
    - ``modules``: module name (relative to the base model) -> :class:`LoRAModule`.
    - ``base_weights``: module name -> the base layer's ``weight`` that PEFT saved inside the
      adapter (``embed_tokens`` / ``lm_head`` copies, or a resized vocabulary). Served only if
      equal to the served model's own weight (checked when the adapter joins a model).
    - ``base_biases``: the same for a saved base-layer ``bias``.
    - ``ignored_modules``: modules whose LoRA tensors are in the file but that the config's
      ``target_modules`` / ``exclude_modules`` / ``layers_to_transform`` do not select; PEFT
      ignores those tensors, and so does lora_kernels.
    """

    path: str | None
    config: dict
    modules: dict[str, LoRAModule]
    base_weights: dict[str, Tensor] = field(default_factory=dict)
    base_biases: dict[str, Tensor] = field(default_factory=dict)
    ignored_modules: list[str] = field(default_factory=list)

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    @property
    def max_rank(self) -> int:
        return max((m.r for m in self.modules.values()), default=0)

    @property
    def has_lora_bias(self) -> bool:
        return any(m.lora_bias is not None for m in self.modules.values())

    def __repr__(self) -> str:
        return (
            f"PeftAdapter(path={self.path!r}, modules={len(self.modules)}, "
            f"max_rank={self.max_rank}, use_rslora={self.use_rslora}, "
            f"base_weights={sorted(self.base_weights)})"
        )


# --------------------------------------------------------------------------------------------
# Config: what we implement, what we ignore on purpose, what we refuse

# Fields whose value never changes the forward pass of a loaded adapter (metadata, training-time
# settings, initialisation settings whose result is in the saved tensors). init_lora_weights is
# checked separately: some initialisations also rewrite the base weights.
_INFORMATIONAL = frozenset(
    {
        "task_type",
        "peft_type",
        "auto_mapping",
        "base_model_name_or_path",
        "revision",
        "peft_version",
        "inference_mode",
        "lora_dropout",  # identity at inference
        "fan_in_fan_out",  # only changes merging; forward uses lora_A [r, in], lora_B [out, r]
        "init_lora_weights",
        "megatron_core",  # a module path, used only together with megatron_config
        "qalora_group_size",  # used only with use_qalora
        "loftq_config",  # used only with init_lora_weights="loftq" (refused)
        "eva_config",
        "corda_config",  # used only with init_lora_weights="corda" (refused)
        "lora_ga_config",  # used only with init_lora_weights="lora_ga" (refused)
        "runtime_config",  # runtime-only (ephemeral GPU offload)
    }
)

# Fields we implement.
_IMPLEMENTED = frozenset(
    {
        "r",
        "lora_alpha",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
        "lora_bias",
        "bias",
        # which modules PEFT puts a LoRA layer on (PEFT ignores the saved tensors of any other
        # module): see config_selects
        "target_modules",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
    }
)

# init_lora_weights values for which PEFT's fresh LoRA layer adds exactly zero (lora_B, or
# lora_embedding_A, set to zero; lora_B.bias too): what PEFT serves on a module its config
# selects but the saved tensors do not cover.
_ZERO_INITS = (True, "gaussian")

# Fields we refuse when set to anything but their default, with the reason.
_REFUSED: dict[str, str] = {
    "use_dora": (
        "DoRA rescales every output column of the base weight by a learned magnitude; "
        "lora_kernels serves plain LoRA only"
    ),
    "modules_to_save": (
        "these modules are fully trained copies that replace the base model's own for this "
        "adapter; a base model shared by every request cannot serve them"
    ),
    "target_parameters": (
        "LoRA on raw parameters (e.g. fused MoE expert weights) is not implemented"
    ),
    "layer_replication": (
        "the adapter was trained on a model with duplicated layers that the served base model "
        "does not have"
    ),
    "trainable_token_indices": (
        "trainable token embeddings (per-token deltas to the embedding) are not implemented"
    ),
    "alora_invocation_tokens": (
        "activated LoRA applies the adapter only after its invocation tokens; not implemented"
    ),
    "use_qalora": "QA-LoRA (pooled inputs to lora_A) is not implemented",
    "velora_config": "VeLoRA is not implemented",
    "monteclora_config": "MonteCLoRA is not implemented",
    "use_bdlora": "block-diagonal LoRA is not implemented",
    "arrow_config": "Arrow (routing over LoRA experts) is not implemented",
    "kasa_config": "KaSA is not implemented",
    "megatron_config": "Megatron-parallel LoRA layers are not implemented",
    "ensure_weight_tying": (
        "tied embedding / lm_head adapters are not implemented"
    ),
}

# init_lora_weights values whose initialisation only sets lora_A / lora_B (the base model stays
# the original one). Others (pissa*, corda*, olora, loftq, lora_ga) also rewrite the base
# weights, so the adapter only works on that rewritten base; PEFT saves a converted adapter with
# init_lora_weights=True when asked (path_initial_model_for_weight_conversion).
_SAFE_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica")


def _is_default_like(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (dict, list, tuple, str)) and not value)


class _HugeInt:
    """An integer of more than MAX_INT_DIGITS digits in adapter_config.json, kept as its digits
    (converting it would be quadratic in its length, and refused past 4300 digits by Python)."""

    __slots__ = ("digits",)

    def __init__(self, digits: str) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {len(self.digits.lstrip('-'))} digits>"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = 8


def _short(value: Any) -> str:
    """repr() bounded in length and depth, for error messages about untrusted values."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**MAX_INT_DIGITS:
        return f"<an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'more than 4000'} digits>"
    try:
        return _REPR.repr(value)
    except (RecursionError, ValueError):
        return f"<a {type(value).__name__}>"


def _refuse(where: str, problems: list[str]) -> PeftAdapterError:
    lines = "\n".join(f"  - {p}" for p in problems)
    return PeftAdapterError(f"cannot serve the adapter {where} exactly as PEFT would:\n{lines}")


def _check_positive_int(value: Any, what: str, problems: list[str]) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not 1 <= value < 10**MAX_INT_DIGITS  # no rank has 100 digits (and past 4300, no str())
    ):
        problems.append(f"{what} must be a positive int, got {_short(value)}")


def _check_alpha(value: Any, what: str, problems: list[str]) -> None:
    try:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, numbers.Real)
            and math.isfinite(float(value))
        )
    except OverflowError:  # an int too large for a float (10**400)
        ok = False
    if not ok:
        problems.append(f"{what} must be a finite number, got {_short(value)}")


def _pattern_regex(key: str) -> str:
    """PEFT's regex for a rank_pattern / alpha_pattern key (peft.utils.other.get_pattern_key)."""
    return rf"(.*\.)?({key})$"


def compile_pattern_key(key: Any, field: str = "pattern"):
    """The linear-time (RE2) program of PEFT's rule for key ``key`` of ``field``.

    Matches exactly what ``re.match(rf"(.*\\.)?({key})$", name)`` matches on every module name
    of printable ASCII characters (see :mod:`lora_kernels._regex`). Raises
    :class:`PeftAdapterError` naming ``field`` and the key when the key is not a string, is
    longer than ``MAX_PATTERN_LENGTH``, is not a valid Python regex, or uses a construct RE2
    lacks (backreferences, lookaround, ...).
    """
    if not isinstance(key, str):
        raise PeftAdapterError(f"{field} key {_short(key)} must be a string, got {type(key).__name__}.")
    if len(key) > MAX_PATTERN_LENGTH:
        raise PeftAdapterError(
            f"{field} key {_short(key)} has {len(key)} characters, more than the limit "
            f"MAX_PATTERN_LENGTH = {MAX_PATTERN_LENGTH}."
        )
    try:
        return _regex.compile_python_regex(_pattern_regex(key))
    except _regex.RegexError as exc:
        raise PeftAdapterError(f"{field} key {_short(key)} cannot be matched: {exc}.") from None


def _compile_field_regex(pattern: str, field: str, capture: bool = False):
    """A whole regex given by a config field (target_modules / exclude_modules strings,
    layers_pattern), as RE2; PeftAdapterError naming the field when it cannot be."""
    try:
        return _regex.compile_python_regex(pattern, capture)
    except _regex.RegexError as exc:
        raise PeftAdapterError(f"{field}: {exc}.") from None


# A key made of these characters only is a fixed-length regex: letters, digits, "_" and "-"
# match themselves and "." any character (every name matched is printable ASCII).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


def _is_plain_key(key: Any) -> bool:
    return isinstance(key, str) and len(key) <= MAX_PATTERN_LENGTH and _PLAIN_KEY.fullmatch(key) is not None


def _dot_suffixes(name: str) -> Iterable[str]:
    """``name`` and every part of it after a ".": the strings ``(.*\\.)?`` leaves to the key."""
    yield name
    start = name.find(".")
    while start != -1:
        yield name[start + 1 :]
        start = name.find(".", start + 1)


class _KeyMatcher:
    """PEFT's first-matching-key rule for one rank_pattern / alpha_pattern (its keys in order).

    A plain key (``_PLAIN_KEY``: most real keys are module names) matches ``name`` when one of
    name's dot-suffixes has the key's length and equals the key outside the key's "." positions;
    plain keys are grouped by length and "." positions, each group a dict, so a name costs a few
    dict lookups whatever the number of keys. Other keys run as RE2 programs, in order, only
    while they precede the best plain match: at most ``groups`` lookups and ``len(programs)``
    RE2 runs per name.
    """

    def __init__(self, keys: tuple, field: str) -> None:
        self.keys = keys
        self.field = field
        self.programs: list[tuple[int, Any]] = []
        groups: dict[tuple[int, tuple], dict[tuple, int]] = {}
        for index, key in enumerate(keys):
            if _is_plain_key(key):
                spans, start = [], 0
                for part in key.split("."):
                    spans.append((start, start + len(part)))
                    start += len(part) + 1
                table = groups.setdefault((len(key), tuple(spans)), {})
                table.setdefault(tuple(key[a:b] for a, b in spans), index)  # first key wins
            else:
                self.programs.append((index, compile_pattern_key(key, field)))
        self.by_length: dict[int, list[tuple[tuple, dict[tuple, int]]]] = {}
        for (length, spans), table in groups.items():
            self.by_length.setdefault(length, []).append((spans, table))
        self.groups = len(groups)

    def first(self, name: str) -> str | None:
        best = len(self.keys)
        for suffix in _dot_suffixes(name):
            for spans, table in self.by_length.get(len(suffix), ()):
                index = table.get(tuple(suffix[a:b] for a, b in spans))
                if index is not None and index < best:
                    best = index
        if self.programs and self.programs[0][0] < best:
            data = name.encode()
            for index, program in self.programs:
                if index >= best:
                    break
                if program.match_bytes(data):
                    best = index
                    break
        return self.keys[best] if best < len(self.keys) else None


@functools.lru_cache(maxsize=32)
def _key_matcher(keys: tuple, field: str) -> _KeyMatcher:
    return _KeyMatcher(keys, field)


def _check_name(name: str, field: str) -> None:
    if len(name) > MAX_NAME_LENGTH or not _regex.check_text(name):
        raise PeftAdapterError(
            f"module name {_short(name)} must be 1 to MAX_NAME_LENGTH = {MAX_NAME_LENGTH} "
            f"printable ASCII characters to be matched against {field} (there, the linear-time "
            f"engine's matches are exactly Python's); got {len(name)} characters."
        )


def _check_string_list(value: Any, field: str, problems: list[str], allow_str: bool) -> None:
    """target_modules / exclude_modules / layers_pattern: a string (a regex) or a list of
    strings, each at most MAX_PATTERN_LENGTH characters."""
    if isinstance(value, str):
        if not allow_str:
            problems.append(f"{field} must be a list of strings, got {_short(value)}")
        elif len(value) > MAX_PATTERN_LENGTH:
            problems.append(
                f"{field} has {len(value)} characters, more than the limit "
                f"MAX_PATTERN_LENGTH = {MAX_PATTERN_LENGTH}"
            )
        return
    if not isinstance(value, (list, tuple)):
        problems.append(f"{field} must be a string or a list of strings, got {_short(value)}")
        return
    for entry in value:
        if not isinstance(entry, str):
            problems.append(f"{field} must hold strings only, got {_short(entry)}")
            return
        if len(entry) > MAX_PATTERN_LENGTH:
            problems.append(
                f"{field} entry {_short(entry)} has {len(entry)} characters, more than the limit "
                f"MAX_PATTERN_LENGTH = {MAX_PATTERN_LENGTH}"
            )
            return


def _check_selection(config: Mapping[str, Any], problems: list[str]) -> None:
    """target_modules, exclude_modules, layers_to_transform, layers_pattern: the types PEFT
    0.21.2 accepts, LoraConfig.__post_init__'s own refusals, and every regex compiles to RE2."""
    target = config.get("target_modules")
    if target is None:
        problems.append(
            "target_modules=None: PEFT picks the modules from the base model's type when it loads "
            "such a config; lora_kernels needs them written out (PEFT's save_pretrained writes them)"
        )
    elif isinstance(target, str) and target.lower() == "all-linear":
        problems.append(
            "target_modules='all-linear': PEFT resolves it against the base model when it loads "
            "the adapter; lora_kernels needs the modules written out (PEFT's save_pretrained "
            "writes them)"
        )
    else:
        _check_string_list(target, "target_modules", problems, allow_str=True)
        if isinstance(target, str) and len(target) <= MAX_PATTERN_LENGTH:
            try:
                _compile_field_regex(target, "target_modules")
            except PeftAdapterError as exc:
                problems.append(str(exc).rstrip("."))
    exclude = config.get("exclude_modules")
    if exclude:
        _check_string_list(exclude, "exclude_modules", problems, allow_str=True)
        if isinstance(exclude, str) and len(exclude) <= MAX_PATTERN_LENGTH:
            try:
                _compile_field_regex(exclude, "exclude_modules")
            except PeftAdapterError as exc:
                problems.append(str(exc).rstrip("."))
    layers = config.get("layers_to_transform")
    if layers is not None:
        entries = layers if isinstance(layers, list) else [layers]
        if not isinstance(layers, (list, numbers.Integral)) or any(
            isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in entries
        ):
            problems.append(f"layers_to_transform must be an int or a list of ints, got {_short(layers)}")
    pattern = config.get("layers_pattern")
    if pattern:
        _check_string_list(pattern, "layers_pattern", problems, allow_str=True)
        for entry in [pattern] if isinstance(pattern, str) else pattern:
            if isinstance(entry, str) and len(entry) <= MAX_PATTERN_LENGTH:
                try:
                    _compile_field_regex(_layers_regex(entry), f"layers_pattern entry {_short(entry)}")
                except PeftAdapterError as exc:
                    problems.append(str(exc).rstrip("."))
    # LoraConfig.__post_init__ refuses these (PEFT cannot load such a config at all).
    if isinstance(target, str) and layers is not None:
        problems.append("layers_to_transform cannot be used when target_modules is a string (PEFT refuses it)")
    if isinstance(target, str) and pattern is not None:
        problems.append("layers_pattern cannot be used when target_modules is a string (PEFT refuses it)")
    if pattern and layers is None:
        problems.append("layers_pattern is set but layers_to_transform is not (PEFT refuses it)")


def _layers_regex(layers_pattern: str | None) -> str:
    """PEFT 0.21.2's regex for the layer index of a module name (check_target_module_exists)."""
    if layers_pattern is None:
        return r".*?\.[^.]*\.(?P<idx>\d+)\."
    return rf"(?:^|.*?\.){layers_pattern}\.(?P<idx>\d+)\."


class _Selector:
    """PEFT 0.21.2's choice of the modules that get a LoRA layer (check_target_module_exists),
    for a config that passed :func:`check_lora_config`. Lists become sets of dot-aligned
    suffixes (``name.endswith("." + t)`` is ``t`` being one of name's dot-suffixes), regexes RE2."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        target = config.get("target_modules")
        self.target_regex = _compile_field_regex(target, "target_modules") if isinstance(target, str) else None
        self.targets = frozenset(target) if isinstance(target, (list, tuple)) else frozenset()
        exclude = config.get("exclude_modules")
        self.exclude_regex = None
        self.excludes: frozenset[str] = frozenset()
        if exclude:
            if isinstance(exclude, str):
                self.exclude_regex = _compile_field_regex(exclude, "exclude_modules")
            else:
                self.excludes = frozenset(exclude)
        layers = config.get("layers_to_transform")
        self.layers = layers
        self.use_layers = layers is not None and (len(layers) != 0 if isinstance(layers, list) else True)
        pattern = config.get("layers_pattern")
        if pattern is None or len(pattern) == 0:
            patterns = [None]
        else:
            patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        self.layer_regexes = [
            _compile_field_regex(_layers_regex(p), "layers_pattern", capture=True) for p in patterns
        ]

    def selects(self, name: str) -> bool:
        if self.exclude_regex is not None or self.target_regex is not None or self.use_layers:
            _check_name(name, "the config's target_modules / exclude_modules / layers_pattern")
        if self.exclude_regex is not None:
            if self.exclude_regex.fullmatch(name):
                return False
        elif self.excludes and any(s in self.excludes for s in _dot_suffixes(name)):
            return False
        if self.target_regex is not None:
            return self.target_regex.fullmatch(name)
        if name in self.targets:
            return True  # an exact name: layers_to_transform does not apply (PEFT's order)
        found = any(s in self.targets for s in _dot_suffixes(name))
        if found and self.use_layers:
            index = None
            for regex in self.layer_regexes:
                digits = regex.match_group(name, "idx")
                if digits is not None:
                    index = int(digits)
                    break
            if index is None:
                return False
            return index == self.layers if isinstance(self.layers, numbers.Integral) else index in self.layers
        return found


# Module types PEFT 0.21.2 puts a plain LoRA layer on (peft.tuners.lora dispatch_default);
# transformers' Conv1D is recognised by name (this module never imports transformers).
_PEFT_LORA_TYPES = (
    torch.nn.Linear,
    torch.nn.Embedding,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.MultiheadAttention,
)


def selected_modules_without_tensors(
    adapter: PeftAdapter, named_modules: Iterable[tuple[str, torch.nn.Module]]
) -> list[str]:
    """What PEFT would do differently from serving ``adapter.modules`` on a model with these
    modules, as sentences (empty: PEFT serves exactly ``adapter.modules``).

    PEFT puts a LoRA layer on every module its config selects (:func:`config_selects`), then
    loads the saved tensors. A selected module without tensors keeps its fresh initialisation:
    an exact zero update for ``init_lora_weights`` True or ``"gaussian"`` (what serving nothing
    there gives), random weights otherwise (refused here); and a selected module of a type PEFT
    cannot wrap makes PEFT refuse the adapter (refused here too). ``named_modules``: the served
    base model's ``(name, module)`` pairs, names relative to the base model. An adapter whose
    config has no ``target_modules`` (built in memory, not by the loader) is not checked.
    """
    config = adapter.config or {}
    if config.get("target_modules") is None:
        return []
    selector = _Selector(config)
    init = config.get("init_lora_weights", True)
    zero = any(init is z or (isinstance(z, str) and init == z) for z in _ZERO_INITS)
    problems = []
    for name, module in named_modules:
        if not name or name in adapter.modules:
            continue
        try:
            if not selector.selects(name):
                continue
        except PeftAdapterError as exc:
            problems.append(str(exc).rstrip("."))
            continue
        wrappable = isinstance(module, _PEFT_LORA_TYPES) or type(module).__name__ == "Conv1D"
        if not wrappable:
            problems.append(
                f"the config selects module {name!r} (a {type(module).__name__}), on which PEFT "
                f"cannot put a LoRA layer: PEFT refuses to load this adapter on this model"
            )
        elif not zero:
            problems.append(
                f"the config selects module {name!r} but the adapter has no tensors for it: PEFT "
                f"would serve it with freshly initialised weights (init_lora_weights="
                f"{_short(init)} makes them random, not zero)"
            )
    return problems


def config_selects(config: Mapping[str, Any], name: str) -> bool:
    """Whether PEFT 0.21.2 puts a LoRA layer on module ``name`` (relative to the base model)
    for this LoRA config: ``exclude_modules`` (a list: exact or dot-suffix; a string: a regex
    fullmatch), then ``target_modules`` (a string: a regex fullmatch; a list: an exact name, or
    a dot-suffix within ``layers_to_transform``, the layer index read with ``layers_pattern``).
    PEFT ignores the saved tensors of every other module."""
    return _Selector(config).selects(name)


def check_lora_config(config: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`PeftAdapterError` naming every config field we cannot serve exactly."""
    where = where or "(in memory)"
    if not isinstance(config, Mapping):
        raise PeftAdapterError(
            f"cannot serve the adapter {where}: {CONFIG_NAME} must hold a JSON object, "
            f"got {type(config).__name__}."
        )
    problems: list[str] = []
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        problems.append(
            f"peft_type={_short(peft_type)}: only LoRA adapters (peft_type 'LORA') are served"
        )
    _check_positive_int(config.get("r", 8), "r", problems)
    _check_alpha(config.get("lora_alpha", 8), "lora_alpha", problems)
    if not isinstance(config.get("use_rslora", False), bool):
        problems.append(f"use_rslora must be true or false, got {_short(config.get('use_rslora'))}")
    if not isinstance(config.get("lora_bias", False), bool):
        problems.append(f"lora_bias must be true or false, got {_short(config.get('lora_bias'))}")
    for pattern_name, check in (("rank_pattern", _check_positive_int), ("alpha_pattern", _check_alpha)):
        pattern = config.get(pattern_name) or {}
        if not isinstance(pattern, Mapping):
            problems.append(f"{pattern_name} must be a JSON object, got {type(pattern).__name__}")
            continue
        if len(pattern) > MAX_PATTERN_KEYS:
            problems.append(
                f"{pattern_name} has {len(pattern)} keys, more than the limit "
                f"MAX_PATTERN_KEYS = {MAX_PATTERN_KEYS}"
            )
            continue
        regex_keys = sum(not _is_plain_key(key) for key in pattern)
        if regex_keys > MAX_REGEX_KEYS:
            problems.append(
                f"{pattern_name} has {regex_keys} keys with regex syntax (characters other than "
                f"letters, digits, '_', '-', '.'), more than the limit MAX_REGEX_KEYS = {MAX_REGEX_KEYS}"
            )
            continue
        for key, value in pattern.items():
            check(value, f"{pattern_name}[{_short(key)}]", problems)
            if _is_plain_key(key):
                continue  # always a valid regex (letters, digits, "_", "-", ".")
            try:
                compile_pattern_key(key, pattern_name)
            except PeftAdapterError as exc:
                problems.append(str(exc).rstrip("."))
    _check_selection(config, problems)

    bias = config.get("bias", "none")
    if bias != "none":
        problems.append(
            f"bias={_short(bias)}: the adapter trained the base model's own biases, which a base "
            f"model shared by every request cannot serve (only bias='none' is served; "
            f"lora_bias=True, a bias on lora_B, is)"
        )
    init = config.get("init_lora_weights", True)
    if not any(init is s or (isinstance(s, str) and init == s) for s in _SAFE_INITS):
        problems.append(
            f"init_lora_weights={_short(init)}: this initialisation also rewrites the base model's "
            f"weights, so the adapter only works on that rewritten base (save it with PEFT's "
            f"path_initial_model_for_weight_conversion to get a plain LoRA adapter)"
        )
    for name, reason in _REFUSED.items():
        if name in config and not _is_default_like(config[name]):
            problems.append(f"{name}={_short(config[name])}: {reason}")
    for name, value in config.items():
        if name in _INFORMATIONAL or name in _IMPLEMENTED or name in _REFUSED:
            continue
        if not _is_default_like(value):
            problems.append(
                f"{name if len(name) <= 80 else _short(name)}={_short(value)}: a config field "
                f"lora_kernels does not implement (checked "
                f"against PEFT 0.21.2's LoraConfig), set to a non-default value; refused rather "
                f"than ignored"
            )
    if problems:
        raise _refuse(where, problems)


def match_pattern_key(pattern: Mapping[str, Any] | None, name: str, field: str = "pattern") -> str | None:
    """The first key of ``pattern`` (in order) that PEFT would match to module ``name``, or None.

    Key ``k`` matches when ``re.match(rf"(.*\\.)?({k})$", name)``: the whole name or a
    dot-aligned suffix of it, ``k`` being an (unescaped) regular expression. Matched in linear
    time by RE2 (:func:`compile_pattern_key`), with exactly Python's matches on module names of
    printable ASCII characters; :class:`PeftAdapterError` naming ``field`` for a key RE2 cannot
    run, or a name that is not printable ASCII (or longer than ``MAX_NAME_LENGTH``).
    """
    return _first_key(tuple(pattern or ()), name, field)


def _first_key(keys: tuple, name: str, field: str) -> str | None:
    return _first_key_of(_key_matcher(keys, field) if keys else None, name)


def _first_key_of(matcher: _KeyMatcher | None, name: str) -> str | None:
    if matcher is None:
        return None
    _check_name(name, matcher.field)
    return matcher.first(name)


def resolve_rank_alpha(config: Mapping[str, Any], name: str) -> tuple[int, float, str | None, str | None]:
    """``(r, alpha, rank_key, alpha_key)`` of module ``name`` as PEFT resolves them."""
    return _resolve_rank_alpha(config, name, *_matchers(config))


def _matchers(config: Mapping[str, Any]) -> tuple[_KeyMatcher | None, _KeyMatcher | None]:
    """The rank_pattern and alpha_pattern matchers of a config (None for an empty pattern)."""
    out = []
    for field in ("rank_pattern", "alpha_pattern"):
        keys = tuple(config.get(field) or ())
        out.append(_key_matcher(keys, field) if keys else None)
    return out[0], out[1]


def _resolve_rank_alpha(
    config: Mapping[str, Any], name: str, rank_matcher: _KeyMatcher | None, alpha_matcher: _KeyMatcher | None
) -> tuple[int, float, str | None, str | None]:
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r_key = _first_key_of(rank_matcher, name)
    a_key = _first_key_of(alpha_matcher, name)
    r = rank_pattern[r_key] if r_key is not None else config.get("r", 8)
    alpha = alpha_pattern[a_key] if a_key is not None else config.get("lora_alpha", 8)
    return int(r), alpha, r_key, a_key


# --------------------------------------------------------------------------------------------
# Files

def _deep_field(text: str, decoder: json.JSONDecoder) -> str:
    """Which top-level field of a JSON object made the parser recurse too deep: the fields are
    decoded one by one (linear, by json's own scanner) until one raises RecursionError."""
    ws = json.decoder.WHITESPACE.match
    i = ws(text, 0).end()
    if text[i : i + 1] != "{":
        return "the top-level value"
    i = ws(text, i + 1).end()
    while text[i : i + 1] == '"':
        try:
            key, i = json.decoder.scanstring(text, i + 1)
            i = ws(text, i).end()
            if text[i : i + 1] != ":":
                break
            i = ws(text, i + 1).end()
            try:
                _, i = decoder.raw_decode(text, i)
            except RecursionError:
                return f"field {_short(key)}"
        except ValueError:
            break
        i = ws(text, i).end()
        if text[i : i + 1] != ",":
            break
        i = ws(text, i + 1).end()
    return "a value"


def _parse_int(digits: str) -> int | _HugeInt:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        return _HugeInt(digits)
    return int(digits)


def _read_config(config_path: str) -> Any:
    """adapter_config.json, parsed within the limits: at most MAX_CONFIG_BYTES; integers of
    more than MAX_INT_DIGITS digits kept as a marker that the field checks refuse by name; too
    deep a nesting refused naming the top-level field that holds it."""
    with open(config_path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        size = os.path.getsize(config_path)
        raise PeftAdapterError(
            f"{config_path} has {size} bytes, more than the limit MAX_CONFIG_BYTES = "
            f"{MAX_CONFIG_BYTES}."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PeftAdapterError(f"malformed {config_path}: not valid JSON ({exc})") from None
    decoder = json.JSONDecoder(parse_int=_parse_int)
    try:
        return decoder.decode(text)
    except RecursionError:
        where = _deep_field(text, decoder)
        raise PeftAdapterError(
            f"{config_path}: {where} nests JSON objects / arrays deeper than Python's json "
            f"parser can follow (RecursionError); a LoRA config nests 3 levels."
        ) from None
    except ValueError as exc:  # json.JSONDecodeError, and anything else the parser refuses
        raise PeftAdapterError(f"malformed {config_path}: not valid JSON ({exc})") from None

# Weight dtypes an adapter may hold; anything else (float8, integers) is refused by name.
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def read_safetensors(path: str) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file with the safetensors library, which checks the header, every
    offset and the file size; a truncated or malformed file raises :class:`PeftAdapterError`
    naming the file and the library's reason."""
    # Read into memory rather than memory-map: a mapped file rewritten later (an adapter
    # directory saved again) would turn every access to the loaded tensors into SIGBUS.
    with open(path, "rb") as f:
        data = f.read()
    try:
        return safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, TypeError) as exc:
        raise PeftAdapterError(f"malformed safetensors file {path}: {exc}") from None


def _read_bin(path: str) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of every kind
        raise PeftAdapterError(
            f"cannot read {path} with torch.load(weights_only=True): {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise PeftAdapterError(f"malformed adapter file {path}: expected a dict of str -> Tensor")
    return obj


# --------------------------------------------------------------------------------------------
# Tensors -> modules

_LINEAR_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_B.bias": "bias"}
_EMBED_SUFFIXES = {".lora_embedding_A": "A", ".lora_embedding_B": "B"}
_BASE_SUFFIXES = {".base_layer.weight": "weight", ".base_layer.bias": "bias"}


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def adapter_from_state_dict(
    config: Mapping[str, Any], tensors: Mapping[str, Tensor], path: str | None = None
) -> PeftAdapter:
    """Build a :class:`PeftAdapter` from a config dict and PEFT-saved tensors (keys with the
    ``base_model.model.`` prefix); every check of :func:`load_peft_adapter` applies."""
    where = path or "(in memory)"
    check_lora_config(config, where)
    use_rslora = bool(config.get("use_rslora", False))
    config_lora_bias = bool(config.get("lora_bias", False))
    problems: list[str] = []
    parts: dict[str, dict[str, tuple[str, Tensor]]] = {}
    kinds: dict[str, str] = {}
    base_weights: dict[str, Tensor] = {}
    base_biases: dict[str, Tensor] = {}
    base_layer_copies: set[str] = set()  # "<module>.base_layer.*": only where PEFT wraps <module>

    for key, tensor in tensors.items():
        if not key.startswith(KEY_PREFIX):
            problems.append(
                f"unknown tensor key {key!r}: PEFT saves every key with the prefix {KEY_PREFIX!r}"
            )
            continue
        rest = key[len(KEY_PREFIX) :]
        matched = False
        for table, kind in ((_LINEAR_SUFFIXES, "linear"), (_EMBED_SUFFIXES, "embedding")):
            for suffix, part in table.items():
                if rest.endswith(suffix) and len(rest) > len(suffix):
                    module = rest[: -len(suffix)]
                    if kinds.setdefault(module, kind) != kind:
                        problems.append(
                            f"module {module!r} has both linear (lora_A/lora_B) and embedding "
                            f"(lora_embedding_A/B) tensors"
                        )
                    parts.setdefault(module, {})[part] = (key, tensor)
                    matched = True
                    break
            if matched:
                break
        if matched:
            continue
        for suffix, part in _BASE_SUFFIXES.items():
            if rest.endswith(suffix) and len(rest) > len(suffix):
                (base_weights if part == "weight" else base_biases)[rest[: -len(suffix)]] = tensor
                base_layer_copies.add(rest[: -len(suffix)])
                matched = True
                break
        if matched:
            continue
        if "lora_" in rest or ".base_layer." in rest or not (
            rest.endswith(".weight") or rest.endswith(".bias")
        ):
            hint = ""
            if "lora_magnitude_vector" in rest:
                hint = " (a DoRA magnitude vector: DoRA is not served)"
            elif "trainable_tokens" in rest:
                hint = " (trainable tokens are not served)"
            problems.append(f"unknown tensor key {key!r}{hint}")
            continue
        # "<module>.weight" / "<module>.bias" outside any LoRA layer: a full base-layer copy
        # (PEFT saves the embedding this way when the vocabulary was resized).
        module, _, leaf = rest.rpartition(".")
        (base_weights if leaf == "weight" else base_biases)[module] = tensor

    # PEFT puts LoRA layers on the modules its config selects and loads the saved tensors of
    # those only: every other module's tensors (and its base_layer copies, which have no place
    # to go in an unwrapped module) are ignored, so they are here too.
    selector = _Selector(config)
    ignored: list[str] = []
    for name in sorted(set(parts) | base_layer_copies):
        try:
            selected = selector.selects(name)
        except PeftAdapterError as exc:
            problems.append(str(exc).rstrip("."))
            selected = True
        if selected:
            continue
        if name in parts:
            ignored.append(name)
            del parts[name]
        if name in base_layer_copies:
            base_weights.pop(name, None)
            base_biases.pop(name, None)

    for name, t in list(base_weights.items()) + list(base_biases.items()):
        if t.dtype not in _WEIGHT_DTYPES:
            problems.append(f"the base-layer copy of {name!r} has an unsupported dtype {t.dtype}")

    modules: dict[str, LoRAModule] = {}
    rank_matcher, alpha_matcher = _matchers(config)
    for matcher in (rank_matcher, alpha_matcher):
        if matcher is None:
            continue
        for count, what, limit, limit_name in (
            (matcher.groups, "groups of plain keys (by length and '.' positions)", MAX_PATTERN_MATCHES,
             "MAX_PATTERN_MATCHES"),
            (len(matcher.programs), "keys with regex syntax", MAX_REGEX_MATCHES, "MAX_REGEX_MATCHES"),
        ):
            if count * len(parts) > limit:
                raise _refuse(where, problems + [
                    f"{matcher.field}: matching its {count} {what} to the adapter's {len(parts)} "
                    f"modules takes {count * len(parts)} steps, more than the limit "
                    f"{limit_name} = {limit}"
                ])
    for name in sorted(parts):
        got = parts[name]
        kind = kinds[name]
        a_names = ("lora_A.weight", "lora_B.weight") if kind == "linear" else ("lora_embedding_A", "lora_embedding_B")
        missing = [n for n, p in zip(a_names, ("A", "B")) if p not in got]
        if missing:
            problems.append(f"module {name!r} is missing {', '.join(missing)}")
            continue
        (a_key, A), (b_key, B) = got["A"], got["B"]
        bias = got.get("bias", (None, None))[1]
        ok = True
        for k, t in ((a_key, A), (b_key, B)) + (((got["bias"][0], bias),) if bias is not None else ()):
            if t.dtype not in _WEIGHT_DTYPES:
                problems.append(f"tensor {k!r} must be float16, bfloat16, float32 or float64, got {t.dtype}")
                ok = False
            elif not bool(torch.isfinite(t).all()):
                problems.append(f"tensor {k!r} holds non-finite values (inf or nan)")
                ok = False
        if A.dim() != 2 or B.dim() != 2:
            problems.append(
                f"module {name!r}: lora_A must be [r, H_in] and lora_B [H_out, r] (2-D), got "
                f"{_shape(A)} and {_shape(B)} (convolution LoRA is not served)"
            )
            continue
        if not ok:
            continue
        try:
            r_cfg, alpha, r_key, a_key = _resolve_rank_alpha(config, name, rank_matcher, alpha_matcher)
        except PeftAdapterError as exc:
            problems.append(str(exc).rstrip("."))
            continue
        r_tensor = int(A.shape[0])
        if B.shape[1] != r_tensor:
            problems.append(
                f"module {name!r}: lora_A {_shape(A)} and lora_B {_shape(B)} disagree on the rank "
                f"(lora_A.shape[0] = {r_tensor}, lora_B.shape[1] = {B.shape[1]})"
            )
            continue
        if r_tensor != r_cfg:
            source = f"rank_pattern[{r_key!r}]" if r_key is not None else "r"
            problems.append(
                f"module {name!r}: the config gives r = {r_cfg} (from {source}) but the tensors "
                f"have rank {r_tensor}; PEFT would refuse to load it"
            )
            continue
        if bias is not None:
            if kind == "embedding":
                problems.append(f"module {name!r}: an embedding LoRA cannot have a lora_B bias")
                continue
            if not config_lora_bias:
                problems.append(
                    f"module {name!r} has a lora_B.bias tensor but the config has lora_bias=false "
                    f"(PEFT would silently ignore it)"
                )
                continue
            if bias.dim() != 1 or bias.shape[0] != B.shape[0]:
                problems.append(
                    f"module {name!r}: lora_B.bias must be [H_out] = [{B.shape[0]}], got {_shape(bias)}"
                )
                continue
        elif config_lora_bias and kind == "linear":
            problems.append(
                f"module {name!r}: the config has lora_bias=true but lora_B.bias is missing"
            )
            continue
        modules[name] = LoRAModule(
            name=name,
            kind=kind,
            lora_A=A,
            lora_B=B,
            lora_bias=bias,
            r=r_tensor,
            alpha=float(alpha),
            use_rslora=use_rslora,
            scaling=lora_scaling(alpha, r_tensor, use_rslora),
        )
    if not problems and not modules:
        if ignored:
            problems.append(
                f"none of the {len(ignored)} modules with LoRA tensors is selected by the config's "
                f"target_modules / exclude_modules / layers_to_transform (first: {ignored[0]!r}); "
                f"PEFT would ignore every tensor"
            )
        else:
            problems.append("the adapter holds no LoRA tensors (lora_A / lora_B or lora_embedding_A / B)")
    if problems:
        raise _refuse(where, problems)
    return PeftAdapter(
        path=path,
        config=dict(config),
        modules=modules,
        base_weights=base_weights,
        base_biases=base_biases,
        ignored_modules=ignored,
    )


def load_peft_adapter(path: str | os.PathLike) -> PeftAdapter:
    """Load the PEFT LoRA adapter saved in directory ``path`` (``save_pretrained`` output).

    Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (or, when there is no
    safetensors file, ``adapter_model.bin`` through ``torch.load(weights_only=True)``); never
    imports ``peft``. Each module's ``r`` and ``alpha`` follow PEFT's ``rank_pattern`` /
    ``alpha_pattern`` and its scale is ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).

    Raises:
        FileNotFoundError: ``path`` is not a directory, or has no config / weights file.
        PeftAdapterError: anything that would not be served exactly as PEFT serves it
            (the message lists every problem found).

    Example::

        adapter = load_peft_adapter("out/my-adapter")
        for name, m in adapter.modules.items():
            print(name, m.r, m.alpha, m.use_rslora, m.scaling)
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_peft_adapter: no adapter directory at {path!r}.")
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"load_peft_adapter: {path!r} has no {CONFIG_NAME}.")
    config = _read_config(config_path)
    check_lora_config(config, path)
    st_path = os.path.join(path, SAFETENSORS_NAME)
    bin_path = os.path.join(path, BIN_NAME)
    if os.path.isfile(st_path):
        tensors = read_safetensors(st_path)
    elif os.path.isfile(bin_path):
        tensors = _read_bin(bin_path)
    else:
        raise FileNotFoundError(
            f"load_peft_adapter: {path!r} has neither {SAFETENSORS_NAME} nor {BIN_NAME}."
        )
    return adapter_from_state_dict(config, tensors, path=path)
