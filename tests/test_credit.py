"""credit.py against hand values (PURE reference worked example, constructed cases) and against a readable
per-response loop implementation; the JSONL CLI and its bad-input errors."""
import json
import math
import random
import subprocess
import sys
import threading
from dataclasses import fields

import pytest
import torch

from conftest import ROOT
from credit import CreditArgs, main, pure_advantages, step_rewards, whiten

F64 = torch.float64
FLAG_SETS = [dict(credit=c, baseline=b, reward_mode=m) for c in ("min", "mean", "sum", "strict-min")
             for b in ("token", "step") for m in ("PRMVR", "PRM", "VR")]

# One group of 4 worked by hand from the reference's formulas (credit.py's module docstring; PURE@41f9363
# experience_maker.py and openrlhf/utils/utils.py turn_process_reward_logits_to_reward, github.com/CJReinforce/PURE
# at 41f9363b8cc4af044b7fc5f7f9bbbf62139e9553), headline config, KL = 0:
# (step_token_counts, p, solved) -> token returns.
WORKED = [([3, 4, 2], [0.9, -0.5, 0.7], 1, [0.37806, 0.37806, 0, 0.3076, 0.3076, 0.3076, 0, 0.70190, 0]),
          ([5], [0.2], 0, [-0.21925] * 4 + [0]),
          ([2, 2, 2, 2], [0.8, 0.9, 0.95, 0.1], 1, [1.03441, 0, 0.96701, 0, 0.90005, 0, 0.83319, 0]),
          ([1, 3], [0.5, -0.9], 0, [0, -1.54858, -1.54858, 0])]


def row(counts, p, vr=1, lr=None, **extra):
    return dict(step_token_counts=counts, process_rewards=p, verifiable_reward=vr, token_logratio=lr, **extra)


def loop_credit(rows, n, credit="min", credit_temperature=0.1, baseline="token", reward_mode="PRMVR", vr_coef=1.0,
                kl_coef=0.001, mask_separators=True, normalize=True):
    """The same computation written per response from the definitions (groups = n consecutive rows).
    Returns (token returns, token advantages), lists of lists."""
    step_ret = []  # process part of the return of each step j
    for r in rows:
        p, K = r["process_rewards"], len(r["process_rewards"])
        if "PRM" not in reward_mode:
            step_ret.append([0.0] * K)
        elif credit == "strict-min":
            step_ret.append([min(p[j:]) for j in range(K)])
        else:
            if credit == "min":  # w = softmax(-p / T), shifted by min(p) for stability
                z = [math.exp(-(x - min(p)) / credit_temperature) for x in p]
                w = [zk / sum(z) for zk in z]
            else:
                w = [1 / K] * K if credit == "mean" else [1.0] * K
            step_ret.append([sum(w[k] * p[k] for k in range(j, K)) for j in range(K)])
    outcome = [s[0] for s in step_ret]  # O_i

    def v(j):
        return 0.0 if rows[j]["verifiable_reward"] is None else rows[j]["verifiable_reward"] - 1.0

    returns = []
    for i, r in enumerate(rows):
        others = [j for j in range(i - i % n, i - i % n + n) if j != i]
        counts = r["step_token_counts"]
        K = len(counts)
        if baseline == "token":
            a = sum(outcome[j] for j in others) / sum(sum(rows[j]["step_token_counts"]) for j in others)
            base = [a * sum(c - 1 for c in counts[j:]) for j in range(K)]
        else:
            b = sum(outcome[j] / len(rows[j]["step_token_counts"]) for j in others) / len(others)
            base = [b * (K - j) for j in range(K)]
        vr = vr_coef * (v(i) - sum(v(j) for j in others) / len(others)) if "VR" in reward_mode else 0.0
        lr = r["token_logratio"] or [0.0] * sum(counts)
        G = []
        for j, c in enumerate(counts):
            for t in range(c):
                masked = mask_separators and t == c - 1
                G.append(0.0 if masked else step_ret[i][j] - base[j] + vr - kl_coef * sum(lr[len(G):]))
        returns.append(G)
    if not normalize:
        return returns, returns
    flat = [g for G in returns for g in G]
    N = sum(g != 0 for g in flat)
    mu = sum(flat) / N
    std = math.sqrt(max(sum((g - mu) ** 2 for g in flat) / N, 1e-8))
    return returns, [[0.0 if g == 0 else (g - mu) / std for g in G] for G in returns]


def as_tensors(rows, pad=0):
    """Rows -> the [B, T] inputs of pure_advantages, with `pad` extra padding columns (garbage log-ratio there)."""
    lengths = [sum(r["step_token_counts"]) for r in rows]
    B, T = len(rows), max(lengths) + pad
    p, lr, ends = torch.zeros(B, T, dtype=F64), torch.full((B, T), 7.0, dtype=F64), torch.zeros(B, T, dtype=bool)
    for i, r in enumerate(rows):
        pos = -1
        for c, pk in zip(r["step_token_counts"], r["process_rewards"]):
            pos += c
            p[i, pos], ends[i, pos] = pk, True
        lr[i, :lengths[i]] = torch.tensor(r["token_logratio"] or [0.0] * lengths[i], dtype=F64)
    act = torch.tensor([[t < L for t in range(T)] for L in lengths])
    solved = torch.tensor([float(r["verifiable_reward"] == 1) for r in rows], dtype=F64)
    has_gold = torch.tensor([r["verifiable_reward"] is not None for r in rows])
    return p, ends, act, solved, has_gold, lr


def random_rows(seed, n_groups=3):
    rng = random.Random(seed)
    rows, n = [], rng.choice([2, 4])
    for g in range(n_groups * n):
        counts = [rng.randint(1, 6) for _ in range(rng.randint(1, 5))]
        lr = [rng.gauss(0, 0.5) for _ in range(sum(counts))] if rng.random() < 0.8 else None
        rows.append(row(counts, [rng.uniform(-0.99, 0.99) for _ in counts], rng.choice([0, 1, None]), lr,
                        group=g // n))
    return rows, n


def step_layout(*ps):
    """Per-response p lists -> (p [B, K], step_mask [B, K]), the step layout of credit.step_rewards."""
    K = max(len(p) for p in ps)
    return padded([list(p) for p in ps], K), torch.tensor([[k < len(p) for k in range(K)] for p in ps])


def padded(lists, T):
    return torch.tensor([x + [0.0] * (T - len(x)) for x in lists], dtype=F64)


def test_worked_example_of_the_reference():
    rows = [row(c, p, s) for c, p, s, _ in WORKED]
    O = step_rewards(*step_layout(*[p for _, p, _, _ in WORKED])).sum(-1)
    assert O.tolist() == pytest.approx([-0.5, 0.2, 0.10108, -0.9], abs=1e-5)
    assert (O[1:].sum() / 17).item() == pytest.approx(-0.035231, abs=1e-6)  # a_A, L = (5, 8, 4)
    adv, ret, info = pure_advantages(*as_tensors(rows), 4, kl_coef=0.0)
    for i, (*_, want) in enumerate(WORKED):
        assert ret[i, :len(want)].tolist() == pytest.approx(want, abs=1e-4)
        assert loop_credit(rows, 4, kl_coef=0.0)[0][i] == pytest.approx(want, abs=1e-4)
    assert info["reward"] == pytest.approx((-0.5 + 0.2 + 0.10108 - 0.9) / 4, abs=1e-5)
    assert (adv[ret == 0] == 0).all() and (adv[ret != 0] != 0).all()


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: "-".join(f.values()))
def test_vectorised_equals_loop_on_random_buffers(flags):
    for seed in range(4):
        rows, n = random_rows(seed)
        rng = random.Random(100 + seed)
        extra = dict(credit_temperature=rng.choice([0.1, 0.37]), kl_coef=rng.choice([0.0, 0.001, 0.05]),
                     vr_coef=rng.choice([1.0, 0.5]))
        tensors = as_tensors(rows, pad=seed)
        for mask_separators in (True, False):
            for normalize in (True, False):
                kw = dict(flags, **extra, mask_separators=mask_separators, normalize=normalize)
                adv, ret, _ = pure_advantages(*tensors, n, **kw)
                want_ret, want_adv = loop_credit(rows, n, **kw)
                T = ret.shape[1]
                torch.testing.assert_close(ret, padded(want_ret, T), rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(adv, padded(want_adv, T), rtol=1e-9, atol=1e-9)


def test_float32_inputs_give_float32_outputs_computed_in_float64():
    rows, n = random_rows(3)
    tensors = [x.float() if x.is_floating_point() else x for x in as_tensors(rows, pad=2)]
    adv, ret, info = pure_advantages(*tensors, n)

    def f32(xs):  # the float32 values the tensors hold
        return xs and torch.tensor(xs, dtype=torch.float32).tolist()

    rounded = [dict(r, process_rewards=f32(r["process_rewards"]), token_logratio=f32(r["token_logratio"]))
               for r in rows]
    _, want_adv = loop_credit(rounded, n)
    assert adv.dtype == ret.dtype == torch.float32 and set(info) == {"reward", "return", "whiten_mean", "whiten_std"}
    torch.testing.assert_close(adv, padded(want_adv, adv.shape[1]).float(), rtol=1e-6, atol=1e-6)


def test_min_form_tends_to_min_as_temperature_goes_to_zero():
    p = step_layout([0.6, -0.3, 0.2, 0.45])
    gaps = [step_rewards(*p, "min", T).sum().item() + 0.3 for T in (1.0, 0.3, 0.1, 0.03, 0.01, 0.001)]
    assert gaps[0] > 0.1 and all(a > b >= 0 or a == b == 0 for a, b in zip(gaps, gaps[1:]))  # O >= min, shrinking
    assert gaps[2] > 1e-3 and gaps[-1] < 1e-12  # T = 0.1 is still visibly soft


def test_sum_rewards_more_steps_where_min_does_not():
    p = step_layout([0.5] * 2, [0.5] * 6)  # same quality, 2 vs 6 steps
    outcome = {c: step_rewards(*p, c).sum(-1).tolist() for c in ("sum", "min", "mean", "strict-min")}
    assert outcome["sum"] == pytest.approx([1.0, 3.0])
    for c in ("min", "mean", "strict-min"):
        assert outcome[c] == pytest.approx([0.5, 0.5])


def test_token_baseline_does_not_favour_fewer_longer_steps():
    # Same length (20 tokens), same step quality: one long step vs four short ones (PURE README / issue #2).
    rows = [row([20], [0.5]), row([5] * 4, [0.5] * 4)]
    first = {}
    for baseline in ("step", "token"):
        _, ret, _ = pure_advantages(*as_tensors(rows), 2, baseline=baseline, reward_mode="PRM", kl_coef=0.0,
                                    normalize=False)
        first[baseline] = ret[:, 0].tolist()  # the first token's return = the response's whole return
    assert first["step"] == pytest.approx([0.5 - 0.5 / 4, 0.5 - 4 * 0.5])  # b_i = O_j / K_j: 1 step wins by 1.875
    a = 0.5 / 20  # token rate; the 1-step response loses a * 19, the 4-step one a * 16 (the +a*K quirk)
    assert first["token"] == pytest.approx([0.5 - 19 * a, 0.5 - 16 * a])
    assert first["token"][0] <= first["token"][1]


def test_whitening_quirk_by_hand():
    G = torch.tensor([[1.5, 0.0, 3.0, 9.0], [-0.5, 0.0, 0.0, 0.0]], dtype=F64)
    act = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
    mu = (1.5 + 3.0 - 0.5) / 3  # the two exact zeros leave the count and the mean ...
    var = ((1.5 - mu) ** 2 + (3.0 - mu) ** 2 + (-0.5 - mu) ** 2 + 2 * mu ** 2) / 3  # ... not the numerator
    want = torch.tensor([[1.5 - mu, 0, 3.0 - mu, 0], [-0.5 - mu, 0, 0, 0]], dtype=F64) / math.sqrt(var)
    adv, mean, std = whiten(G, act)
    torch.testing.assert_close(adv, want, rtol=1e-12, atol=1e-12)
    assert (mean.item(), std.item()) == pytest.approx((mu, math.sqrt(var)))
    assert adv[0, 0].item() != pytest.approx((1.5 - 4 / 5) / G[act].std(unbiased=False).item())  # not textbook


def test_whitening_all_reduce_equals_one_buffer():
    torch.manual_seed(0)
    G = torch.randn(6, 7, dtype=F64).masked_fill(torch.rand(6, 7) < 0.3, 0)
    act = torch.arange(7) < torch.tensor([7, 3, 5, 7, 1, 6])[:, None]
    barrier, slots, out = threading.Barrier(2, timeout=20), [None, None], [None, None]

    def rank(r):
        def all_reduce(t):  # a two-rank in-place sum, as torch.distributed.all_reduce does
            slots[r] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            t.copy_(total)
        out[r] = whiten(G[3 * r:3 * r + 3], act[3 * r:3 * r + 3], all_reduce)[0]

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    torch.testing.assert_close(torch.cat(out), whiten(G, act)[0], rtol=1e-12, atol=1e-12)


def test_strict_min_by_hand():
    p = step_layout([0.5, -0.2, 0.3, 0.1])
    assert step_rewards(*p, "strict-min")[0].tolist() == pytest.approx([0, -0.3, 0, 0.1])  # m_k - m_{k+1}
    suffix = step_rewards(*p, "strict-min")[0].flip(0).cumsum(0).flip(0).tolist()
    assert suffix == pytest.approx([-0.2, -0.2, 0.1, 0.1])  # min_{k>=j} p_k
    glob = step_rewards(*p, "min", 1e-3)[0].flip(0).cumsum(0).flip(0).tolist()
    assert glob == pytest.approx([-0.2, -0.2, 0, 0], abs=1e-9)  # QUIRK: global soft-min gives 0 after the argmin
    # Full pipeline, token baseline: a_1 = 0.4 / 3, a_2 = -0.2 / 6; step j loses a_i * (content tokens of k >= j).
    rows = [row([2, 2, 2], [0.5, -0.2, 0.3]), row([3], [0.4])]
    _, ret, _ = pure_advantages(*as_tensors(rows), 2, credit="strict-min", reward_mode="PRM", kl_coef=0.0,
                                normalize=False)
    assert ret[0].tolist() == pytest.approx([-0.2 - 3 * 0.4 / 3, 0, -0.2 - 2 * 0.4 / 3, 0, 0.3 - 0.4 / 3, 0])
    assert ret[1].tolist() == pytest.approx([0.4 + 2 * 0.2 / 6, 0.4 + 2 * 0.2 / 6, 0, 0, 0, 0])


# Two responses, one group: A = steps of 2 + 2 tokens, B = one step of 3 tokens (a padding column after it, where
# as_tensors puts a log-ratio of 7.0 that must never count).
KL_ROWS = [row([2, 2], [0.5, -0.2], 1, [0.4, -1.0, 2.0, 0.5]), row([3], [0.1], 0, [1.0, 0.5, -0.5])]


def test_kl_penalty_enters_every_earlier_return_by_hand():
    """k1 KL with beta = 0.1: R_t = [t ends step k] r'_k - 0.1 * logratio_t on every action token, G_t = Σ_{t'>=t}
    R_t', then G := 0 on step ends. Sum credit, token baseline, PRM only; every number by hand."""
    # O_A = 0.5 - 0.2 = 0.3, O_B = 0.1; rates a_A = O_B / L_B = 0.1 / 3, a_B = O_A / L_A = 0.3 / 4 = 0.075
    # r'_A = (0.5 - a_A * 1, -0.2 - a_A * 1); r'_B = 0.1 - 0.075 * 2 = -0.05
    # KL rewards -0.1 * lr: A (-0.04, 0.1, -0.2, -0.05), B (-0.1, -0.05, 0.05)
    a_A = 0.1 / 3
    R_A = [-0.04, 0.1 + 0.5 - a_A, -0.2, -0.05 - 0.2 - a_A]
    R_B = [-0.1, -0.05, 0.05 - 0.05]
    want_A = [sum(R_A), 0, sum(R_A[2:]), 0, 0]  # = (0.04333, 0, -0.48333, 0, pad)
    want_B = [sum(R_B), sum(R_B[1:]), 0, 0, 0]  # = (-0.15, -0.05, 0, pad, pad)
    adv, ret, info = pure_advantages(*as_tensors(KL_ROWS, pad=1), 2, credit="sum", reward_mode="PRM", kl_coef=0.1,
                                     normalize=False)
    assert ret[0].tolist() == pytest.approx(want_A, abs=1e-12) and ret[1].tolist() == pytest.approx(want_B, abs=1e-12)
    assert want_A[0] == pytest.approx(0.043333, abs=1e-6) and want_B[0] == pytest.approx(-0.15)
    assert torch.equal(adv, ret)
    assert info["reward"] == pytest.approx((0.3 + 0.1) / 2)  # mean O_i: the PRM part only, before baseline and KL
    assert info["return"] == pytest.approx((sum(R_A) + sum(R_B)) / 2)  # mean Σ_t R_t = (0.04333 - 0.15) / 2
    assert set(info) == {"reward", "return"}


def test_kl_with_verifiable_reward_and_whitening_by_hand():
    """VR only, beta = 0.1: v = solved - 1 = (0, -1), leave-one-out -> (+1, -1) on each final token, plus the KL
    rewards of the case above; then PURE's whitening over the 4 non-zero returns."""
    R_A = [-0.04, 0.1, -0.2, -0.05 + 1]
    R_B = [-0.1, -0.05, 0.05 - 1]
    G = [sum(R_A), 0, sum(R_A[2:]), 0, sum(R_B), sum(R_B[1:]), 0]  # (0.81, 0, 0.75, 0, -1.1, -1.0, 0)
    adv, ret, info = pure_advantages(*as_tensors(KL_ROWS, pad=1), 2, reward_mode="VR", kl_coef=0.1)
    assert ret[0, :4].tolist() + ret[1, :3].tolist() == pytest.approx(G, abs=1e-12)
    assert G == pytest.approx([0.81, 0, 0.75, 0, -1.1, -1.0, 0])
    mu = (0.81 + 0.75 - 1.1 - 1.0) / 4  # the 3 masked zeros leave the mean ...
    std = math.sqrt(sum((g - mu) ** 2 for g in G) / 4)  # ... but not the numerator (quirk); padding is out
    want = [0 if g == 0 else (g - mu) / std for g in G]
    assert adv[0].tolist() + adv[1].tolist() == pytest.approx(want[:4] + [0] + want[4:] + [0, 0], abs=1e-12)
    assert info["reward"] == 0 and info["return"] == pytest.approx((sum(R_A) + sum(R_B)) / 2)  # (0.81 - 1.1) / 2
    assert (info["whiten_mean"], info["whiten_std"]) == pytest.approx((mu, std))


def test_credit_args_fields_and_headline_defaults():
    assert {f.name: f.default for f in fields(CreditArgs)} == dict(
        credit="min", credit_temperature=0.1, baseline="token", reward_mode="PRMVR", vr_coef=1.0, kl_coef=0.001,
        mask_separators=True, normalize=True)


# ---------------------------------------------------------------------------------------------------- CLI

def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_round_trip(tmp_path):
    worked = [row(c, p, s, id=f"wx{i}", group="wx") for i, (c, p, s, _) in enumerate(WORKED)]
    other = [dict(r, group=7, id=f"o{i}", meta={"k": [i]}) for i, r in enumerate(random_rows(5, 2)[0][:4])]
    rows = [worked[0], other[0], worked[1], other[1], other[2], worked[2], worked[3], other[3]]  # interleaved
    src, dst = write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "credit.py", "--input", src, "--output", dst], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [{k: v for k, v in o.items() if k not in ("token_returns", "token_advantages")} for o in out] == rows
    assert all(list(o) == list(r) + ["token_returns", "token_advantages"] for o, r in zip(out, rows))
    by_id = {o["id"]: o for o in out}
    for i, (*_, want) in enumerate(WORKED):
        assert by_id[f"wx{i}"]["token_returns"] == pytest.approx(want, abs=1e-4)
    grouped = worked + other
    want_ret, want_adv = loop_credit(grouped, 4)
    for r, wr, wa in zip(grouped, want_ret, want_adv):
        assert by_id[r["id"]]["token_returns"] == pytest.approx(wr, rel=1e-9, abs=1e-12)
        assert by_id[r["id"]]["token_advantages"] == pytest.approx(wa, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("argv, kw", [
    (["--credit", "strict-min", "--baseline", "step", "--reward-mode", "VR", "--no-mask-separators",
      "--no-normalize", "--vr-coef", "0.5", "--kl-coef", "0.01"],
     dict(credit="strict-min", baseline="step", reward_mode="VR", mask_separators=False, normalize=False,
          vr_coef=0.5, kl_coef=0.01)),
    (["--credit", "sum", "--reward-mode", "PRM", "--credit-temperature", "0.3"],
     dict(credit="sum", reward_mode="PRM", credit_temperature=0.3)),
    (["--credit", "min", "--credit-temperature", "0.3", "--baseline", "step"],
     dict(credit_temperature=0.3, baseline="step")),
])
def test_cli_flags(tmp_path, argv, kw):
    rows, n = random_rows(11)
    src, dst = write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    main(["--input", str(src), "--output", str(dst), *argv])
    want_ret, want_adv = loop_credit(rows, n, **kw)
    for line, wr, wa in zip(dst.read_text().splitlines(), want_ret, want_adv):
        o = json.loads(line)
        assert o["token_returns"] == pytest.approx(wr, rel=1e-9, abs=1e-12)
        assert o["token_advantages"] == pytest.approx(wa, rel=1e-9, abs=1e-12)


def test_cli_help_names_every_flag(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--input", "--output", "--credit {min,mean,sum,strict-min}", "--credit-temperature",
                 "--baseline {token,step}", "--reward-mode {PRM,VR,PRMVR}", "--vr-coef", "--kl-coef",
                 "--no-mask-separators", "--no-normalize", "SAMPLING"):
        assert flag in text


GOOD = row([2, 1], [0.5, -0.1], 1, [0.1, 0.2, 0.3], group="g")
BAD = {  # name: (lines of the file, line reported, field reported)
    "not-json": ([GOOD, "{oops"], 2, None),
    "missing-field": ([GOOD, {k: v for k, v in GOOD.items() if k != "process_rewards"}], 2, "process_rewards"),
    "missing-vr": ([GOOD, {k: v for k, v in GOOD.items() if k != "verifiable_reward"}], 2, "verifiable_reward"),
    "rewards-vs-steps": ([GOOD, dict(GOOD, process_rewards=[0.5])], 2, "process_rewards"),
    "logratio-vs-tokens": ([GOOD, dict(GOOD, token_logratio=[0.1, 0.2])], 2, "token_logratio"),
    "count-zero": ([GOOD, dict(GOOD, step_token_counts=[2, 0])], 2, "step_token_counts"),
    "count-float": ([GOOD, dict(GOOD, step_token_counts=[1.5, 1])], 2, "step_token_counts"),
    "no-steps": ([dict(GOOD, step_token_counts=[], process_rewards=[]), GOOD], 1, "step_token_counts"),
    "reward-is-1": ([GOOD, dict(GOOD, process_rewards=[1.0, 0.2])], 2, "process_rewards"),
    "reward-below": ([GOOD, dict(GOOD, process_rewards=[-1.2, 0.2])], 2, "process_rewards"),
    "reward-nan": ([GOOD, json.dumps(GOOD).replace("-0.1", "NaN")], 2, "process_rewards"),
    "logratio-inf": ([GOOD, json.dumps(GOOD).replace("0.3", "Infinity")], 2, "token_logratio"),
    "vr-2": ([GOOD, dict(GOOD, verifiable_reward=2)], 2, "verifiable_reward"),
    "vr-str": ([GOOD, dict(GOOD, verifiable_reward="yes")], 2, "verifiable_reward"),
    "group-float": ([GOOD, dict(GOOD, group=1.5)], 2, "group"),
    "unequal-groups": ([GOOD, GOOD, dict(GOOD, group=3), dict(GOOD, group=3), dict(GOOD, group=3)], 3, "group"),
    "singleton-groups": ([GOOD, dict(GOOD, group=3)], 1, "group"),
}


@pytest.mark.parametrize("name", BAD)
def test_cli_bad_input(tmp_path, name):
    lines, line, field = BAD[name]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    with pytest.raises(SystemExit) as e:
        main(["--input", str(src), "--output", str(dst)])
    msg = str(e.value.code)
    assert msg.startswith(f"error: {src}:{line}: " + (f"{field}: " if field else "")) and "\n" not in msg, msg
    assert not dst.exists()


def test_cli_empty_file(tmp_path):
    (tmp_path / "in.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no responses"):
        main(["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])


def test_cli_bad_input_subprocess_keeps_old_output(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD).replace("-0.1", "NaN") + "\n")
    dst.write_text("old\n")
    proc = subprocess.run([sys.executable, "credit.py", "--input", src, "--output", dst], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {src}:2: process_rewards: ")
    assert dst.read_text() == "old\n"
