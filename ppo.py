"""PURE RL (and PRIME, its sibling): PPO fine-tuning of a math LLM with dense process rewards, one file, top to bottom.

One step, in the order of this file: ROLLOUT (vLLM samples, answers graded; PRIME's accuracy filter) -> LOG-PROBS
(policy and frozen reference) -> REWARDS + CREDIT, one of:
  PURE  (--reward-mode PRMVR | PRM | VR): a PRM (or --step-scorer) scores each "\\n\\n" step (rewards.py), min-form
        credit (credit.pure_advantages), verifiable rewards on the prompts with a gold answer;
  PRIME (--reward-mode PRIME): the implicit PRM q_t = log pi_psi(y_t) - log pi_ref(y_t), a causal LM updated online
        on the verifier's outcomes, RLOO per reward source (credit.prime_advantages);
-> PPO UPDATE (DeepSpeed ZeRO-2) -> SYNC WEIGHTS TO vLLM -> VALIDATE (--eval-every) -> LOG -> maybe CHECKPOINT.
Defaults = PURE's headline run (examples/scripts/train_pure.sh, openrlhf/cli/train_pure_ray.py of
github.com/CJReinforce/PURE@41f9363b8cc4af044b7fc5f7f9bbbf62139e9553, "PURE@41f9363" below); PRIME's flags default to
PRIME's run (training/examples/run_prime_main.sh of github.com/PRIME-RL/PRIME@18ad596f08d487bb546d80d738d99ec697bd2e75).

torchrun, one process per device, no Ray: every rank holds the ZeRO-2 actor, its own colocated vLLM engine, and the
frozen reference and PRM, which wait in host memory and visit the device only for their forward pass. After each
update the engines reload the new weights (rollout.sync_weights). Setup, ranks, devices, checkpoints, logs: runtime.py.

    torchrun --nproc_per_node 8 ppo.py --model M --prm P --prompts F --output-dir D       # 8 GPUs
    torchrun --nproc_per_node 2 ppo.py ...                                                # CPU (gloo), tiny models
Rerunning the same command resumes from the latest complete checkpoint-<step>/.
"""
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import tyro

from common import InputError, plot_metrics, write_jsonl
from credit import (CreditArgs, prime_advantages, prime_filter, prime_prm_loss, prime_token_rewards, pure_advantages,
                    step_sums)
from rollout import format_prompt, generate, sync_weights, wake_engine
from runtime import (EARLY_STOP_KEYS, PLOT_KEYS, Stop, all_ranks_ok, all_reduce_on, gather, latest_checkpoint,
                     on_device, open_logs, own_gpu_first, reduce_by_name, sample_records, save_checkpoint, setup,
                     step_metrics, sudden_jump, token_logprobs, write_row)


@dataclass(kw_only=True)
class Args(CreditArgs):
    model: str
    """policy = reference checkpoint (PURE: Qwen2.5-Math-7B base)"""
    prompts: str
    """prompt JSONL/JSON (PURE's 8k_math_879_answers: `question`, gold in `answer` or "null", logging-only gold in
    `ref_answer`) or an HF dataset name. PRIME uses only the prompts with a gold `answer`"""
    prm: str | None = None
    """PURE: the PRM folder (AutoModelForTokenClassification, 2 labels), `none` (or unset) for --reward-mode VR.
    PRIME: the implicit PRM, a causal LM folder (default: --model, as PRIME starts it from the SFT model)"""
    step_scorer: str | None = None
    """`module:function` that scores steps by program in place of a PRM (--reward-mode PRM or PRMVR, no --prm):
    fn(questions, steps) -> one score in (-1, 1) per step (e.g. toy_math:oracle_step_scores, the world's labels)"""
    reward_mode: Literal["PRM", "VR", "PRMVR", "PRIME"] = "PRMVR"
    """PURE: PRMVR (process + verifiable, headline), PRM (process only), VR (verifiable only); PRIME: implicit
    process rewards + the verifier's outcome, always both (the implicit PRM cannot learn without the outcome)"""
    output_dir: str = "runs/pure"
    """metrics.jsonl, tb/, rollouts/, evals/<set>/step-<N>.jsonl, checkpoint-<step>/, curves.png"""
    kl_coef: Annotated[float, tyro.conf.arg(name="init-kl-coef")] = 0.001
    """beta of the k1 KL penalty in the per-token reward, fixed (reference --init_kl_coef 0.001; PRIME's credit
    has none, as its run used KL 0)"""
    rollout_batch_size: int = 64
    """prompts per RL step, over all ranks (reference 64)"""
    n_samples_per_prompt: int = 4
    """samples per prompt; a group = n adjacent samples (reference 4)"""
    generate_max_len: int = 2048
    """max new tokens per sample, and per validation answer (reference 2048)"""
    prompt_max_len: int = 1024
    """prompt token budget; longer prompts keep their last tokens (reference 1024)"""
    temperature: float = 0.5
    """SAMPLING temperature (reference 0.5; the credit softmax temperature is --credit-temperature)"""
    top_p: float = 1.0
    """nucleus sampling (reference 1.0)"""
    train_batch_size: int = 128
    """sequences per optimizer step over all ranks: rollout 64 x 4 = 256 -> 2 optimizer steps (reference 128)"""
    micro_train_batch_size: int = 2
    """sequences per forward/backward per rank; the rest is gradient accumulation (reference 2)"""
    micro_rollout_batch_size: int = 4
    """sequences per forward of the reference model and the PRM (reference 4)"""
    actor_learning_rate: float = 5e-7
    """AdamW lr, constant, no warmup (reference 5e-7; betas (0.9, 0.95), weight decay 0, grad clip 1.0)"""
    eps_clip: float = 0.2
    """PPO ratio clip (reference 0.2)"""
    max_steps: int = 500
    """RL steps (reference --max_steps 500)"""
    save_steps: int = 20
    """checkpoint every N steps, and at the last step (reference 20)"""
    keep_all_ds_states: bool = False
    """keep every checkpoint's DeepSpeed state (ds/: ~7x the weights); default: the newest only (HF weights: all)"""
    rollouts_every: int = 10
    """write the step's samples to rollouts/step-<N>.jsonl every N steps"""
    eval_prompts: list[str] = field(default_factory=list)
    """VALIDATION sets (JSONL files with `question`/`problem` and `answer`, or evaluate.py's benchmark names): the
    first logs eval/accuracy, eval/steps_per_response, eval/response_length, the others eval/<file stem>/..."""
    eval_every: int = 0
    """validate at step 0 (before any update), every N steps and at the last step (0 = never, as the reference)"""
    seed: int = 42
    """seed of the prompt order, the sampler and the buffer shuffle (reference 42)"""
    gradient_checkpointing: bool = True
    """recompute activations in the backward pass (reference on)"""
    vllm_gpu_memory_utilization: float = 0.3
    """GPU memory fraction of each colocated vLLM engine (weights + KV cache); ignored on CPU"""
    dist_timeout_minutes: int = 60
    """minutes a collective waits for the slowest rank (NCCL's default 10 is less than a slow-disk weight sync)"""
    grader_timeout: float = 5.0
    """seconds per answer check (math-verify)"""
    early_stop_zscore: float = 0.0
    """0 = off. Else checkpoint and stop when KL, length, steps per response or the process reward lies more than
    this many standard deviations from its mean over the previous 10 steps"""
    accuracy_filter: Literal["auto", "on", "off"] = "auto"
    """PRIME's prompt filter: drop groups whose accuracy over their n samples lies outside
    [--filter-lower, --filter-upper] and sample more prompts to refill the step (auto: on in PRIME mode only)"""
    filter_lower: float = 0.2
    """accuracy filter lower bound, included (PRIME: 0.2)"""
    filter_upper: float = 0.8
    """accuracy filter upper bound, included (PRIME: 0.8)"""
    filter_max_rounds: int = 4
    """extra rollout rounds to refill a filtered step; then the step trains on what survived (none: no update)"""
    prm_learning_rate: float = 1e-6
    """PRIME: the implicit PRM's AdamW lr (PRIME 1e-6)"""
    prm_grad_clip: float = 10.0
    """PRIME: the implicit PRM's gradient clipping (PRIME 10)"""
    prime_beta_train: float = 0.05
    """PRIME: beta in the PRM's loss BCE(sigmoid(beta * sum_t q_t), outcome) (PRIME 0.05)"""
    prime_credit: Literal["token", "step"] = "token"
    """PRIME: token = PRIME's credit (every token its own step, RLOO per reward source); step = beyond both papers:
    the implicit rewards summed over each "\\n\\n" step and fed to PURE's --credit (min-form by default)"""
    track: bool = False
    """also log to Weights & Biases (TensorBoard always)"""
    wandb_project: str = "pure"
    """wandb project when --track"""


# ---------------------------------------------------------------------------------------------------------------- setup
@dataclass
class Run:
    """What every phase of a step reads, built once by start_run."""
    args: Args
    prompts: list  # [{question, answer: the VR gold or None, ref_answer: what samples are graded against}]
    eval_sets: dict  # --eval-prompts: {name: [{question, gold}]}
    tok: Any  # the policy's tokenizer (the PRM reads the same token ids)
    prm_tok: Any  # PURE's PRM tokenizer, or None
    scorer: Any  # --step-scorer's function, or None
    rank: int
    world: int
    local_rank: int
    device: torch.device
    out: Path
    start: int  # the step the run resumes after (0: a new run)
    llm: Any  # this rank's vLLM engine
    sync_dir: Path  # where local rank 0 writes the weights the engines reload
    engine: Any  # the actor: DeepSpeed ZeRO-2
    ref: Any  # frozen reference, in host memory
    prm: Any  # PURE: the frozen PRM, in host memory (None in VR mode or with --step-scorer)
    prm_engine: Any  # PRIME: the implicit PRM, DeepSpeed ZeRO-2 (else None)
    cuda: bool  # device.type == "cuda": the engine sleeps between rollouts, frozen models visit the GPU
    writer: Any = None  # rank 0: TensorBoard
    history: list = field(default_factory=list)  # rank 0: metric rows so far (the early-stop rule)


def start_run(args):
    """Inputs checked, ranks joined, vLLM engine, models and DeepSpeed ready, resumed from the latest checkpoint
    (runtime.setup); rank 0 opens the logs."""
    run = Run(args=args, **setup(args))
    if run.rank == 0:
        run.writer, run.history = open_logs(run.out, run.start, args.track and args.wandb_project, asdict(args))
        print(f"{'resuming after' if run.start else 'starting at'} step {run.start}: {run.world} ranks x "
              f"{args.rollout_batch_size // run.world} prompts x {args.n_samples_per_prompt} samples, micro-batches of "
              f"{args.micro_train_batch_size}", flush=True)
    return run


# -------------------------------------------------------------------------------------------------------------- ROLLOUT
@dataclass
class Rollouts:
    """One step's samples on this rank, the n samples of a prompt adjacent."""
    samples: list  # rollout.generate's dicts (prompt_ids, response_ids, response_text, logprobs, ...) + prompt_id
    grades: list  # rewards.grade's dicts per sample: correct (None: no gold to grade against), extracted
    counts: dict  # filter/drawn, filter/kept: prompts this rank sampled, groups it kept


def prompt_indices(step, n_prompts, batch, seed):
    """Global prompt indices of RL step `step` (1-based): epoch e walks randperm(seed + e), drop_last, so the
    order is a function of (seed, step) alone and a resumed run draws exactly the prompts it would have drawn."""
    per_epoch = n_prompts // batch
    epoch, pos = divmod(step - 1, per_epoch)
    perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[pos * batch:(pos + 1) * batch].tolist()


def refill_indices(step, rank, round_, n_prompts, batch, seed):
    """Prompts of PRIME's filter's extra rollout round: a fixed function of (seed, step, rank, round), so a resumed
    run refills exactly as the uninterrupted one (the reference draws on from its dataloader)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 10_007 + rank * 101 + round_)
    return torch.randperm(n_prompts, generator=g)[:batch].tolist()


def sample_and_grade(run, step):
    """ROLLOUT: this rank's share of the step's prompts, n samples each, graded. TWO GOLDS (the reference's): samples
    are graded against `ref_answer` (the gold, else PURE's logging-only one); the verifiable reward reads `answer`
    only (pure_rewards_and_credit). PRIME's accuracy filter (on in PRIME mode) drops a group whose accuracy lies
    outside [--filter-lower, --filter-upper] and draws fresh prompts, for up to --filter-max-rounds extra rounds;
    every rank then keeps the fewest groups any rank has (DeepSpeed: the same backward passes). -> Rollouts"""
    from rewards import grade_many

    args, n, share = run.args, run.args.n_samples_per_prompt, run.args.rollout_batch_size // run.world
    prime_filter_on = args.accuracy_filter == "on" or args.accuracy_filter == "auto" and args.reward_mode == "PRIME"
    idx = prompt_indices(step, len(run.prompts), args.rollout_batch_size, args.seed)
    idx = idx[run.rank * share:(run.rank + 1) * share]  # this rank's share
    groups, drawn = [], 0
    if run.cuda:
        wake_engine(run.llm)  # weights + KV cache
    for round_ in range(1 + args.filter_max_rounds * prime_filter_on):
        if round_:
            idx = refill_indices(step, run.rank, round_, len(run.prompts), share, args.seed)
        first = ((step - 1) + round_ * args.max_steps) * args.rollout_batch_size + run.rank * share  # own seeds
        out = generate(run.llm, [format_prompt(run.prompts[i]["question"]) for i in idx], n=n,
                       temperature=args.temperature, top_p=args.top_p, max_tokens=args.generate_max_len,
                       max_prompt_len=args.prompt_max_len, seed=args.seed + first * n)
        for x in out:
            x["prompt_id"] = idx[x["prompt_index"]]
        grades = grade_many([x["response_text"] for x in out],
                            [run.prompts[x["prompt_id"]]["ref_answer"] for x in out], timeout=args.grader_timeout)
        drawn += len(idx)
        keep = torch.ones(len(idx), dtype=torch.bool)  # [len(idx)] groups kept
        if prime_filter_on:  # groups with an ungraded sample pass
            solved = torch.tensor([float(bool(g["correct"])) for g in grades])  # [n * len(idx)]
            graded = torch.tensor([g["correct"] is not None for g in grades]).view(-1, n).all(-1)  # [len(idx)]
            keep = prime_filter(solved, n, args.filter_lower, args.filter_upper) | ~graded
        groups += [[(out[j], grades[j]) for j in range(g * n, (g + 1) * n)] for g in keep.nonzero().flatten().tolist()]
        if len(groups) >= share:
            break
    if run.cuda:
        run.llm.sleep(level=1)
    K = torch.tensor([min(len(groups), share)], device=run.device)
    dist.all_reduce(K, op=dist.ReduceOp.MIN)
    kept = [pair for group in groups[:int(K.item())] for pair in group]
    return Rollouts([x for x, _ in kept], [g for _, g in kept], {"filter/drawn": drawn, "filter/kept": int(K.item())})


# ------------------------------------------------------------------------------------------------------------ LOG-PROBS
@dataclass
class Batch:
    """The buffer as right-padded [B, T] tensors on the CPU (T = the longest response), and its steps."""
    steps: list  # [B] token count of each step of each response (rewards.split_steps: runs of 2+ newlines)
    action_mask: torch.Tensor  # [B, T] bool: every generated token, EOS included
    step_end: torch.Tensor  # [B, T] bool: each step's terminal token (the last one at the final token)
    vllm_logp: torch.Tensor  # [B, T] the sampler's log-probs
    old_logp: torch.Tensor  # [B, T] pi_old, recomputed by the trainer before the update
    ref_logp: torch.Tensor  # [B, T] the frozen reference
    logratio: torch.Tensor  # [B, T] log pi_old - log pi_ref on action tokens (k1 KL estimate per token)


def pad_batch(samples, pad_id, device):
    """Left-pad prompts, right-pad responses (the reference's layout, PURE@41f9363
    openrlhf/trainer/ppo_utils/experience_maker.py:1064-1086).
    Returns input_ids [b, P+T], attention_mask [b, P+T], position_ids [b, P+T], T (longest response)."""
    P = max(len(s["prompt_ids"]) for s in samples)
    T = max(len(s["response_ids"]) for s in samples)
    ids, att = [], []
    for s in samples:
        p, r = s["prompt_ids"], s["response_ids"]
        ids.append([pad_id] * (P - len(p)) + p + r + [pad_id] * (T - len(r)))
        att.append([0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (T - len(r)))
    ids, att = torch.tensor(ids, device=device), torch.tensor(att, device=device)  # [b, P+T]
    pos = (att.cumsum(-1) - 1).clamp(min=0)  # [b, P+T] positions start at 0 on the first real token, as in vLLM
    return ids, att, pos, T


def response_logprobs(model, samples, pad_id, device):
    """log pi(y_t | x, y_<t) of every response token (raw logits, no temperature), 0 on padding. -> [b, T] fp32.
    The logits stay in the model's dtype; the fp32 log-softmax is taken a chunk at a time (runtime.token_logprobs)."""
    ids, att, pos, T = pad_batch(samples, pad_id, device)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=T + 1,
                   use_cache=False).logits[:, :-1]  # [b, T, V] logits predicting each response token
    return token_logprobs(logits, ids[:, -T:]) * att[:, -T:]  # [b, T]


def buffer_logprobs(model, samples, T, micro, pad_id, device):
    """response_logprobs over the whole buffer in micro-batches, no grad. -> [B, T] fp32 on the CPU. A frozen model
    kept in host memory visits `device` only for this (runtime.on_device; no-op on CPU)."""
    logp = torch.zeros(len(samples), T)  # [B, T]
    with torch.no_grad(), on_device(model, device):
        model.eval()
        for j in range(0, len(samples), micro):
            lp = response_logprobs(model, samples[j:j + micro], pad_id, device)  # [b, Tb]
            logp[j:j + lp.shape[0], :lp.shape[1]] = lp.float().cpu()
    return logp


def logprobs_of(run, ro):
    """LOG-PROBS of the buffer: the policy before the update (pi_old) and the frozen reference. -> Batch"""
    from rewards import split_steps

    samples, pad = ro.samples, run.tok.pad_token_id
    steps = [split_steps(x["response_ids"], run.tok) for x in samples]  # steps end at runs of 2+ newlines
    B, T = len(samples), max(len(x["response_ids"]) for x in samples)
    action_mask, step_end, vllm_logp = torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.bool), \
        torch.zeros(B, T)
    for i, x in enumerate(samples):
        L = len(x["response_ids"])
        action_mask[i, :L], step_end[i, torch.tensor(steps[i]).cumsum(0) - 1] = True, True  # the last end is L - 1
        vllm_logp[i, :L] = torch.tensor(x["logprobs"])
    micro = run.args.micro_rollout_batch_size
    old_logp = buffer_logprobs(run.engine.module, samples, T, micro, pad, run.device)  # [B, T]
    ref_logp = buffer_logprobs(run.ref, samples, T, micro, pad, run.device)  # [B, T]
    return Batch(steps, action_mask, step_end, vllm_logp, old_logp, ref_logp, (old_logp - ref_logp) * action_mask)


# ----------------------------------------------------------------------------------------------------- REWARDS + CREDIT
@dataclass
class Credit:
    """What a step's rewards and credit hand to the PPO update and the logs."""
    advantages: torch.Tensor  # [B, T]
    step_scores: list | None  # [B] the process reward of each step (PRM, scorer or implicit), None in VR mode
    info: dict  # per-rank means for the logs: reward/process, advantage_std, (PRIME) prm/loss, prm/outcome_accuracy


def pure_rewards_and_credit(run, ro, batch):
    """REWARDS + CREDIT, PURE: the PRM's p_k per step (rewards.prm_scores; the --step-scorer's instead; none in VR
    mode), the verifiable reward where the prompt has a gold `answer`, then min-form credit, token RLOO baseline, KL
    and whitening over all ranks (credit.pure_advantages). -> Credit"""
    from rewards import prm_scores, program_scores, step_texts

    args, samples, scores = run.args, ro.samples, None
    if run.scorer is not None:  # process rewards from a program: the same p_k slots, the same credit
        scores = program_scores(run.scorer, [run.prompts[x["prompt_id"]]["question"] for x in samples],
                                [step_texts(x["response_ids"], c, run.tok) for x, c in zip(samples, batch.steps)])
    elif run.prm is not None:
        with on_device(run.prm, run.device):
            scores = prm_scores(run.prm, run.prm_tok, [x["prompt_ids"] for x in samples],
                                [x["response_ids"] for x in samples], batch_size=args.micro_rollout_batch_size)
    process_rewards = torch.zeros(batch.action_mask.shape)  # [B, T] p_k on step k's terminal token
    if scores is not None:
        process_rewards[batch.step_end] = torch.tensor([p for ps in scores for p in ps])  # row-major: step k of row i
    if not all_ranks_ok(bool(process_rewards.isfinite().all()), run.device):
        raise Stop("non-finite PRM score")
    # TWO GOLDS (the reference's, PURE@41f9363 experience_maker.py:1118-1129): VR reads `answer` only; a prompt
    # without one counts as solved (solved = 1), and VR ignores its row (has_gold False)
    has_gold = torch.tensor([run.prompts[x["prompt_id"]]["answer"] is not None for x in samples])  # [B]
    solved = torch.tensor([float(g["correct"]) if h else 1.0 for g, h in zip(ro.grades, has_gold.tolist())])  # [B]
    advantages, _, info = pure_advantages(
        process_rewards, batch.step_end, batch.action_mask, solved, has_gold, batch.logratio, args.n_samples_per_prompt,
        credit=args.credit, credit_temperature=args.credit_temperature, baseline=args.baseline,
        reward_mode=args.reward_mode, vr_coef=args.vr_coef, kl_coef=args.kl_coef, mask_separators=args.mask_separators,
        normalize=args.normalize, all_reduce=all_reduce_on(run.device))
    info = {"reward/process": info["reward"], "advantage_std": info.get("whiten_std", math.nan)}
    return Credit(advantages, scores, info)


def optimizer_chunks(n, per_step, micro):
    """Buffer positions 0..n-1 as optimizer steps of micro-batches: [[[positions] per micro-batch] per step]."""
    return [[list(range(j, min(j + micro, s + per_step, n))) for j in range(s, min(s + per_step, n), micro)]
            for s in range(0, n, per_step)]


def prime_prm_update(engine, samples, ref_logp, action_mask, solved, args, world, pad_id, device):
    """One pass of PRIME's online implicit-PRM update over the buffer, in order (DataParallelPRIME.update_policy,
    training/verl/workers/actor/dp_prime.py of PRIME-RL/PRIME@18ad596, update=after):
        L_CE = BCE(sigmoid(beta_train * sum_t q_t), solved),   q_t = log pi_psi(y_t) - log pi_ref(y_t)
    in optimizer steps of train_batch_size / world sequences (engine.step() clips at --prm-grad-clip). The rewards
    come from the update's own forward passes: log pi_psi is returned as each micro-batch saw it, before the
    optimizer step that follows. -> (log pi_psi [B, T] detached on the CPU, {prm/loss, prm/outcome_accuracy})."""
    engine.train()
    logp_prm, losses, hits = torch.zeros(ref_logp.shape), [], 0
    for chunk in optimizer_chunks(len(samples), args.train_batch_size // world, args.micro_train_batch_size):
        for mb in chunk:
            logp = response_logprobs(engine, [samples[i] for i in mb], pad_id, device)  # [b, Tb] with grad
            Tb = logp.shape[1]
            ref, mask = ref_logp[mb, :Tb].to(device), action_mask[mb, :Tb].to(device)
            loss = prime_prm_loss(logp, ref, mask, solved[mb].to(device), args.prime_beta_train)
            if not all_ranks_ok(bool(loss.isfinite()), device):
                raise Stop("non-finite implicit-PRM loss")
            engine.backward(loss / len(chunk), scale_wrt_gas=False)
            logp_prm[mb, :Tb] = logp.detach().float().cpu()
            z = ((logp.detach() - ref) * mask).sum(-1)  # [b] its sign is the PRM's outcome prediction
            hits += ((z > 0).cpu() == solved[mb].bool()).sum().item()
            losses.append(loss.item())
        engine.step()
    return logp_prm, {"prm/loss": sum(losses) / len(losses), "prm/outcome_accuracy": hits / len(samples)}


def prime_update_and_credit(run, ro, batch):
    """REWARDS + CREDIT, PRIME. First UPDATES the implicit PRM, one pass over the buffer (prime_prm_update), whose
    forward passes give r_t = log pi_psi(y_t) - log pi_ref(y_t) (QUIRK: no beta on the reward, dp_prime.py:116-143
    compute_implicit_reward of PRIME@18ad596) divided by the buffer's largest |return| (QUIRK prime_norm=batch_norm,
    on this rank's buffer as in the reference); then PRIME's RLOO per reward source, implicit rewards and the
    verifier's outcome weighted 1:1 (QUIRK: rm_coef and reward_coef never reach this path), whitened over all ranks
    (credit.prime_advantages). --prime-credit step instead sums r_t over each step into PURE's credit
    (credit.pure_advantages with --credit, the outcome as its verifiable reward). -> Credit"""
    args, n, B = run.args, run.args.n_samples_per_prompt, len(ro.samples)
    solved = torch.tensor([float(g["correct"]) for g in ro.grades])  # [B] every PRIME prompt has a gold
    logp_prm, info = prime_prm_update(run.prm_engine, ro.samples, batch.ref_logp, batch.action_mask, solved, args,
                                      run.world, run.tok.pad_token_id, run.device)
    r = prime_token_rewards(logp_prm, batch.ref_logp, batch.action_mask)  # [B, T] beta = 1, batch norm
    p = step_sums(r, batch.step_end)  # [B, T] implicit reward of each step, on its terminal token
    scores = [p[i][batch.step_end[i]].tolist() for i in range(B)]
    if args.prime_credit == "token":
        advantages, _, credit = prime_advantages(r, batch.action_mask, solved, n, all_reduce=all_reduce_on(run.device))
        info["reward/process"] = credit["implicit_reward"]
    else:
        advantages, _, credit = pure_advantages(
            p, batch.step_end, batch.action_mask, solved, torch.ones(B, dtype=torch.bool), batch.logratio, n,
            credit=args.credit, credit_temperature=args.credit_temperature, baseline=args.baseline,
            reward_mode="PRMVR", vr_coef=args.vr_coef, kl_coef=args.kl_coef, mask_separators=args.mask_separators,
            normalize=args.normalize, all_reduce=all_reduce_on(run.device))
        info["reward/process"] = credit["reward"]
    return Credit(advantages, scores, {**info, "advantage_std": credit.get("whiten_std", math.nan)})


# ----------------------------------------------------------------------------------------------------------- PPO UPDATE
def ppo_loss(logp, old_logp, advantages, mask, eps_clip=0.2):
    """Clipped PPO surrogate, per-sequence token mean then batch mean (PolicyLoss in openrlhf/models/loss.py of
    PURE@41f9363).

    logp, old_logp, advantages [b, T] float; mask [b, T] bool (action tokens). Returns (loss, ratio_mean, clip_frac).
      ratio_t = exp(log pi_theta - log pi_old);  l_t = -min(ratio_t A_t, clip(ratio_t, 1-eps, 1+eps) A_t)
      loss    = mean_i ( sum_t l_it m_it / sum_t m_it )
    """
    m = mask.float()  # [b, T]
    ratio = (logp - old_logp).exp()  # [b, T]
    surr = torch.min(ratio * advantages, ratio.clamp(1 - eps_clip, 1 + eps_clip) * advantages)  # [b, T]
    loss = ((-surr * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()  # per-sequence token mean, then batch mean
    ratio_mean = (ratio * m).sum() / m.sum()
    if ratio_mean > 10:  # QUIRK (reference): a micro-batch whose mean ratio exceeds 10 contributes zero loss
        loss = loss * 0
    clip_frac = (((ratio - 1).abs() > eps_clip).float() * m).sum() / m.sum()
    return loss, ratio_mean.detach(), clip_frac.detach()


def ppo_update(engine, samples, old_logp, advantages, action_mask, args, world, pad_id, device, generator):
    """One PPO epoch over the shuffled buffer: optimizer steps of train_batch_size / world sequences per rank, each
    the mean of its micro-batches' losses (engine.step() clips at 1.0 and steps AdamW). -> per-micro-batch means."""
    engine.train()
    order = torch.randperm(len(samples), generator=generator)  # the reference shuffles its replay buffer
    stats = []
    for chunk in optimizer_chunks(len(samples), args.train_batch_size // world, args.micro_train_batch_size):
        for positions in chunk:
            mb = order[positions]
            logp = response_logprobs(engine, [samples[i] for i in mb], pad_id, device)  # [b, Tb]
            Tb = logp.shape[1]
            loss, ratio, clip_frac = ppo_loss(logp, old_logp[mb, :Tb].to(device), advantages[mb, :Tb].to(device),
                                              action_mask[mb, :Tb].to(device), args.eps_clip)
            if not all_ranks_ok(bool(loss.isfinite()), device):
                raise Stop("non-finite PPO loss")
            engine.backward(loss / len(chunk), scale_wrt_gas=False)
            stats.append([loss.item(), ratio.item(), clip_frac.item(), float(ratio.item() > 10)])
        engine.step()
    mean = torch.tensor(stats, dtype=torch.float64).mean(0).tolist()
    return dict(zip(["loss", "ratio", "clip_frac", "zeroed_micro_batches"], mean))


# ------------------------------------------------------------------------------------------------------------- one step
PHASES = ["gen", "ref", "prm", "train", "sync"]  # gen: generation + grading; prm: rewards + credit


def rl_step(run, step):
    """One RL step on this rank: ROLLOUT -> LOG-PROBS -> REWARDS + CREDIT -> PPO UPDATE -> SYNC WEIGHTS TO vLLM. ->
    (per-sample records, {"sum"|"mean"|"max": {name: x}} for log_step). An empty filtered buffer: no update."""
    args, pad, seconds, last = run.args, run.tok.pad_token_id, {}, time.time()

    def tick(phase):  # seconds since the previous tick -> time/<phase>
        nonlocal last
        seconds[phase], last = time.time() - last, time.time()

    ro = sample_and_grade(run, step)
    tick("gen")
    stats = {"sum": {**ro.counts, "tokens": 0.0, "kl": 0.0, "vllm_diff": 0.0}, "mean": {}, "max": {}}
    per_sample = []
    if ro.samples:
        batch = logprobs_of(run, ro)
        tick("ref")
        rewards_and_credit = prime_update_and_credit if args.reward_mode == "PRIME" else pure_rewards_and_credit
        credit = rewards_and_credit(run, ro, batch)  # the one place where PURE and PRIME differ
        if not all_ranks_ok(bool(credit.advantages.isfinite().all()), run.device):
            raise Stop(f"step {step}: non-finite advantages")
        tick("prm")
        # PPO UPDATE: shuffled buffer, micro-batches, optimizer steps of train_batch_size sequences (all ranks)
        shuffle = torch.Generator().manual_seed(args.seed * 100_003 + step * 1_009 + run.rank)
        update = ppo_update(run.engine, ro.samples, batch.old_logp, credit.advantages, batch.action_mask, args,
                            run.world, pad, run.device, shuffle)
        tick("train")
        # SYNC WEIGHTS TO vLLM: local rank 0 writes /dev/shm (or its fallback) once per node, every engine reloads
        dist.barrier()
        if run.cuda:
            wake_engine(run.llm, tags=["weights"])  # the reload needs the weights only, not the KV cache
        sync_weights(run.llm, run.engine.module.state_dict() if run.local_rank == 0 else None, run.sync_dir,
                     barrier=dist.barrier)
        if run.cuda:
            run.llm.sleep(level=1)
        tick("sync")
        vllm_diff = (batch.vllm_logp - batch.old_logp).abs() * batch.action_mask  # [B, T]
        per_sample = sample_records(run.prompts, ro.samples, ro.grades, batch.steps, credit.step_scores)
        stats["sum"].update(tokens=batch.action_mask.sum().item(), kl=batch.logratio.sum().item(),
                            vllm_diff=vllm_diff.sum().item())
        stats["mean"] = {**update, **credit.info}
        stats["max"]["logprob_diff_vllm/max"] = vllm_diff.max().item()
    stats["max"].update({f"time/{phase}": seconds.get(phase, 0.0) for phase in PHASES})  # a skipped phase: 0 s
    return per_sample, stats


# ------------------------------------------------------------------------------------------------------------- VALIDATE
def validate(run, step):
    """VALIDATE: the engine's policy (synced after `step`'s update) answers each --eval-prompts set greedily, a share
    per rank, graded by evaluate.py's protocol (at most --generate-max-len tokens). -> {eval/accuracy, ...} on every
    rank (steps: runs of 2+ newlines in the text); rank 0 writes the answers to evals/<name>/step-<step>.jsonl."""
    from evaluate import Args as EvalArgs, evaluate_benchmark
    from rewards import split_text_steps

    t0, metrics = time.time(), {}
    eval_args = EvalArgs(max_tokens=run.args.generate_max_len, grade_timeout=run.args.grader_timeout)
    if run.cuda:
        wake_engine(run.llm)
    for k, (name, rows) in enumerate(run.eval_sets.items()):
        mine = rows[run.rank::run.world]  # row j of this share is row rank + j * world of the set
        records = evaluate_benchmark(run.llm, mine, eval_args) if mine else []
        for r in records:
            r.update(index=run.rank + r["index"] * run.world, steps=len(split_text_steps(r["response"])))
        records = sorted(gather(records, run.world), key=lambda r: r["index"])
        key, n = "eval" if k == 0 else f"eval/{name}", len(records)
        metrics.update({f"{key}/accuracy": sum(bool(r["correct"]) for r in records) / n,
                        f"{key}/steps_per_response": sum(r["steps"] for r in records) / n,
                        f"{key}/response_length": sum(r["tokens"] for r in records) / n})
        if run.rank == 0:
            write_jsonl(run.out / "evals" / name / f"step-{step}.jsonl", records)
    if run.cuda:
        run.llm.sleep(level=1)
    return {**metrics, "time/eval": time.time() - t0}


# ------------------------------------------------------------------------------------------------------------------ LOG
def log_step(run, step, per_sample, stats, evals):
    """LOG: the stats reduced over ranks by name; rank 0 writes metrics.jsonl (with the step's validation metrics
    `evals`), TensorBoard, rollouts/, checks the early-stop rule. -> the metric that jumped, or None, on every rank"""
    args, reduced, per_sample = run.args, reduce_by_name(stats, run.world, run.device), gather(per_sample, run.world)
    jump = [None]
    if run.rank == 0:
        row = {**step_metrics(step, args, per_sample, reduced, PHASES), **evals}
        write_row(run.out, run.writer, row)
        if step % args.rollouts_every == 0:
            write_jsonl(run.out / "rollouts" / f"step-{step}.jsonl", per_sample)
        print(f"step {step}: reward {row['reward/combined'] or 0:.3f} solved {row['solved']} kl {row['kl'] or 0:.2e} "
              f"len {row['response_length'] or 0:.0f} ({row['time/step']:.1f}s)", flush=True)
        if args.early_stop_zscore > 0:
            jump[0] = sudden_jump(run.history, row, EARLY_STOP_KEYS, args.early_stop_zscore)
        run.history.append(row)
    dist.broadcast_object_list(jump, src=0)
    return jump[0]


# ------------------------------------------------------------------------------------------------------------- the loop
def main(args):
    run = start_run(args)
    due = lambda step: args.eval_every and (step % args.eval_every == 0 or step == args.max_steps)  # noqa: E731
    if run.start == 0 and due(0):
        evals = validate(run, 0)  # the policy before any update
        if run.rank == 0:
            write_row(run.out, run.writer, {"step": 0, **evals})
    for step in range(run.start + 1, args.max_steps + 1):
        per_sample, stats = rl_step(run, step)
        jump = log_step(run, step, per_sample, stats, validate(run, step) if due(step) else {})
        if step % args.save_steps == 0 or step == args.max_steps or jump:  # CHECKPOINT
            save_checkpoint(run.engine, run.tok, run.out, step, run.rank, args.keep_all_ds_states, run.prm_engine)
        if jump:
            if run.rank == 0:
                print(f"early stop at step {step}: sudden jump in {jump}", flush=True)
            break
    if run.rank == 0:
        plot_metrics(run.out / "metrics.jsonl", run.out / "curves.png", PLOT_KEYS)
        run.writer.close()
    if run.local_rank == 0:
        shutil.rmtree(run.sync_dir, ignore_errors=True)
    dist.barrier()


if __name__ == "__main__":
    own_gpu_first()  # GPU: this rank sees its own GPU only, before anything touches CUDA
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = tyro.cli(Args)
    try:
        main(args)
    except InputError as e:
        sys.exit(f"error: {e}")
    except Stop as e:  # nothing of this step was saved: the newest checkpoint is the last good one
        last = latest_checkpoint(Path(args.output_dir))[1] or "none yet"
        sys.exit(f"error: {e}; stopped, last good checkpoint: {last}")
