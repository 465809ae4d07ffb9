"""ppo.py: the PPO loss against hand-computed numbers, the prompt order, the early-stop rule, bad input, and one
real 2-rank run (torchrun + gloo + DeepSpeed ZeRO-2 + vLLM, tiny policy and PRM, real MATH prompts) that is
killed after step 2 (its step-3 checkpoint removed) and resumed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppo import ppo_loss, prompt_indices, repetition, sudden_jump

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
       "TOKENIZERS_PARALLELISM": "false",
       "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))}


def test_ppo_loss_hand_computed():
    # ratios 1.5 (A=+1: clipped at 1.2), 0.5 (A=-1: clipped at 0.8), 3.0 masked; 1.1 (A=-2: inside), 0.7 (A=+1:
    # unclipped side, min picks 0.7), last masked.
    ratio = torch.tensor([[1.5, 0.5, 3.0], [1.1, 0.7, 1.0]])
    adv = torch.tensor([[1.0, -1.0, 5.0], [-2.0, 1.0, 7.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.1, -4.0]])
    loss, ratio_mean, clip_frac = ppo_loss(old + ratio.log(), old, adv, mask, eps_clip=0.2)
    seq0 = (-1.2 + 0.8) / 2  # -min(1.5*1, 1.2*1), -min(0.5*-1, 0.8*-1)
    seq1 = (2.2 - 0.7) / 2  # -min(1.1*-2, 1.1*-2), -min(0.7*1, 0.8*1)
    assert loss.item() == pytest.approx((seq0 + seq1) / 2, abs=1e-6)
    assert ratio_mean.item() == pytest.approx((1.5 + 0.5 + 1.1 + 0.7) / 4, abs=1e-6)
    assert clip_frac.item() == pytest.approx(3 / 4)  # 1.5, 0.5, 0.7 are outside [0.8, 1.2]; 3.0 is masked


def test_ppo_loss_sequence_mean_and_ratio_quirk():
    # Per-sequence token mean, then batch mean: a 1-token sequence weighs as much as a 3-token one.
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss, _, _ = ppo_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-(1.0 + 4.0) / 2)
    # QUIRK: a batch whose mean ratio exceeds 10 gives a zero loss (and zero gradient).
    logp = torch.full((2, 3), 3.0, requires_grad=True)  # ratio e^3 ~ 20
    loss, ratio_mean, _ = ppo_loss(logp, torch.zeros(2, 3), adv, mask)
    loss.backward()
    assert ratio_mean > 10 and loss.item() == 0 and logp.grad.abs().sum() == 0


def test_prompt_order_is_a_function_of_seed_and_step():
    steps = [prompt_indices(s, 10, 3, seed=42) for s in range(1, 7)]  # 3 steps per epoch, drop_last
    epoch1 = steps[0] + steps[1] + steps[2]
    assert len(set(epoch1)) == 9 and all(0 <= i < 10 for i in epoch1)
    assert steps[3] + steps[4] + steps[5] != epoch1  # a new permutation each epoch
    assert prompt_indices(5, 10, 3, seed=42) == steps[4]  # a resumed run draws the same prompts
    assert prompt_indices(1, 10, 3, seed=7) != steps[0]


def test_repetition_and_sudden_jump():
    assert repetition([1, 2, 3, 4, 5, 6]) == 0
    assert repetition([1, 2, 3, 4] * 5) == pytest.approx(1 - 4 / 17)
    history = [{"kl": 0.01 + 0.001 * (i % 2)} for i in range(10)]  # mean 0.0105, std 0.0005
    assert sudden_jump(history, {"kl": 0.012}, ["kl"], zscore=6) is None  # 3 std
    assert sudden_jump(history, {"kl": 0.02}, ["kl"], zscore=6) == "kl"  # 19 std
    assert sudden_jump(history[:5], {"kl": 1.0}, ["kl"], zscore=6) is None  # too little history


def test_bad_prm_tokenizer_is_one_line(tmp_path, tiny_model_dir, tiny_prm_dir, shared_data):
    from transformers import AutoTokenizer

    prm = tmp_path / "prm"
    prm.mkdir()
    for f in tiny_prm_dir.iterdir():
        (prm / f.name).symlink_to(f)
    (prm / "tokenizer.json").unlink()
    (prm / "tokenizer_config.json").unlink()
    tok = AutoTokenizer.from_pretrained(tiny_prm_dir)
    tok.add_tokens(["<extra_step_token>"])
    tok.save_pretrained(prm)
    r = subprocess.run([sys.executable, "ppo.py", "--model", str(tiny_model_dir), "--prm", str(prm), "--prompts",
                        str(shared_data / "train" / "pure_8k_math_879_answers.jsonl"), "--output-dir",
                        str(tmp_path / "out")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == f"error: {prm}: tokenizer: PRM tokenizer differs from the policy's " \
                                                f"({tiny_model_dir})"
    assert not (tmp_path / "out").exists()


TINY_RUN = ["--rollout-batch-size", "4", "--n-samples-per-prompt", "2", "--generate-max-len", "24",
            "--train-batch-size", "4", "--micro-train-batch-size", "1", "--micro-rollout-batch-size", "2",
            "--max-steps", "3", "--save-steps", "2", "--rollouts-every", "1", "--actor-learning-rate", "1e-3"]
FIELDS = ["step", "reward/process", "reward/verifiable", "reward/combined", "solved", "prm_vr_agreement", "kl",
          "clip_frac", "loss", "response_length", "response_length/correct", "response_length/incorrect",
          "steps_per_response", "tokens_per_step", "repetition", "logprob_diff_vllm/mean", "logprob_diff_vllm/max",
          "time/gen", "time/prm", "time/ref", "time/train", "time/sync", "perf/gen_tokens_per_s", "perf/tokens_per_s"]


def torchrun(args, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "ppo.py", *args,
           "--output-dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_two_rank_run_then_kill_and_resume(tmp_path, tiny_model_dir, tiny_prm_dir, shared_data):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--prm", str(tiny_prm_dir),
            "--prompts", str(shared_data / "train" / "pure_8k_math_879_answers.jsonl"), *TINY_RUN,
            "--keep-all-ds-states"]  # the "kill" below removes checkpoint-3, so checkpoint-2 must keep its ds/
    torchrun(args, out)
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(FIELDS) <= set(r), set(FIELDS) - set(r)
        assert all(r[k] is not None for k in ["reward/process", "kl", "loss", "clip_frac", "time/train"])
        assert abs(r["loss"]) < 1e3 and r["response_length"] > 0
        # The sampler's log-probs equal the trainer's (fp32) on every sampled token, also after weight pushes.
        assert r["logprob_diff_vllm/max"] < 1e-4
    assert rows[0]["kl"] == 0 and rows[2]["kl"] != 0  # the policy moved away from the reference
    assert (out / "curves.png").is_file() and list((out / "tb").iterdir())
    first = load_file(tiny_model_dir / "model.safetensors")
    ckpt3 = load_file(out / "checkpoint-3" / "model.safetensors")
    assert max((first[k] - ckpt3[k]).abs().max().item() for k in first) > 1e-3  # policy weights changed
    samples3 = read_rows(out / "rollouts" / "step-3.jsonl")

    # "Kill" after step 2: the step-3 checkpoint was never written. Rerunning the same command resumes from
    # checkpoint-2, draws the same step-3 prompts, restores the optimizer and ends at the same weights.
    (out / "checkpoint-3").rename(tmp_path / "killed-checkpoint-3")
    log = torchrun(args, out)
    assert "resuming after step 2" in log
    assert [r["step"] for r in read_rows(out / "metrics.jsonl")] == [1, 2, 3]
    resumed3 = read_rows(out / "rollouts" / "step-3.jsonl")
    assert [s["prompt_position"] for s in resumed3] == [s["prompt_position"] for s in samples3]
    assert [s["prompt"] for s in resumed3] == [s["prompt"] for s in samples3]
    assert [s["response"] for s in resumed3] == [s["response"] for s in samples3]  # same weights + seeds
    again = load_file(out / "checkpoint-3" / "model.safetensors")
    assert max((ckpt3[k] - again[k]).abs().max().item() for k in ckpt3) < 1e-5  # Adam moments restored

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "checkpoint-3").config.vocab_size > 0
