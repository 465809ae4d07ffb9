"""Answer-checker latency on MATH500-style answers: rewards.is_correct (worker process with a time limit, all
additions) and the same check in-process, beside math-verify alone (parse + verify in-process) on the same inputs;
then both checkers' accuracy on the test tables, and grade_many on a rollout batch of 256.

    .venv/bin/python bench/bench_rewards.py [--n 500]

Inputs: each MATH500 gold against (a) its own solution (the last box, in a full solution text) and (b) a
perturbed answer (a digit changed), so half should be right. Each checker gets one untimed warm-up pass over the
inputs, then a timed pass (steady state of a long-lived worker). Target: checker p99 < 50 ms.
"""
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rewards  # noqa: E402


def pairs(n):
    rows = [json.loads(line) for line in open(ROOT / "data" / "eval" / "math500.jsonl")][:n]
    rng, out = random.Random(0), []
    for r in rows:
        out.append((r["solution"], r["answer"], True))
        wrong = re.sub(r"\d", lambda m: str((int(m.group()) + 1 + rng.randrange(8)) % 10), r["answer"], count=1)
        if wrong != r["answer"]:
            out.append((f"Thus the answer is $\\boxed{{{wrong}}}$.", r["answer"], False))
    return out


def stats(ms):
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))], ms[-1]


def main():
    import logging

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 500
    data = pairs(n)
    from math_verify import parser

    cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    checkers = {
        "math-verify alone": lambda r, g: verify(parse("$" + g + "$", cfg, parsing_timeout=None),
                                                 parse(r, cfg, parsing_timeout=None), timeout_seconds=None),
        "rewards._check (in-process)": lambda r, g: rewards._check(r, g)[0],
        "rewards.is_correct (worker process)": rewards.is_correct,
    }
    rewards.grade("\\boxed{1}", "1")  # start one worker
    print(f"{len(data)} pairs (MATH500 gold vs own solution / perturbed answer); latency per check in ms")
    print(f"{'checker':<34}{'median':>8}{'p99':>8}{'max':>8}{'accuracy':>10}{'CPU median':>12}{'CPU p99':>9}")
    for name, check in checkers.items():
        for cached in (parser.parse_latex_cached, parser.parse_expr_cached, parser.extract_latex):
            cached.cache_clear()  # each pass starts with math-verify's small parse caches empty
        for response, gold, _ in data:  # warm-up pass: sympy imports/compiles a feature on first use (a one-off
            check(response, gold)        # 50-150 ms that a long-lived worker pays once); caches hold only 20 items
        ms, cpu, ok = [], [], 0
        for response, gold, expected in data:
            t, c = time.perf_counter(), time.thread_time()
            ok += check(response, gold) == expected
            ms.append(1e3 * (time.perf_counter() - t))
            cpu.append(1e3 * (time.thread_time() - c))  # this thread's CPU time: immune to other users' load
        med, p99, mx = stats(ms)
        cpu_med, cpu_p99, _ = stats(cpu)
        in_process = "worker" not in name  # a worker's CPU time is not this thread's
        cpu_cols = f"{cpu_med:>12.1f}{cpu_p99:>9.1f}" if in_process else f"{'-':>12}{'-':>9}"
        print(f"{name:<34}{med:>8.1f}{p99:>8.1f}{mx:>8.1f}{100 * ok / len(data):>9.1f}%{cpu_cols}")
    from tests.test_rewards import TABLE  # the checker's own behaviour table (response, gold, expected)

    widened = [json.loads(line) for line in open(ROOT / "tests" / "checker_cases.jsonl")]  # other graders' cases
    for name, table in (("behaviour table", TABLE),
                        ("other graders' cases", [(r["response"], r["gold"], r["expected"]) for r in widened])):
        mv_ok = sum(checkers["math-verify alone"](response, gold) == expected for response, gold, expected in table)
        ours_ok = sum(o["correct"] == e for o, (_, _, e) in zip(
            rewards.grade_many([t[0] for t in table], [t[1] for t in table]), table))
        print(f"{name} ({len(table)} cases): rewards {ours_ok}/{len(table)}, math-verify alone {mv_ok}/{len(table)}")
    batch = (data * 2)[:256]
    for workers in (1, 2, 4):
        rewards.grade_many(["\\boxed{1}"] * workers, ["1"] * workers, workers=workers)  # start the workers
        t = time.perf_counter()
        rewards.grade_many([b[0] for b in batch], [b[1] for b in batch], workers=workers)
        print(f"grade_many 256 responses, {workers} workers: {time.perf_counter() - t:.2f} s")
    print(f"(2 CPU cores shared with other jobs, load average {os.getloadavg()[0]:.1f}: wall-clock timings are "
          "pessimistic; the CPU columns are not affected by the load)")


if __name__ == "__main__":
    main()
