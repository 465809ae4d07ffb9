"""PURE RL (and PRIME, its sibling): PPO fine-tuning of a math LLM with dense process rewards, one file, top to bottom.

One step = ROLLOUT (vLLM; answers graded) -> LOG-PROBS (policy and frozen reference) -> REWARDS + CREDIT, one of:
  PURE  (--reward-mode PRMVR | PRM | VR): an explicit PRM scores each "\\n\\n" step (rewards.py), min-form credit
        (credit.pure_advantages), verifiable rewards on the prompts with a gold answer;
  PRIME (--reward-mode PRIME): the implicit PRM q_t = log pi_psi(y_t) - log pi_ref(y_t), a causal LM updated online
        on the verifier's outcomes, RLOO per reward source (credit.prime_advantages);
-> PPO UPDATE (DeepSpeed ZeRO-2) -> SYNC WEIGHTS TO vLLM -> LOG -> maybe CHECKPOINT. Defaults = PURE's headline run
(pure_reference.md (h)); PRIME's own settings (section 12) are its flags' defaults.

Layout: torchrun, one process per device, no Ray. Every rank holds the ZeRO-2 actor, its own colocated vLLM engine,
and the frozen reference and PRM, which wait in host memory and visit the device only for their forward pass (in
PRIME mode the PRM trains: a second ZeRO-2 engine). Each rank generates its own share of the prompts
(rollout_batch_size / world_size prompts x n samples). On GPU each rank sees only its own GPU (set first thing in
`__main__`, before anything touches CUDA) and the engine sleeps while the trainer works (weights to host memory, KV
cache freed); on CPU sleeping and moving are no-ops. After each update local rank 0 of every node writes the new
weights once to /dev/shm (to a folder in --output-dir when /dev/shm lacks the room) and every engine of the node
reloads them (rollout.sync_weights). GPU and host memory budget: README.

    torchrun --nproc_per_node 8 ppo.py --model M --prm P --prompts F --output-dir D       # 8 GPUs
    torchrun --nproc_per_node 2 ppo.py ...                                                # CPU (gloo), tiny models
Rerunning the same command resumes from the latest complete checkpoint-<step>/. Every checkpoint keeps its HF weights;
only the newest keeps the DeepSpeed state in ds/ (--keep-all-ds-states keeps them all).
"""
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Literal

import torch
import torch.distributed as dist
import tyro

from common import InputError, finite, log_libraries_to, plot_metrics, read_jsonl, write_jsonl
from credit import CreditArgs, prime_advantages, prime_filter, prime_prm_loss, prime_token_rewards, pure_advantages
from rollout import format_prompt, generate, load_prompts, start_engine, sync_folder, sync_weights, wake_engine


@dataclass(kw_only=True)
class Args(CreditArgs):
    model: str
    """policy = reference checkpoint (PURE: Qwen2.5-Math-7B base)"""
    prompts: str
    """prompt JSONL/JSON (PURE's 8k_math_879_answers: `question`, gold in `answer` or "null", logging-only gold in
    `ref_answer`) or an HF dataset name. PRIME mode uses only the prompts with a gold `answer` (the others are
    skipped, with a count in the log): its PRM learns from outcome labels"""
    prm: str | None = None
    """PURE: the PRM folder (AutoModelForTokenClassification, 2 labels), `none` (or unset) for --reward-mode VR.
    PRIME: the implicit PRM, a causal LM folder (default: --model, as PRIME starts it from the SFT model)"""
    reward_mode: Literal["PRM", "VR", "PRMVR", "PRIME"] = "PRMVR"
    """PURE: PRMVR (process + verifiable, headline), PRM (process only), VR (verifiable only); PRIME: implicit
    process rewards + the verifier's outcome, always both (the implicit PRM cannot learn without the outcome)"""
    output_dir: str = "runs/pure"
    """metrics.jsonl, TensorBoard events, rollouts/, checkpoint-<step>/, curves.png"""
    kl_coef: Annotated[float, tyro.conf.arg(name="init-kl-coef")] = 0.001
    """beta of the k1 KL penalty in the per-token reward, fixed (reference --init_kl_coef 0.001; PRIME's credit
    has none, as its run used KL 0)"""
    rollout_batch_size: int = 64
    """prompts per RL step, over all ranks (reference 64)"""
    n_samples_per_prompt: int = 4
    """samples per prompt; a group = n adjacent samples (reference 4)"""
    generate_max_len: int = 2048
    """max new tokens per sample (reference 2048)"""
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
    """keep the DeepSpeed state (ds/: optimizer, ~7x the weights) of every checkpoint; default: of the newest only,
    the one a resume reads (the HF weights of every checkpoint are always kept)"""
    rollouts_every: int = 10
    """write the step's samples to rollouts/step-<N>.jsonl every N steps"""
    seed: int = 42
    """seed of the prompt order, the sampler and the buffer shuffle (reference 42)"""
    gradient_checkpointing: bool = True
    """recompute activations in the backward pass (reference on)"""
    vllm_gpu_memory_utilization: float = 0.3
    """GPU memory fraction of each colocated vLLM engine (weights + KV cache); ignored on CPU"""
    grader_timeout: float = 5.0
    """seconds per answer check (math-verify)"""
    early_stop_zscore: float = 0.0
    """0 = off. Else stop (after checkpointing) when KL, response length, steps per response or the process reward
    lies more than this many standard deviations from its mean over the previous 10 steps"""
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


# ---------------------------------------------------------------------------------------------------------------
# Pure functions over tensors


def ppo_loss(logp, old_logp, advantages, mask, eps_clip=0.2):
    """Clipped PPO surrogate, per-sequence token mean then batch mean (openrlhf/models/loss.py PolicyLoss).

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


def pad_batch(samples, pad_id, device):
    """Left-pad prompts, right-pad responses (reference layout, EM:1064-1086).
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
    """log pi(y_t | x, y_<t) of every response token (raw logits, no temperature), 0 on padding. -> [b, T] fp32."""
    ids, att, pos, T = pad_batch(samples, pad_id, device)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=T + 1,
                   use_cache=False).logits[:, :-1]  # [b, T, V] logits predicting each response token
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -T:, None])[..., 0]  # [b, T]
    return logp * att[:, -T:]


def step_sums(r, step_end):
    """Sum of token rewards over each step, on the step's terminal token (0 elsewhere): p_k = sum_{t in step k} r_t.
    r [B, T]; step_end [B, T] bool (terminal token of each step; the last at the final action token) -> [B, T]."""
    C = r.cumsum(-1)  # [B, T] sum_{t'<=t} r_t'
    t = torch.arange(r.shape[1], device=r.device).expand_as(r)  # [B, T]
    last = torch.where(step_end, t, -1).cummax(-1).values  # [B, T] the latest terminal at or before t
    prev = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], -1)  # [B, T] the latest terminal before t
    before = torch.where(prev >= 0, C.gather(-1, prev.clamp(min=0)), 0)  # [B, T] C at the previous step's end
    return torch.where(step_end, C - before, 0)


def repetition(ids, n=4):
    """Share of repeated n-grams in a response: 1 - distinct/total (0 = none; -> 1 for a loop)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def sudden_jump(history, row, keys, zscore, window=10):
    """The first key whose value in `row` lies more than `zscore` std from its mean over the last `window` rows."""
    for key in keys:
        past = [h[key] for h in history[-window:] if finite(h.get(key))]
        if len(past) == window and finite(row.get(key)):
            mean = sum(past) / window
            std = math.sqrt(sum((x - mean) ** 2 for x in past) / window)
            if abs(row[key] - mean) > zscore * max(std, 1e-6):
                return key
    return None


def prompt_indices(step, n_prompts, batch, seed):
    """Global prompt indices of RL step `step` (1-based): epoch e walks randperm(seed + e), drop_last, so the
    order is a function of (seed, step) alone and a resumed run draws exactly the prompts it would have drawn."""
    per_epoch = n_prompts // batch
    epoch, pos = divmod(step - 1, per_epoch)
    perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[pos * batch:(pos + 1) * batch].tolist()


def refill_indices(step, rank, round_, n_prompts, batch, seed):
    """Prompts of an accuracy filter's extra rollout round: a fixed function of (seed, step, rank, round), so a
    resumed run refills exactly as the uninterrupted one (the reference draws on from its dataloader)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 10_007 + rank * 101 + round_)
    return torch.randperm(n_prompts, generator=g)[:batch].tolist()


def optimizer_chunks(n, per_step, micro):
    """Buffer positions 0..n-1 as optimizer steps of micro-batches: [[[positions] per micro-batch] per step]."""
    return [[list(range(j, min(j + micro, s + per_step, n))) for j in range(s, min(s + per_step, n), micro)]
            for s in range(0, n, per_step)]


def latest_checkpoint(out):
    """(step, folder) of the newest complete checkpoint-<step>/ (trainer_state.json written last), or (0, None)."""
    done = [(json.loads((d / "trainer_state.json").read_text())["step"], d)
            for d in out.glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
    return max(done) if done else (0, None)


# ---------------------------------------------------------------------------------------------------------------
# Setup


def setup_distributed():
    """torchrun env (or a single process). GPU: `__main__` has left this rank its own device only, as cuda:0."""
    if "RANK" not in os.environ:  # plain `python ppo.py`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(s.getsockname()[1]))
    import deepspeed

    cuda = torch.cuda.is_available()
    if cuda:  # DeepSpeed would bind device_id=cuda:LOCAL_RANK (comm/torch.py), out of range when a rank sees one GPU
        torch.cuda.set_device(0)  # so the group is made here, on cuda:0; DeepSpeed reuses an existing group
        many = int(os.environ["WORLD_SIZE"]) > 1  # as DeepSpeed: no device binding in a world of one
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0) if many else None)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    device = torch.device("cuda" if cuda else "cpu")
    return dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]), device


def load_tokenizer(path):
    """A model folder's (or hub name's) tokenizer; a wrong path is one line naming it, not a hub traceback."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise InputError(path, None, None, f"not a model folder, nor a model name the hub has ({e})".splitlines()[0])\
            from None


def prm_path(args):
    """The PRM folder: --prm; in PRIME mode, by default the policy's own starting checkpoint; None for none."""
    if args.reward_mode == "PRIME":
        return args.prm or args.model
    return None if args.prm in (None, "none") else args.prm


def check_inputs(args):
    """Everything that can be wrong with the input, checked before any model loads -> (prompts, tokenizer, PRM
    tokenizer or None). Raises InputError (one line)."""
    prompts = load_prompts(args.prompts)
    if args.reward_mode == "PRIME":  # outcome labels need golds: the prompts without one are skipped
        gold = [p for p in prompts if p["answer"] is not None]
        if os.environ.get("RANK", "0") == "0":
            print(f"PRIME: {len(gold)} of {len(prompts)} prompts have a gold answer; {len(prompts) - len(gold)} "
                  "without one are skipped", flush=True)
        prompts = gold
    R, n, n_prompts = args.rollout_batch_size, args.n_samples_per_prompt, len(prompts)
    world = int(os.environ.get("WORLD_SIZE", 1))
    prm = prm_path(args)
    checks = [(R % world == 0, f"--rollout-batch-size {R} must be divisible by the {world} ranks"),
              (R * n % args.train_batch_size == 0, f"rollout {R}x{n} must be a multiple of --train-batch-size"),
              (args.train_batch_size % (args.micro_train_batch_size * world) == 0,
               "--train-batch-size must be a multiple of --micro-train-batch-size x ranks"),
              (n >= 2, "--n-samples-per-prompt must be >= 2 (leave-one-out baselines)"),
              (n_prompts >= R, f"{args.prompts}: {n_prompts} prompts, fewer than --rollout-batch-size {R}"),
              (args.reward_mode != "PRIME" or args.prm != "none", "--reward-mode PRIME needs a causal LM as --prm"),
              (args.reward_mode == "PRIME" or ("PRM" in args.reward_mode) == (prm is not None),
               f"--reward-mode {args.reward_mode} with --prm {args.prm}: PRM modes need a PRM, VR needs `none`")]
    for ok, msg in checks:
        if not ok:
            raise InputError("arguments", None, None, msg)
    tok = load_tokenizer(args.model)
    if prm is None:
        return prompts, tok, None
    prm_tok = load_tokenizer(prm)
    if prm_tok.get_vocab() != tok.get_vocab():  # the PRM reads the policy's token ids as they are (EM:825-870)
        raise InputError(prm, None, "tokenizer", f"PRM tokenizer differs from the policy's ({args.model})")
    return prompts, tok, prm_tok


def load_models(args, device, tok):
    """Actor (trainable), frozen reference, PRM (frozen token classifier; in PRIME mode a trainable causal LM; or
    None), all on the CPU. bf16 on GPU, fp32 on CPU."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    actor = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    if len(tok) > actor.config.vocab_size:
        raise InputError(args.model, None, "vocab_size",
                         f"the tokenizer has {len(tok)} tokens, the model {actor.config.vocab_size}")
    # Frozen models wait in host memory and visit the device only for their forward pass (no-op on CPU).
    ref = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval().requires_grad_(False)
    path, prm = prm_path(args), None
    if args.reward_mode == "PRIME":
        prm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    elif path is not None:
        prm = AutoModelForTokenClassification.from_pretrained(path, dtype=dtype).eval().requires_grad_(False)
    for model in (actor, prm) if args.reward_mode == "PRIME" else (actor,):
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    return actor, ref, prm


def ds_config(args, cuda, grad_clip=1.0):
    """ZeRO-2: every rank keeps full bf16 weights (trivial weight sync), optimizer state and gradients sharded.
    The loop owns gradient accumulation (each engine.step() is one optimizer step; see ppo_update), so a step whose
    filtered buffer is short still takes exactly the optimizer steps its sequences make."""
    return {"train_batch_size": args.train_batch_size, "train_micro_batch_size_per_gpu": args.micro_train_batch_size,
            "gradient_clipping": grad_clip, "zero_optimization": {"stage": 2}, "bf16": {"enabled": cuda},
            "managed_gradient_accumulation": False, "steps_per_print": 10**9}


def drop_old_ds_states(out, newest):
    """Checkpoint rotation: every checkpoint-<step>/ in `out` but `newest` loses its DeepSpeed states (ds/ and, in
    PRIME mode, ds_prm/: weights, fp32 master and Adam shards, ~106 GB for a 7B model; plus the `latest` file naming
    one and DeepSpeed's scripts that read it) and keeps its HF weights, tokenizer and trainer_state.json. Resume
    reads the newest checkpoint."""
    for d in out.glob("checkpoint-*"):
        if d != newest and (d / "ds").is_dir():
            for name in ("ds", "ds_prm"):
                shutil.rmtree(d / name, ignore_errors=True)
            for name in ("latest", "zero_to_fp32.py", "zero_to_torch.py"):
                (d / name).unlink(missing_ok=True)


def save_checkpoint(engine, tok, out, step, rank, keep_all_ds=False, prm_engine=None):
    """checkpoint-<step>/: HF weights + tokenizer (AutoModelForCausalLM-loadable), DeepSpeed state (optimizer) in
    ds/, in PRIME mode the implicit PRM in prm/ (HF) and ds_prm/, trainer_state.json (step; prompt order, sampling
    seeds and shuffles derive from seed + step). Written to a temporary folder and renamed, so a kill never leaves a
    half checkpoint that resume would pick; only then do the older checkpoints lose their DeepSpeed states (unless
    keep_all_ds)."""
    final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="ds")
    if prm_engine is not None:
        prm_engine.save_checkpoint(str(tmp), tag="ds_prm")
    if rank == 0:
        engine.module.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if prm_engine is not None:
            prm_engine.module.save_pretrained(tmp / "prm")
            tok.save_pretrained(tmp / "prm")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if not keep_all_ds:
            drop_old_ds_states(out, final)
    dist.barrier()


# ---------------------------------------------------------------------------------------------------------------
# One step's buffer on this rank


def buffer_tensors(samples, counts):
    """Right-padded [B, T] tensors of the buffer (T = longest response): action_mask (every generated token, EOS
    included), step_end (terminal token of each step; the last at the final token), vllm_logp (the sampler's
    log-probs)."""
    B, T = len(samples), max(len(s["response_ids"]) for s in samples)
    action_mask, step_end, vllm_logp = torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.bool), \
        torch.zeros(B, T)
    for i, s in enumerate(samples):
        L = len(s["response_ids"])
        action_mask[i, :L], step_end[i, torch.tensor(counts[i]).cumsum(0) - 1] = True, True  # the last end is L - 1
        vllm_logp[i, :L] = torch.tensor(s["logprobs"])
    return action_mask, step_end, vllm_logp


def gather(obj, world):
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return [x for o in objs for x in o]


class Stop(Exception):
    """A clean, reported stop (non-finite values) on every rank."""


def all_ranks_ok(ok, device):
    flag = torch.tensor([1.0 if ok else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.item() == 1.0


def all_reduce_on(device):
    """A sum all-reduce for credit.py that moves its tensor to `device` and back (NCCL only reduces GPU tensors)."""
    def reduce(x):
        y = x.to(device)
        dist.all_reduce(y)
        x.copy_(y)
    return reduce


def buffer_logprobs(model, samples, T, micro, pad_id, device):
    """response_logprobs over the whole buffer in micro-batches, no grad. -> [B, T] fp32 on the CPU. A frozen model
    kept in host memory visits `device` only for this (no-op on CPU)."""
    model.to(device).eval()
    logp = torch.zeros(len(samples), T)  # [B, T]
    with torch.no_grad():
        for j in range(0, len(samples), micro):
            lp = response_logprobs(model, samples[j:j + micro], pad_id, device)  # [b, Tb]
            logp[j:j + lp.shape[0], :lp.shape[1]] = lp.float().cpu()
    return logp


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


def prime_prm_update(engine, samples, ref_logp, action_mask, solved, args, world, pad_id, device):
    """One pass of PRIME's online implicit-PRM update over the buffer, in order (dp_prime.py, update=after):
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


def sample_records(samples, prompts, grades, counts, scores):
    """One loggable dict per sample (rollouts/step-<N>.jsonl and the metrics). gold: the verifiable reward's gold
    (None: no VR); reference: what the sample was graded against (gold, else the logging-only ref_answer)."""
    return [{"prompt": format_prompt(prompts[s["prompt_id"]]["question"]), "prompt_id": s["prompt_id"],
             "response": s["response_text"], "gold": prompts[s["prompt_id"]]["answer"],
             "reference": prompts[s["prompt_id"]]["ref_answer"], "correct": grades[i]["correct"],
             "extracted": grades[i]["extracted"], "length": len(s["response_ids"]), "steps": len(counts[i]),
             "finish_reason": s["finish_reason"], "repetition": repetition(s["response_ids"]),
             "prm_scores": scores[i] if scores is not None else None} for i, s in enumerate(samples)]


def open_logs(args, out, start):
    """Rank 0: TensorBoard (+ wandb with --track) and metrics.jsonl cut back to the resumed step -> (writer, rows)."""
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if (out / "metrics.jsonl").is_file():  # rows logged after the checkpoint we resume from are dropped
        rows = [r for _, r in read_jsonl(out / "metrics.jsonl") if r["step"] <= start]
        write_jsonl(out / "metrics.jsonl", rows)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project, config=asdict(args), sync_tensorboard=True, resume="allow")
    return SummaryWriter(out / "tb"), rows


# ---------------------------------------------------------------------------------------------------------------
# The loop


def start_run(args):
    """Inputs checked, ranks joined, vLLM engine, models and DeepSpeed ready, resumed from the latest checkpoint.
    -> run state (a namespace the phases below share)."""
    import deepspeed

    prompts, tok, prm_tok = check_inputs(args)  # before anything is written: a bad input leaves no output folder
    log_libraries_to(Path(args.output_dir) / "library.log")  # vLLM, DeepSpeed, transformers: not on the console
    rank, world, local_rank, device = setup_distributed()
    out = Path(args.output_dir)
    start, resume_dir = latest_checkpoint(out)
    if resume_dir is not None and not (resume_dir / "ds").is_dir():  # the newest is the one that keeps it
        raise InputError(resume_dir, None, "ds", "no DeepSpeed state to resume from (only the newest checkpoint keeps "
                                                 "one, unless --keep-all-ds-states)")
    cuda = device.type == "cuda"
    # vLLM ENGINE: colocated, one per rank, starts from the resumed weights
    llm = start_engine(resume_dir or args.model, seed=args.seed + rank, dtype="bfloat16" if cuda else "float32",
                       max_model_len=args.prompt_max_len + args.generate_max_len,
                       gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                       **({"enable_sleep_mode": True} if cuda else {}))
    if cuda:
        llm.sleep(level=1)  # free the GPU for the trainer's models; wake_engine() before each rollout
    # MODELS
    actor, ref, prm = load_models(args, device, tok)
    vllm_vocab = llm.llm_engine.model_config.get_vocab_size()
    if vllm_vocab != actor.config.vocab_size:
        raise InputError(args.model, None, "vocab_size",
                         f"vLLM has {vllm_vocab} tokens, the trainer {actor.config.vocab_size}")
    # WEIGHT SYNC folder: /dev/shm when it has room for the weight file on every rank, else a disk folder per node
    nbytes = sum(t.numel() * t.element_size() for t in actor.state_dict().values())
    fallback = out / f".weight-sync-{socket.gethostname()}"
    sync_dir = sync_folder("pure_sync_" + hashlib.md5(str(out.resolve()).encode()).hexdigest()[:10], nbytes, fallback)
    if not all_ranks_ok(sync_dir != fallback, device):
        sync_dir = fallback
    if rank == 0:
        print(f"weight sync: {nbytes / 1e6:,.1f} MB per push through {sync_dir}"
              + (" (a disk folder: /dev/shm lacks the room)" if sync_dir == fallback else ""), flush=True)
    ds_args = SimpleNamespace(device_rank=0) if cuda else None  # our GPU is cuda:0
    optimizer = torch.optim.AdamW(actor.parameters(), lr=args.actor_learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=actor, optimizer=optimizer, config=ds_config(args, cuda), args=ds_args)
    prm_engine = None
    if args.reward_mode == "PRIME":  # the implicit PRM trains: its own AdamW (verl's defaults) and clip
        optimizer = torch.optim.AdamW(prm.parameters(), lr=args.prm_learning_rate, betas=(0.9, 0.999),
                                      weight_decay=0.01)
        prm_engine, *_ = deepspeed.initialize(model=prm, optimizer=optimizer, args=ds_args,
                                              config=ds_config(args, cuda, args.prm_grad_clip))
    if resume_dir is not None:
        engine.load_checkpoint(str(resume_dir), tag="ds")  # weights + optimizer state
        if prm_engine is not None:
            prm_engine.load_checkpoint(str(resume_dir), tag="ds_prm")
    writer, history = open_logs(args, out, start) if rank == 0 else (None, [])
    R_local = args.rollout_batch_size // world
    if rank == 0:
        print(f"{'resuming after' if start else 'starting at'} step {start}: {world} ranks x {R_local} prompts x "
              f"{args.n_samples_per_prompt} samples, micro-batches of {args.micro_train_batch_size}", flush=True)
    return SimpleNamespace(args=args, prompts=prompts, tok=tok, prm_tok=prm_tok, rank=rank, world=world,
                           local_rank=local_rank, device=device, cuda=cuda, out=out, start=start, R_local=R_local,
                           llm=llm, sync_dir=sync_dir, engine=engine, ref=ref, prm=prm, prm_engine=prm_engine,
                           writer=writer, history=history, t={}, last=0.0)  # t: seconds per phase of the step


def rollout(s, step):
    """ROLLOUT this rank's share of the step's prompts, n adjacent samples each, graded against the prompt's gold
    (`answer`, else its logging-only `ref_answer`). With the accuracy filter (PRIME's, on in PRIME mode), a group
    whose accuracy lies outside [--filter-lower, --filter-upper] is dropped and fresh prompts are drawn, for up to
    --filter-max-rounds extra rounds; then every rank keeps the same number of groups, the fewest any rank has (at
    most its share: DeepSpeed needs the same backward passes on every rank). -> (samples, grades, filter counts)."""
    from rewards import grade_many

    args, n = s.args, s.args.n_samples_per_prompt
    use_filter = args.accuracy_filter == "on" or args.accuracy_filter == "auto" and args.reward_mode == "PRIME"
    idx = prompt_indices(step, len(s.prompts), args.rollout_batch_size, args.seed)
    idx, kept, drawn = idx[s.rank * s.R_local:(s.rank + 1) * s.R_local], [], 0
    if s.cuda:
        wake_engine(s.llm)  # weights + KV cache
    for round_ in range(1 + args.filter_max_rounds * use_filter):
        if round_:
            idx = refill_indices(step, s.rank, round_, len(s.prompts), s.R_local, args.seed)
        first = ((step - 1) + round_ * args.max_steps) * args.rollout_batch_size + s.rank * s.R_local  # own seeds
        out = generate(s.llm, [format_prompt(s.prompts[i]["question"]) for i in idx], n=n,
                       temperature=args.temperature, top_p=args.top_p, max_tokens=args.generate_max_len,
                       max_prompt_len=args.prompt_max_len, seed=args.seed + first * n)
        for x in out:
            x["prompt_id"] = idx[x["prompt_index"]]
        grades = grade_many([x["response_text"] for x in out], [s.prompts[x["prompt_id"]]["ref_answer"] for x in out],
                            timeout=args.grader_timeout)
        drawn += len(idx)
        solved = torch.tensor([float(bool(g["correct"])) for g in grades])  # [n * len(idx)]
        graded = torch.tensor([g["correct"] is not None for g in grades]).view(-1, n).all(-1)  # [len(idx)]
        keep = prime_filter(solved, n, args.filter_lower, args.filter_upper) | ~graded if use_filter else graded | 1
        kept += [[(out[j], grades[j]) for j in range(g * n, (g + 1) * n)] for g in keep.nonzero().flatten().tolist()]
        if len(kept) >= s.R_local:
            break
    if s.cuda:
        s.llm.sleep(level=1)
    K = torch.tensor([min(len(kept), s.R_local)], device=s.device)
    dist.all_reduce(K, op=dist.ReduceOp.MIN)
    kept = [pair for group in kept[:int(K.item())] for pair in group]
    return [x for x, _ in kept], [g for _, g in kept], {"filter/drawn": drawn, "filter/kept": int(K.item())}


def pure_rewards(s, samples, grades, counts, action_mask, step_end, ref_logp, logratio):
    """REWARDS + CREDIT, PURE: the PRM's p_k per step (rewards.prm_scores; none in VR mode), the verifiable reward
    where the prompt has a gold answer, then min-form credit, token RLOO baseline, KL and whitening over all ranks
    (credit.pure_advantages). -> (advantages [B, T], p_k per response or None, info)."""
    from rewards import prm_scores

    args, scores = s.args, None
    process_rewards = torch.zeros(action_mask.shape)  # [B, T] p_k on step k's terminal token
    if s.prm is not None:
        scores = prm_scores(s.prm.to(s.device), s.prm_tok, [x["prompt_ids"] for x in samples],
                            [x["response_ids"] for x in samples], batch_size=args.micro_rollout_batch_size)
        s.prm.to("cpu")
        process_rewards[step_end] = torch.tensor([p for ps in scores for p in ps])  # row-major: step k of row i
    if not all_ranks_ok(bool(process_rewards.isfinite().all()), s.device):
        raise Stop("non-finite PRM score")
    has_gold = torch.tensor([s.prompts[x["prompt_id"]]["answer"] is not None for x in samples])  # [B]
    # [B] solved = 1 where there is no gold answer, as in the reference (EM:1118-1129); VR ignores those rows
    solved = torch.tensor([float(g["correct"]) if h else 1.0 for g, h in zip(grades, has_gold.tolist())])
    advantages, _, info = pure_advantages(
        process_rewards, step_end, action_mask, solved, has_gold, logratio, args.n_samples_per_prompt,
        credit=args.credit, temperature=args.credit_temperature, baseline=args.baseline,
        reward_mode=args.reward_mode, vr_coef=args.vr_coef, kl_coef=args.kl_coef,
        mask_separators=args.mask_separators, normalize=args.normalize, all_reduce=all_reduce_on(s.device))
    return advantages, scores, {"reward/process": info["reward"], "advantage_std": info.get("whiten_std", math.nan)}


def prime_rewards(s, samples, grades, counts, action_mask, step_end, ref_logp, logratio):
    """REWARDS + CREDIT, PRIME: one pass of the implicit PRM's online update (prime_prm_update) gives
    r_t = log pi_psi(y_t) - log pi_ref(y_t) (QUIRK: no beta on the reward, dp_prime.py) divided by the buffer's
    largest |return| (QUIRK prime_norm=batch_norm, on this rank's buffer as in the reference); then PRIME's RLOO per
    reward source, implicit rewards and the verifier's outcome weighted 1:1 (QUIRK: rm_coef and reward_coef never
    reach this path), whitened over all ranks (credit.prime_advantages). --prime-credit step instead sums r_t over
    each step into PURE's credit (credit.pure_advantages with --credit, the outcome as its verifiable reward).
    -> (advantages [B, T], implicit reward of each step per response, info)."""
    args, n, B = s.args, s.args.n_samples_per_prompt, len(samples)
    solved = torch.tensor([float(g["correct"]) for g in grades])  # [B] every PRIME prompt has a gold
    logp_prm, info = prime_prm_update(s.prm_engine, samples, ref_logp, action_mask, solved, args, s.world,
                                      s.tok.pad_token_id, s.device)
    r = prime_token_rewards(logp_prm, ref_logp, action_mask)  # [B, T] beta = 1, batch norm
    p = step_sums(r, step_end)  # [B, T] implicit reward of each step, on its terminal token
    scores = [p[i][step_end[i]].tolist() for i in range(B)]
    if args.prime_credit == "token":
        advantages, _, credit = prime_advantages(r, action_mask, solved, n, all_reduce=all_reduce_on(s.device))
        info["reward/process"] = credit["implicit_reward"]
    else:
        advantages, _, credit = pure_advantages(
            p, step_end, action_mask, solved, torch.ones(B, dtype=torch.bool), logratio, n, credit=args.credit,
            temperature=args.credit_temperature, baseline=args.baseline, reward_mode="PRMVR", vr_coef=args.vr_coef,
            kl_coef=args.kl_coef, mask_separators=args.mask_separators, normalize=args.normalize,
            all_reduce=all_reduce_on(s.device))
        info["reward/process"] = credit["reward"]
    return advantages, scores, {**info, "advantage_std": credit.get("whiten_std", math.nan)}


def rl_step(s, step):
    """One RL step on this rank: ROLLOUT -> LOG-PROBS -> REWARDS + CREDIT (PURE or PRIME) -> PPO UPDATE -> SYNC
    WEIGHTS TO vLLM. -> (per-sample records, {"sum": ..., "mean": ..., "max": ...} for log_step to reduce over
    ranks by name). A step whose filtered buffer is empty on some rank makes no update (policy_updated 0)."""
    from rewards import split_steps

    args, device, pad = s.args, s.device, s.tok.pad_token_id
    s.t, s.last = {}, time.time()
    samples, grades, counts_filter = rollout(s, step)
    tick(s, "gen")
    stats = {"sum": {**counts_filter, "tokens": 0.0, "kl": 0.0, "vllm_diff": 0.0}, "mean": {}, "max": {}}
    per_sample = []
    if samples:
        counts = [split_steps(x["response_ids"], s.tok) for x in samples]  # steps end at runs of 2+ newlines
        action_mask, step_end, vllm_logp = buffer_tensors(samples, counts)  # [B, T] each

        # LOG-PROBS: policy before the update (pi_old, recomputed by the trainer) and frozen reference
        T, micro = action_mask.shape[1], args.micro_rollout_batch_size
        old_logp = buffer_logprobs(s.engine.module, samples, T, micro, pad, device)  # [B, T]
        ref_logp = buffer_logprobs(s.ref, samples, T, micro, pad, device)  # [B, T]
        s.ref.to("cpu")
        logratio = (old_logp - ref_logp) * action_mask  # [B, T] k1 KL estimate per token
        tick(s, "ref")

        # REWARDS + CREDIT: the one place where PURE and PRIME differ
        rewards_and_credit = prime_rewards if args.reward_mode == "PRIME" else pure_rewards
        advantages, scores, info = rewards_and_credit(s, samples, grades, counts, action_mask, step_end, ref_logp,
                                                      logratio)
        if not all_ranks_ok(bool(advantages.isfinite().all()), device):
            raise Stop(f"step {step}: non-finite advantages")
        tick(s, "prm")

        # PPO UPDATE: shuffled buffer, micro-batches, optimizer steps of train_batch_size sequences (all ranks)
        shuffle = torch.Generator().manual_seed(args.seed * 100_003 + step * 1_009 + s.rank)
        update = ppo_update(s.engine, samples, old_logp, advantages, action_mask, args, s.world, pad, device, shuffle)
        tick(s, "train")

        # SYNC WEIGHTS TO vLLM: local rank 0 writes /dev/shm (or its fallback) once per node, every engine reloads
        dist.barrier()
        if s.cuda:
            wake_engine(s.llm, tags=["weights"])  # the reload needs the weights only, not the KV cache
        sync_weights(s.llm, s.engine.module.state_dict() if s.local_rank == 0 else None, s.sync_dir,
                     barrier=dist.barrier)
        if s.cuda:
            s.llm.sleep(level=1)
        tick(s, "sync")
        vllm_diff = (vllm_logp - old_logp).abs() * action_mask  # [B, T]
        per_sample = sample_records(samples, s.prompts, grades, counts, scores)
        stats["sum"].update(tokens=action_mask.sum().item(), kl=logratio.sum().item(), vllm_diff=vllm_diff.sum().item())
        stats["mean"] = {**update, **info}
        stats["max"]["logprob_diff_vllm/max"] = vllm_diff.max().item()
    stats["max"].update({f"time/{phase}": s.t.get(phase, 0.0) for phase in PHASES})  # a skipped phase: 0 s
    return per_sample, stats


PHASES = ["gen", "ref", "prm", "train", "sync"]  # gen: generation + grading; prm: rewards + credit


def tick(s, phase):
    """Seconds `phase` took since the previous tick -> s.t[phase] (time/<phase> in the metrics)."""
    now = time.time()
    s.t[phase], s.last = now - s.last, now


def log_step(s, step, per_sample, stats):
    """LOG: reduce the stats over ranks by name (sums summed, per-rank means averaged, maxima maxed: a phase lasts as
    long as its slowest rank); rank 0 writes metrics.jsonl, TensorBoard, rollouts/ and checks the early-stop rule.
    -> the name of the metric that jumped (early stop), or None, on every rank."""
    args, reduced = s.args, {}
    for kind, op in (("sum", dist.ReduceOp.SUM), ("mean", dist.ReduceOp.SUM), ("max", dist.ReduceOp.MAX)):
        keys = sorted(stats[kind])  # the same names on every rank
        values = torch.tensor([float(stats[kind][k]) for k in keys], dtype=torch.float64, device=s.device)
        dist.all_reduce(values, op=op)
        reduced.update({k: v / (s.world if kind == "mean" else 1) for k, v in zip(keys, values.tolist())})
    per_sample = gather(per_sample, s.world)
    jump = [None]
    if s.rank == 0:
        row = step_metrics(step, args, per_sample, reduced)
        for k, v in row.items():
            if finite(v):
                s.writer.add_scalar(k, v, step)
        with open(s.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if step % args.rollouts_every == 0:
            write_jsonl(s.out / "rollouts" / f"step-{step}.jsonl", per_sample)
        print(f"step {step}: reward {row['reward/combined'] or 0:.3f} solved {row['solved']} kl {row['kl'] or 0:.2e} "
              f"len {row['response_length'] or 0:.0f} ({row['time/step']:.1f}s)", flush=True)
        if args.early_stop_zscore > 0:
            jump[0] = sudden_jump(s.history, row, EARLY_STOP_KEYS, args.early_stop_zscore)
        s.history.append(row)
    dist.broadcast_object_list(jump, src=0)
    return jump[0]


def main(args):
    s = start_run(args)
    for step in range(s.start + 1, args.max_steps + 1):
        jump = log_step(s, step, *rl_step(s, step))
        if step % args.save_steps == 0 or step == args.max_steps or jump:  # CHECKPOINT
            save_checkpoint(s.engine, s.tok, s.out, step, s.rank, args.keep_all_ds_states, s.prm_engine)
        if jump:
            if s.rank == 0:
                print(f"early stop at step {step}: sudden jump in {jump}", flush=True)
            break
    if s.rank == 0:
        plot_metrics(s.out / "metrics.jsonl", s.out / "curves.png", PLOT_KEYS)
        s.writer.close()
    if s.local_rank == 0:
        shutil.rmtree(s.sync_dir, ignore_errors=True)
    dist.barrier()


EARLY_STOP_KEYS = ["kl", "response_length", "steps_per_response", "reward/process"]
PLOT_KEYS = ["reward/combined", "reward/process", "reward/verifiable", "solved", "prm_vr_agreement", "kl",
             "clip_frac", "response_length", "steps_per_response", "tokens_per_step", "repetition", "prm/loss",
             "prm/outcome_accuracy", "filter/keep_rate", "logprob_diff_vllm/mean", "time/step"]


def step_metrics(step, args, per_sample, r):
    """One metrics.jsonl row from the gathered samples and the stats reduced over ranks (log_step), by name."""
    def mean(xs):
        xs = [x for x in xs if finite(x)]
        return sum(xs) / len(xs) if xs else None

    graded = [s for s in per_sample if s["correct"] is not None]  # against the gold or the logging-only ref_answer
    answered = [s for s in graded if s["gold"] is not None]  # the verifiable reward's prompts
    B, tokens = max(len(per_sample), 1), sum(s["length"] for s in per_sample)
    process = r.get("reward/process", 0.0) if args.reward_mode != "VR" else 0.0
    vr = sum(float(s["correct"]) - 1 for s in answered) / B if "VR" in args.reward_mode else 0.0
    agree = [(min(s["prm_scores"]) > 0) == s["correct"] for s in graded if s["prm_scores"]]
    row = {
        "step": step, "prompts_seen": step * args.rollout_batch_size, "policy_updated": float(bool(per_sample)),
        "reward/process": process, "reward/verifiable": mean([float(s["correct"]) - 1 for s in answered]),
        "reward/combined": process + args.vr_coef * vr,
        "solved": mean([float(s["correct"]) for s in graded]), "answered_frac": len(answered) / B,
        "prm_vr_agreement": mean([float(a) for a in agree]),
        "prm_min": mean([min(s["prm_scores"]) for s in per_sample if s["prm_scores"]]),
        "kl": r["kl"] / r["tokens"] if r["tokens"] else None,
        "logprob_diff_vllm/mean": r["vllm_diff"] / r["tokens"] if r["tokens"] else None,
        "response_length": tokens / B if per_sample else None,
        "response_length/correct": mean([s["length"] for s in graded if s["correct"]]),
        "response_length/incorrect": mean([s["length"] for s in graded if not s["correct"]]),
        "truncated_frac": mean([float(s["finish_reason"] == "length") for s in per_sample]),
        "steps_per_response": mean([s["steps"] for s in per_sample]),
        "tokens_per_step": mean([s["length"] / s["steps"] for s in per_sample]),
        "repetition": mean([s["repetition"] for s in per_sample]),
        "filter/drawn": r["filter/drawn"], "filter/kept": r["filter/kept"],
        "filter/keep_rate": r["filter/kept"] / r["filter/drawn"],
    }
    row.update({k: r.get(k) for k in ("loss", "ratio", "clip_frac", "zeroed_micro_batches", "advantage_std",
                                      "prm/loss", "prm/outcome_accuracy", "logprob_diff_vllm/max")})
    row.update({f"time/{p}": r[f"time/{p}"] for p in PHASES})
    row["time/step"] = sum(r[f"time/{p}"] for p in PHASES)
    row["perf/gen_tokens_per_s"] = tokens / max(r["time/gen"], 1e-9)
    row["perf/tokens_per_s"] = tokens / max(row["time/step"], 1e-9)
    return {k: (v if v is None or finite(v) else None) for k, v in row.items()}


if __name__ == "__main__":
    # GPU only, before the first CUDA call (`import deepspeed` makes one, `import torch` does not), which fixes the
    # devices the process sees: this rank and its vLLM engine see just their own GPU, as cuda:0. That call also leaves
    # a forked child unable to use CUDA, so vLLM must spawn its engine process (by itself it switches only once
    # torch.cuda is fully initialised).
    if shutil.which("nvidia-smi"):
        visible, local_rank = os.environ.get("CUDA_VISIBLE_DEVICES"), int(os.environ.get("LOCAL_RANK", 0))
        gpus = visible.split(",") if visible else [str(i) for i in range(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))]
        if local_rank >= len(gpus):
            sys.exit(f"error: local rank {local_rank} has no GPU of its own in CUDA_VISIBLE_DEVICES={visible}")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[local_rank]
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = tyro.cli(Args)
    try:
        main(args)
    except InputError as e:
        sys.exit(f"error: {e}")
    except Stop as e:  # nothing of this step was saved: the newest checkpoint is the last good one
        last = latest_checkpoint(Path(args.output_dir))[1] or "none yet"
        sys.exit(f"error: {e}; stopped, last good checkpoint: {last}")
