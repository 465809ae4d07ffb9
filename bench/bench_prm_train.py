"""Tokens/s of a prm_train.py training step (DeepSpeed ZeRO-2 engine, 1 process, stage 2 = all parameters, AdamW
step included) on CPU with SmolLM2-135M versus a bare forward + backward of the same model on the same batches (no
optimizer, no DeepSpeed). Target: overhead = bare tokens/s / trainer tokens/s < 1.3x (same checkpointing setting).

    .venv/bin/python bench/bench_prm_train.py [--model SMOLLM2_DIR] [--steps 4] [--batch 4]

The two are interleaved batch by batch (the first batch is warm-up). The machine is shared by the whole team, so
absolute numbers are pessimistic; the ratio is what matters."""
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import prm_train as pt  # noqa: E402
from common import export_smollm2, write_jsonl  # noqa: E402


@dataclass
class Args:
    model: str | None = None
    """SmolLM2-135M folder (default: exported once to .cache/smollm2-135m)"""
    steps: int = 4
    """optimizer steps timed per mode (after one warm-up step)"""
    batch: int = 4
    """sequences per forward pass (per-device batch)"""
    accum: int = 4
    """micro-batches per optimizer step (grad-accum; the paper's global batch 128 amortizes the AdamW step more)"""
    checkpointing: tuple[bool, ...] = (False, True)
    """gradient-checkpointing settings to compare (the paper: on)"""
    max_tokens: int = 256
    """use PRM800K phase-1 test examples of at most this many tokens"""


def bare_step(model, b):
    """Forward + backward of prm_loss on one collated batch, no optimizer, no DeepSpeed: the floor any trainer pays."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # [B, T, 2]
    loss, _, _ = pt.prm_loss(logits, b["labels"], int(b["labels"].ne(-100).sum()))
    loss.backward()
    model.zero_grad(set_to_none=True)


def compare(model, feats, data, out, args, checkpointing):
    """Interleave, batch by batch, one prm_train step (DeepSpeed engine forward/backward/AdamW step) and one bare
    forward+backward on the same batch, so that load changes on the shared machine hit both sides alike."""
    run = pt.Args(model=args.model, output_dir=str(out), stage=2, data=str(data),
                  global_batch_size=args.batch * args.accum, per_device_batch_size=args.batch, gradient_checkpointing=checkpointing, max_steps=args.steps + 1)
    s = pt.setup(run)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    tokens, t_trainer, t_bare = 0, 0.0, 0.0
    for i, batch in enumerate(s["schedule"]):
        micro = [pt.collate([feats[j] for j in batch[k:k + args.batch]], pt.pad_id(s["tokenizer"]))
                 for k in range(0, len(batch), args.batch)]
        t0 = time.perf_counter()
        stats = pt.train_step(s, batch)
        t1 = time.perf_counter()
        for b in micro:
            bare_step(model, b)
        t2 = time.perf_counter()
        if i:  # step 0 is warm-up
            tokens, t_trainer, t_bare = tokens + stats[3].item(), t_trainer + t1 - t0, t_bare + t2 - t1
    del s
    return tokens / t_bare, tokens / t_trainer


def main(args):
    args.model = str(args.model or export_smollm2(ROOT / ".cache" / "smollm2-135m"))
    model, tok = pt.load_prm(args.model)
    examples, _ = pt.load_examples(ROOT / "data" / "prm800k" / "phase1_train_stepwise_critique.jsonl")
    feats = pt.tokenize_examples(tok, examples, 10**6, Counter())
    n = args.batch * args.accum * (args.steps + 1)
    keep = [i for i, f in enumerate(feats) if len(f["input_ids"]) <= args.max_tokens][:n]
    examples, feats = [examples[i] for i in keep], [feats[i] for i in keep]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(Path(tmp) / "data.jsonl", examples)  # prm_train re-reads it: same features, same order
        for ckpt in args.checkpointing:
            rows.append((ckpt, *compare(model, feats, Path(tmp) / "data.jsonl", Path(tmp) / f"run{ckpt}", args, ckpt)))
    print(f"SmolLM2-135M, stage 2 (all params), fp32 CPU, {torch.get_num_threads()} threads, {args.accum} micro-"
          f"batches of {args.batch} x <= {args.max_tokens} tokens per step, {args.steps} timed steps "
          "(shared machine: pessimistic; interleaved)")
    print(f"{'grad ckpt':>9} | {'bare fwd+bwd tok/s':>18} | {'prm_train step tok/s':>20} | overhead (target < 1.3x)")
    for ckpt, bare, trainer in rows:
        print(f"{'on' if ckpt else 'off':>9} | {bare:18.1f} | {trainer:20.1f} | {bare / trainer:.2f}x")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
