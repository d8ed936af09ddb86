"""Python regular expressions run in linear time: Python's own parser, RE2's engine.

PEFT matches the regexes of an adapter config (``rank_pattern`` / ``alpha_pattern`` keys, a
``target_modules`` or ``exclude_modules`` string, ``layers_pattern``) with Python's backtracking
``re``, so a crafted key such as ``"([a-z_.0-9]|[a-z_.0-9])*Z"`` takes exponential time. Here the
pattern is parsed by Python's own ``re`` parser (so it is read exactly as PEFT's ``re`` reads
it: same syntax, same errors, same flags) and the parse tree is written back out in RE2's syntax
and run by RE2 (``google-re2``), whose matching time is linear in the text. Constructs RE2 does
not have (backreferences, lookaround, conditional and atomic groups, possessive quantifiers,
repetition counts above 1000) are refused by name.

On non-empty text made of printable ASCII characters (every module name of a real model), the
RE2 program matches exactly the strings Python's ``re`` matches, with the same groups: RE2
follows Perl's leftmost-first rules, the parse tree is Python's, and the only differences
between the engines (``$`` before a trailing newline, Unicode ``\\d \\w \\s \\b`` and case
folding, RE2's ``\\s`` lacking ``\\v``, ``\\B`` on the empty text) need other text.
:func:`check_text` refuses other text.
"""

from __future__ import annotations

import functools

try:  # Python >= 3.11
    import re._constants as _c
    import re._parser as _parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

import re

import re2

__all__ = ["RegexError", "translate", "Program", "compile_python_regex", "check_text", "RE2_MAX_REPEAT"]

RE2_MAX_REPEAT = 1000  # RE2's largest repetition count ({n,m} with n, m <= 1000)

_I, _M, _S = re.IGNORECASE, re.MULTILINE, re.DOTALL

# Python's ASCII \s is [ \t\n\r\f\v]; RE2's \s lacks \v, so it is written out.
_SPACE = r"\t\n\x0b\x0c\r "

_UNSUPPORTED = {
    "GROUPREF": "a backreference (\\1 or (?P=name))",
    "GROUPREF_EXISTS": "a conditional group ((?(1)...|...))",
    "ASSERT": "a lookahead or lookbehind ((?=...) or (?<=...))",
    "ASSERT_NOT": "a negative lookahead or lookbehind ((?!...) or (?<!...))",
    "ATOMIC_GROUP": "an atomic group ((?>...))",
    "POSSESSIVE_REPEAT": "a possessive quantifier (*+, ++, ?+ or {m,n}+)",
}


class RegexError(ValueError):
    """A pattern Python's ``re`` rejects, or one that uses a construct RE2 does not have."""


def _char(code: int) -> str:
    c = chr(code)
    if c.isascii() and (c.isalnum() or c == "_"):
        return c
    return "\\x{%x}" % code


def _category(name: str, in_class: bool) -> str:
    table = {
        "CATEGORY_DIGIT": ("0-9", False),
        "CATEGORY_NOT_DIGIT": ("0-9", True),
        "CATEGORY_SPACE": (_SPACE, False),
        "CATEGORY_NOT_SPACE": (_SPACE, True),
        "CATEGORY_WORD": ("0-9A-Za-z_", False),
        "CATEGORY_NOT_WORD": ("0-9A-Za-z_", True),
    }
    if name not in table:  # pragma: no cover - line categories only come from the compiler
        raise RegexError(f"the character category {name} is not supported")
    chars, negated = table[name]
    if not in_class:
        return f"[{'^' if negated else ''}{chars}]"
    if not negated:
        return chars
    # A negated category inside a class: RE2 has \D \W \S, equal to Python's on ASCII text
    # apart from \S and \v (never in the checked text).
    return {"CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_NOT_WORD": r"\W"}[name]


def _case(text: str, flags: int) -> str:
    return f"(?i:{text})" if flags & _I else text


class _Writer:
    def __init__(self, group_names: dict[int, str]) -> None:
        self.group_names = group_names

    def seq(self, items, flags: int) -> str:
        return "".join(self.item(op, av, flags) for op, av in items)

    def item(self, op, av, flags: int) -> str:
        name = getattr(op, "name", str(op))
        if name in _UNSUPPORTED:
            raise RegexError(f"it uses {_UNSUPPORTED[name]}, which the linear-time engine (RE2) does not have")
        if name == "LITERAL":
            return _case(_char(av), flags)
        if name == "NOT_LITERAL":
            return _case(f"[^{_char(av)}]", flags)
        if name == "ANY":
            return "(?s:.)" if flags & _S else "."
        if name == "IN":
            return _case(self.char_class(av), flags)
        if name == "CATEGORY":
            return _category(av.name, in_class=False)
        if name == "AT":
            return self.at(av.name, flags)
        if name == "BRANCH":
            return "(?:" + "|".join(self.seq(alt, flags) for alt in av[1]) + ")"
        if name == "SUBPATTERN":
            group, add_flags, del_flags, body = av
            inner = self.seq(body, (flags | add_flags) & ~del_flags)
            if group is None:
                return f"(?:{inner})"
            if group in self.group_names:
                return f"(?P<{self.group_names[group]}>{inner})"
            return f"({inner})"
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, body = av
            unbounded = hi == _c.MAXREPEAT
            if lo > RE2_MAX_REPEAT or (not unbounded and hi > RE2_MAX_REPEAT):
                raise RegexError(
                    f"it repeats something {hi if not unbounded and hi > RE2_MAX_REPEAT else lo} times; "
                    f"the linear-time engine (RE2) allows counts up to {RE2_MAX_REPEAT}"
                )
            if (lo, unbounded) == (0, True):
                q = "*"
            elif (lo, unbounded) == (1, True):
                q = "+"
            elif unbounded:
                q = f"{{{lo},}}"
            elif (lo, hi) == (0, 1):
                q = "?"
            elif lo == hi:
                q = f"{{{lo}}}"
            else:
                q = f"{{{lo},{hi}}}"
            return f"(?:{self.seq(body, flags)}){q}{'?' if name == 'MIN_REPEAT' else ''}"
        raise RegexError(f"it uses the construct {name}, which lora_kernels does not translate to RE2")

    def char_class(self, items) -> str:
        negate = False
        parts = []
        for op, av in items:
            name = getattr(op, "name", str(op))
            if name == "NEGATE":
                negate = True
            elif name == "LITERAL":
                parts.append(_char(av))
            elif name == "RANGE":
                parts.append(f"{_char(av[0])}-{_char(av[1])}")
            elif name == "CATEGORY":
                parts.append(_category(av.name, in_class=True))
            else:  # pragma: no cover - the parser emits nothing else in a class
                raise RegexError(f"it uses {name} inside a character class, which is not translated")
        if not parts:  # pragma: no cover - Python rejects an empty class
            return "[^\\x00-\\x{10ffff}]" if not negate else "(?s:.)"
        return f"[{'^' if negate else ''}{''.join(parts)}]"

    @staticmethod
    def at(name: str, flags: int) -> str:
        if name == "AT_BEGINNING":
            return "(?m:^)" if flags & _M else "^"
        if name == "AT_END":
            # Python's $ also matches before a final newline; the checked text has none.
            return "(?m:$)" if flags & _M else "$"
        if name == "AT_BEGINNING_STRING":
            return r"\A"
        if name == "AT_END_STRING":
            return r"\z"
        if name == "AT_BOUNDARY":
            return r"\b"
        if name == "AT_NON_BOUNDARY":
            return r"\B"
        raise RegexError(f"it uses the anchor {name}, which is not translated")  # pragma: no cover


def _options(capture: bool, max_mem: int = 8 << 20):
    options = re2.Options()
    options.log_errors = False
    options.never_capture = not capture
    options.max_mem = max_mem
    return options


@functools.lru_cache(maxsize=4096)
def translate(pattern: str) -> str:
    """``pattern`` (Python syntax) rewritten in RE2's syntax, from Python's own parse tree.

    Raises :class:`RegexError` (a ``ValueError``) saying why when Python's ``re`` rejects the
    pattern or it uses a construct RE2 lacks.
    """
    try:
        tree = _parser.parse(pattern, 0)
    except re.error as exc:
        raise RegexError(f"it is not a valid regular expression ({exc})") from None
    except RecursionError:
        raise RegexError("it nests groups too deeply for Python's regular expression parser") from None
    state = getattr(tree, "state", None) or getattr(tree, "pattern")
    names = {index: name for name, index in state.groupdict.items()}
    try:
        return _Writer(names).seq(tree, state.flags)
    except RecursionError:
        raise RegexError("it nests groups too deeply to translate") from None


def _reason(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode() if isinstance(arg, bytes) else str(arg)


class Program:
    """One translated pattern, run by RE2; ``text`` must pass :func:`check_text`."""

    __slots__ = ("pattern", "_re", "_groups")

    def __init__(self, pattern: str, capture: bool = False) -> None:
        self.pattern = pattern
        regexp = re2._re2.RE2(translate(pattern).encode(), _options(capture))
        if not regexp.ok():
            raise RegexError(f"the linear-time engine (RE2) refuses it ({_reason(re2.error(regexp.error()))})")
        self._re = regexp
        self._groups = {n.decode(): i for n, i in regexp.NamedCapturingGroups()} if capture else {}

    def _spans(self, anchor, text: str):
        data = text.encode()
        return self._re.Match(anchor, data, 0, len(data))

    def match(self, text: str) -> bool:
        """``re.match(pattern, text) is not None``."""
        return self._spans(re2._Anchor.ANCHOR_START, text)[0][0] != -1

    def match_bytes(self, data: bytes) -> bool:
        """:meth:`match` on ``text.encode()``."""
        return self._re.Match(re2._Anchor.ANCHOR_START, data, 0, len(data))[0][0] != -1

    def fullmatch(self, text: str) -> bool:
        """``re.fullmatch(pattern, text) is not None``."""
        return self._spans(re2._Anchor.ANCHOR_BOTH, text)[0][0] != -1

    def match_group(self, text: str, name: str) -> str | None:
        """``re.match(pattern, text).group(name)``, or None without a match."""
        spans = self._spans(re2._Anchor.ANCHOR_START, text)
        if spans[0][0] == -1:
            return None
        lo, hi = spans[self._groups[name]]
        return None if lo == -1 else text[lo:hi]


@functools.lru_cache(maxsize=4096)
def compile_python_regex(pattern: str, capture: bool = False) -> Program:
    """The RE2 program that matches what ``re.compile(pattern)`` matches (see the module doc).

    Raises :class:`RegexError` (a ``ValueError``) saying why when Python's ``re`` rejects the
    pattern, or it uses a construct RE2 lacks, or RE2 refuses it (too large a program).
    """
    return Program(pattern, capture)


def check_text(text: str) -> bool:
    """True when ``text`` is non-empty and made of printable ASCII characters only (the matches
    are exactly Python's on such text; on the empty text Python's ``\\B`` never matches and
    RE2's does)."""
    return bool(text) and text.isascii() and text.isprintable()
