"""Adapter configs from untrusted sources (issue 13, items 3-5): no hang on a crafted regex,
limits on size, every refusal a PeftAdapterError naming the field. No peft needed.

PEFT matches pattern keys with Python's backtracking `re`; lora_kernels parses them with
Python's own parser and runs them with RE2 (linear time). The equivalence tests compare
against Python's `re` on the rule PEFT applies, `re.match(rf"(.*\\.)?({key})$", name)`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))

from lora_kernels import _regex  # noqa: E402
from lora_kernels import peft as P  # noqa: E402
from lora_kernels.peft import (  # noqa: E402
    PeftAdapterError,
    adapter_from_state_dict,
    config_selects,
    load_peft_adapter,
    match_pattern_key,
)
from helpers.peft_helpers import PREFIX, lora_config, lora_tensors, write_adapter  # noqa: E402

Q0 = "model.layers.0.self_attn.q_proj"
V1 = "model.layers.1.self_attn.v_proj"
MODS = {Q0: (4, 16, 16), V1: (4, 16, 8)}
EVIL = "([a-z_.0-9]|[a-z_.0-9])*Z"  # exponential for a backtracking engine on a 31-char name


def _adapter(tmp_path, **overrides):
    return write_adapter(tmp_path / "ad", lora_config(**overrides), lora_tensors(MODS))


def _peft_rule(key: str, name: str) -> bool:
    return re.match(rf"(.*\.)?({key})$", name) is not None


# --- item 3: a crafted regex does not hang the loader -------------------------------------------


CRAFTED = [
    ("rank_pattern", {EVIL: 2}, "loaded"),
    ("alpha_pattern", {EVIL: 2.0, "q_proj": 3}, "loaded"),
    ("exclude_modules", EVIL, "loaded"),
    ("target_modules", EVIL, "refused"),  # selects nothing
]


def test_crafted_regex_does_not_hang(tmp_path):
    """Python's re takes hours on these (PEFT hangs too); the loader answers in well under a
    second each. Run in a subprocess so a regression fails on its timeout instead of hanging."""
    paths = [str(_adapter(tmp_path / field, **{field: value})) for field, value, _ in CRAFTED]
    code = (
        "import sys, time, lora_kernels as lk\n"
        "for path in sys.argv[1:]:\n"
        "    t0 = time.perf_counter()\n"
        "    try:\n        lk.load_peft_adapter(path); out = 'loaded'\n"
        "    except lk.peft.PeftAdapterError:\n        out = 'refused'\n"
        "    print(out, time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert [line[0] for line in lines] == [outcome for _, _, outcome in CRAFTED]
    assert all(float(line[1]) < 5 for line in lines), lines


def test_crafted_layers_pattern_does_not_hang(tmp_path):
    path = _adapter(tmp_path, layers_to_transform=[0], layers_pattern=EVIL)
    t0 = time.perf_counter()
    with pytest.raises(PeftAdapterError, match="none of the 2 modules with LoRA tensors is selected"):
        load_peft_adapter(path)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    "key, construct",
    [
        (r"(q)_\1", r"a backreference \(\\1 or \(\?P=name\)\)"),
        (r"(?P<a>q)_(?P=a)", r"a backreference"),
        (r"q(?=_proj)_proj", r"a lookahead or lookbehind"),
        (r"(?<=\.)q_proj", r"a lookahead or lookbehind"),
        (r"(?!k)q_proj", r"a negative lookahead or lookbehind"),
        (r"(q)?(?(1)_proj|x)", r"a conditional group"),
        (r"(?>q_proj)", r"an atomic group"),
        (r"q_proj*+", r"a possessive quantifier"),
        (r"q{1001}", r"repeats something 1001 times; the linear-time engine \(RE2\) allows counts up to 1000"),
        (r"q{2,5000}", r"repeats something 5000 times"),
    ],
)
def test_construct_re2_lacks_refused_by_name(tmp_path, key, construct):
    path = _adapter(tmp_path, rank_pattern={key: 4})
    with pytest.raises(PeftAdapterError, match=rf"rank_pattern key '.*' cannot be matched: it uses {construct}|"
                       rf"rank_pattern key '.*' cannot be matched: it {construct}"):
        load_peft_adapter(path)


def test_invalid_python_regex_refused_by_name(tmp_path):
    with pytest.raises(PeftAdapterError, match=r"alpha_pattern key '\(q_proj' cannot be matched: it is not a valid "
                       r"regular expression \(missing \), unterminated subpattern"):
        load_peft_adapter(_adapter(tmp_path, alpha_pattern={"(q_proj": 2}))


def test_field_regex_re2_lacks_refused_by_name(tmp_path):
    with pytest.raises(PeftAdapterError, match=r"target_modules: it uses a lookahead or lookbehind"):
        load_peft_adapter(_adapter(tmp_path, target_modules=r".*(?=q_proj)q_proj"))
    with pytest.raises(PeftAdapterError, match=r"exclude_modules: it uses a backreference"):
        load_peft_adapter(_adapter(tmp_path / "b", exclude_modules=r"(a)\1"))


def test_shard_styles_use_the_same_matcher():
    """distributed.shard_peft_adapter matches its styles keys through match_pattern_key."""
    from lora_kernels.distributed import shard_peft_adapter

    ad = adapter_from_state_dict(lora_config(), lora_tensors(MODS))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="no styles key matches"):
        shard_peft_adapter(ad, 0, 2, {EVIL: "column"})
    assert time.perf_counter() - t0 < 5
    with pytest.raises(PeftAdapterError, match="styles key .* cannot be matched: it uses a lookahead"):
        shard_peft_adapter(ad, 0, 2, {"(?=q)q_proj|v_proj": "column"})


NAMES = [
    Q0, V1, "model.layers.10.mlp.down_proj", "model.embed_tokens", "lm_head", "transformer.h.0.attn.c_attn",
    "transformer.h.11.mlp.c_proj", "q_proj", "a.b", "a", ".", "x.", ".x", "a..b", "layers.1.x.q_proj",
    "model.layers.0.self_attn.q_projZ", "Q_PROJ", "k_proj", "a-b.c_d", "model.layers.00.self_attn.q_proj",
    "mod el.q proj", "x{,3}", "xxx", "a{2}", "{", "}",
]
KEYS = [
    "q_proj", "Q_PROJ", "self_attn.q_proj", Q0, "layers.0.self_attn.q_proj", "k_proj|q_proj", "proj", "_proj",
    "layers.0", r"model\.layers\.\d+\.self_attn\.q_proj", ".*q_proj", "q_proj$", "^q_proj", r"\Aq_proj\Z",
    r"layers\.[0-9]+\..*", "[kq]_proj", "[^.]*_proj", r"\w+_proj", r"\w+\.\d", r"\bq_proj", r"\Bproj", "(?i)x",
    "(?i:Q)_proj", "(?s:.)_proj", r"(?x) q _ proj", r"q_pr\oj" if False else "q_pr(o)j", "(?P<g>q)_proj",
    "q?_proj", "q*?_proj", "(?:q|k)_proj+?", "x{,3}", "x{2,}", "x{1,2}?", "a{2}", "{", "a{,", "", "|", "a|",
    ".", "..", "lm_head|embed_tokens", r"h\.1[01]\..*", "(a|b)*", r"[\s]", r"\S+", r"\D+\.\d+", r"[^\W\d]+",
    r"\d\.self_attn\.[a-z]_proj", "mlp.down_proj|mlp.up_proj", "a)|(b", "q_proj)|(.*", r"[\]]", "[a-]_b",
    r"(?m)^q_proj$", "a-b.c_d", "a.b", "mod el.q proj", "0", "00",
]


def _python_outcome(key: str, name: str):
    try:
        return _peft_rule(key, name)
    except re.error:
        return "invalid"


def _our_outcome(key: str, name: str):
    try:
        return match_pattern_key({key: 1}, name, "rank_pattern") == key
    except PeftAdapterError as exc:
        if "not a valid regular expression" in str(exc):
            return "invalid"
        raise


@pytest.mark.parametrize("key", KEYS)
def test_pattern_matches_equal_python_re_table(key):
    for name in NAMES:
        assert _our_outcome(key, name) == _python_outcome(key, name), (key, name)


# A small regex grammar over module-name characters: the constructs RE2 and Python share.
_ATOMS = st.sampled_from(
    ["q", "k", "_", "p", "r", "o", "j", "0", "1", "a", "b", "Q", "-", " ", ".", r"\.", r"\d", r"\w", r"\s", r"\D",
     r"\W", r"\S", "[a-z]", "[^.]", "[kq_]", r"[\d.]", "[A-Z]", "^", "$", r"\A", r"\Z", r"\b", r"\B", "{", "}"]
)
_QUANTS = st.sampled_from(["", "", "", "*", "+", "?", "*?", "+?", "??", "{2}", "{1,3}", "{,2}", "{2,}", "{0,1}?"])


def _regexes(max_leaves=8):
    def extend(inner):
        return st.one_of(
            st.tuples(inner, inner).map("".join),
            st.tuples(inner, inner).map(lambda t: f"{t[0]}|{t[1]}"),
            st.tuples(inner, _QUANTS).map(lambda t: f"({t[0]}){t[1]}"),
            st.tuples(inner, _QUANTS).map(lambda t: f"(?:{t[0]}){t[1]}"),
            inner.map(lambda s: f"(?i:{s})"),
            inner.map(lambda s: f"(?s:{s})"),
        )

    leaf = st.tuples(_ATOMS, _QUANTS).map("".join)
    return st.recursive(leaf, extend, max_leaves=max_leaves)


_NAME_CHARS = st.sampled_from(list("qkpjor_.01aAbB -Zz{}\\|"))
_MODULE_NAMES = st.one_of(st.sampled_from(NAMES), st.text(_NAME_CHARS, min_size=1, max_size=14))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_regexes(), names=st.lists(_MODULE_NAMES, min_size=1, max_size=6))
def test_pattern_matches_equal_python_re_generated(key, names):
    for name in names:
        assert _our_outcome(key, name) == _python_outcome(key, name), (key, name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.lists(st.one_of(_regexes(4), st.sampled_from(KEYS)), min_size=1, max_size=6), name=_MODULE_NAMES)
def test_first_matching_key_equals_peft_get_pattern_key(keys, name):
    keys = [k for k in dict.fromkeys(keys) if _python_outcome(k, name) != "invalid"]
    expected = next((k for k in keys if _peft_rule(k, name)), None)  # peft.utils.other.get_pattern_key
    assert match_pattern_key({k: 1 for k in keys}, name) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=_regexes(), name=_MODULE_NAMES)
def test_field_regexes_equal_python_re_generated(pattern, name):
    """target_modules / exclude_modules strings (fullmatch) and layers_pattern (the idx group)."""
    layers = rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\."
    for text, use in ((pattern, "fullmatch"), (layers, "group")):
        try:
            compiled = re.compile(text)
        except re.error:
            with pytest.raises(_regex.RegexError, match="not a valid regular expression"):
                _regex.compile_python_regex(text, use == "group")
            continue
        ours = _regex.compile_python_regex(text, use == "group")
        if use == "fullmatch":
            assert ours.fullmatch(name) == (compiled.fullmatch(name) is not None), (text, name)
        else:
            m = compiled.match(name)
            assert ours.match_group(name, "idx") == (m.group("idx") if m else None), (text, name)


def test_selection_of_layer_index_equals_python_re():
    names = ["model.layers.3.mlp.experts.12.w1", "model.layers.12.self_attn.q_proj", "h.1.attn.c_attn", "a.b.7.c"]
    for pattern in [None, "layers", "experts", "h", "layers|h", "[a-z]+"]:
        regex = re.compile(P._layers_regex(pattern))
        ours = _regex.compile_python_regex(P._layers_regex(pattern), True)
        for name in names:
            m = regex.match(name)
            assert ours.match_group(name, "idx") == (m.group("idx") if m else None), (pattern, name)


def test_name_that_is_not_printable_ascii_refused():
    """On such names RE2 and Python differ (Python's $ matches before a final newline, its \\d
    and \\w are Unicode); module names never hold them, so they are refused, not guessed."""
    assert _peft_rule("q_proj", "a.q_proj\n")  # Python's $ before a trailing newline
    with pytest.raises(PeftAdapterError, match=r"module name 'a\.q_proj\\n' must be 1 to MAX_NAME_LENGTH = 4096 "
                       r"printable ASCII characters to be matched against rank_pattern"):
        match_pattern_key({"q_proj": 1}, "a.q_proj\n", "rank_pattern")
    with pytest.raises(PeftAdapterError, match="printable ASCII"):
        match_pattern_key({r"\w+": 1}, "модуль")
    assert re.fullmatch(r"\B", "") is None and _regex.compile_python_regex(r"\B").fullmatch("x") is False
    with pytest.raises(PeftAdapterError, match="must be 1 to MAX_NAME_LENGTH"):  # Python's \B differs on ""
        match_pattern_key({r"\B": 1}, "")


def test_python_syntax_is_read_as_python_reads_it():
    """`x{,3}` is {0,3} for Python and a literal for RE2; the key means what PEFT's re reads."""
    assert match_pattern_key({"ax{,3}": 1}, "m.axx") == "ax{,3}"
    assert match_pattern_key({"ax{,3}": 1}, "m.ax{,3}") is None
    assert _peft_rule("ax{,3}", "m.axx") and not _peft_rule("ax{,3}", "m.ax{,3}")


# --- item 4: limits ------------------------------------------------------------------------------


def test_config_size_limit(tmp_path):
    path = _adapter(tmp_path)
    cfg = lora_config()
    cfg["base_model_name_or_path"] = "x" * (P.MAX_CONFIG_BYTES + 1)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(PeftAdapterError, match=r"adapter_config\.json has 1677\d{4} bytes, more than the limit "
                       r"MAX_CONFIG_BYTES = 16777216"):
        load_peft_adapter(path)


@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_pattern_key_count_limit(tmp_path, field):
    keys = {f"model.layers.{i}.q_proj": 4 for i in range(P.MAX_PATTERN_KEYS + 1)}
    with pytest.raises(PeftAdapterError, match=rf"{field} has 10001 keys, more than the limit MAX_PATTERN_KEYS = 10000"):
        load_peft_adapter(_adapter(tmp_path, **{field: keys}))


def test_regex_key_count_limit(tmp_path):
    keys = {f"layers\\.{i}\\..*q_proj": 4 for i in range(P.MAX_REGEX_KEYS + 1)}
    with pytest.raises(PeftAdapterError, match=r"rank_pattern has 1001 keys with regex syntax .*, more than the "
                       r"limit MAX_REGEX_KEYS = 1000"):
        load_peft_adapter(_adapter(tmp_path, rank_pattern=keys))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rank_pattern", {"q" * 16385: 4}, r"rank_pattern key 'q+\.\.\.q+' has 16385 characters, more than the "
         r"limit MAX_PATTERN_LENGTH = 16384"),
        ("alpha_pattern", {"(q)" * 6000: 4}, r"alpha_pattern key .* has 18000 characters, more than the limit "
         r"MAX_PATTERN_LENGTH"),
        ("target_modules", "q" * 16385, r"target_modules has 16385 characters, more than the limit MAX_PATTERN_LENGTH"),
        ("target_modules", ["q_proj", "v" * 16385], r"target_modules entry 'v+\.\.\.v+' has 16385 characters"),
        ("exclude_modules", "e" * 16385, r"exclude_modules has 16385 characters"),
        ("layers_pattern", ["l" * 16385], r"layers_pattern entry .* has 16385 characters"),
    ],
)
def test_pattern_length_limit(tmp_path, field, value, message):
    extra = {"layers_to_transform": [0]} if field == "layers_pattern" else {}
    with pytest.raises(PeftAdapterError, match=message):
        load_peft_adapter(_adapter(tmp_path, **{field: value}, **extra))


def test_module_name_length_limit():
    name = "model." + "x" * P.MAX_NAME_LENGTH + ".q_proj"
    with pytest.raises(PeftAdapterError, match=r"module name .* must be 1 to MAX_NAME_LENGTH = 4096 printable "
                       r"ASCII characters to be matched against rank_pattern .*; got 4109 characters"):
        adapter_from_state_dict(lora_config(rank_pattern={"q_proj": 4}), lora_tensors({name: (4, 8, 8)}))


def test_regex_matching_work_limit():
    mods = {f"m.{i}.q_proj": (2, 4, 4) for i in range(501)}
    keys = {f"(k{i}|x)_proj": 2 for i in range(P.MAX_REGEX_KEYS)}
    t0 = time.perf_counter()
    with pytest.raises(PeftAdapterError, match=r"alpha_pattern: matching its 1000 keys with regex syntax to the "
                       r"adapter's 501 modules takes 501000 steps, more than the limit MAX_REGEX_MATCHES = 500000"):
        adapter_from_state_dict(lora_config(r=2, target_modules=["q_proj"], alpha_pattern=keys), lora_tensors(mods))
    assert time.perf_counter() - t0 < 10


def test_plain_key_matching_work_limit():
    """Plain keys of one length but different "." positions: each group is one lookup per name."""
    keys = {"".join("." if (i >> b) & 1 else "x" for b in range(14)): 2 for i in range(P.MAX_PATTERN_KEYS)}
    mods = {f"m.{i}.q_proj": (2, 4, 4) for i in range(501)}
    with pytest.raises(PeftAdapterError, match=r"rank_pattern: matching its 10000 groups of plain keys .* to the "
                       r"adapter's 501 modules takes 5010000 steps, more than the limit MAX_PATTERN_MATCHES = 5000000"):
        adapter_from_state_dict(lora_config(r=2, target_modules=["q_proj"], rank_pattern=keys), lora_tensors(mods))


def test_matching_at_the_work_limits_is_quick():
    """Crafted keys at the limits: 1,000 regex keys (each exponential for Python's re) x 500
    modules, and 10,000 plain-key groups x 500 modules."""
    mods = {f"model.layers.{i}.self_attn.q_proj": (2, 4, 4) for i in range(500)}
    regex = {f"{EVIL}{i}": 2 for i in range(P.MAX_REGEX_KEYS)}
    plain = {"".join("." if (i >> b) & 1 else "x" for b in range(14)): 2 for i in range(P.MAX_PATTERN_KEYS)}
    cfg = lora_config(r=2, target_modules=["q_proj"], rank_pattern=regex, alpha_pattern=plain)
    t0 = time.perf_counter()
    ad = adapter_from_state_dict(cfg, lora_tensors(mods))
    assert len(ad.modules) == 500 and time.perf_counter() - t0 < 20


def test_per_module_patterns_of_a_huge_model_load_fast():
    """The real large case: rank_pattern / alpha_pattern with one key per module (the keys are
    module names, whose "." is a regex wildcard), 10,000 modules: plain keys are looked up."""
    names = [f"model.layers.{i}.mlp.experts.{j}.{p}" for i in range(40) for j in range(83) for p in ("w1", "w2", "w3")]
    names = names[: P.MAX_PATTERN_KEYS]
    tensors = {}
    a, b = torch.randn(2, 4), torch.randn(4, 2)
    for n in names:
        tensors[f"{PREFIX}{n}.lora_A.weight"] = a
        tensors[f"{PREFIX}{n}.lora_B.weight"] = b
    ranks = {n: 2 for n in reversed(names)}
    alphas = {n: float(k % 7 + 1) for k, n in enumerate(names)}
    cfg = lora_config(r=8, target_modules=["w1", "w2", "w3"], rank_pattern=ranks, alpha_pattern=alphas)
    t0 = time.perf_counter()
    ad = adapter_from_state_dict(cfg, tensors)
    elapsed = time.perf_counter() - t0
    assert len(ad.modules) == len(names) and all(m.r == 2 for m in ad.modules.values())
    assert all(ad.modules[n].alpha == alphas[n] for n in names[:200])
    assert elapsed < 20, f"{elapsed:.1f} s"


def test_wildcard_dot_in_plain_key_matches_as_python_does():
    """In "layers.1.q_proj" each "." matches any character, for PEFT's re and here."""
    for key, name in [("layers.1.q_proj", "x.layersX1Yq_proj"), ("a.b", "a_b"), ("a.b", "z.a.b"), ("..", "a.bc")]:
        assert (match_pattern_key({key: 1}, name) == key) == _peft_rule(key, name), (key, name)
    assert match_pattern_key({"layers.1.q_proj": 1}, "x.layersX1Yq_proj") == "layers.1.q_proj"


# --- item 5: malformed values are PeftAdapterErrors naming the field ------------------------------


def _raw_config(tmp_path, text: str) -> str:
    return write_adapter(tmp_path / "ad", text, lora_tensors(MODS))


def test_huge_integer_alpha_in_file(tmp_path):
    text = json.dumps(lora_config()).replace('"lora_alpha": 8', '"lora_alpha": 1' + "0" * 400)
    with pytest.raises(PeftAdapterError, match=r"lora_alpha must be a finite number, got <an integer of 401 digits>"):
        load_peft_adapter(_raw_config(tmp_path, text))


def test_huge_integer_alpha_in_memory():
    with pytest.raises(PeftAdapterError, match=r"lora_alpha must be a finite number, got <an integer of 401 digits>"):
        adapter_from_state_dict(lora_config(lora_alpha=10**400), lora_tensors(MODS))
    with pytest.raises(PeftAdapterError, match=r"alpha_pattern\['q_proj'\] must be a finite number, got <an integer"):
        adapter_from_state_dict(lora_config(alpha_pattern={"q_proj": -(10**400)}), lora_tensors(MODS))


def test_huge_integer_rank_in_memory():
    """In memory there is no JSON marker: a 5001-digit rank used to escape as a bare ValueError
    while its error message was formatted."""
    with pytest.raises(PeftAdapterError, match=r"rank_pattern\['q_proj'\] must be a positive int, got <an integer "
                       r"of more than 4000 digits>"):
        adapter_from_state_dict(lora_config(rank_pattern={"q_proj": 10**5000}), lora_tensors(MODS))
    with pytest.raises(PeftAdapterError, match=r"r must be a positive int, got <an integer of 101 digits>"):
        adapter_from_state_dict(lora_config(r=10**100), lora_tensors(MODS))


@pytest.mark.parametrize(
    "field, message",
    [
        ("r", r"r must be a positive int, got <an integer of 4301 digits>"),
        ("lora_alpha", r"lora_alpha must be a finite number, got <an integer of 4301 digits>"),
        ("some_future_option", r"some_future_option=<an integer of 4301 digits>: a config field"),
    ],
)
def test_integer_past_python_digit_limit(tmp_path, field, message):
    text = json.dumps({**lora_config(), field: 0}).replace(f'"{field}": 0', f'"{field}": ' + "7" * 4301)
    with pytest.raises(PeftAdapterError, match=message):
        load_peft_adapter(_raw_config(tmp_path, text))


def test_integer_past_digit_limit_in_pattern_value(tmp_path):
    text = json.dumps(lora_config(rank_pattern={"q_proj": 0})).replace('"q_proj": 0', '"q_proj": ' + "9" * 5000)
    with pytest.raises(PeftAdapterError, match=r"rank_pattern\['q_proj'\] must be a positive int, got <an integer of "
                       r"5000 digits>"):
        load_peft_adapter(_raw_config(tmp_path, text))


def test_deeply_nested_config(tmp_path):
    text = json.dumps(lora_config(eva_config=0)).replace('"eva_config": 0', '"eva_config": ' + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(PeftAdapterError, match=r"adapter_config\.json: field 'eva_config' nests JSON objects / arrays "
                       r"deeper than Python's json parser can follow \(RecursionError\)"):
        load_peft_adapter(_raw_config(tmp_path, text))


def test_deeply_nested_top_level_value(tmp_path):
    with pytest.raises(PeftAdapterError, match=r"the top-level value nests JSON objects / arrays deeper"):
        load_peft_adapter(_raw_config(tmp_path, "[" * 100_000 + "]" * 100_000))


def test_deeply_nested_value_in_memory_named():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(PeftAdapterError, match=r"some_future_option=\[\[\[\[\.\.\.\]\]\]\]: a config field"):
        adapter_from_state_dict(lora_config(some_future_option=deep), lora_tensors(MODS))


def test_float_overflow_is_infinity_refused(tmp_path):
    text = json.dumps(lora_config()).replace('"lora_alpha": 8', '"lora_alpha": 1e400')
    with pytest.raises(PeftAdapterError, match=r"lora_alpha must be a finite number, got inf"):
        load_peft_adapter(_raw_config(tmp_path, text))


# --- the selection helpers (item 6) on hand-written configs -------------------------------------


def test_target_modules_unresolved_refused(tmp_path):
    with pytest.raises(PeftAdapterError, match=r"target_modules=None: PEFT picks the modules from the base model's type"):
        load_peft_adapter(_adapter(tmp_path, target_modules=None))
    with pytest.raises(PeftAdapterError, match=r"target_modules='all-linear': PEFT resolves it against the base model"):
        load_peft_adapter(_adapter(tmp_path / "b", target_modules="ALL-LINEAR"))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(target_modules=".*", layers_to_transform=[0]), "layers_to_transform cannot be used when target_modules is a string"),
        (dict(target_modules=".*", layers_pattern="layers"), "layers_pattern cannot be used when target_modules is a string"),
        (dict(layers_pattern="layers"), "layers_pattern is set but layers_to_transform is not"),
        (dict(layers_to_transform=["0"]), r"layers_to_transform must be an int or a list of ints, got \['0'\]"),
        (dict(target_modules=["q_proj", 3]), "target_modules must hold strings only, got 3"),
        (dict(target_modules={"q_proj": 1}), r"target_modules must be a string or a list of strings, got \{'q_proj': 1\}"),
    ],
)
def test_selection_fields_peft_refuses(tmp_path, changes, message):
    with pytest.raises(PeftAdapterError, match=message):
        load_peft_adapter(_adapter(tmp_path, **changes))


def test_config_selects_exact_name_and_suffix():
    cfg = lora_config(target_modules=["q_proj", "model.layers.1.self_attn.v_proj"], layers_to_transform=[1])
    assert not config_selects(cfg, Q0)  # a suffix match, filtered by layer
    assert config_selects(cfg, "model.layers.1.self_attn.q_proj")
    assert config_selects(cfg, V1)  # an exact name: no layer filter
    assert not config_selects(cfg, "model.layers.1.self_attn.xq_proj")


def test_inspect_lists_ignored_modules(tmp_path, capsys):
    from lora_kernels.__main__ import main

    path = _adapter(tmp_path, target_modules=["q_proj"])
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert f"ignored (tensors saved, but not selected by target_modules / exclude_modules / layers_to_transform; " \
           f"PEFT ignores them too): {V1}" in out
    assert Q0 in out
