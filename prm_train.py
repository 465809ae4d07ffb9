"""Train PURE's process reward model (PRM) on PRM800K in two stages, and measure it.

The PRM is a causal LM with a 2-class token head (0 = "bad", 1 = "good"). A solution is laid out as
`prompt + Σ_k (step_k + "\n")` (common.tokenize_prm_example, shared with rewards.py) and the label of step k
sits on the separator after it; every other position is -100. The loss is token-level cross-entropy over those
positions only, as PURE trains its PRM (PRM/finetune.py: TRL 0.13.0's PRMTrainer, a token-classification head, in
github.com/CJReinforce/PURE@41f9363b8cc4af044b7fc5f7f9bbbf62139e9553):

    L = -(1/N) Σ_{b,t: y_bt != -100} log softmax(score(h_bt))[y_bt],   N = #labelled tokens in the global batch

Stage 1 freezes the base model and trains only the score head (lr 1e-4, 3 epochs); stage 2 starts from the
stage-1 folder and trains everything (lr 1e-6, 1 epoch). Global batch 128, AdamW (0.9, 0.95), weight decay 0.1,
constant LR, no warmup, bf16 on GPU, gradient checkpointing, DeepSpeed ZeRO-2 (PURE's PRM/train_stage_1.sh,
train_stage_2.sh). The loop is plain DeepSpeed (deepspeed.initialize, engine.backward / engine.step), no
transformers.Trainer.

    torchrun --nproc_per_node 8 prm_train.py --model Qwen/Qwen2.5-Math-7B --output-dir runs/prm1 --stage 1
    torchrun --nproc_per_node 8 prm_train.py --model runs/prm1 --output-dir runs/prm2 --stage 2
    python prm_train.py --model runs/prm2 --output-dir runs/prm2 --eval-only     # PRM800K / ProcessBench / BoN

Data (--data): a Hugging Face dataset name (PURE: HuggingFaceH4/prm800k-trl-dedup), a local JSONL/parquet file in
TRL's stepwise format (prompt, completions: list[str], labels: list[bool]), or a PRM800K phase-1
"stepwise-critique" file (see prm800k_examples for the rating -> label rule and how examples are built).
"""
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from common import (InputError, atomic_write, log_libraries_to, plot_metrics, read_jsonl, tokenize_prm_example,
                    write_jsonl)
from runtime import deepspeed_args, init_ranks, own_gpu_first

DATA = Path(__file__).resolve().parent / "data"  # the slices shipped with the repo (data/README.md)
ID2LABEL, LABEL2ID = {0: "bad", 1: "good"}, {"bad": 0, "good": 1}
# PRM800K rating -> label. +1 (good) and 0 (neutral: reasonable but not progressing) -> good, -1 -> bad; the
# Math-Shepherd / OpenR convention. Why 0 -> good: PRM800K labellers may continue a solution from a 0-rated step, so
# calling it bad would also make every solution passing through it "contain an error", and ProcessBench and the
# min-form credit only punish real errors. (TRL's script for trl-lib/prm800k, examples/datasets/prm800k.py in
# github.com/huggingface/trl@v0.13.0, uses rating == 1 instead.)
RATING_TO_LABEL = {1: True, 0: True, -1: False}


@dataclass
class Args:
    model: str
    """causal LM folder (stage 1; paper: Qwen2.5-Math-7B) or the stage-1 output folder (stage 2); for --eval-only,
    a trained PRM folder"""
    output_dir: str
    """where checkpoints, the final model, metrics.jsonl, TensorBoard logs, loss.png and eval.json go"""
    stage: Literal[1, 2] = 1
    """1: train only the score head (paper: --fix_llm True); 2: train all parameters (paper: from stage 1's output)"""
    data: str = "HuggingFaceH4/prm800k-trl-dedup"
    """HF dataset name (paper's), a TRL-format .jsonl/.parquet, or a PRM800K *_stepwise_critique .jsonl/.parquet"""
    learning_rate: float | None = None
    """constant learning rate (paper: 1e-4 in stage 1, 1e-6 in stage 2; None = the paper's for --stage)"""
    epochs: float | None = None
    """epochs over the data (paper: 3 in stage 1, 1 in stage 2; None = the paper's for --stage)"""
    max_steps: int = -1
    """stop after this many optimizer steps (-1 = run the epochs; paper: -1)"""
    global_batch_size: int = 128
    """examples per optimizer step = per-device batch x grad-accum x world size (paper: 16 x 1 x 8 = 128)"""
    per_device_batch_size: int = 16
    """examples per forward pass per process (paper: 16); grad-accum = global / (this x world size)"""
    weight_decay: float = 0.1
    """AdamW weight decay (paper: 0.1)"""
    adam_beta1: float = 0.9
    """AdamW beta1 (paper: 0.9)"""
    adam_beta2: float = 0.95
    """AdamW beta2 (paper: 0.95)"""
    max_grad_norm: float = 1.0
    """gradient clipping (paper: the HF Trainer default 1.0)"""
    max_length: int = 128000
    """examples longer than this many tokens are truncated, with a count reported (paper: TRL max_length 128000,
    so nothing is truncated)"""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage (paper: 2). With 3, each rank loads the full model, then DeepSpeed partitions it
    (HF's zero.Init loading needs `accelerate`, which this environment does not install)"""
    gradient_checkpointing: bool = True
    """recompute activations in the backward pass (paper: on)"""
    group_by_length: bool = False
    """batch examples of similar length together so padding does not dominate (paper: off, TRL's default). Off by
    default: where length predicts the label (short solutions that stop at an early error), batches of one length
    are batches of one label, and the PRM swings between them (measured: a loss above the constant's)"""
    save_steps: int = 500
    """checkpoint (model + optimizer; only the newest is kept, in OUTPUT_DIR/checkpoint) every this many steps and
    at the end; a rerun resumes from it, also with a larger --max-steps (not in the paper's scripts)"""
    logging_steps: int = 1
    """log loss / step accuracy / learning rate / tokens/s every this many steps (paper: 1)"""
    seed: int = 42
    """random seed (paper: HF default 42)"""
    wandb: bool = False
    """also report to Weights & Biases (TensorBoard and metrics.jsonl always)"""
    limit: int | None = None
    """use only the first N training examples / N items per evaluation set (quick runs; paper: all)"""
    eval_only: bool = False
    """evaluate --model (a trained PRM) on PRM800K phase-1 test, ProcessBench and best-of-8, write eval.json, exit"""
    eval_data: str = str(DATA)
    """folder holding prm800k/phase1_test_stepwise_critique.jsonl, processbench/*.jsonl and
    extras/qwen25math_math_cot_100_rm_maj.jsonl (default: the repo's data/, small slices; the full files' sources
    are in data/README.md); or a labelled stepwise file (TRL or PRM800K format, as --data): step accuracy, F1, AUC
    and log loss vs the constant on its steps"""
    threshold: float = 0.5
    """a step is predicted bad when P(good) < threshold (ProcessBench's first-error rule; 0.5 as in the benchmark)"""
    eval_batch_size: int = 8
    """sequences per forward pass in evaluation"""


# ---------------------------------------------------------------------------------------------------- data


def read_rows(path):
    """Yield (row_number, dict) from a .jsonl or .parquet file (row numbers start at 1)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), 1)
    elif path.suffix == ".jsonl":
        yield from read_jsonl(path)
    else:
        raise InputError(path, None, None, "expected a .jsonl or .parquet file")


def check_trl_row(path, n, row):
    """Validate one TRL stepwise row: prompt str, completions non-empty strs, labels bools, same length."""
    for field, kind in (("prompt", str), ("completions", list), ("labels", list)):
        if not isinstance(row.get(field), kind):
            raise InputError(path, n, field, f"missing or not a {kind.__name__}")
    if len(row["completions"]) != len(row["labels"]) or not row["labels"]:
        raise InputError(path, n, "labels", f"{len(row['labels'])} labels for {len(row['completions'])} steps")
    for k, (step, label) in enumerate(zip(row["completions"], row["labels"])):
        if not isinstance(step, str) or not step.strip():
            raise InputError(path, n, f"completions[{k}]", "empty step text")
        if label not in (True, False) or not isinstance(label, (bool, int)):
            raise InputError(path, n, f"labels[{k}]", f"{label!r} is not a bool")
    return {"prompt": row["prompt"], "completions": row["completions"], "labels": [bool(x) for x in row["labels"]]}


def critique_label(path, n, row):
    """PRM800K rating -> bool (RATING_TO_LABEL); a null rating on a human-written step -> True (the labeller wrote
    it as the correct continuation); a null rating on a model-written step (left unrated) -> None (dropped)."""
    rating = row.get("rating")
    if rating is None:
        return True if row.get("is_human_response") else None
    if isinstance(rating, bool) or rating not in RATING_TO_LABEL:
        raise InputError(path, n, "rating", f"{rating!r} is not one of -1, 0, 1, null")
    return RATING_TO_LABEL[rating]


def prm800k_examples(path, rows):
    """PRM800K stepwise-critique rows -> TRL examples, the layout of examples/datasets/prm800k.py in
    github.com/huggingface/trl@v0.13.0.

    A row is one rated candidate `next_response` after the steps already chosen (`responses`). Every candidate
    becomes an example `history + [candidate]` with labels [label(history step) ...] + [label(candidate)], except a
    chosen step (preferred or human-written) that the solution continues from: its label already sits inside the
    longer examples. A history step's label comes from its own row (always good in PRM800K, which lets labellers
    continue only from steps rated >= 0 or written by themselves). A final answer split into `answer` is restored
    as "step\n\n# Answer\n\nANSWER", PRM800K's raw text. Returns (examples, counts of everything dropped)."""
    rows, counts = list(rows), Counter()
    for n, row in rows:
        for field, kind in (("instruction", str), ("responses", list), ("next_response", str)):
            if not isinstance(row.get(field), kind):
                raise InputError(path, n, field, f"missing or not a {kind.__name__}")
        for k, step in enumerate(row["responses"] + [row["next_response"]]):
            if not isinstance(step, str) or not step.strip():
                raise InputError(path, n, "next_response" if k == len(row["responses"]) else f"responses[{k}]",
                                 "empty step text")
    labels = {n: critique_label(path, n, row) for n, row in rows}
    chosen, continued = {}, set()
    for n, row in rows:
        continued.add((row["instruction"], tuple(row["responses"])))
        if row.get("is_preferred_response") or row.get("is_human_response"):
            key = (row["instruction"], tuple(row["responses"]), row["next_response"])
            chosen[key] = chosen.get(key, True) and bool(labels[n])
    examples, seen = [], set()
    for n, row in rows:
        prompt, hist, step = row["instruction"], row["responses"], row["next_response"]
        if labels[n] is None:
            counts["dropped: model-written step with a null rating (left unrated)"] += 1
            continue
        if (prompt, tuple(hist) + (step,)) in continued and (row.get("is_preferred_response") or
                                                             row.get("is_human_response")):
            counts["merged: chosen step that is continued (labelled inside longer examples)"] += 1
            continue
        hist_labels = [chosen.get((prompt, tuple(hist[:k]), hist[k])) for k in range(len(hist))]
        counts["history steps without their own chosen row (labelled good)"] += hist_labels.count(None)
        if row.get("answer") is not None:
            step = f"{step}\n\n# Answer\n\n{row['answer']}"
        ex = (prompt, tuple(hist) + (step,), tuple(x is not False for x in hist_labels) + (labels[n],))
        if ex in seen:
            counts["dropped: exact duplicate example"] += 1
            continue
        seen.add(ex)
        examples.append({"prompt": ex[0], "completions": list(ex[1]), "labels": list(ex[2])})
    return examples, counts


def load_examples(data, limit=None):
    """--data -> (list of TRL examples {prompt, completions, labels}, Counter of dropped/merged rows)."""
    path = Path(data)
    if path.suffix in (".jsonl", ".parquet") and not path.is_file():
        raise InputError(path, None, None, "no such file")
    if path.exists():
        rows = list(read_rows(path))
        if not rows:
            raise InputError(path, None, None, "no rows")
        if "next_response" in rows[0][1]:
            examples, counts = prm800k_examples(path, rows)
        else:
            examples, counts = [check_trl_row(path, n, row) for n, row in rows], Counter()
    else:  # a Hugging Face dataset name (needs the hub; PURE: HuggingFaceH4/prm800k-trl-dedup, split "train")
        import datasets

        try:
            rows = datasets.load_dataset(data, split="train")
        except Exception as e:  # offline, unknown name, ...: one line, not a hub traceback
            raise InputError(data, None, None, "not a local file, and the hub dataset failed to load "
                             f"({type(e).__name__}: {str(e).splitlines()[0]}); without the hub, pass --data "
                             "path/to/file.jsonl or .parquet (data/prm800k/ ships a PRM800K slice)") from None
        examples, counts = [check_trl_row(data, n, row) for n, row in enumerate(rows, 1)], Counter()
    if limit is not None:
        counts[f"skipped: examples beyond --limit {limit}"] += max(0, len(examples) - limit)
        examples = examples[:limit]
    return examples, counts


def tokenize_examples(tokenizer, examples, max_length, counts):
    """TRL examples -> features {input_ids, labels} (labels int 0/1 on each step's separator, -100 elsewhere).
    Examples over max_length are cut there; labels past the cut are lost and counted, never silently."""
    features = []
    for ex in examples:
        input_ids, _, labels = tokenize_prm_example(tokenizer, ex["prompt"], ex["completions"], ex["labels"])
        if len(input_ids) > max_length:
            counts[f"truncated: examples longer than --max-length {max_length}"] += 1
            counts["truncated: step labels cut off"] += sum(y != -100 for y in labels[max_length:])
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            if all(y == -100 for y in labels):
                counts["dropped: no labelled step left after truncation"] += 1
                continue
        features.append({"input_ids": input_ids, "labels": labels})
    return features


def pad_id(tokenizer):
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(features, pad_id):
    """Right-pad a list of features to the longest: input_ids [B, T] (pad_id), attention_mask [B, T], labels [B, T]
    (-100 on padding)."""
    T = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), T), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(features), T), -100, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(features), T), dtype=torch.long)  # [B, T]
    for b, f in enumerate(features):
        n = len(f["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------------------------------------------- model + loss


def load_prm(model_path, tokenizer_only=False):
    """Any causal LM folder (or a trained PRM) -> (AutoModelForTokenClassification with 2 labels, tokenizer)."""
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise InputError(path, None, None, "not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise InputError(path, None, "tokenizer", "defines neither a pad nor an eos token")
    if tokenizer_only:
        return None, tokenizer
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            path, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, dtype=torch.float32)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        model_type = AutoConfig.from_pretrained(path).model_type
        raise InputError(path / "config.json", None, "model_type",
                         f"{model_type!r} has no token-classification class in transformers") from None
    model.config.use_cache = False
    return model, tokenizer


def prm_loss(logits, labels, n_labelled):
    """Token-level cross-entropy on the labelled separator positions only (TRL PRMTrainer's loss, PURE's PRM).

    logits [B, T, 2], labels [B, T] (0/1 at step ends, -100 elsewhere), n_labelled = #labelled tokens in the whole
    global batch (all ranks and accumulation steps), so that the summed micro-batch losses give the global mean
        L = -(1/N) Σ_{y_bt != -100} log softmax(logits_bt)[y_bt].
    Returns (loss, n_correct, n_here): the micro-batch's share of L, argmax hits and labelled tokens here."""
    mask = labels != -100  # [B, T]
    logits_l, labels_l = logits[mask].float(), labels[mask]  # [n, 2], [n]
    loss = F.cross_entropy(logits_l, labels_l, reduction="sum") / n_labelled
    return loss, (logits_l.argmax(-1) == labels_l).sum(), mask.sum()


# ---------------------------------------------------------------------------------------------------- training


def batch_schedule(lengths, global_batch, epochs, seed, group_by_length):
    """Deterministic list of global batches (lists of example indices) for the whole run; every rank builds the
    same one, so a resumed run skips the first `step` batches. Length grouping: shuffle, cut into mega-batches of
    64 global batches, sort each by length, cut into global batches, shuffle their order. The last partial batch
    of each epoch is dropped (DeepSpeed needs the same number of micro-batches on every rank)."""
    batches, per_epoch = [], len(lengths) // global_batch
    for epoch in range(int(-(-epochs // 1))):
        g = torch.Generator().manual_seed(seed + epoch)
        perm = torch.randperm(len(lengths), generator=g).tolist()
        if group_by_length:
            mega = 64 * global_batch
            perm = [i for s in range(0, len(perm), mega)
                    for i in sorted(perm[s:s + mega], key=lambda i: -lengths[i])]
        epoch_batches = [perm[s * global_batch:(s + 1) * global_batch] for s in range(per_epoch)]
        order = torch.randperm(per_epoch, generator=g).tolist() if group_by_length else range(per_epoch)
        batches += [epoch_batches[j] for j in order]
    return batches[:int(epochs * per_epoch)]


def ds_config(args, grad_accum, world, bf16):
    """DeepSpeed config (the reference's ds_config_zero2.json essentials); the optimizer is a torch AdamW client
    optimizer and the LR is constant (the reference's WarmupLR with 0 warmup steps), so no scheduler block."""
    return {"train_micro_batch_size_per_gpu": args.per_device_batch_size,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": args.per_device_batch_size * grad_accum * world,
            "gradient_clipping": args.max_grad_norm,
            "bf16": {"enabled": bf16},
            "zero_optimization": {"stage": args.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def setup(args):
    """Distributed init, data, model, DeepSpeed engine. Returns a dict of everything train() needs."""
    import deepspeed

    log_libraries_to(Path(args.output_dir) / "library.log")  # DeepSpeed, transformers: not on the console
    rank, world, _, device = init_ranks()  # as ppo.py: a world of one without torchrun; GPU: this rank's own
    on_gpu = device.type == "cuda"
    if args.global_batch_size % (args.per_device_batch_size * world):
        raise InputError("--global-batch-size", None, None, f"{args.global_batch_size} is not a multiple of "
                         f"--per-device-batch-size {args.per_device_batch_size} x {world} processes")
    grad_accum = args.global_batch_size // (args.per_device_batch_size * world)
    config = ds_config(args, grad_accum, world, bf16=on_gpu)
    torch.manual_seed(args.seed)
    model, tokenizer = load_prm(args.model)
    examples, counts = load_examples(args.data, args.limit)
    features = tokenize_examples(tokenizer, examples, args.max_length, counts)
    if len(features) < args.global_batch_size:
        raise InputError(args.data, None, None, f"{len(features)} examples, fewer than one global batch "
                         f"({args.global_batch_size})")
    model.train()  # from_pretrained returns eval mode: no dropout and no gradient checkpointing there
    if args.stage == 1:
        model.base_model.requires_grad_(False)  # paper --fix_llm: only the score head (one Linear) trains
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = args.learning_rate if args.learning_rate is not None else {1: 1e-4, 2: 1e-6}[args.stage]
    optimizer = torch.optim.AdamW(  # weight decay on matrices, not on biases / norm gains (HF Trainer's rule)
        [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": args.weight_decay},
         {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}],
        lr=lr, betas=(args.adam_beta1, args.adam_beta2))
    n_params = (sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters()))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, args=deepspeed_args(device))
    epochs = args.epochs if args.epochs is not None else {1: 3.0, 2: 1.0}[args.stage]
    schedule = batch_schedule([len(f["input_ids"]) for f in features], args.global_batch_size, epochs, args.seed,
                              args.group_by_length)
    counts["dropped per epoch: last partial global batch"] = len(features) % args.global_batch_size
    if args.max_steps >= 0:
        schedule = schedule[:args.max_steps]
    return dict(engine=engine, tokenizer=tokenizer, features=features, counts=counts, schedule=schedule,
                rank=rank, world=world, grad_accum=grad_accum, lr=lr, on_gpu=on_gpu,
                n_params=n_params)


def train_step(s, batch):
    """One optimizer step on a global batch (list of example indices). Returns summed stats on this rank."""
    engine, world, pad = s["engine"], s["world"], pad_id(s["tokenizer"])
    feats = [s["features"][i] for i in batch]
    n_labelled = sum(sum(y != -100 for y in f["labels"]) for f in feats)  # N of the global batch (same on all ranks)
    B = len(feats) // (world * s["grad_accum"])
    micro = [feats[j * B:(j + 1) * B] for j in range(world * s["grad_accum"])][s["rank"]::world]
    stats = torch.zeros(4, dtype=torch.float64)  # loss, correct, labelled, tokens
    for mb in micro:
        inputs = {k: v.to(engine.device) for k, v in collate(mb, pad).items()}
        labels = inputs.pop("labels")  # [B, T]
        logits = engine(**inputs).logits  # [B, T, 2]
        loss, correct, n_here = prm_loss(logits, labels, n_labelled)
        # x world: DeepSpeed averages gradients over ranks, and the global mean needs their sum
        engine.backward(loss * world, scale_wrt_gas=False)
        engine.step()  # optimizer step only at the accumulation boundary (the last micro-batch)
        stats += torch.tensor([loss.item(), correct.item(), n_here.item(), inputs["attention_mask"].sum().item()],
                              dtype=torch.float64)
    return stats


def save_model(s, out_dir):
    """Final folder: safetensors + config (id2label bad/good) + tokenizer, loadable by
    AutoModelForTokenClassification.from_pretrained (ZeRO-3 shards are gathered first)."""
    engine = s["engine"]
    state = engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_stage() == 3 else None
    if s["rank"] == 0:
        engine.module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        s["tokenizer"].save_pretrained(out_dir)


def train(args):
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    out = Path(args.output_dir)
    ckpt, metrics_path = out / "checkpoint", out / "metrics.jsonl"
    s = setup(args)
    engine, rank = s["engine"], s["rank"]
    start = 0
    if (ckpt / "latest").is_file():  # resume: model + optimizer + step from the last checkpoint
        _, client = engine.load_checkpoint(str(ckpt))
        start = client["step"]
    if rank == 0:
        print(f"prm_train: stage {args.stage}, {len(s['features'])} examples, {len(s['schedule'])} steps, "
              f"lr {s['lr']:g}, grad-accum {s['grad_accum']} x {s['world']} ranks, trainable "
              f"{s['n_params'][0]:,}/{s['n_params'][1]:,} params" + (f", resuming at step {start}" if start else ""))
        for what, n in sorted(s["counts"].items()):
            print(f"prm_train: {what}: {n}")
        write_jsonl(out / "data_counts.jsonl", [{"what": k, "count": v} for k, v in sorted(s["counts"].items())])
        if metrics_path.is_file():  # drop rows logged after the checkpoint we resume from
            write_jsonl(metrics_path, [r for _, r in read_jsonl(metrics_path) if r["step"] <= start])
        writer = SummaryWriter(str(out / "tensorboard"))
        if args.wandb:
            import wandb

            wandb.init(project="pure-prm", config=vars(args))
    acc, n_steps, t0 = torch.zeros(4, dtype=torch.float64), 0, time.perf_counter()
    for step in tqdm(range(start + 1, len(s["schedule"]) + 1), initial=start, total=len(s["schedule"]),
                     disable=rank != 0, desc=f"prm stage {args.stage}"):
        torch.manual_seed(args.seed * 1_000_003 + step)  # dropout masks from (seed, step): a resume repeats them
        acc, n_steps = acc + train_step(s, s["schedule"][step - 1]), n_steps + 1
        if step % args.logging_steps == 0 or step == len(s["schedule"]):
            torch.distributed.all_reduce(acc)  # sums over ranks (gloo/nccl)
            row = {"step": step, "loss": acc[0].item() / n_steps,
                   "step_accuracy": acc[1].item() / max(acc[2].item(), 1), "learning_rate": s["lr"],
                   "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                   "tokens_per_s": acc[3].item() / (time.perf_counter() - t0)}
            if rank == 0:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                for k, v in row.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, step)
                if args.wandb:
                    wandb.log(row, step=step)
            acc, n_steps, t0 = torch.zeros(4, dtype=torch.float64), 0, time.perf_counter()
        if step % args.save_steps == 0 or step == len(s["schedule"]):
            t_save = time.perf_counter()
            engine.save_checkpoint(str(ckpt), tag=f"step{step}", client_state={"step": step})
            if rank == 0:  # keep only the newest checkpoint
                for old in ckpt.glob("step*"):
                    if old.name != f"step{step}":
                        shutil.rmtree(old)
            t0 += time.perf_counter() - t_save  # checkpointing is not training throughput
    save_model(s, out)
    if rank == 0:
        writer.close()
        plot_metrics(metrics_path, out / "loss.png", ["loss", "step_accuracy", "learning_rate", "tokens_per_s"])
        print(f"prm_train: saved {out} (metrics.jsonl, loss.png, tensorboard/)")
    torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def step_probs(model, tokenizer, items, batch_size=8):
    """P(good) at every step end of each (prompt, steps) item, read exactly where training put the labels.
    Returns list[list[float]] (one value per step). Batches are length-sorted and right-padded."""
    encoded = [tokenize_prm_example(tokenizer, prompt, steps)[:2] for prompt, steps in items]
    order = sorted(range(len(items)), key=lambda i: -len(encoded[i][0]))
    pad, out = pad_id(tokenizer), [None] * len(items)
    device = next(model.parameters()).device
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = collate([{"input_ids": encoded[i][0], "labels": [-100] * len(encoded[i][0])} for i in idx], pad)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits  # [B, T, 2]
        p_good = logits.float().softmax(-1)[..., 1].cpu()  # [B, T]
        for b, i in enumerate(idx):
            out[i] = p_good[b, encoded[i][1]].tolist()
    return out


def first_error(p_good, threshold=0.5):
    """ProcessBench prediction: index of the first step with P(good) < threshold, or -1 if none."""
    return next((k for k, p in enumerate(p_good) if p < threshold), -1)


def processbench_f1(preds, labels):
    """ProcessBench metric: accuracy on erroneous samples (label >= 0, pred must equal the first-error index), on
    correct samples (label -1, pred must be -1), and their harmonic mean F1 (None where a side is empty)."""
    err = [p == y for p, y in zip(preds, labels) if y != -1]
    cor = [p == -1 for p, y in zip(preds, labels) if y == -1]
    a_err = sum(err) / len(err) if err else None
    a_cor = sum(cor) / len(cor) if cor else None
    f1 = 2 * a_err * a_cor / (a_err + a_cor) if a_err is not None and a_cor is not None and a_err + a_cor else None
    if a_err is not None and a_cor is not None and a_err + a_cor == 0:
        f1 = 0.0
    return {"acc_erroneous": a_err, "acc_correct": a_cor, "f1": f1, "n": len(preds)}


def auc(scores, labels):
    """ROC AUC of `scores` for the good steps (labels True): the probability that a good step scores above a bad
    one, ties counted half (the Mann-Whitney rank form, O(N log N)); None when one class is missing."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks, i = [0.0] * len(scores), 0
    while i < len(order):  # tied scores share their average rank (1-based)
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    n_good = sum(labels)
    n_bad = len(labels) - n_good
    if not n_good or not n_bad:
        return None
    return (sum(r for r, y in zip(ranks, labels) if y) - n_good * (n_good + 1) / 2) / (n_good * n_bad)


def step_metrics(p_good, labels, threshold=0.5):
    """Step-level accuracy, F1 (for the bad class, i.e. error detection, and for the good class), AUC, and the log
    loss (the training loss) beside that of the best constant predictor P(good) = good_fraction: a PRM that learnt
    anything beats the constant."""
    pred = [p >= threshold for p in p_good]
    q = sum(labels) / len(labels)  # good fraction
    p = torch.tensor(p_good, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)  # [N]
    y = torch.tensor(labels, dtype=torch.float64)  # [N]
    log_loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean().item()
    constant = -(q * math.log(q) + (1 - q) * math.log(1 - q)) if 0 < q < 1 else 0.0

    def f1(cls):
        tp = sum(p == cls and y == cls for p, y in zip(pred, labels))
        fp, fn = sum(p == cls and y != cls for p, y in zip(pred, labels)), sum(p != cls and y == cls
                                                                               for p, y in zip(pred, labels))
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None

    return {"accuracy": sum(p == y for p, y in zip(pred, labels)) / len(labels), "f1_bad": f1(False),
            "f1_good": f1(True), "auc": auc(p_good, labels), "good_fraction": q, "log_loss": log_loss,
            "log_loss_constant": constant,
            "n_steps": len(labels)}


def best_of_n(p_good_per_response, correct, answers, seed=0):
    """Best-of-N accuracy per aggregation of step scores (min, product, last step), plus majority vote over the
    extracted answers, oracle (any correct) and random pick (expected accuracy). Inputs: per problem, a list over
    its N responses of [P(good) per step], correctness bools, extracted answers."""
    aggregations = {"min": min, "product": lambda ps: float(torch.tensor(ps, dtype=torch.float64).prod()),
                    "last": lambda ps: ps[-1]}
    res = {}
    for name, agg in aggregations.items():
        hits = [c[max(range(len(c)), key=lambda j: agg(ps[j]))] for ps, c in zip(p_good_per_response, correct)]
        res[f"bon_{name}"] = sum(hits) / len(hits)
    votes = [Counter(a).most_common(1)[0][0] for a in answers]
    res["majority_vote"] = sum(c[a.index(v)] for v, a, c in zip(votes, answers, correct)) / len(correct)
    res["oracle"] = sum(any(c) for c in correct) / len(correct)
    res["random"] = sum(sum(c) / len(c) for c in correct) / len(correct)
    return res


def evaluate(args):
    """--eval-only: PRM800K phase-1 test (step accuracy/F1), ProcessBench (first-error F1), best-of-8 (MATH)."""
    model, tokenizer = load_prm(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device, torch.bfloat16 if device == "cuda" else torch.float32).eval()
    root, results = Path(args.eval_data), {}
    run = lambda items: step_probs(model, tokenizer, items, args.eval_batch_size)  # noqa: E731
    if root.is_file():  # a labelled stepwise file of the user's
        results["steps"], results["last_step"] = stepwise_metrics(run, root, args.limit, args.threshold)
        return write_eval(args, results)

    results["prm800k_phase1_test"], results["prm800k_phase1_test_last_step"] = stepwise_metrics(
        run, root / "prm800k" / "phase1_test_stepwise_critique.jsonl", args.limit, args.threshold)
    for path in sorted((root / "processbench").glob("*.jsonl")):
        rows = [r for _, r in read_jsonl(path)][:args.limit]
        probs = run([(r["problem"], r["steps"]) for r in rows])
        results[f"processbench_{path.stem}"] = processbench_f1([first_error(p, args.threshold) for p in probs],
                                                               [r["label"] for r in rows])
    f1s = [v["f1"] for k, v in results.items() if k.startswith("processbench_") and v["f1"] is not None]
    results["processbench_avg_f1"] = sum(f1s) / len(f1s) if f1s else None

    rows = [r for _, r in read_jsonl(root / "extras" / "qwen25math_math_cot_100_rm_maj.jsonl")][:args.limit]
    items = [(r["question"], [s for s in resp.split("\n\n") if s.strip()] or [resp]) for r in rows
             for resp in r["response"]]
    probs, n = run(items), len(rows[0]["response"])
    results["best_of_8_math"] = best_of_n([probs[i * n:(i + 1) * n] for i in range(len(rows))],
                                          [r["score"] for r in rows], [r["pred"] for r in rows])
    return write_eval(args, results)


def stepwise_metrics(run, path, limit, threshold):
    """step_metrics of a labelled stepwise file (TRL or PRM800K, as --data) -> (over all its steps, over each
    solution's last step alone: history steps are mostly good, so the pooled numbers flatter the PRM)."""
    examples, _ = load_examples(path, limit)
    probs = run([(e["prompt"], e["completions"]) for e in examples])
    return (step_metrics([p for ps in probs for p in ps], [y for e in examples for y in e["labels"]], threshold),
            step_metrics([ps[-1] for ps in probs], [e["labels"][-1] for e in examples], threshold))


def write_eval(args, results):
    atomic_write(Path(args.output_dir) / "eval.json", json.dumps(results, indent=1) + "\n")
    for name, metrics in results.items():
        print(f"{name:32s} " + (json.dumps(metrics) if isinstance(metrics, dict) else f"{metrics}"))
    return results


if __name__ == "__main__":
    import tyro

    own_gpu_first()  # GPU: this rank sees its own GPU only (cuda:0), before anything touches CUDA
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = tyro.cli(Args)
    try:
        evaluate(args) if args.eval_only else train(args)
    except InputError as e:
        sys.exit(f"error: {e}")
