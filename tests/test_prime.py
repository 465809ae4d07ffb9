"""PRIME: credit.py's estimators against hand-computed cases and a readable per-response loop implementation; ppo.py's
PRIME mode: a two-token toy, one online PRM update, and a 2-rank run killed and resumed."""
import math
import random
import threading

import pytest
import torch

from credit import masked_rloo, prime_advantages, prime_filter, prime_prm_loss, prime_token_rewards

F64 = torch.float64
GARBAGE = 7.0  # written on padding: must never leak into a result


def random_buffer(seed, n_groups=3):
    """Random right-padded buffer: (token-reward lists, solved, n, r [B, T] with garbage padding, action_mask)."""
    rng = random.Random(seed)
    n = rng.choice([2, 3, 4])
    rewards = [[rng.gauss(0, 1) for _ in range(rng.randint(1, 9))] for _ in range(n_groups * n)]
    solved = [float(rng.random() < 0.5) for _ in rewards]
    T = max(map(len, rewards)) + rng.randint(0, 2)
    r = torch.tensor([x + [GARBAGE] * (T - len(x)) for x in rewards], dtype=F64)
    act = torch.tensor([[t < len(x) for t in range(T)] for x in rewards])
    return rewards, solved, n, r, act


def loop_prime(rewards, solved, n, normalize=True):
    """PRIME's RLOO with process reward written per response from the definitions. Lists -> (returns, advantages)."""
    returns = []
    for i, r in enumerate(rewards):
        group = range(i - i % n, i - i % n + n)
        baseline = sum(sum(rewards[j]) / len(rewards[j]) for j in group) / (n - 1)  # sum_{j in group} m_j / (n-1)
        proc = [x * n / (n - 1) - baseline for x in r]
        outcome = solved[i] - sum(solved[j] for j in group if j != i) / (n - 1)  # r_i - mean_{j!=i} r_j
        returns.append([sum(proc[t:]) + outcome for t in range(len(r))])
    if not normalize:
        return returns, returns
    flat = [g for G in returns for g in G]
    mu = sum(flat) / len(flat)
    var = sum((g - mu) ** 2 for g in flat) / (len(flat) - 1)  # verl masked_var: unbiased
    return returns, [[(g - mu) / math.sqrt(var + 1e-8) for g in G] for G in returns]


def test_rloo_with_process_reward_by_hand():
    # 2 samples x 3 tokens, n = 2: r~_{i,t} = 2 r_{i,t} - (m_1 + m_2); m = (2, 1).
    r = torch.tensor([[1.0, 2, 3], [0, 0, 3]], dtype=F64)
    act = torch.ones(2, 3, dtype=torch.bool)
    assert masked_rloo(r, act, 2).tolist() == [[-1, 1, 3], [-3, -3, 3]]
    adv, ret, info = prime_advantages(r, act, torch.tensor([1.0, 0.0], dtype=F64), 2, normalize=False)
    # outcome on the last token: 1 - 0 = 1 and 0 - 1 = -1 -> rewards [-1, 1, 4], [-3, -3, 2]
    assert ret.tolist() == [[4, 5, 4], [-4, -1, 2]] and adv.tolist() == ret.tolist()
    assert info["implicit_reward"] == 4.5 and info["accuracy"] == 0.5
    adv, _, info = prime_advantages(r, act, torch.tensor([1.0, 0.0], dtype=F64), 2)
    mu, var = 10 / 6, 552 / 9 / 5  # sum (G - mu)^2 = 552/9, unbiased: / (N - 1)
    want = [[(g - mu) / math.sqrt(var + 1e-8) for g in G] for G in [[4, 5, 4], [-4, -1, 2]]]
    assert adv.tolist() == [pytest.approx(w, abs=1e-12) for w in want]
    assert adv[0, 0].item() == pytest.approx(0.666213, abs=1e-6)
    assert info["whiten_std"] == pytest.approx(math.sqrt(var)) and info["whiten_mean"] == pytest.approx(mu)


def test_outcome_source_reduces_to_leave_one_out_difference():
    # One masked token per row: r_i * n/(n-1) - sum_j r_j/(n-1) = r_i - mean_{j!=i} r_j (n = 3, lengths 2, 4, 1).
    act = torch.arange(4) < torch.tensor([2, 4, 1])[:, None]
    adv, ret, _ = prime_advantages(torch.zeros(3, 4, dtype=F64), act, torch.tensor([1.0, 0, 1], dtype=F64), 3,
                                   normalize=False)
    want = [[0.5, 0.5, 0, 0], [-1, -1, -1, -1], [0.5, 0, 0, 0]]  # 1 - (0+1)/2, 0 - (1+1)/2, 1 - (1+0)/2
    assert ret.tolist() == want
    final = torch.zeros(3, 4, dtype=torch.bool)
    final[[0, 1, 2], [1, 3, 0]] = True
    r = torch.tensor([[9, 0.3, 9, 9], [9, 9, 9, -0.6], [1.2, 9, 9, 9]], dtype=F64)
    got = masked_rloo(r, final, 3)[final].tolist()
    assert got == pytest.approx([0.3 - (-0.6 + 1.2) / 2, -0.6 - (0.3 + 1.2) / 2, 1.2 - (0.3 - 0.6) / 2])


def test_vectorised_equals_loop_on_random_buffers():
    for seed in range(20):
        rewards, solved, n, r, act = random_buffer(seed)
        for normalize in (False, True):
            adv, ret, _ = prime_advantages(r, act, torch.tensor(solved, dtype=F64), n, normalize=normalize)
            want_ret, want_adv = loop_prime(rewards, solved, n, normalize)
            for i, L in enumerate(map(len, rewards)):
                assert ret[i, :L].tolist() == pytest.approx(want_ret[i], abs=1e-10)
                assert adv[i, :L].tolist() == pytest.approx(want_adv[i], abs=1e-10)
            assert (ret[~act] == 0).all() and (adv[~act] == 0).all()


def test_float32_in_float32_out():
    rewards, solved, n, r, act = random_buffer(3)
    adv, ret, _ = prime_advantages(r.float(), act, torch.tensor(solved), n)
    assert adv.dtype == ret.dtype == torch.float32
    torch.testing.assert_close(adv.double(), prime_advantages(r, act, torch.tensor(solved, dtype=F64), n)[0],
                               rtol=1e-5, atol=1e-5)


def test_group_size_checked():
    act = torch.ones(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="n_samples"):
        prime_advantages(torch.zeros(3, 2), act, torch.zeros(3), 2)
    with pytest.raises(ValueError, match="n_samples"):
        prime_advantages(torch.zeros(3, 2), act, torch.zeros(3), 1)


def test_all_reduce_equals_one_buffer():
    rewards, solved, n, r, act = random_buffer(5, n_groups=4)
    solved = torch.tensor(solved, dtype=F64)
    half = 2 * n  # each rank holds whole groups
    barrier, slots, out = threading.Barrier(2, timeout=20), [None, None], [None, None]

    def rank(k):
        def all_reduce(t):  # a two-rank in-place sum, as torch.distributed.all_reduce does
            slots[k] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            t.copy_(total)
        sl = slice(k * half, (k + 1) * half)
        out[k] = prime_advantages(r[sl], act[sl], solved[sl], n, all_reduce=all_reduce)[0]

    threads = [threading.Thread(target=rank, args=(k,)) for k in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    torch.testing.assert_close(torch.cat(out), prime_advantages(r, act, solved, n)[0], rtol=1e-12, atol=1e-12)


def logprob_buffer(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 2, 7, 3, 1, 6])
    act = torch.arange(8) < lengths[:, None]  # [6, 8]
    lp = -torch.rand(6, 8, generator=g, dtype=F64) * 3
    lr = -torch.rand(6, 8, generator=g, dtype=F64) * 3
    lp[~act], lr[~act] = 50.0, -50.0  # garbage on padding
    return lp, lr, act, lengths


def test_token_rewards_by_loop_and_batch_norm():
    lp, lr, act, lengths = logprob_buffer(0)
    raw = [[lp[i, t].item() - lr[i, t].item() for t in range(L)] for i, L in enumerate(lengths.tolist())]
    r = prime_token_rewards(lp, lr, act, batch_norm=False)  # reference: no beta
    for i, q in enumerate(raw):
        assert r[i, :len(q)].tolist() == pytest.approx(q, abs=1e-12) and (r[i, len(q):] == 0).all()
    torch.testing.assert_close(prime_token_rewards(lp, lr, act, beta=0.05, batch_norm=False), 0.05 * r)
    scale = max(abs(sum(q[t:])) for q in raw for t in range(len(q))) + 1e-6  # max |reverse cumsum| (+ eps)
    rn = prime_token_rewards(lp, lr, act)  # default: batch_norm
    for i, q in enumerate(raw):
        assert rn[i, :len(q)].tolist() == pytest.approx([x / scale for x in q], abs=1e-12)
    assert rn.flip(-1).cumsum(-1).abs().max().item() == pytest.approx(1.0, abs=1e-5)


def test_batch_norm_makes_beta_irrelevant():
    lp, lr, act, _ = logprob_buffer(1)
    solved = torch.tensor([1.0, 0, 0, 1, 1, 0], dtype=F64)
    r1, r2 = prime_token_rewards(lp, lr, act, beta=0.05), prime_token_rewards(lp, lr, act, beta=1.0)
    torch.testing.assert_close(r1, r2, rtol=1e-4, atol=0)
    torch.testing.assert_close(prime_advantages(r1, act, solved, 2)[0], prime_advantages(r2, act, solved, 2)[0],
                               rtol=1e-4, atol=1e-6)
    r1, r2 = (prime_token_rewards(lp, lr, act, beta=b, batch_norm=False) for b in (0.05, 1.0))
    assert not torch.allclose(prime_advantages(r1, act, solved, 2)[0], prime_advantages(r2, act, solved, 2)[0])


def test_token_rewards_carry_no_gradient():
    lp, lr, act, _ = logprob_buffer(2)
    assert not prime_token_rewards(lp.requires_grad_(), lr, act).requires_grad


def test_prm_loss_by_hand_and_its_gradient():
    lp, lr, act, lengths = logprob_buffer(3)
    lp.requires_grad_()
    solved = torch.tensor([1.0, 0, 1, 0, 0, 1], dtype=F64)
    beta = 0.05
    loss = prime_prm_loss(lp, lr, act, solved, beta)
    z = [beta * sum(lp[i, t].item() - lr[i, t].item() for t in range(L)) for i, L in enumerate(lengths.tolist())]
    sig = [1 / (1 + math.exp(-x)) for x in z]
    want = -sum(a * math.log(s) + (1 - a) * math.log(1 - s) for a, s in zip(solved.tolist(), sig)) / len(z)
    assert loss.item() == pytest.approx(want, abs=1e-12)
    ref = torch.nn.functional.binary_cross_entropy(torch.tensor(sig, dtype=F64), solved)  # the reference's call
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    loss.backward()  # dL/d logp_prm[i, t] = beta * (sigmoid(z_i) - acc_i) / B on action tokens, 0 on padding
    want_grad = torch.tensor([[beta * (s - a) / 6] for s, a in zip(sig, solved.tolist())], dtype=F64) * act
    torch.testing.assert_close(lp.grad, want_grad, rtol=1e-10, atol=1e-14)


def test_prm_loss_finite_where_sigmoid_saturates():
    lp = torch.tensor([[400.0, 600.0]], dtype=F64)  # z = 0.05 * 1000 = 50
    loss = prime_prm_loss(lp, torch.zeros_like(lp), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, dtype=F64))
    assert loss.item() == pytest.approx(50 + math.log1p(math.exp(-50)), abs=1e-12)  # softplus(50)


def test_filter_keeps_accuracy_in_bounds_inclusive():
    solved = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1.0])  # n = 4: 0, .25, .5, .75, 1
    assert prime_filter(solved, 4).tolist() == [False, True, True, True, False]
    solved = torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 1, 1, 0])  # n = 5: 0.2 and 0.8 sit on the bounds
    assert prime_filter(solved, 5).tolist() == [True, True]
    assert prime_filter(solved, 5, lower=0.3).tolist() == [False, True]
    assert prime_filter(torch.tensor([1.0, 1, 0, 1]), 2, upper=0.5).tolist() == [False, True]


# ---------------------------------------------------------------------------------------------------------------
# PRIME inside ppo.py: a two-token toy by hand, one online PRM update, a 2-rank run killed and resumed


def test_two_token_toy_by_hand():
    """log pi_psi = (-1, -2), log pi_ref = (-1.5, -1): q = (0.5, -1). Reverse cumsums (-0.5, -1), so batch norm
    divides by 1 (+1e-6). L_CE with beta 0.05 and outcome 1: z = 0.05 * (0.5 - 1) = -0.025, -log sigmoid(z)."""
    lp, lr = torch.tensor([[-1.0, -2.0]], dtype=F64), torch.tensor([[-1.5, -1.0]], dtype=F64)
    act = torch.ones(1, 2, dtype=torch.bool)
    assert prime_token_rewards(lp, lr, act)[0].tolist() == pytest.approx([0.5 / (1 + 1e-6), -1 / (1 + 1e-6)])
    assert prime_token_rewards(lp, lr, act, batch_norm=False).tolist() == [[0.5, -1.0]]
    loss = prime_prm_loss(lp, lr, act, torch.tensor([1.0], dtype=F64))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(0.025)), abs=1e-12)  # ln(1 + e^0.025)
    assert loss.item() == pytest.approx(0.7057253, abs=1e-7)


def test_one_prm_update_moves_the_outcome_prediction_toward_the_label(tiny_model_dir):
    """ppo.prime_prm_update, one pass: sigmoid(beta * sum_t q_t) rises for a solved sample, falls for a failed one;
    the rewards it returns are those of its own forward pass (before the optimizer step)."""
    import socket
    from types import SimpleNamespace

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    import ppo
    from test_ppo import ShimEngine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        samples = [{"prompt_ids": [5, 6], "response_ids": [8, 9, 10]}, {"prompt_ids": [12], "response_ids": [14, 15]}]
        mask = torch.tensor([[True] * 3, [True] * 2 + [False]])
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        with torch.no_grad():
            ref_logp = ppo.response_logprobs(ref, samples, 0, "cpu")  # [2, 3]
        args = SimpleNamespace(train_batch_size=2, micro_train_batch_size=2, prime_beta_train=0.05)
        for label in (1.0, 0.0):
            prm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
            solved = torch.tensor([label, label])
            logp, stats = ppo.prime_prm_update(ShimEngine(prm, lr=1e-2), samples, ref_logp, mask, solved, args, 1,
                                               0, "cpu")
            torch.testing.assert_close(logp, ref_logp, atol=1e-6, rtol=0)  # psi = ref before the update: q = 0
            assert stats["prm/loss"] == pytest.approx(math.log(2), abs=1e-6)  # BCE(sigmoid(0), label)
            with torch.no_grad():
                z = ((ppo.response_logprobs(prm.eval(), samples, 0, "cpu") - ref_logp) * mask).sum(-1)  # [2]
            assert ((z > 0) if label else (z < 0)).all(), z
    finally:
        dist.destroy_process_group()


PRIME_RUN = ["--reward-mode", "PRIME", "--rollout-batch-size", "4", "--n-samples-per-prompt", "2",
             "--generate-max-len", "24", "--train-batch-size", "8", "--micro-train-batch-size", "1",
             "--micro-rollout-batch-size", "2", "--max-steps", "3", "--save-steps", "1", "--rollouts-every", "1",
             "--actor-learning-rate", "1e-3", "--prm-learning-rate", "1e-3", "--keep-all-ds-states",
             "--accuracy-filter", "off"]  # a random tiny model solves nothing: the filter would keep no group


def test_prime_two_rank_run_then_kill_and_resume(tmp_path, tiny_model_dir, repo_data):
    """torchrun --nproc_per_node 2 ppo.py --reward-mode PRIME: both models train, the checkpoints hold both, and a run
    killed after step 2 resumes to the same step-3 prompts, responses, policy and PRM weights."""
    from safetensors.torch import load_file

    from test_ppo import read_rows, torchrun

    out = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--prm", str(tiny_model_dir),
            "--prompts", str(repo_data / "train" / "pure_prompts_256.jsonl"), *PRIME_RUN]
    log = torchrun(args, out)
    assert "PRIME: 22 of 256 prompts have a gold answer; 234 without one are skipped" in log  # jq counts
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["policy_updated"] == 1 for r in rows)
    # one optimizer step: all of step 1 sees psi = pi_ref
    assert rows[0]["prm/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(r["prm/loss"]) and 0 <= r["prm/outcome_accuracy"] <= 1 for r in rows)
    assert all(r["filter/keep_rate"] == 1 for r in rows)
    init = load_file(tiny_model_dir / "model.safetensors")
    policy3, prm3 = (load_file(out / "checkpoint-3" / d / "model.safetensors") for d in ("", "prm"))
    for w in (policy3, prm3):
        assert max((init[k] - w[k]).abs().max().item() for k in init) > 1e-3  # both models moved
    assert max((policy3[k] - prm3[k]).abs().max().item() for k in init) > 1e-3  # two different models
    samples3 = read_rows(out / "rollouts" / "step-3.jsonl")

    (out / "checkpoint-3").rename(tmp_path / "killed-checkpoint-3")
    log = torchrun(args, out)
    assert "resuming after step 2" in log
    resumed3 = read_rows(out / "rollouts" / "step-3.jsonl")
    assert [(s["prompt_id"], s["response"]) for s in resumed3] == [(s["prompt_id"], s["response"]) for s in samples3]
    for d, before in (("", policy3), ("prm", prm3)):
        again = load_file(out / "checkpoint-3" / d / "model.safetensors")
        assert max((before[k] - again[k]).abs().max().item() for k in before) < 1e-5  # weights + Adam restored
