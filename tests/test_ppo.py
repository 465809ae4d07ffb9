"""ppo.py: the PPO loss against hand-computed numbers, the prompt order, the early-stop rule, bad input, and one
real 2-rank run (torchrun + gloo + DeepSpeed ZeRO-2 + vLLM, tiny policy and PRM, real MATH prompts) that is
killed after step 2 (its step-3 checkpoint removed) and resumed."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ppo
from credit import step_sums
from ppo import ppo_loss, prompt_indices
from runtime import repetition, sudden_jump

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


def test_prompt_order_covers_each_prompt_once_per_epoch():
    steps = [prompt_indices(s, 10, 3, seed=42) for s in range(1, 7)]  # 3 steps per epoch, drop_last
    epoch1 = steps[0] + steps[1] + steps[2]
    assert len(set(epoch1)) == 9 and all(0 <= i < 10 for i in epoch1)  # 9 distinct of 10: one left out (drop_last)
    assert steps[3] + steps[4] + steps[5] != epoch1  # a new permutation each epoch
    assert prompt_indices(1, 10, 3, seed=7) != steps[0]  # the seed decides it (resume: test_two_rank_run...)


def test_step_sums_equal_a_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 7, generator=g, dtype=torch.float64)
    ends = [[1, 4, 6], [0, 2], [6]]  # terminal tokens; the last step of a row ends at its final token
    step_end = torch.zeros(3, 7, dtype=torch.bool)
    for i, e in enumerate(ends):
        step_end[i, e] = True
    got = step_sums(r, step_end)
    for i, e in enumerate(ends):
        starts = [0] + [t + 1 for t in e[:-1]]
        want = [r[i, a:b + 1].sum().item() for a, b in zip(starts, e)]
        assert got[i, e].tolist() == pytest.approx(want, abs=1e-12)
        assert (got[i][~step_end[i]] == 0).all()


def test_optimizer_chunks_by_hand():
    # 10 sequences, 4 per optimizer step, micro-batches of 3: the tail of each step and of the buffer are short
    assert ppo.optimizer_chunks(10, 4, 3) == [[[0, 1, 2], [3]], [[4, 5, 6], [7]], [[8, 9]]]
    assert ppo.optimizer_chunks(4, 4, 2) == [[[0, 1], [2, 3]]]


def test_repetition_and_sudden_jump():
    assert repetition([1, 2, 3, 4, 5, 6]) == 0
    assert repetition([1, 2, 3, 4] * 5) == pytest.approx(1 - 4 / 17)
    history = [{"kl": 0.01 + 0.001 * (i % 2)} for i in range(10)]  # mean 0.0105, std 0.0005
    assert sudden_jump(history, {"kl": 0.012}, ["kl"], zscore=6) is None  # 3 std
    assert sudden_jump(history, {"kl": 0.02}, ["kl"], zscore=6) == "kl"  # 19 std
    assert sudden_jump(history[:5], {"kl": 1.0}, ["kl"], zscore=6) is None  # too little history


def test_bad_prm_tokenizer_is_one_line(tmp_path, tiny_model_dir, tiny_prm_dir, repo_data):
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
                        str(repo_data / "train" / "pure_prompts_256.jsonl"), "--output-dir",
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


def steps_in_text(sample):
    """Steps of a logged response counted from its text: pieces between runs of 2+ newlines; a final run is the last
    step's end, and an EOS after it (finish "stop") one more step of its own (the reference's rule)."""
    pieces = re.split(r"\n{2,}", sample["response"])
    return len(pieces) - (pieces[-1] == "" and sample["finish_reason"] != "stop")


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_two_rank_run_then_kill_and_resume(tmp_path, tiny_model_dir, tiny_prm_dir, repo_data):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--prm", str(tiny_prm_dir),
            "--prompts", str(repo_data / "train" / "pure_prompts_256.jsonl"), *TINY_RUN,
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
    for r in rows:  # every logged metric of the samples is what the logged samples say
        samples = read_rows(out / "rollouts" / f"step-{r['step']}.jsonl")
        assert len(samples) == 4 * 2
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        graded = [s for s in samples if s["correct"] is not None]
        assert r["response_length"] == pytest.approx(mean([s["length"] for s in samples]))
        assert r["solved"] == pytest.approx(mean([float(s["correct"]) for s in graded]))
        assert r["answered_frac"] == pytest.approx(mean([float(s["gold"] is not None) for s in samples]))
        assert r["truncated_frac"] == pytest.approx(mean([float(s["finish_reason"] == "length") for s in samples]))
        assert r["steps_per_response"] == pytest.approx(mean([steps_in_text(s) for s in samples]))
        assert r["reward/verifiable"] == (mean([float(s["correct"]) - 1 for s in samples if s["gold"]])
                                          if any(s["gold"] for s in samples) else None)
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
    assert [s["prompt_id"] for s in resumed3] == [s["prompt_id"] for s in samples3]
    assert [s["prompt"] for s in resumed3] == [s["prompt"] for s in samples3]
    assert [s["response"] for s in resumed3] == [s["response"] for s in samples3]  # same weights + seeds
    again = load_file(out / "checkpoint-3" / "model.safetensors")
    assert max((ckpt3[k] - again[k]).abs().max().item() for k in ckpt3) < 1e-5  # Adam moments restored

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "checkpoint-3").config.vocab_size > 0


# ---------------------------------------------------------------------------------------------- the loop's parts
@pytest.fixture(scope="module")
def world_of_one():
    """A one-process gloo group: the loop's all-reduces (all_ranks_ok, the filter's group count) run as in torchrun."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class ShimEngine:
    """What ppo_update asks of a DeepSpeed engine (forward, train, backward, step), over a plain model + SGD."""

    def __init__(self, model, lr):
        self.module, self.opt = model, torch.optim.SGD(model.parameters(), lr=lr)

    def __call__(self, **kw):
        return self.module(**kw)

    def train(self):
        self.module.train()

    def backward(self, loss, scale_wrt_gas=True):
        loss.backward()

    def step(self):
        self.opt.step()
        self.opt.zero_grad()


def test_one_ppo_update_follows_the_sign_of_the_advantage(world_of_one, tiny_model_dir):
    """One update on a positive advantage raises the response's log-probability, on a negative one lowers it."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    samples = [{"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 10, 11]},
               {"prompt_ids": [12, 13], "response_ids": [14, 15, 16]}]
    mask = torch.tensor([[True] * 4, [True] * 3 + [False]])
    args = SimpleNamespace(train_batch_size=2, micro_train_batch_size=2, eps_clip=0.2)
    for sign in (1.0, -1.0):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        with torch.no_grad():
            before = ppo.response_logprobs(model, samples, 0, "cpu")  # [2, 4]
        adv = torch.tensor([[sign] * 4, [0.0] * 4])  # only the first response carries an advantage
        stats = ppo.ppo_update(ShimEngine(model, lr=1e-2), samples, before, adv, mask, args, 1, 0, "cpu",
                               torch.Generator().manual_seed(0))
        with torch.no_grad():
            after = ppo.response_logprobs(model, samples, 0, "cpu")
        assert sign * (after[0] - before[0]).sum() > 0
        assert stats["ratio"] == pytest.approx(1.0, abs=1e-5)  # one micro-batch: it is pi_old itself
        assert stats["loss"] == pytest.approx(-sign / 2, abs=1e-5)  # -mean_t(A) of sequence 0, 0 of sequence 1


def rollout_state(prompts, R, reward_mode="PRIME", rounds=2, filt="auto"):
    from types import SimpleNamespace

    args = SimpleNamespace(n_samples_per_prompt=2, accuracy_filter=filt, reward_mode=reward_mode, rollout_batch_size=R,
                           seed=3, filter_max_rounds=rounds, max_steps=10, temperature=1.0, top_p=1.0,
                           generate_max_len=8, prompt_max_len=64, grader_timeout=1.0, filter_lower=0.2,
                           filter_upper=0.8)
    return SimpleNamespace(args=args, prompts=prompts, rank=0, world=1, cuda=False, device=torch.device("cpu"),
                           llm=None)


def stub_generate(prompts, right):
    """A stand-in for rollout.generate: sample j of question q answers right iff right(q, j)."""
    def generate(llm, texts, n, **kw):
        out = []
        for i, text in enumerate(texts):
            q = next(p for p in prompts if ppo.format_prompt(p["question"]) == text)
            for j in range(n):
                answer = q["answer"] if right(q["question"], j) else "wrong"
                out.append({"prompt_index": i, "response_text": answer, "response_ids": [1], "logprobs": [0.0],
                            "prompt_ids": [2], "finish_reason": "stop"})
        return out
    return generate


def stub_grader(responses, golds, timeout=None):
    return [{"correct": r == g, "extracted": r, "timed_out": False} for r, g in zip(responses, golds)]


def test_accuracy_filter_drops_uniform_groups_and_refills(world_of_one, monkeypatch):
    import rewards

    # q0-q3 always right, q4-q7 always wrong, q8-q11 half right (sample 0 of 2): only q8-q11 may be kept
    prompts = [{"question": f"q{i}", "answer": str(i), "ref_answer": str(i)} for i in range(12)]
    mixed = {f"q{i}" for i in range(8, 12)}
    right = lambda q, j: int(q[1:]) < 4 or (q in mixed and j == 0)  # noqa: E731
    monkeypatch.setattr(ppo, "generate", stub_generate(prompts, right))
    monkeypatch.setattr(rewards, "grade_many", stub_grader)
    s = rollout_state(prompts, R=2, rounds=6)
    samples, grades, counts = vars(ppo.sample_and_grade(s, step=1)).values()
    groups = [samples[k]["prompt_id"] for k in range(0, len(samples), 2)]
    assert len(groups) == 2 and all(f"q{g}" in mixed for g in groups)  # refilled to a full step, mixed only
    assert [g["correct"] for g in grades] == [True, False, True, False]
    assert counts["filter/kept"] == 2 and counts["filter/drawn"] >= 2 and counts["filter/drawn"] % 2 == 0
    # no mixed prompt at all and a bounded refill: the step ends with nothing, it does not spin
    monkeypatch.setattr(ppo, "generate", stub_generate(prompts, lambda q, j: int(q[1:]) < 4))
    samples, grades, counts = vars(ppo.sample_and_grade(rollout_state(prompts, R=2, rounds=3), step=1)).values()
    assert samples == [] and counts == {"filter/drawn": 8, "filter/kept": 0}  # 1 + 3 rounds of 2 prompts
    # the filter off (a PURE mode): every group is kept, uniform or not
    ro = ppo.sample_and_grade(rollout_state(prompts, R=2, reward_mode="PRMVR"), step=1)
    samples, counts = ro.samples, ro.counts
    assert len(samples) == 4 and counts == {"filter/drawn": 2, "filter/kept": 2}


def test_vr_only_credit_and_a_non_finite_prm_stop(world_of_one, monkeypatch):
    """--reward-mode VR: no PRM, the advantage is the leave-one-out verifiable reward alone (its sign per sample);
    a NaN PRM score stops the run with a Stop, not a crash in the optimizer."""
    from types import SimpleNamespace

    import rewards
    from credit import CreditArgs

    args = SimpleNamespace(**vars(CreditArgs(reward_mode="VR", kl_coef=0.0)), n_samples_per_prompt=2,
                           micro_rollout_batch_size=2)
    prompts = [{"question": "q", "answer": "1", "ref_answer": "1"}]
    s = SimpleNamespace(args=args, prm=None, scorer=None, prompts=prompts, device=torch.device("cpu"))
    samples = [{"prompt_id": 0, "prompt_ids": [1], "response_ids": [3, 4, 5]} for _ in range(2)]
    grades = [{"correct": True}, {"correct": False}]
    mask = torch.ones(2, 3, dtype=torch.bool)
    step_end = torch.tensor([[False, False, True]] * 2)
    batch = ppo.Batch([[3], [3]], mask, step_end, None, None, None, torch.zeros(2, 3))
    adv, scores, info = vars(ppo.pure_rewards_and_credit(s, ppo.Rollouts(samples, grades, {}), batch)).values()
    assert scores is None and info["reward/process"] == 0
    # v' = +1 / -1 on the EOS, reaching the 2 content tokens; the EOS itself is masked; whitening: +-1 / 1
    assert adv.tolist() == [[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]
    s.prm, s.prm_tok, args.reward_mode = torch.nn.Linear(1, 1), None, "PRMVR"
    monkeypatch.setattr(rewards, "prm_scores", lambda *a, **k: [[float("nan")], [0.5]])
    with pytest.raises(ppo.Stop, match="non-finite PRM score"):
        ppo.pure_rewards_and_credit(s, ppo.Rollouts(samples, grades, {}), batch)


def test_early_stop_checkpoints_then_stops_the_loop(tmp_path, monkeypatch):
    """Plumbing: the loop checkpoints at the step whose metrics jumped and runs no further step."""
    from types import SimpleNamespace

    ran, saved = [], []
    s = SimpleNamespace(start=0, rank=0, local_rank=0, out=tmp_path, sync_dir=tmp_path / "sync", engine=None,
                        tok=None, prm_engine=None, writer=SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(ppo, "start_run", lambda args: s)
    monkeypatch.setattr(ppo, "rl_step", lambda s, step: ran.append(step) or ([], {}))
    monkeypatch.setattr(ppo, "log_step", lambda s, step, *_: "kl" if step == 3 else None)
    monkeypatch.setattr(ppo, "save_checkpoint", lambda engine, tok, out, step, *a: saved.append(step))
    monkeypatch.setattr(ppo, "plot_metrics", lambda *a: None)
    monkeypatch.setattr(ppo.dist, "barrier", lambda: None)
    ppo.main(SimpleNamespace(max_steps=10, save_steps=100, keep_all_ds_states=False, eval_every=0))
    assert ran == [1, 2, 3] and saved == [3]


class PieceTokenizer:
    """Token i decodes to pieces[i]; the last piece is the EOS, which skip_special_tokens drops."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == len(self.pieces) - 1))


@pytest.mark.parametrize("credit, right_returns", [("min", [1.35, 0.0, 0.675, 0.0]), ("sum", [2.7, 0.0, 1.35, 0.0])])
def test_step_scorer_scores_reach_the_credit_unchanged(world_of_one, credit, right_returns):
    """--step-scorer toy_math:oracle_step_scores on a hand-built group of two: "23 + 5 = 28", "\\n\\n", the boxed 28,
    EOS (both steps right: p = +0.9, +0.9) and the same with 18 (both wrong: -0.9, -0.9). Returns by hand (KL 0,
    no whitening): min-form, equal p -> w = 1/2 each, r = +-0.45 per step, O = +-0.9; token baseline a = O_other / L
    = -+0.9 / 4 on each step's 1 content token -> r' = +-0.675; G_t = suffix sums, terminal tokens masked to 0.
    Sum-form: r = p = +-0.9, O = +-1.8, a = -+0.45 -> r' = +-1.35."""
    from types import SimpleNamespace

    import toy_math
    from credit import CreditArgs

    pieces = ["23 + 5 = 28", "23 + 5 = 18", "\n\n", "The answer is \\boxed{28}.", "The answer is \\boxed{18}.", "<eos>"]
    args = SimpleNamespace(**vars(CreditArgs(reward_mode="PRM", credit=credit, kl_coef=0.0, normalize=False)),
                           n_samples_per_prompt=2)
    s = SimpleNamespace(args=args, scorer=toy_math.oracle_step_scores, prm=None, tok=PieceTokenizer(pieces),
                        prompts=[{"question": "Compute 23 + 5.", "answer": None}], device=torch.device("cpu"))
    samples = [{"prompt_id": 0, "response_ids": ids} for ids in ([0, 2, 3, 5], [1, 2, 4, 5])]
    step_end = torch.tensor([[False, True, False, True]] * 2)
    mask = torch.ones(2, 4, dtype=torch.bool)
    batch = ppo.Batch([[2, 2], [2, 2]], mask, step_end, None, None, None, torch.zeros(2, 4))
    ro = ppo.Rollouts(samples, [{"correct": True}, {"correct": False}], {})
    adv, scores, info = vars(ppo.pure_rewards_and_credit(s, ro, batch)).values()
    assert scores == [[0.9, 0.9], [-0.9, -0.9]]
    assert adv[0].tolist() == pytest.approx(right_returns, abs=1e-6)
    assert adv[1].tolist() == pytest.approx([-x for x in right_returns], abs=1e-6)
    s.scorer = lambda questions, steps: [[0.5] for _ in steps]  # one score for two steps: one line, not a crash
    with pytest.raises(ppo.InputError, match="response 0: 2 steps"):
        ppo.pure_rewards_and_credit(s, ro, batch)


def test_eval_every_logs_step_0_and_every_nth_step(tmp_path, tiny_tokenizer, world_of_one, monkeypatch):
    """--eval-every 2 --max-steps 5: validation at steps 0, 2, 4 and 5 (the last), graded for real, on a scripted
    engine; q1 is answered wrong until the stubbed step 3 'teaches' it. Step 0's row is written before any update."""
    from types import SimpleNamespace

    from test_evaluate import ScriptedLLM

    script = {"What is 1+1?": ["One and one.\n\nThe answer is $\\boxed{2}$."], "What is 2+3?": ["$\\boxed{4}$"],
              "What is 3+3?": ["The answer is $\\boxed{6}$."]}
    llm = ScriptedLLM(tiny_tokenizer, script)
    val = [{"question": "What is 1+1?", "gold": "2"}, {"question": "What is 2+3?", "gold": "5"}]
    args = SimpleNamespace(max_steps=5, save_steps=100, keep_all_ds_states=False, eval_every=2, generate_max_len=32,
                           grader_timeout=5.0)
    s = SimpleNamespace(args=args, start=0, rank=0, world=1, local_rank=0, cuda=False, llm=llm, out=tmp_path,
                        sync_dir=tmp_path / "sync", engine=None, tok=None, prm_engine=None,
                        eval_sets={"val": val, "test": [{"question": "What is 3+3?", "gold": "6"}]},
                        writer=SimpleNamespace(add_scalar=lambda *a: None, close=lambda: None))
    logged = {}

    def rl_step(s, step):
        if step == 3:
            script["What is 2+3?"] = ["$\\boxed{5}$"]
        return [], {}

    monkeypatch.setattr(ppo, "start_run", lambda args: s)
    monkeypatch.setattr(ppo, "rl_step", rl_step)
    monkeypatch.setattr(ppo, "log_step", lambda s, step, per_sample, stats, evals: logged.update({step: evals}))
    monkeypatch.setattr(ppo, "save_checkpoint", lambda *a: None)
    monkeypatch.setattr(ppo, "plot_metrics", lambda *a: None)
    ppo.main(args)
    (row0,) = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert (row0["step"], row0["eval/accuracy"], row0["eval/steps_per_response"]) == (0, 0.5, 1.5)
    assert row0["eval/test/accuracy"] == 1.0 and row0["eval/test/steps_per_response"] == 1.0
    assert sorted(logged) == [1, 2, 3, 4, 5]
    assert [logged[k].get("eval/accuracy") for k in (1, 2, 3, 4, 5)] == [None, 0.5, None, 1.0, 1.0]
    rows = [json.loads(line) for line in open(tmp_path / "evals" / "val" / "step-4.jsonl")]
    assert [(r["question"], r["correct"], r["steps"]) for r in rows] == [("What is 1+1?", True, 2),
                                                                          ("What is 2+3?", True, 1)]
    assert sorted(p.name for p in (tmp_path / "evals" / "test").iterdir()) == [f"step-{k}.jsonl" for k in (0, 2, 4, 5)]
