"""Time credit.pure_advantages on a PURE-sized rollout buffer: 64 prompts x 4 samples = 256 responses, up to 2,048
response tokens, a step every ~40 tokens. Target: < 50 ms on the CPU. Run from the repo root:
    .venv/bin/python bench/bench_credit.py
Timings on a shared machine are pessimistic (other jobs compete for the cores)."""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from credit import pure_advantages  # noqa: E402

B, T, N_SAMPLES, TARGET_MS = 256, 2048, 4, 50.0


def make_buffer(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(256, T + 1, (B,), generator=g).clamp(max=T)  # [B]
    lengths[torch.rand(B, generator=g) < 0.25] = T  # a quarter truncated at 2,048 tokens
    act = torch.arange(T) < lengths[:, None]  # [B, T]
    ends = (torch.rand(B, T, generator=g) < 1 / 40) & act  # [B, T] separators
    ends[torch.arange(B), lengths - 1] = True  # the final step ends on the EOS token
    p = (torch.rand(B, T, generator=g) * 1.98 - 0.99).masked_fill(~ends, 0).to(dtype)  # [B, T]
    logratio = (0.05 * torch.randn(B, T, generator=g)).masked_fill(~act, 0).to(dtype)  # [B, T]
    solved = (torch.rand(B, generator=g) < 0.5).to(dtype)  # [B]
    has_gold = (torch.rand(B // N_SAMPLES, generator=g) < 0.1).repeat_interleave(N_SAMPLES)  # [B] ~10% answered
    return p, ends, act, solved, has_gold, logratio


def time_ms(fn, repeats=21, warmup=3):
    """(median wall ms, min wall ms, median CPU ms of this process: less disturbed by other users' jobs)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), min(wall), statistics.median(cpu)


if __name__ == "__main__":
    print(f"buffer {B} x {T}, groups of {N_SAMPLES}, torch {torch.__version__}; the machine is shared, so these "
          f"figures are pessimistic (min = least disturbed run)")
    print(f"{'threads':>7} {'input':<8} {'flags':<32} {'median ms':>9} {'min ms':>7} {'cpu ms':>7}  "
          f"target < {TARGET_MS:.0f} ms (median)")
    for threads in dict.fromkeys([torch.get_num_threads(), 1]):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.float64):
            buf = make_buffer(dtype)
            for flags in ({}, {"credit": "strict-min"}, {"baseline": "step", "credit": "sum"}):
                med, best, cpu = time_ms(lambda: pure_advantages(*buf, N_SAMPLES, **flags))
                name = " ".join(f"{k}={v}" for k, v in flags.items()) or "headline (min, token, PRMVR)"
                ok = "ok" if med < TARGET_MS else "over"
                print(f"{threads:>7} {str(dtype)[6:]:<8} {name:<32} {med:>9.1f} {best:>7.1f} {cpu:>7.1f}  {ok}")
