"""Speed of the world's RL step (run_cpu.sh part A: one rank pinned to one core, 32 prompts x 4 samples, 128 new
tokens): seconds per phase from ppo.py's own metrics, and the trainer's achieved FLOP/s against this core's matmul
FLOP/s measured in the same run, with and without gradient checkpointing (which decides ppo.py's CPU default).

    python bench/bench_world.py [--world runs/cpu/world] [--steps 4]

FLOPs counted: 2 x N per token for a forward pass, 6 x N for forward + backward (+ 2 x N for the recompute of
gradient checkpointing), N = the model's matmul parameters (the tied embedding counted once, as the LM head), over
the real (unpadded) prompt + response tokens; attention scores (T = 100 << 6 x hidden) are left out. So the
ratio is a floor: padding and attention are work done but not counted. Step 1 (warm-up) is left out of the means."""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RL = ("--rollout-batch-size 32 --n-samples-per-prompt 4 --generate-max-len 128 --prompt-max-len 64 "
      "--train-batch-size 64 --micro-train-batch-size 32 --micro-rollout-batch-size 64 --actor-learning-rate 1e-4 "
      "--rollouts-every 1 --reward-mode PRM --credit min").split()


@dataclass
class Args:
    world: str = str(ROOT / "runs" / "cpu" / "world")
    """a world with base/ and prm2/ (bash run_cpu.sh makes runs/cpu/world)"""
    steps: int = 4
    """RL steps per setting (the first is warm-up)"""
    core: int = 0
    """the core the run and the matmul probe are pinned to"""
    out: str = str(ROOT / ".cache" / "bench_world")
    """where the runs go"""


def matmul_flops(m, k, n, seconds=1.0):
    """fp32 FLOP/s of [m, k] @ [k, n] on the current thread count."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def matmul_params(model_dir, token_classification=False):
    """Parameters that take part in a matmul: all but the input embedding (a lookup), unless tied to the LM head."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    cls = AutoModelForTokenClassification if token_classification else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    return sum(p.numel() for p in model.parameters()) - (0 if tied else emb.numel())


def run_ppo(args, out, checkpointing):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": str(args.core),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    w = Path(args.world)
    cmd = ["taskset", "-c", str(args.core), sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "1", str(ROOT / "ppo.py"), "--model", str(w / "base"), "--prm", str(w / "prm2"),
           "--prompts", str(w / "rl_prompts.jsonl"), "--output-dir", str(out), "--max-steps", str(args.steps),
           "--save-steps", str(args.steps), *RL,
           "--gradient-checkpointing" if checkpointing else "--no-gradient-checkpointing"]
    subprocess.run(["rm", "-rf", str(out)], check=True)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: ppo.py failed ({out}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return [json.loads(line) for line in open(out / "metrics.jsonl")][1:]


def tokens_per_step(out, tok, steps):
    """Real prompt + response tokens of each logged step's rollouts."""
    totals = []
    for k in range(2, steps + 1):
        rows = [json.loads(line) for line in open(out / "rollouts" / f"step-{k}.jsonl")]
        totals.append(sum(len(tok.encode(r["prompt"], add_special_tokens=False)) + r["length"] for r in rows))
    return totals


def main(args):
    from transformers import AutoTokenizer

    w = Path(args.world)
    if not (w / "base" / "config.json").is_file() or not (w / "prm2" / "config.json").is_file():
        sys.exit(f"error: {w}: no base/ and prm2/ (run `bash run_cpu.sh` first)")
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    peak = matmul_flops(1024, 1024, 1024)
    model_shape = matmul_flops(32 * 100, 128, 384)  # a micro-batch of 32 x ~100 tokens through the MLP's up-projection
    n_policy, n_prm = matmul_params(w / "base"), matmul_params(w / "prm2", token_classification=True)
    tok = AutoTokenizer.from_pretrained(w / "base")
    print(f"core {args.core}: matmul {peak / 1e9:.1f} GFLOP/s (1024^3), {model_shape / 1e9:.1f} GFLOP/s at the "
          f"model's shape [3200,128]x[128,384]; policy {n_policy:,} matmul parameters, PRM {n_prm:,}")
    print("| checkpointing | gen s | ref s | prm s | train s | sync s | step s | train GFLOP/s | train / matmul peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for checkpointing in (False, True):
        out = Path(args.out) / ("ckpt" if checkpointing else "no-ckpt")
        rows = run_ppo(args, out, checkpointing)
        tokens = sum(tokens_per_step(out, tok, args.steps)) / len(rows)
        mean = {k: sum(r[f"time/{k}"] for r in rows) / len(rows) for k in ("gen", "ref", "prm", "train", "sync")}
        train_flops = (8 if checkpointing else 6) * n_policy * tokens
        achieved = train_flops / mean["train"]
        print(f"| {'on' if checkpointing else 'off'} | " + " | ".join(f"{mean[k]:.2f}" for k in mean)
              + f" | {sum(mean.values()):.2f} | {achieved / 1e9:.2f} | {achieved / peak:.2f} |")
    print(f"(ref phase: 2 forward passes, {4 * n_policy * tokens / 1e9:.2f} GFLOP; prm phase: "
          f"{2 * n_prm * tokens / 1e9:.2f} GFLOP + credit; {tokens:.0f} real tokens per step)")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
