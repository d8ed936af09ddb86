"""``inspect`` and ``check``: the PEFT side of the command line (``python -m lora_kernels ...``).

``inspect ADAPTER_DIR...`` prints, per module, the rank, alpha, rsLoRA flag and the scale this
library will use, and — where it differs — what a plain ``alpha / r`` would have given and by
what factor (the rsLoRA bug of LoRAX #700, vLLM #10798, SGLang #40835). Never imports peft.

``check --base MODEL_DIR ADAPTER_DIR...`` loads a local transformers model, runs PEFT and
:class:`~lora_kernels.MultiLoRAModel` on one mixed batch (one row per adapter plus a
``"__base__"`` row), prints the largest difference per adapter and exits 1 above tolerance.
Needs the ``[hf]`` extras (peft, transformers).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

__all__ = ["add_subcommands", "inspect_main", "check_main", "format_inspect"]

_DTYPES = {"float64": "float64", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
_DEFAULT_TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 5e-2, "float16": 2e-2}


def add_subcommands(subparsers) -> None:
    """Register ``inspect`` and ``check`` on an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "inspect",
        help="per-module r, alpha, rsLoRA and effective scale of PEFT adapters",
        description=(
            "Load PEFT LoRA adapters as lora_kernels serves them and print, per module: r, "
            "alpha (after rank_pattern / alpha_pattern), the rsLoRA flag, the effective scale, "
            "and where it differs what a plain alpha/r would have used and by what factor. "
            "A refused adapter prints why and the command exits 1."
        ),
    )
    p.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR", help="directories saved by PEFT")
    p.set_defaults(func=inspect_main)

    p = subparsers.add_parser(
        "check",
        help="run PEFT and lora_kernels on one mixed batch and compare",
        description=(
            "Load a local transformers model (AutoModelForCausalLM) twice, serve ADAPTER_DIRs "
            "with PEFT (adapter_names=) and with lora_kernels.MultiLoRAModel on one mixed batch "
            "(one row per adapter plus a '__base__' row, random token ids), print the largest "
            "difference per adapter and exit 1 if any exceeds the tolerance or an adapter is "
            "refused. Needs peft and transformers."
        ),
    )
    p.add_argument("--base", required=True, metavar="MODEL_DIR", help="local base model directory")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR", help="directories saved by PEFT")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                   help="model dtype (default float32; float64 on CPU only)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--seq-len", type=int, default=16, help="tokens per row (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--tol", type=float, default=None,
                   help="largest accepted ||ours - peft|| / ||peft|| per row "
                        "(default: 1e-10 float64, 2e-5 float32, 5e-2 bfloat16, 2e-2 float16)")
    p.set_defaults(func=check_main)


# --------------------------------------------------------------------------------------------
# inspect


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def format_inspect(adapter) -> str:
    """The ``inspect`` report of one loaded :class:`~lora_kernels.peft.PeftAdapter`."""
    from .peft import resolve_rank_alpha

    cfg = adapter.config
    rp, ap = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    lines = [f"adapter: {adapter.path}"]
    lines.append(
        f"  peft_type {cfg.get('peft_type')}, r {cfg.get('r', 8)}, lora_alpha "
        f"{cfg.get('lora_alpha', 8)}, use_rslora {bool(cfg.get('use_rslora', False))}, "
        f"lora_bias {bool(cfg.get('lora_bias', False))}"
        + (f", peft_version {cfg['peft_version']}" if cfg.get("peft_version") else "")
    )
    if rp:
        lines.append(f"  rank_pattern  {rp}")
    if ap:
        lines.append(f"  alpha_pattern {ap}")
    for what, copies in (("weight", adapter.base_weights), ("bias", adapter.base_biases)):
        if copies:
            shown = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(copies.items()))
            lines.append(
                f"  base-layer {what} copies saved inside: {shown} (served only if equal to "
                f"the base model's own)"
            )
    ignored = getattr(adapter, "ignored_modules", [])
    if ignored:
        shown = ", ".join(ignored[:8]) + (f", ... ({len(ignored)} in all)" if len(ignored) > 8 else "")
        lines.append(
            f"  ignored (tensors saved, but not selected by target_modules / exclude_modules / "
            f"layers_to_transform; PEFT ignores them too): {shown}"
        )
    header = ["module", "kind", "r", "alpha", "rsLoRA", "scale", "alpha/r", "factor"]
    if rp or ap:
        header += ["from"]
    rows = []
    factors = []
    for name in sorted(adapter.modules):
        m = adapter.modules[name]
        plain = m.plain_scaling
        differs = plain != m.scaling
        factor = m.scaling / plain if plain else math.inf
        if differs:
            factors.append(factor)
        row = [
            name,
            m.kind + ("+bias" if m.lora_bias is not None else ""),
            str(m.r),
            _fmt(m.alpha),
            "yes" if m.use_rslora else "no",
            _fmt(m.scaling),
            _fmt(plain) if differs else "",
            f"{factor:.4g}x" if differs else "",
        ]
        if rp or ap:
            _, _, r_key, a_key = resolve_rank_alpha(cfg, name)
            src = []
            if r_key is not None:
                src.append(f"r<-{r_key!r}")
            if a_key is not None:
                src.append(f"alpha<-{a_key!r}")
            row.append(" ".join(src))
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    right = {2, 3, 5, 6, 7}

    def line(cells):
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return ("  ".join(out)).rstrip()

    lines.append("")
    lines.append(line(header))
    lines.append(line(["-" * w for w in widths]))
    lines.extend(line(r) for r in rows)
    lines.append("")
    summary = f"{len(rows)} modules, ranks {sorted({adapter.modules[n].r for n in adapter.modules})}"
    lines.append(summary + "; scale = alpha / sqrt(r) (rsLoRA)" if adapter.use_rslora
                 else summary + "; scale = alpha / r")
    if factors:
        lo, hi = min(factors), max(factors)
        span = f"{lo:.4g}x" if lo == hi else f"{lo:.4g}x to {hi:.4g}x"
        lines.append(
            f"rsLoRA: a server that used alpha/r would scale these updates {span} too small "
            f"on {len(factors)} of {len(rows)} modules."
        )
    return "\n".join(lines)


def inspect_main(args: argparse.Namespace) -> int:
    from .peft import PeftAdapterError, load_peft_adapter

    status = 0
    for i, path in enumerate(args.adapters):
        if i:
            print()
        try:
            adapter = load_peft_adapter(path)
        except (PeftAdapterError, FileNotFoundError) as exc:
            print(f"adapter: {path}\nREFUSED: {exc}")
            status = 1
            continue
        print(format_inspect(adapter))
    return status


# --------------------------------------------------------------------------------------------
# check


def _unique_names(paths: list[str]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = os.path.basename(os.path.normpath(p)) or "adapter"
        name, k = base, 2
        while name in names or name == "__base__":
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


_ADAPTER_AS_BASE = (
    "--base {base} already carries a LoRA adapter (it holds a PEFT adapter, not a plain base "
    "model): give --base the directory of the base model the adapters were trained on, and the "
    "adapter directories after it."
)


def _base_dir_problem(base: str) -> str | None:
    """Why ``--base`` cannot be a base model directory, or None."""
    if not os.path.isdir(base):
        what = "a file" if os.path.exists(base) else "nothing"
        return (
            f"--base {base}: there is no model directory there ({what} at that path); give the "
            f"local directory of a transformers model (saved by save_pretrained, with a config.json)."
        )
    if os.path.exists(os.path.join(base, "adapter_config.json")):
        return _ADAPTER_AS_BASE.format(base=base)
    if not os.path.exists(os.path.join(base, "config.json")):
        return (
            f"--base {base}: the directory holds no config.json, so it is no transformers model "
            f"directory; give the directory a model was saved to by save_pretrained."
        )
    return None


def _carries_lora(model) -> bool:
    """True when the loaded model already has PEFT LoRA layers in it (a base that carries an
    adapter: transformers loads one when the directory points it to an adapter)."""
    if getattr(model, "_hf_peft_config_loaded", False) or getattr(model, "peft_config", None):
        return True
    return any(hasattr(m, "lora_A") and hasattr(m, "base_layer") for m in model.modules())


_HEADER = ["adapter", "max |ours - peft|", "rel diff", "effect", "status"]


def _refused_row(name: str, why: str) -> list[str]:
    return [name, "-", "-", "-", "REFUSED: " + " ".join(why.split())]


def _print_table(table: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(_HEADER)]
    print("  ".join(h.ljust(w) for h, w in zip(_HEADER, widths)).rstrip())
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def check_main(args: argparse.Namespace) -> int:
    try:
        import torch
        import transformers
        from peft import PeftModel
    except ImportError as exc:
        print(
            f"check needs peft and transformers ({exc}); install the [hf] extras: "
            f"pip install 'lora_kernels[hf]'",
            file=sys.stderr,
        )
        return 2
    import copy

    from .model import MultiLoRAModel
    from .peft import PeftAdapterError, load_peft_adapter

    dtype = getattr(torch, _DTYPES[args.dtype])
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == torch.float64 and device != "cpu":
        print("check: float64 runs on CPU only; use --device cpu", file=sys.stderr)
        return 2
    tol = args.tol if args.tol is not None else _DEFAULT_TOL[args.dtype]
    if args.seq_len < 1:
        print("check: --seq-len must be >= 1", file=sys.stderr)
        return 2

    try:
        torch.device(device)
    except RuntimeError:
        print(f"check: --device must be cpu or cuda (or cuda:N), got {device!r}.", file=sys.stderr)
        return 2
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(f"check: --device {device}, but torch sees no CUDA device here.", file=sys.stderr)
        return 2
    problem = _base_dir_problem(args.base)
    if problem:
        print(f"check: {problem}", file=sys.stderr)
        return 2

    status = 0
    names, paths = [], []
    refused: list[tuple[str, str]] = []  # (name, why): a row of the table
    for name, path in zip(_unique_names(args.adapters), args.adapters):
        try:
            load_peft_adapter(path)
        except (PeftAdapterError, FileNotFoundError) as exc:
            print(f"REFUSED {name} ({path}): {exc}")
            refused.append((name, str(exc)))
            status = 1
            continue
        names.append(name)
        paths.append(path)
    if not names:
        _print_table([_refused_row(n, why) for n, why in refused])
        print("check: no adapter left to compare", file=sys.stderr)
        print("FAIL")
        return 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            base = transformers.AutoModelForCausalLM.from_pretrained(args.base, dtype=dtype)
        except Exception as exc:
            print(f"check: cannot load a causal LM from {args.base!r}: {exc}", file=sys.stderr)
            return 2
        if _carries_lora(base):
            print(f"check: {_ADAPTER_AS_BASE.format(base=args.base)}", file=sys.stderr)
            return 2
        base = base.to(device).eval()
        ours = MultiLoRAModel(copy.deepcopy(base), max_adapters=len(names)).eval()
        plain_base = copy.deepcopy(base)
        accepted = []
        for name, path in zip(names, paths):
            try:  # the checks against the served model (e.g. saved embedding copies)
                ours.add_adapter(name, path)
            except PeftAdapterError as exc:
                print(f"REFUSED {name} ({path}): {exc}")
                refused.append((name, str(exc)))
                status = 1
                continue
            accepted.append((name, path))
        if not accepted:
            _print_table([_refused_row(n, why) for n, why in refused])
            print("check: no adapter left to compare", file=sys.stderr)
            print("FAIL")
            return 1
        names = [n for n, _ in accepted]
        try:
            pm = PeftModel.from_pretrained(base, accepted[0][1], adapter_name=names[0])
            for name, path in accepted[1:]:
                pm.load_adapter(path, adapter_name=name)
        except Exception as exc:
            print(f"check: PEFT itself cannot load these adapters on this model: {exc}", file=sys.stderr)
            return 2
        pm.eval()

    rows = names + ["__base__"]
    vocab = int(getattr(base.config, "vocab_size", 0) or base.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (len(rows), args.seq_len), generator=g).to(device)
    with torch.no_grad():
        ref = pm(input_ids=ids, adapter_names=rows).logits.double()
        out = ours(input_ids=ids, adapter_names=rows).logits.double()
        plain = plain_base(input_ids=ids).logits.double()

    print(
        f"base {args.base} ({type(base).__name__}), {args.dtype} on {device}, one batch of "
        f"{len(rows)} rows x {args.seq_len} tokens; tolerance {tol:g} on ||ours - peft|| / ||peft||"
    )
    table = []
    for i, name in enumerate(rows):
        diff = (out[i] - ref[i]).abs().max().item()
        rel = ((out[i] - ref[i]).norm() / ref[i].norm().clamp_min(1e-300)).item()
        effect = ((ref[i] - plain[i]).norm() / plain[i].norm().clamp_min(1e-300)).item()
        if name == "__base__":
            ok = bool(torch.equal(out[i], plain[i]))
            verdict = "ok (bit-equal to the base model)" if ok else "FAIL (differs from the base model)"
        else:
            ok = rel <= tol and math.isfinite(rel)
            verdict = "ok" if ok else "FAIL"
        if not ok:
            status = 1
        table.append([name, f"{diff:.3e}", f"{rel:.3e}", f"{effect:.3e}", verdict])
    _print_table(table + [_refused_row(n, why) for n, why in refused])
    print("effect = ||peft - base|| / ||base||: how much the adapter changes the logits")
    print("PASS" if status == 0 else "FAIL")
    return status
