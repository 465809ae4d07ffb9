"""PURE credit assignment: per-step process rewards p_k -> per-token returns and advantages.

Default = the headline run of PURE main, github.com/CJReinforce/PURE@41f9363b8cc4af044b7fc5f7f9bbbf62139e9553
(openrlhf/trainer/ppo_utils/experience_maker.py + replay_buffer.py there), every quirk reproduced on purpose and
named `QUIRK` in a comment. For one response with K steps (step k: c_k tokens including its terminal token,
n_k = c_k - 1 content tokens, L = sum_k c_k) and PRM scores p_k in (-1, 1):

    w_k   = softmax_k(-p_k / T)                 credit weights (min-form; T = 0.1)
    r_k   = w_k * p_k                           on step k's terminal token;  O = sum_k r_k -> min_k p_k as T -> 0
    r'_k  = r_k - a_i * n_k,  a_i = sum_{j!=i} O_j / sum_{j!=i} L_j          token RLOO baseline (group of n)
    r'_K += vr_coef * (v_i - mean_{j!=i} v_j),  v_i = solved_i - 1         verifiable reward on the final token
    R_t   = [t terminal of k] r'_k - beta * (log pi_theta - log pi_ref)_t  k1 KL penalty in the reward
    G_t   = sum_{t'>=t} R_t'                    gamma = 1;  G_t := 0 on terminal tokens
    A     = whiten(G)                           over the whole buffer (all data-parallel ranks)

Variants, one flag each (CreditArgs): credit mean (w_k = 1/K), sum (w_k = 1) or strict-min (the paper's
min_{k>=j} p_k); baseline step (b_i = mean_{j!=i} O_j / K_j per step); reward mode PRM or VR alone.

pure_advantages takes right-padded [B, T] token tensors (B responses in groups of n adjacent rows, T padded
response length) and moves the K step scores into a left-aligned [B, K] step layout, as PURE does (score_mask).
Everything is computed in float64: the reference's math, not its bf16/fp32 rounding. The JSONL CLI
(`python credit.py --help`) builds the tensors from one file = one buffer.

PRIME (Cui et al. 2025; github.com/PRIME-RL/PRIME at the commit named in its section), the sibling method, in its
own section: implicit per-token rewards r_t = log pi_psi(y_t) - log pi_ref(y_t) (prime_token_rewards), RLOO per
reward source + masked whitening (prime_advantages), the online implicit PRM's CE loss (prime_prm_loss) and the
accuracy filter (prime_filter).
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

CREDIT_FORMS = ("min", "mean", "sum", "strict-min")


@dataclass
class CreditArgs:
    """The credit-assignment flags (defaults = PURE's headline run); ppo.py embeds them."""

    credit: Literal["min", "mean", "sum", "strict-min"] = "min"
    """credit form; the return of step j is
    min: sum_{k>=j} w_k p_k with w_k = softmax_k(-p_k/T), PURE's GLOBAL soft-min (headline)
    mean: sum_{k>=j} p_k / K (PURE's --disable_weighted_reward)
    sum: sum_{k>=j} p_k, the gamma = 1 summation the paper argues against
    strict-min: min_{k>=j} p_k, the paper's definition of min-form credit"""
    credit_temperature: float = 0.1
    """T in w_k = softmax_k(-p_k/T) (hard-coded 0.1 in PURE); the reference's --temperature 0.5 is the SAMPLING
    temperature, not this one"""
    baseline: Literal["token", "step"] = "token"
    """leave-one-out (RLOO) baseline over the group
    token: step k loses a_i * n_k, a_i = sum_{j!=i} O_j / sum_{j!=i} L_j (PURE headline)
    step: every step loses b_i = mean_{j!=i} O_j / K_j (reference default; favours fewer steps)"""
    reward_mode: Literal["PRM", "VR", "PRMVR"] = "PRMVR"
    """PRMVR: process + verifiable rewards (headline); PRM: process only; VR: verifiable only (no PRM)"""
    vr_coef: float = 1.0
    """weight of the verifiable reward solved - 1 (leave-one-out baseline) on the final token (PURE: 1.0)"""
    kl_coef: float = 0.001
    """beta of the per-token k1 KL penalty -beta * (log pi_theta - log pi_ref) in the reward (PURE: 0.001)"""
    mask_separators: bool = True
    """zero the return of every step's terminal token (separators, final/EOS token), as PURE does"""
    normalize: bool = True
    """whiten advantages over the whole buffer with PURE's quirks (off = --disable_advantage_normalization)"""


def step_rewards(p, step_mask, credit="min", temperature=0.1):
    """Credit-weighted step rewards r_k. p [B, K] p_k of step k (steps left-aligned, K = most steps in the
    buffer), step_mask [B, K] bool -> r [B, K] (0 on padding steps). temperature: the credit softmax temperature T
    of the min-form (pure_advantages' credit_temperature), not the sampling one.

    The gamma = 1 suffix sum sum_{k>=j} r_k is the process part of the return of every token of step j.
    strict-min: r_k = m_k - m_{k+1} with m_k = min_{k'>=k} p_k' and m_{K+1} = 0, so the suffix sum telescopes to
    exactly m_j = min_{k>=j} p_k; the baseline, VR, KL and masking downstream are the same as for the other forms.
    """
    p = p.masked_fill(~step_mask, 0)  # [B, K]
    if credit == "min":
        # w_k = softmax_k(-p_k / T) over the K steps of one response (PURE turn_process_reward_logits_to_reward).
        # QUIRK (global soft-min): the softmax spans ALL steps and the return is a suffix SUM of w_k p_k, so steps
        # after the worst one get ~0, not the min over their own suffix (issue CJReinforce/PURE#2: "Q(<step 3>) = 0").
        w = torch.softmax((-p / temperature).masked_fill(~step_mask, float("-inf")), dim=-1)  # [B, K]
        return w * p
    if credit == "mean":  # w_k = 1/K_i: PURE main's --disable_weighted_reward (a softmax of a constant)
        return p / step_mask.sum(-1, keepdim=True)
    if credit == "sum":  # w_k = 1: return of step j = sum_{k>=j} p_k
        return p
    if credit == "strict-min":
        m = p.masked_fill(~step_mask, float("inf")).flip(-1).cummin(-1).values.flip(-1)  # [B, K] m_k
        m_next = torch.cat([m[:, 1:], torch.full_like(m[:, :1], float("inf"))], dim=-1)  # [B, K] m_{k+1}
        return torch.where(step_mask, m - m_next.masked_fill(m_next.isinf(), 0), 0)  # m_{K+1} = 0
    raise ValueError(f"credit must be one of {CREDIT_FORMS}, got {credit!r}")


def content_token_counts(t, step_mask):
    """n_k = c_k - 1 = t_k - t_{k-1} - 1 content tokens of step k, as PURE's num_tokens_per_step.
    t [B, K] position of step k's terminal token (right-padded responses: t_0 = -1), step_mask [B, K] -> [B, K]."""
    prev = torch.cat([torch.full_like(t[:, :1], -1), t[:, :-1]], dim=-1)  # [B, K] t_{k-1}
    return (t - prev - 1) * step_mask


def leave_one_out_mean(x, n_samples):
    """mean_{j!=i in i's group} x_j for groups of n_samples adjacent rows. [B] -> [B]."""
    g = x.view(-1, n_samples)  # [B/n, n]
    return ((g.sum(-1, keepdim=True) - g) / (n_samples - 1)).view(-1)


def whiten(returns, action_mask, all_reduce=None):
    """PURE's advantage whitening (replay_buffer.py normalize). [B, T] -> ([B, T], mean, std).

    QUIRK: Z = action tokens whose return is exactly 0.0 (the masked terminal tokens, plus any accidental zero) are
    taken for separators: they leave the count and the mean, keep advantage 0, but still add (0 - mu)^2 to the
    variance numerator. all_reduce (in-place sum over data-parallel ranks) makes the statistics global, as PURE
    does over its 4 DP ranks. If every token is in Z, mu is nan and every advantage is 0, as in the reference.
    """
    G = returns * action_mask  # [B, T]
    keep = action_mask & (G != 0)  # [B, T] action tokens outside Z
    stats = torch.stack([G.sum(), keep.sum().to(G.dtype)])  # [2]
    if all_reduce is not None:
        all_reduce(stats)
    mean = stats[0] / stats[1]  # mu = sum G / N,  N = #action tokens - |Z|
    sq = ((G - mean) ** 2 * action_mask).sum().view(1)  # [1] numerator INCLUDES Z (quirk)
    if all_reduce is not None:
        all_reduce(sq)
    var = sq[0] / stats[1]  # sigma^2 = sum_{all action tokens} (G - mu)^2 / N
    adv = torch.where(keep, (G - mean) * var.clamp(min=1e-8).rsqrt(), 0)  # A := 0 on Z and padding
    return adv, mean, var.sqrt()


def pure_advantages(process_rewards, step_end_mask, action_mask, solved, has_gold, logratio, n_samples, *,
                    credit="min", credit_temperature=0.1, baseline="token", reward_mode="PRMVR", vr_coef=1.0,
                    kl_coef=0.001, mask_separators=True, normalize=True, all_reduce=None):
    """PURE token advantages and returns for a buffer of B responses in groups of n_samples adjacent rows.

    process_rewards [B, T] p_k at step k's terminal token (0 elsewhere); step_end_mask [B, T] bool, True at each
    terminal token (the last one at the final action token); action_mask [B, T] bool (right-padded responses);
    solved [B] 0/1; has_gold [B] bool (no gold answer -> verifiable reward 0); logratio [B, T] log pi_theta -
    log pi_ref. Computed in float64; returns (advantages [B, T], returns [B, T]) in process_rewards.dtype, and
    info = {reward: mean O_i, return: mean sum_t R_t, whiten_mean, whiten_std (if normalize)}. The keywords are
    CreditArgs' fields (credit_temperature: T of w = softmax(-p/T), not the sampling temperature).
    """
    B = process_rewards.shape[0]
    if n_samples < 2 or B % n_samples:
        raise ValueError(f"need groups of n_samples >= 2 adjacent rows, got B={B}, n_samples={n_samples}")
    act = action_mask.bool()  # [B, T]
    L = act.sum(-1)  # [B] response lengths (EOS included)
    rows, t = (step_end_mask.bool() & act).nonzero(as_tuple=True)  # [S] response, terminal token of each step
    K = torch.bincount(rows, minlength=B)  # [B] steps per response
    steps = torch.arange(int(K.max()), device=K.device) < K[:, None]  # [B, Kmax] steps left-aligned (score_mask)
    p = torch.zeros(steps.shape, dtype=torch.float64, device=K.device)  # [B, Kmax] p_k
    p[steps] = process_rewards[rows, t].double()  # nonzero() is row-major: the k-th terminal of a row is step k
    r = step_rewards(p, steps, credit, credit_temperature) if "PRM" in reward_mode else torch.zeros_like(p)  # [B, K]
    outcome = r.sum(-1)  # [B] O_i
    if baseline == "token":
        # a_i = sum_{j!=i} O_j / sum_{j!=i} L_j  (the 1/(n-1) of both leave-one-out means cancels)
        rate = leave_one_out_mean(outcome, n_samples) / leave_one_out_mean(L.double(), n_samples)  # [B]
        # QUIRK (two lengths): the rate divides by full lengths L_j (terminal and EOS tokens included) but step k
        # loses a_i * n_k with n_k = c_k - 1 content tokens, so a response keeps a residual +a_i * K_i.
        t_k = torch.zeros_like(steps, dtype=torch.long)  # [B, Kmax] terminal token of step k
        t_k[steps] = t
        r = r - rate[:, None] * content_token_counts(t_k, steps)  # [B, Kmax]
    elif baseline == "step":
        r = r - leave_one_out_mean(outcome / K, n_samples)[:, None] * steps  # r'_k = r_k - mean_{j!=i} O_j/K_j
    else:
        raise ValueError(f"baseline must be 'token' or 'step', got {baseline!r}")
    rewards = -kl_coef * logratio.double() * act  # [B, T] -beta * kl_t, kl_t = log-ratio * action_mask (k1)
    rewards[rows, t] += r[steps]  # r'_k on step k's terminal token
    if "VR" in reward_mode:
        v = torch.where(has_gold.bool(), solved.double() - 1, 0)  # [B] v_i = solved_i - 1 in {-1, 0}
        v = v - leave_one_out_mean(v, n_samples)  # [B] v'_i = v_i - mean_{j!=i} v_j
        rewards[torch.arange(B, device=K.device), L - 1] += vr_coef * v  # on the final (EOS) token
    returns = rewards.flip(-1).cumsum(-1).flip(-1) * act  # [B, T] G_t = sum_{t'>=t} R_t'  (gamma = 1)
    if mask_separators:
        # QUIRK: terminal tokens (separators and EOS) get G_t := 0, hence no gradient; their rewards still reach
        # every earlier token through the suffix sum.
        returns[rows, t] = 0
    info = {"reward": outcome.mean().item(), "return": rewards.sum(-1).mean().item()}
    advantages = returns
    if normalize:
        advantages, mean, std = whiten(returns, act, all_reduce)
        info.update(whiten_mean=mean.item(), whiten_std=std.item())
    return advantages.to(process_rewards.dtype), returns.to(process_rewards.dtype), info


# ---------------------------------------------------------------------------------------------------------------
# PRIME (Cui et al. 2025, "Process Reinforcement through Implicit Rewards", arXiv 2502.01456) as coded in
# github.com/PRIME-RL/PRIME@18ad596f08d487bb546d80d738d99ec697bd2e75, under training/verl/ there:
# workers/actor/dp_prime.py (implicit PRM), trainer/ppo/core_algos.py (RLOO, CE loss), trainer/ppo/ray_trainer.py
# (filter); under training/examples/: run_prime_main.sh (the run's settings)


def prime_token_rewards(logp_prm, logp_ref, action_mask, beta=1.0, batch_norm=True):
    """Implicit process reward per token (prime_granularity=token: every token is its own step; no gradient).
    logp_prm, logp_ref [B, T] log pi_psi(y_t), log pi_ref(y_t) of the response tokens; action_mask [B, T] -> [B, T].
    QUIRK (no beta): paper and README write r_t = beta * log(pi_psi / pi_ref), but compute_implicit_reward applies
    no beta (dp_prime.py:116-143); beta = 1.0 reproduces it. QUIRK (prime_norm=batch_norm, dp_prime.py:239-241, as the
    reference runs): r /= max |reverse cumsum| + 1e-6 over the buffer given (in the reference: one data-parallel
    rank's shard, no all-reduce), which makes beta irrelevant (up to the 1e-6).
    """
    r = beta * (logp_prm - logp_ref).detach() * action_mask  # [B, T] r_t = beta * (log pi_psi - log pi_ref)(y_t)
    if batch_norm:
        G = r.flip(-1).cumsum(-1).flip(-1)  # [B, T] sum_{t'>=t} r_t'
        r = r / (G.abs().max() + 1e-6)
    return r


def step_sums(r, step_end):
    """Token rewards summed over each step, on the step's terminal token (0 elsewhere): p_k = sum_{t in step k} r_t
    (ppo.py --prime-credit step). r [B, T]; step_end [B, T] bool (terminal token of each step; the last at the final
    action token) -> [B, T]."""
    C = r.cumsum(-1)  # [B, T] sum_{t'<=t} r_t'
    t = torch.arange(r.shape[1], device=r.device).expand_as(r)  # [B, T]
    last = torch.where(step_end, t, -1).cummax(-1).values  # [B, T] the latest terminal at or before t
    prev = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], -1)  # [B, T] the latest terminal before t
    before = torch.where(prev >= 0, C.gather(-1, prev.clamp(min=0)), 0)  # [B, T] C at the previous step's end
    return torch.where(step_end, C - before, 0)


def masked_rloo(r, mask, n_samples):
    """PRIME's leave-one-out for ONE reward source (core_algos.py:129-139, in compute_rloo_returns), groups of n
    adjacent rows.
    r [B, T], mask [B, T] bool (the tokens that carry this source) -> [B, T], 0 off the mask:
        r_{i,t} <- r_{i,t} * n/(n-1) - sum_{j in group} m_j / (n-1),   m_j = mean_{t in mask_j} r_{j,t}
    i.e. r_{i,t} - mean_{j!=i} m_j + (r_{i,t} - m_i)/(n-1); with one masked token per row: r_i - mean_{j!=i} r_j."""
    r = r * mask  # [B, T]
    m = r.sum(-1) / mask.sum(-1)  # [B] m_j
    group_sum = m.view(-1, n_samples).sum(-1).repeat_interleave(n_samples)  # [B] sum_{j in i's group} m_j
    return (r * n_samples / (n_samples - 1) - group_sum[:, None] / (n_samples - 1)) * mask


def masked_whiten(x, mask, all_reduce=None):
    """verl's masked_whiten (PRIME's advantage normalization). [B, T] -> ([B, T], mean, std).
    mu = masked mean; var = masked mean of (x - mu)^2 * N/(N-1) (masked_var, unbiased=True by default: Bessel);
    A = (x - mu) * rsqrt(var + 1e-8). all_reduce (in-place sum over ranks) makes the statistics global; the
    reference runs this on the driver over the whole batch. verl leaves -mu/sigma on padding; we write 0 there."""
    x = x * mask  # [B, T]
    stats = torch.stack([x.sum(), mask.sum().to(x.dtype)])  # [2] sum, N
    if all_reduce is not None:
        all_reduce(stats)
    mean = stats[0] / stats[1]
    sq = ((x - mean) ** 2 * mask).sum().view(1)  # [1]
    if all_reduce is not None:
        all_reduce(sq)
    var = sq[0] / (stats[1] - 1)  # unbiased: sum (x - mu)^2 / (N - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask, mean, var.sqrt()


def prime_advantages(token_rewards, action_mask, solved, n_samples, *, normalize=True, all_reduce=None):
    """PRIME's RLOO with process reward (core_algos.py:108-153), B responses in groups of n_samples adjacent rows.

    token_rewards [B, T] implicit rewards (prime_token_rewards); action_mask [B, T] bool (right-padded);
    solved [B] verifier outcome 0/1. Each source gets its own masked_rloo: implicit rewards on every action token,
    the outcome on the final token (-> solved_i - mean_{j!=i} solved_j). Each source's return is a reverse cumsum
    (reward_model_gamma = verifier_gamma = 1), returns are summed (1:1: rm_coef = reward_coef = 5 never reach
    this path) and whitened with the action mask. No KL (kl_coef = 0 in the run). Computed in float64; returns
    (advantages [B, T], returns [B, T]) in token_rewards.dtype and info = {implicit_reward, accuracy, whiten_*}.
    """
    B = token_rewards.shape[0]
    if n_samples < 2 or B % n_samples:
        raise ValueError(f"need groups of n_samples >= 2 adjacent rows, got B={B}, n_samples={n_samples}")
    act = action_mask.bool()  # [B, T]
    final = torch.nn.functional.one_hot(act.sum(-1) - 1, act.shape[-1]).bool()  # [B, T] True at the final token
    outcome = final * solved.double()[:, None]  # [B, T] solved_i on the final token
    rewards = masked_rloo(token_rewards.double(), act, n_samples) + masked_rloo(outcome, final, n_samples)
    returns = rewards.flip(-1).cumsum(-1).flip(-1) * act  # [B, T] G_t = sum_{t'>=t} (r~_t' + o~_t'), gamma = 1
    info = {"implicit_reward": (token_rewards * act).sum(-1).mean().item(), "accuracy": solved.double().mean().item()}
    advantages = returns
    if normalize:
        advantages, mean, std = masked_whiten(returns, act, all_reduce)
        info.update(whiten_mean=mean.item(), whiten_std=std.item())
    return advantages.to(token_rewards.dtype), returns.to(token_rewards.dtype), info


def prime_prm_loss(logp_prm, logp_ref, action_mask, solved, beta_train=0.05):
    """Online implicit-PRM update loss (core_algos.py:265-268, update=after), mean over the B responses:
        L_CE = BCE(sigmoid(beta * sum_t (log pi_psi - log pi_ref)(y_t)), acc)
    logp_prm [B, T] (with grad), logp_ref [B, T], action_mask [B, T], solved [B] 0/1 -> scalar. The reference
    takes binary_cross_entropy of the sigmoid (log clamped at -100); the logits form is the same loss, finite for
    every z."""
    z = beta_train * ((logp_prm - logp_ref) * action_mask).sum(-1)  # [B] beta * sum_t q_t
    return torch.nn.functional.binary_cross_entropy_with_logits(z, solved.to(z.dtype))


def prime_filter(solved, n_samples, lower=0.2, upper=0.8):
    """PRIME's prompt filter (ray_trainer.py filter; run_prime_main.sh bounds): keep a prompt iff its accuracy
    mean_j solved_j over its n samples lies in [lower, upper], bounds included. solved [B] -> [B/n] bool."""
    acc = solved.double().view(-1, n_samples).mean(-1)  # [B/n]
    return (acc >= lower) & (acc <= upper)


# ---------------------------------------------------------------------------------------------------------------
# CLI: one JSONL file = one buffer


@dataclass(kw_only=True)
class Args(CreditArgs):
    """PURE credit assignment over a JSONL buffer of scored responses (python credit.py --input IN --output OUT).

    Each input line is one response: group (int or str, shared by the responses to one prompt; groups may be
    interleaved, all of the same size >= 2), step_token_counts (K >= 1 ints, each step's tokens including its
    terminal separator/EOS token), process_rewards (K floats in (-1, 1), the PRM's P(good) - P(bad) per step),
    verifiable_reward (1, 0 or null = no gold answer), token_logratio (optional: L = sum(step_token_counts)
    floats, log pi_theta - log pi_ref; null or absent = zeros). Every other field is carried through; each output
    line adds token_returns and token_advantages (L floats each), in input order. The whole file is one buffer.
    """

    input: Path
    """JSONL file of scored responses."""
    output: Path
    """JSONL file to write (atomically: an error leaves an existing file untouched)."""


def check_row(path, line, row):
    """Raise InputError(path, line, field, ...) unless row follows the JSONL contract (see Args)."""
    from common import InputError, finite

    def fail(field, msg):
        raise InputError(path, line, field, msg)

    for field in ("group", "step_token_counts", "process_rewards", "verifiable_reward"):
        if field not in row:
            fail(field, "missing")
    if isinstance(row["group"], bool) or not isinstance(row["group"], (int, str)):
        fail("group", f"must be an int or a string, got {row['group']!r}")
    counts = row["step_token_counts"]
    if not isinstance(counts, list) or not counts:
        fail("step_token_counts", "must be a non-empty list of ints (one per step)")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts):
        fail("step_token_counts", f"every count must be an int >= 1, got {counts}")
    p = row["process_rewards"]
    if not isinstance(p, list) or len(p) != len(counts):
        fail("process_rewards", f"must be a list of {len(counts)} floats (one per step)")
    if not all(finite(x) and -1 < x < 1 for x in p):
        fail("process_rewards", f"every reward must be a finite number in (-1, 1), got {p}")
    v = row["verifiable_reward"]
    if v is not None and not (finite(v) and v in (0, 1)):
        fail("verifiable_reward", f"must be 1, 0 or null, got {v!r}")
    lr = row.get("token_logratio")
    if lr is not None and (not isinstance(lr, list) or len(lr) != sum(counts)):
        fail("token_logratio", f"must be a list of sum(step_token_counts) = {sum(counts)} floats, or null")
    if lr is not None and not all(finite(x) for x in lr):
        fail("token_logratio", "every value must be a finite number")


def read_buffer(path):
    """Read and check a JSONL buffer. Returns (rows, order, n_samples): order lists the row indices group by group
    (groups in order of first appearance), the adjacent-groups layout pure_advantages expects."""
    from common import InputError, read_jsonl

    rows, lines, groups = [], [], {}
    for line, row in read_jsonl(path):
        check_row(path, line, row)
        groups.setdefault(row["group"], []).append(len(rows))
        rows.append(row)
        lines.append(line)
    if not rows:
        raise InputError(path, None, None, "no responses (empty file)")
    sizes = [len(g) for g in groups.values()]
    for key, members in groups.items():
        if len(members) != sizes[0]:
            first = next(iter(groups))
            raise InputError(path, lines[members[0]], "group", f"group {key!r} has {len(members)} responses, "
                             f"group {first!r} has {sizes[0]}; all groups must have the same size")
        if len(members) < 2:
            raise InputError(path, lines[members[0]], "group", f"group {key!r} has 1 response; the leave-one-out "
                             "baseline needs at least 2 per group")
    return rows, [i for members in groups.values() for i in members], sizes[0]


def to_tensors(rows):
    """Rows (already checked) -> right-padded float64 tensors for pure_advantages, one row per response."""
    lengths = [sum(r["step_token_counts"]) for r in rows]
    B, T = len(rows), max(lengths)
    p = torch.zeros(B, T, dtype=torch.float64)  # [B, T] p_k on terminal tokens
    lr = torch.zeros(B, T, dtype=torch.float64)  # [B, T] log-ratio, 0 on padding
    ends = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    for i, r in enumerate(rows):
        t = torch.tensor(r["step_token_counts"]).cumsum(0) - 1  # [K] terminal token of each step
        p[i, t] = torch.tensor(r["process_rewards"], dtype=torch.float64)
        ends[i, t] = True
        if r.get("token_logratio") is not None:
            lr[i, :lengths[i]] = torch.tensor(r["token_logratio"], dtype=torch.float64)
    action_mask = torch.arange(T) < torch.tensor(lengths)[:, None]  # [B, T]
    solved = torch.tensor([float(r["verifiable_reward"] == 1) for r in rows], dtype=torch.float64)  # [B]
    has_gold = torch.tensor([r["verifiable_reward"] is not None for r in rows])  # [B]
    return p, ends, action_mask, solved, has_gold, lr, lengths


def run(args):
    """Read args.input, compute PURE returns/advantages over the whole file, write args.output atomically."""
    from common import write_jsonl

    rows, order, n_samples = read_buffer(args.input)
    p, ends, act, solved, has_gold, lr, lengths = to_tensors([rows[i] for i in order])
    adv, ret, _ = pure_advantages(p, ends, act, solved, has_gold, lr, n_samples, credit=args.credit,
                                  credit_temperature=args.credit_temperature, baseline=args.baseline,
                                  reward_mode=args.reward_mode, vr_coef=args.vr_coef, kl_coef=args.kl_coef,
                                  mask_separators=args.mask_separators, normalize=args.normalize)
    out = [None] * len(rows)
    for b, i in enumerate(order):
        out[i] = {**rows[i], "token_returns": ret[b, :lengths[b]].tolist(),
                  "token_advantages": adv[b, :lengths[b]].tolist()}
    write_jsonl(args.output, out)


def main(argv=None):
    import tyro

    from common import InputError

    args = tyro.cli(Args, args=argv)
    try:
        run(args)
    except InputError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
