"""What the two trainers (ppo.py, prm_train.py) do around their step, kept here so that ppo.py reads as the
algorithm: give each rank its own GPU and join the ranks (torchrun; NCCL on GPU, gloo on CPU; both trainers), agree
across ranks, load ppo.py's models and move the frozen ones to the device and back without copies, take log-probs a
chunk at a time, set up a ppo.py run (inputs checked, vLLM engine, DeepSpeed, resume), write and find checkpoints,
and turn a step's samples and stats into its metrics row. No credit maths here (credit.py); on a CPU every device
helper computes the same or does nothing.
"""
import argparse
import contextlib
import hashlib
import importlib
import json
import math
import os
import shutil
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from common import InputError, finite, log_libraries_to, read_jsonl, write_jsonl


# ---------------------------------------------------------------------------------------------------- devices, ranks
def has_nvidia_gpus():
    """Whether this process may see NVIDIA GPUs, decided without a CUDA call (the first one fixes the devices it
    sees): `nvidia-smi` on PATH, the driver's /dev/nvidiactl (a container gets it from the NVIDIA runtime, often
    without nvidia-smi), or CUDA_VISIBLE_DEVICES naming devices ("" and "-1" name none). NVIDIA_VISIBLE_DEVICES is no
    sign: NVIDIA's CUDA base images set it to `all` in every container, with GPUs or without."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return bool(shutil.which("nvidia-smi")) or os.path.exists("/dev/nvidiactl") or visible not in ("", "-1")


def own_gpu_first():
    """GPU only, first thing in `__main__`, before the first CUDA call (`import deepspeed` makes one, `import torch`
    does not), which fixes the devices the process sees: this rank (and its vLLM engine) sees just its own GPU, as
    cuda:0. That call also leaves a forked child unable to use CUDA, so vLLM must spawn its engine process."""
    if not has_nvidia_gpus():
        return
    visible, local_rank = os.environ.get("CUDA_VISIBLE_DEVICES"), int(os.environ.get("LOCAL_RANK", 0))
    gpus = visible.split(",") if visible else [str(i) for i in range(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))]
    if local_rank >= len(gpus):
        sys.exit(f"error: local rank {local_rank} has no GPU of its own in CUDA_VISIBLE_DEVICES={visible}")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[local_rank]
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"


def init_ranks(timeout_minutes=60):
    """Join the torchrun ranks (or make a world of one); every collective waits up to `timeout_minutes` before it
    fails. GPU: own_gpu_first has left this rank one device, cuda:0; a rank that sees more stops with one line.
    -> (rank, world, local_rank, device)"""
    if "RANK" not in os.environ:  # plain `python script.py`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(s.getsockname()[1]))
    cuda, many = torch.cuda.is_available(), int(os.environ["WORLD_SIZE"]) > 1
    if cuda and many and torch.cuda.device_count() != 1:  # else every rank would bind cuda:0, the same GPU
        raise InputError("CUDA_VISIBLE_DEVICES", None, None,
                         f"local rank {os.environ['LOCAL_RANK']} sees {torch.cuda.device_count()} GPUs "
                         f"({os.environ.get('CUDA_VISIBLE_DEVICES')}); each rank needs exactly one: set "
                         "CUDA_VISIBLE_DEVICES to the node's GPUs")
    import deepspeed

    # NCCL's and DeepSpeed's default timeout, 10 min, is shorter than a slow checkpoint or disk weight sync that the
    # other ranks wait for at a barrier, or than a rank's extra rollout rounds (PRIME's filter)
    timeout = timedelta(minutes=timeout_minutes)
    if cuda:  # DeepSpeed would bind device_id=cuda:LOCAL_RANK (comm/torch.py), out of range when a rank sees one GPU
        torch.cuda.set_device(0)  # so the group is made here, on cuda:0; DeepSpeed reuses an existing group
        bind = torch.device("cuda", 0) if many else None  # as DeepSpeed: no device binding in a world of one
        dist.init_process_group("nccl", device_id=bind, timeout=timeout)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timeout)
    if dist.get_rank() == 0:
        print(f"process group: {dist.get_backend()}, {dist.get_world_size()} ranks, collective timeout "
              f"{timeout_minutes} min", flush=True)
    return dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]), torch.device("cuda" if cuda else
                                                                                                  "cpu")


def deepspeed_args(device):
    """`args` for deepspeed.initialize: on GPU our device is cuda:0 whatever LOCAL_RANK says (own_gpu_first)."""
    return argparse.Namespace(device_rank=0) if device.type == "cuda" else None


class Stop(Exception):
    """A clean, reported stop (non-finite values) on every rank."""


def gather(obj, world):
    """all_gather_object of a list from every rank -> one list, rank 0's items first."""
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return [x for o in objs for x in o]


def all_ranks_ok(ok, device):
    """True on every rank iff `ok` on every rank."""
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


# ---------------------------------------------------------------------------------------------------- models in memory
def load_tokenizer(path):
    """A model folder's (or hub name's) tokenizer; a wrong path is one line naming it, not a hub traceback."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise InputError(path, None, None, f"not a model folder, nor a model name the hub has ({e})".splitlines()[0])\
            from None


def pin_to_host(model):
    """Move a frozen model's parameters into page-locked host memory, one buffer per dtype, so that on_device copies
    them to the GPU at full speed and never back. One buffer, because PyTorch's pinned allocator rounds each
    allocation up to a power of two (a 136 MB MLP weight would take 256 MB; one 15.2 GB buffer takes 17.2). GPU
    only (pinning needs CUDA). -> model"""
    params = list(model.parameters())
    for dtype in {p.dtype for p in params}:
        group = [p for p in params if p.dtype == dtype]
        flat, offset = torch.empty(sum(p.numel() for p in group), dtype=dtype, pin_memory=True), 0
        for p in group:
            flat[offset:offset + p.numel()].copy_(p.data.reshape(-1))
            p.data = flat[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
    return model


@contextlib.contextmanager
def on_device(model, device):
    """The with-block runs `model` on `device`; afterwards its parameters point at the tensors they had before (a
    frozen model's pinned host copy: nothing is copied back, the device copy is freed) and its buffers go back where
    they were. A model already on `device` stays as it is; any other must not be trained in the block."""
    params = list(model.parameters())
    home, before = params[0].device, [p.data for p in params]
    for p in params:  # from pinned memory: asynchronous, ordered before the block's kernels; on `device`: no copy
        p.data = p.data.to(device, non_blocking=True)
    model.to(device)  # the buffers
    try:
        yield model
    finally:
        for p, data in zip(params, before):
            p.data = data
        model.to(home)


def token_logprobs(logits, ids, chunk=512):
    """log pi(y_t) = log_softmax(z_t)[y_t] in fp32, computed one chunk of positions at a time.

    logits [b, T, V] (bf16 on GPU; a view is fine), ids [b, T] -> [b, T] fp32, the same numbers as the whole-tensor
    `log_softmax(logits.float()).gather(...)`. That form holds the logits and two fp32 copies of them (a micro-batch of
    4 x 2,049 positions of Qwen2.5's 152,064-token vocabulary: 2.5 + 5.0 + 5.0 GB); here the extra memory is one
    chunk's fp32 copy and its log-softmax (2 x chunk x V x 4 B: 0.6 GB at 512 positions). Under autograd each chunk's
    fp32 log-softmax is kept for the backward: one fp32 copy in all, not two."""
    rows = []
    for i in range(ids.shape[0]):
        parts = [torch.log_softmax(logits[i, s:s + chunk].float(), -1).gather(-1, ids[i, s:s + chunk, None])[:, 0]
                 for s in range(0, ids.shape[1], chunk)]  # [c] each; logits[i, s:s + chunk] is a view
        rows.append(torch.cat(parts))  # [T]
    return torch.stack(rows)  # [b, T]


def host_state_dict(model):
    """model.state_dict() copied to host memory, one tensor per parameter, for save_pretrained: views of one flat
    buffer (DeepSpeed ZeRO-1/2's parameters) would otherwise count as shared and be cloned where they are, ~15 GB of
    GPU memory for a 7B model (transformers 5.19 modeling_utils.remove_tied_weights_from_state_dict); tied weights
    (one tensor under two names) stay one tensor, so save_pretrained still drops the alias."""
    copies, out = {}, {}
    for name, t in model.state_dict().items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape))
        if key not in copies:
            copies[key] = t.detach().to("cpu", copy=True)
        out[name] = copies[key]
    return out


def load_models(args, device, tok, prm_path):
    """ppo.py's models: actor (trainable), frozen reference, PRM from `prm_path` (frozen token classifier; in PRIME
    mode a trainable causal LM; or None), all on the CPU, bf16 on GPU, fp32 on CPU. On GPU the frozen models wait in
    pinned host memory: each step they cross to the GPU at full speed and leave it without a copy back (on_device)."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    actor = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    if len(tok) > actor.config.vocab_size:
        raise InputError(args.model, None, "vocab_size",
                         f"the tokenizer has {len(tok)} tokens, the model {actor.config.vocab_size}")
    ref = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval().requires_grad_(False)
    prm = None
    if args.reward_mode == "PRIME":
        prm = AutoModelForCausalLM.from_pretrained(prm_path, dtype=dtype)
    elif prm_path is not None:
        prm = AutoModelForTokenClassification.from_pretrained(prm_path, dtype=dtype).eval().requires_grad_(False)
    if device.type == "cuda":  # the frozen models wait in pinned host memory
        for frozen in (ref, prm if args.reward_mode != "PRIME" else None):
            if frozen is not None:
                pin_to_host(frozen)
    for model in (actor, prm) if args.reward_mode == "PRIME" else (actor,):
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
    return actor, ref, prm


def ds_config(args, cuda, grad_clip=1.0, offload=False):
    """ZeRO-2: every rank keeps full bf16 weights (trivial weight sync), optimizer state and gradients sharded.
    The loop owns gradient accumulation (each engine.step() is one optimizer step; see ppo_update), so a step whose
    filtered buffer is short still takes exactly the optimizer steps its sequences make. offload: the fp32 master,
    Adam moments and gradient shards live in pinned host memory and the step runs on the CPU (ZeRO-Offload; needs
    DeepSpeedCPUAdam)."""
    zero = {"stage": 2, **({"offload_optimizer": {"device": "cpu", "pin_memory": True}} if offload else {})}
    return {"train_batch_size": args.train_batch_size, "train_micro_batch_size_per_gpu": args.micro_train_batch_size,
            "gradient_clipping": grad_clip, "zero_optimization": zero, "bf16": {"enabled": cuda},
            "managed_gradient_accumulation": False, "steps_per_print": 10**9}


# ---------------------------------------------------------------------------------------------------- ppo.py's setup
def check_inputs(args):
    """Everything that can be wrong with the input, checked before any model loads (a bad input leaves no output
    folder). -> dict(prompts, eval_sets, tok, prm_tok, scorer). Raises InputError (one line)."""
    from rollout import load_prompts

    prompts = load_prompts(args.prompts)
    if args.reward_mode == "PRIME":  # outcome labels need golds: the prompts without one are skipped
        gold = [p for p in prompts if p["answer"] is not None]
        if os.environ.get("RANK", "0") == "0":
            print(f"PRIME: {len(gold)} of {len(prompts)} prompts have a gold answer; {len(prompts) - len(gold)} "
                  "without one are skipped", flush=True)
        prompts = gold
    R, n, world, prm = args.rollout_batch_size, args.n_samples_per_prompt, int(os.environ.get("WORLD_SIZE", 1)), \
        prm_path(args)
    for ok, msg in [(R % world == 0, f"--rollout-batch-size {R} must be divisible by the {world} ranks"),
                    (R * n % args.train_batch_size == 0, f"rollout {R}x{n} must be a multiple of --train-batch-size"),
                    (args.train_batch_size % (args.micro_train_batch_size * world) == 0,
                     "--train-batch-size must be a multiple of --micro-train-batch-size x ranks"),
                    (n >= 2, "--n-samples-per-prompt must be >= 2 (leave-one-out baselines)"),
                    (len(prompts) >= R, f"{args.prompts}: {len(prompts)} prompts, fewer than --rollout-batch-size {R}"),
                    (args.reward_mode != "PRIME" or args.prm != "none",
                     "--reward-mode PRIME needs a causal LM as --prm"),
                    (args.step_scorer is None or args.reward_mode in ("PRM", "PRMVR") and prm is None,
                     "--step-scorer replaces the PRM: --reward-mode PRM or PRMVR, and no --prm"),
                    (args.reward_mode == "PRIME" or ("PRM" in args.reward_mode) == bool(prm or args.step_scorer),
                     f"--reward-mode {args.reward_mode} with --prm {args.prm}: PRM modes need a PRM (or "
                     "--step-scorer), VR needs `none`"),
                    (args.eval_every >= 0 and (args.eval_prompts or not args.eval_every),
                     "--eval-every needs --eval-prompts")]:
        if not ok:
            raise InputError("arguments", None, None, msg)
    from evaluate import load_benchmark, load_user_benchmark, parse_benchmarks

    sets = parse_benchmarks(",".join(args.eval_prompts))  # a file is named by its stem
    eval_sets = {name: load_user_benchmark(path) if path else load_benchmark(name) for name, path in sets.items()}
    tok, prm_tok = load_tokenizer(args.model), prm and load_tokenizer(prm)
    if prm_tok and prm_tok.get_vocab() != tok.get_vocab():  # the PRM reads the policy's token ids as they are
        raise InputError(prm, None, "tokenizer", f"PRM tokenizer differs from the policy's ({args.model})")
    return dict(prompts=prompts, eval_sets=eval_sets, tok=tok, prm_tok=prm_tok,
                scorer=args.step_scorer and load_step_scorer(args.step_scorer))


def prm_path(args):
    """The PRM folder: --prm; in PRIME mode, by default the policy's own starting checkpoint; None for none."""
    if args.reward_mode == "PRIME":
        return args.prm or args.model
    return None if args.prm in (None, "none") else args.prm


def load_step_scorer(spec):
    """--step-scorer `module:function` -> the function (its module found on sys.path, the script's folder first)."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise InputError("--step-scorer", None, spec, f"cannot load `module:function` ({e})") from None


def setup(args):
    """ppo.py's run: inputs checked, ranks joined, vLLM engine, models and DeepSpeed ready, resumed from the latest
    checkpoint. -> the fields of ppo.Run but the logs"""
    import deepspeed

    from rollout import start_engine

    inputs = check_inputs(args)
    out = Path(args.output_dir)
    log_libraries_to(out / "library.log")  # vLLM, DeepSpeed, transformers: not on the console
    rank, world, local_rank, device = init_ranks(args.dist_timeout_minutes)
    start, resume_dir = latest_checkpoint(out)
    if resume_dir is not None and not (resume_dir / "ds").is_dir():  # the newest is the one that keeps it
        raise InputError(resume_dir, None, "ds", "no DeepSpeed state to resume from (only the newest checkpoint keeps "
                                                 "one, unless --keep-all-ds-states)")
    cuda = device.type == "cuda"
    llm = start_engine(resume_dir or args.model, seed=args.seed + rank, dtype="bfloat16" if cuda else "float32",
                       max_model_len=args.prompt_max_len + args.generate_max_len,
                       gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                       **({"enable_sleep_mode": True} if cuda else {}))  # colocated: one per rank, resumed weights
    if cuda:
        llm.sleep(level=1)  # free the GPU for the trainer's models; wake_engine() before each rollout
    actor, ref, prm = load_models(args, device, inputs["tok"], prm_path(args))
    if llm.llm_engine.model_config.get_vocab_size() != actor.config.vocab_size:
        raise InputError(args.model, None, "vocab_size", f"vLLM has {llm.llm_engine.model_config.get_vocab_size()} "
                                                         f"tokens, the trainer {actor.config.vocab_size}")
    sync_dir = weight_sync_dir(out, actor, device, rank)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=args.actor_learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=actor, optimizer=optimizer, config=ds_config(args, cuda),
                                      args=deepspeed_args(device))
    prm_engine = None
    if args.reward_mode == "PRIME":  # the implicit PRM trains: its own AdamW (verl's defaults) and clip
        adamw = torch.optim.AdamW
        if cuda:  # its fp32 master, Adam moments and gradient shards wait in host memory (ZeRO-Offload), or a 7B PRIME
            from deepspeed.ops.adam import DeepSpeedCPUAdam as adamw  # step would not fit 80 GB (README: memory)
        optimizer = adamw(prm.parameters(), lr=args.prm_learning_rate, betas=(0.9, 0.999), weight_decay=0.01)
        prm_engine, *_ = deepspeed.initialize(model=prm, optimizer=optimizer, args=deepspeed_args(device),
                                              config=ds_config(args, cuda, args.prm_grad_clip, offload=cuda))
    if resume_dir is not None:
        engine.load_checkpoint(str(resume_dir), tag="ds")  # weights + optimizer state
        if prm_engine is not None:
            prm_engine.load_checkpoint(str(resume_dir), tag="ds_prm")
    return dict(**inputs, rank=rank, world=world, local_rank=local_rank, device=device, cuda=cuda, out=out, start=start,
                llm=llm, sync_dir=sync_dir, engine=engine, ref=ref, prm=None if prm_engine else prm,
                prm_engine=prm_engine)


def weight_sync_dir(out, actor, device, rank):
    """Where local rank 0 writes the weights every engine of its node reloads: /dev/shm when it has room for the
    weight file on every rank, else a disk folder per node in `out`."""
    from rollout import sync_folder

    nbytes = sum(t.numel() * t.element_size() for t in actor.state_dict().values())
    fallback = out / f".weight-sync-{socket.gethostname()}"
    sync_dir = sync_folder("pure_sync_" + hashlib.md5(str(out.resolve()).encode()).hexdigest()[:10], nbytes, fallback)
    if not all_ranks_ok(sync_dir != fallback, device):
        sync_dir = fallback
    if rank == 0:
        print(f"weight sync: {nbytes / 1e6:,.1f} MB per push through {sync_dir}"
              + (" (a disk folder: /dev/shm lacks the room)" if sync_dir == fallback else ""), flush=True)
    return sync_dir


# ---------------------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(out):
    """(step, folder) of the newest complete checkpoint-<step>/ (trainer_state.json written last), or (0, None)."""
    done = [(json.loads((d / "trainer_state.json").read_text())["step"], d)
            for d in Path(out).glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
    return max(done) if done else (0, None)


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
    keep_all_ds). The HF weights go through a host copy (host_state_dict): given the engine's own state_dict,
    save_pretrained would clone every ZeRO-2 parameter on the GPU (~15 GB for 7B), as they share one flat buffer."""
    final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="ds")
    if prm_engine is not None:
        prm_engine.save_checkpoint(str(tmp), tag="ds_prm")
    if rank == 0:
        engine.module.save_pretrained(tmp, state_dict=host_state_dict(engine.module))
        tok.save_pretrained(tmp)
        if prm_engine is not None:
            prm_engine.module.save_pretrained(tmp / "prm", state_dict=host_state_dict(prm_engine.module))
            tok.save_pretrained(tmp / "prm")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if not keep_all_ds:
            drop_old_ds_states(out, final)
    dist.barrier()


# ---------------------------------------------------------------------------------------------------- logs
def open_logs(out, start, wandb_project=None, config=None):
    """Rank 0: TensorBoard (+ wandb when a project is named) and metrics.jsonl cut back to the resumed step ->
    (writer, the rows kept)."""
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if (out / "metrics.jsonl").is_file():  # rows logged after the checkpoint we resume from are dropped
        rows = [r for _, r in read_jsonl(out / "metrics.jsonl") if r["step"] <= start]
        write_jsonl(out / "metrics.jsonl", rows)
    if wandb_project:
        import wandb

        wandb.init(project=wandb_project, config=config, sync_tensorboard=True, resume="allow")
    return SummaryWriter(out / "tb"), rows


def write_row(out, writer, row):
    """Rank 0: one metrics.jsonl row, and its finite values to TensorBoard at row["step"]."""
    for k, v in row.items():
        if finite(v):
            writer.add_scalar(k, v, row["step"])
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def repetition(ids, n=4):
    """Share of repeated n-grams in a response: 1 - distinct/total (0 = none; -> 1 for a loop)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def sample_records(prompts, samples, grades, steps, scores):
    """ppo.py's loggable dict per sample (rollouts/step-<N>.jsonl and the metrics). gold: the verifiable reward's gold
    (None: no VR); reference: what the sample was graded against (gold, else the logging-only ref_answer)."""
    from rollout import format_prompt

    return [{"prompt": format_prompt(prompts[x["prompt_id"]]["question"]), "prompt_id": x["prompt_id"],
             "response": x["response_text"], "gold": prompts[x["prompt_id"]]["answer"],
             "reference": prompts[x["prompt_id"]]["ref_answer"], "correct": grades[i]["correct"],
             "extracted": grades[i]["extracted"], "length": len(x["response_ids"]), "steps": len(steps[i]),
             "finish_reason": x["finish_reason"], "repetition": repetition(x["response_ids"]),
             "prm_scores": scores[i] if scores is not None else None} for i, x in enumerate(samples)]


def reduce_by_name(stats, world, device):
    """{"sum": {name: x}, "mean": {...}, "max": {...}} of this rank -> {name: x} over all ranks: sums summed, per-rank
    means averaged, maxima maxed (a phase lasts as long as its slowest rank). Every rank has the same names."""
    reduced = {}
    for kind, op in (("sum", dist.ReduceOp.SUM), ("mean", dist.ReduceOp.SUM), ("max", dist.ReduceOp.MAX)):
        keys = sorted(stats[kind])
        values = torch.tensor([float(stats[kind][k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(values, op=op)
        reduced.update({k: v / (world if kind == "mean" else 1) for k, v in zip(keys, values.tolist())})
    return reduced


def step_metrics(step, args, per_sample, r, phases):
    """ppo.py's metrics.jsonl row from the gathered samples and the stats reduced over ranks (ppo.log_step), by
    name; `phases`: the step's timed phases (time/<phase>)."""
    def mean(xs):
        xs = [x for x in xs if finite(x)]
        return sum(xs) / len(xs) if xs else None

    graded = [s for s in per_sample if s["correct"] is not None]  # against the gold or the logging-only ref_answer
    answered = [s for s in graded if s["gold"] is not None]  # the verifiable reward's prompts
    B, tokens = max(len(per_sample), 1), sum(s["length"] for s in per_sample)
    process = r.get("reward/process", 0.0) if args.reward_mode != "VR" else 0.0
    vr = sum(float(s["correct"]) - 1 for s in answered) / B if "VR" in args.reward_mode else 0.0
    agree = [(min(s["prm_scores"]) > 0) == s["correct"] for s in graded if s["prm_scores"]]
    row = {"step": step, "prompts_seen": step * args.rollout_batch_size, "policy_updated": float(bool(per_sample)),
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
           "filter/keep_rate": r["filter/kept"] / r["filter/drawn"]}
    row.update({k: r.get(k) for k in ("loss", "ratio", "clip_frac", "zeroed_micro_batches", "advantage_std",
                                      "prm/loss", "prm/outcome_accuracy", "logprob_diff_vllm/max")})
    row.update({f"time/{p}": r[f"time/{p}"] for p in phases})
    row["time/step"] = sum(r[f"time/{p}"] for p in phases)
    row["perf/gen_tokens_per_s"] = tokens / max(r["time/gen"], 1e-9)
    row["perf/tokens_per_s"] = tokens / max(row["time/step"], 1e-9)
    return {k: (v if v is None or finite(v) else None) for k, v in row.items()}


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


EARLY_STOP_KEYS = ["kl", "response_length", "steps_per_response", "reward/process"]
PLOT_KEYS = ["eval/accuracy", "reward/combined", "reward/process", "reward/verifiable", "solved", "prm_vr_agreement",
             "kl", "clip_frac", "response_length", "steps_per_response", "tokens_per_step", "repetition", "prm/loss",
             "prm/outcome_accuracy", "filter/keep_rate", "logprob_diff_vllm/mean", "time/step"]
