"""The stepwise-math world's statistics and report: what run_cpu.sh part A's runs show, with intervals over seeds.

    python toy_report.py --out runs/cpu [--docs docs]     # after run_cpu.sh part A (it runs this last)

Reads, under --out: run_info.json (command, machine, date, seconds, steps), and for each world draw W:
world-W/prm2/eval.json (the PRM's held-out step metrics), world-W/rl/<arm>-seed<k>/metrics.jsonl (a step-0 row of
greedy evals before any update, then one row per RL step; eval/... on the validation set val.jsonl, eval/test/... on
the test set test.jsonl) and rollouts/step-<N>.jsonl. Writes report.md, curves.png and summary.json under --out (and
world_report.md, world_curves.png under --docs). The same runs give byte-identical files: no clock is read here.

Per run: final = test accuracy at the last step; best = test accuracy at the step of highest validation accuracy
(step 0 included, ties -> the earliest), best_step = that step. Per arm: mean and 95% interval over seeds, Student t
(mean +- t_{0.975, n-1} s / sqrt(n)). Differences between arms are paired by seed (a seed fixes the prompt order and
the sampling seeds). A sentence states an effect only when its interval excludes 0 (a ratio: 1).
"""
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common import InputError, atomic_write, read_jsonl
from prm_train import auc  # the PRM's step AUC, as prm_train.py measures it held-out
from rewards import split_text_steps
from toy_math import label_steps, parse_question

ARMS = {"vr": "VR only", "prm_min": "PRM min-form", "prm_sum": "PRM sum-form", "prmvr_min": "PRM+VR min-form",
        "oracle_min": "oracle min-form", "oracle_sum": "oracle sum-form", "prime": "PRIME", "base": "the base policy"}
PRM_ARMS = ("prm_min", "prm_sum", "prmvr_min")  # the learned PRM's scores: its AUC on the policy's own rollouts
LABELLED = ("vr", "prmvr_min", "prime")  # the arms whose rewards read gold answers (the others' golds only log)
PAIRS = [("prm_min", "prm_sum"), ("prm_min", "base"), ("prmvr_min", "prm_min"), ("oracle_min", "prm_min"),
         ("prm_sum", "oracle_sum"), ("vr", "prm_min"), ("oracle_min", "base"), ("oracle_sum", "base")]
RATIOS = ["prm_sum", "oracle_sum", "prm_min"]  # steps per response against the base's, per seed


@dataclass
class Args:
    """Collect run_cpu.sh part A's runs under --out into report.md, curves.png and summary.json."""

    out: Path = Path("runs/cpu")
    """the run_cpu.sh output folder (run_info.json, world-<seed>/)"""
    docs: Path | None = None
    """also write world_report.md and world_curves.png here (the README links them)"""


# ---------------------------------------------------------------------------------------------------- statistics
def t_two_sided(t, df):
    """P(|T| < t) for Student's T with integer df >= 1, exact: Abramowitz & Stegun 26.7.3 (df odd) and 26.7.4
    (df even), theta = atan(t / sqrt(df)), series in cos^2(theta)."""
    th = math.atan(t / math.sqrt(df))
    c2 = math.cos(th) ** 2
    k, term, total = (1, math.cos(th), 0.0) if df % 2 else (0, 1.0, 0.0)
    while k <= df - 2:
        total += term
        term *= (k + 1) / (k + 2) * c2
        k += 2
    return 2 / math.pi * (th + math.sin(th) * total) if df % 2 else math.sin(th) * total


def t_quantile(p, df):
    """t with P(T < t) = p (p > 0.5) for Student's T with integer df: bisection on t_two_sided."""
    lo, hi = 0.0, 1e4
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided(mid, df) < 2 * p - 1 else (lo, mid)
    return (lo + hi) / 2


def mean_ci(xs):
    """{"mean", "ci95": [lo, hi], "n"} over seeds: mean +- t_{0.975, n-1} s / sqrt(n), s the sample standard
    deviation (n - 1); one value has no interval ([None, None])."""
    n, m = len(xs), sum(xs) / len(xs)
    if n < 2:
        return {"mean": m, "ci95": [None, None], "n": n}
    half = t_quantile(0.975, n - 1) * math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)
    return {"mean": m, "ci95": [m - half, m + half], "n": n}


# ---------------------------------------------------------------------------------------------------- one run
def find_runs(out):
    """{world seed: {arm: {seed: run folder}}} of out/world-<W>/rl/<arm>-seed<k>/metrics.jsonl, known arms only."""
    worlds = {}
    for d in sorted(Path(out).glob("world-*/rl/*-seed*/metrics.jsonl")):
        arm, seed = d.parent.name.rsplit("-seed", 1)
        world = d.parents[2].name.removeprefix("world-")
        if arm in ARMS and seed.isdigit() and world.isdigit():
            worlds.setdefault(int(world), {}).setdefault(arm, {})[int(seed)] = d.parent
    if not worlds:
        raise InputError(out, None, None, "no runs (world-<W>/rl/<arm>-seed<k>/metrics.jsonl)")
    return {w: {a: dict(sorted(s.items())) for a, s in sorted(arms.items(), key=lambda x: list(ARMS).index(x[0]))}
            for w, arms in sorted(worlds.items())}


def run_stats(rows, path):
    """One run's numbers from its metrics.jsonl rows: base (its step-0 test accuracy and steps), final, best,
    best_step, steps_per_response (the test set's at the last step), last_step."""
    evals = [r for r in rows if r.get("eval/accuracy") is not None and r.get("eval/test/accuracy") is not None]
    if not evals or evals[0]["step"] != 0:
        raise InputError(path, None, "eval/test/accuracy", "no step-0 validation and test evaluation (ppo.py "
                         "--eval-prompts VAL.jsonl TEST.jsonl --eval-every N)")
    last = max(r["step"] for r in rows)
    if evals[-1]["step"] != last:
        raise InputError(path, None, "eval/test/accuracy", f"the last step ({last}) holds no evaluation")
    best = max(evals, key=lambda r: (r["eval/accuracy"], -r["step"]))
    return {"final": evals[-1]["eval/test/accuracy"], "best": best["eval/test/accuracy"], "best_step": best["step"],
            "steps_per_response": evals[-1]["eval/test/steps_per_response"], "last_step": last,
            "base": evals[0]["eval/test/accuracy"], "base_steps_per_response": evals[0]["eval/test/steps_per_response"]}


def rollouts(run_dir, step):
    return [r for _, r in read_jsonl(Path(run_dir) / "rollouts" / f"step-{step}.jsonl")]


def budget(rows, run_dir, arm):
    """Prompts drawn (sum of filter/drawn) and outcome labels used: the samples whose gold answer the reward read
    (every drawn prompt's n samples x the share with a gold; none for the arms without VR)."""
    steps = [r for r in rows if "filter/drawn" in r]
    first = rollouts(run_dir, steps[0]["step"]) if steps else []
    n = len(first) / max(len({r["prompt_id"] for r in first}), 1)  # samples per prompt
    drawn = sum(r["filter/drawn"] for r in steps)
    labels = sum(round(r["filter/drawn"] * n * r["answered_frac"]) for r in steps) if arm in LABELLED else 0
    return {"prompts_drawn": drawn, "outcome_labels": labels}


def rollout_auc(seeds):
    """The PRM's step AUC against the program's labels on each step's own rollouts, per seed -> {"seeds": {seed:
    {step: auc}}, "skipped": responses whose text steps and scored steps differ in number, "scored": responses}."""
    out = {"seeds": {}, "skipped": 0, "scored": 0}
    for seed, d in seeds.items():
        out["seeds"][seed] = {}
        for step in sorted(int(f.stem.removeprefix("step-")) for f in (d / "rollouts").glob("step-*.jsonl")):
            pairs = []
            for r in (r for r in rollouts(d, step) if r.get("prm_scores")):
                texts = split_text_steps(r["response"])
                out["scored"], out["skipped"] = out["scored"] + 1, out["skipped"] + (len(texts) != len(r["prm_scores"]))
                if len(texts) == len(r["prm_scores"]):
                    pairs += zip(r["prm_scores"], label_steps(parse_question(r["prompt"].split("\n")[0]), texts))
            out["seeds"][seed][step] = auc([x for x, _ in pairs], [y for _, y in pairs])
    return out


# ---------------------------------------------------------------------------------------------------- one world
def arm_summary(arm, seeds):
    """summary.json's arms.<arm> (plus the budget and the runs' step-0 bases) from {seed: run folder}."""
    runs = []
    for seed, d in seeds.items():
        rows = [r for _, r in read_jsonl(d / "metrics.jsonl")]
        runs.append({"seed": seed, **run_stats(rows, d / "metrics.jsonl"), **budget(rows, d, arm)})
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    return {"seeds": runs, "final": mean_ci([r["final"] for r in runs]), "best": mean_ci([r["best"] for r in runs]),
            "steps_per_response": mean("steps_per_response"), "prompts_drawn": mean("prompts_drawn"),
            "outcome_labels": mean("outcome_labels")}


def paired(arms, a, b, key):
    """a - b of `key` per common seed (b = "base": each run's own step-0 test accuracy) -> mean_ci, or None."""
    if a not in arms or (b != "base" and b not in arms):
        return None
    ys = {r["seed"]: r[key] for r in arms[b]["seeds"]} if b != "base" else {}
    d = [r[key] - (r["base"] if b == "base" else ys[r["seed"]]) for r in arms[a]["seeds"] if b == "base" or
         r["seed"] in ys]
    return mean_ci(d) if d else None


def world_summary(world_dir, arms):
    """summary.json's worlds.<W>: base, prm, arms; plus paired differences, step ratios and the PRM's AUC on the
    PRM arms' own rollouts."""
    path = world_dir / "prm2" / "eval.json"
    if not path.is_file():
        raise InputError(path, None, None, "no such file (prm_train.py --eval-only --eval-data ...)")
    prm = json.loads(path.read_text())["steps"]
    s = {"prm": {k: prm[k] for k in ("auc", "log_loss", "log_loss_constant", "n_steps")},
         "arms": {arm: arm_summary(arm, seeds) for arm, seeds in arms.items()}}
    runs = [r for a in s["arms"].values() for r in a["seeds"]]
    bases = [r["base"] for r in runs]
    s["base"] = {"accuracy": sum(bases) / len(bases),
                 "steps_per_response": sum(r["base_steps_per_response"] for r in runs) / len(runs),
                 "identical": max(bases) - min(bases) < 1e-12, "range": [min(bases), max(bases)], "runs": len(runs)}
    s["differences"] = {f"{a} - {b}": {k: paired(s["arms"], a, b, k) for k in ("best", "final")}
                        for a, b in PAIRS if paired(s["arms"], a, b, "best")}
    s["steps_ratio"] = {f"{a} / base": mean_ci([r["steps_per_response"] / r["base_steps_per_response"]
                                                for r in s["arms"][a]["seeds"]]) for a in RATIOS if a in s["arms"]}
    s["rollout_auc"] = {arm: rollout_auc(arms[arm]) for arm in PRM_ARMS if arm in arms}
    return s


def summarize(out):
    """summary.json: {"steps", "seconds", "worlds": {W: world_summary}} plus run_info.json's command/machine/date."""
    path = Path(out) / "run_info.json"
    if not path.is_file():
        raise InputError(path, None, None, "no such file (run_cpu.sh writes it after the runs)")
    info = json.loads(path.read_text())
    if missing := [k for k in ("command", "machine", "date", "seconds", "steps") if k not in info]:
        raise InputError(path, None, missing[0], "missing")
    worlds = find_runs(out)
    return {"steps": info["steps"], "seconds": info["seconds"], **{k: info[k] for k in ("command", "machine", "date")},
            "worlds": {str(w): world_summary(Path(out) / f"world-{w}", arms) for w, arms in worlds.items()}}


# ---------------------------------------------------------------------------------------------------- text
def pct(x):
    return f"{100 * x:.1f}%"


def with_ci(d, fmt=pct):
    lo, hi = d["ci95"]
    return f"{fmt(d['mean'])} [{fmt(lo)}, {fmt(hi)}]" if lo is not None else f"{fmt(d['mean'])} [one seed]"


def verdict(d, null=0.0):
    """"higher" / "lower" when the 95% interval lies above / below `null`, else "not shown"."""
    lo, hi = d["ci95"]
    return "not shown" if lo is None or lo <= null <= hi else "higher" if lo > null else "lower"


def effect(key, d, metric=""):
    """One sentence on a paired difference "a - b" (points of `metric` test accuracy) or a steps ratio "a / base":
    it states an effect only when the 95% interval excludes 0 (a ratio: 1), else "not shown at this budget"."""
    ratio = " / " in key
    a, b = key.split(" / " if ratio else " - ")
    v, (lo, hi), m = verdict(d, 1.0 if ratio else 0.0), d["ci95"], d["mean"]
    fmt = (lambda x: f"{x:.2f}x") if ratio else (lambda x: f"{100 * x:+.1f} points")  # noqa: E731
    ci = (f"95% CI {fmt(lo).split()[0]} to {fmt(hi)}" if lo is not None else "one seed, no interval") + \
        f", {d['n']} seeds"
    if v == "not shown":
        text = (f"steps per response of {ARMS[a]}, last step over step 0" if ratio else
                f"{metric} test accuracy, {ARMS[a]} against {ARMS[b]}") + \
            f": {fmt(m)} ({ci}); {'a change' if ratio else 'a difference'} is not shown at this budget."
    elif ratio:
        text = (f"{ARMS[a]} writes {'more' if v == 'higher' else 'fewer'} steps per response at its last step than "
                f"at step 0: {fmt(m)} ({ci}).")
    else:
        text = (f"{metric} test accuracy: {ARMS[a]} is {'above' if v == 'higher' else 'below'} {ARMS[b]} by "
                f"{abs(100 * m):.1f} points ({ci}, paired).")
    return text[0].upper() + text[1:]


def sentence(w, key):
    """The sentence(s) on a difference (best, then final) or a ratio key of world summary w; None if not run."""
    if key in w["steps_ratio"]:
        return effect(key, w["steps_ratio"][key])
    return " ".join(effect(key, w["differences"][key][m], m) for m in ("best", "final")) \
        if key in w["differences"] else None


GROUPS = [("Credit form, with the learned PRM", ["prm_min - prm_sum", "prm_min - base", "prm_sum / base",
                                                 "prm_min / base"]),
          ("Outcome labels", ["prmvr_min - prm_min", "vr - prm_min"]),
          ("The oracle control: the program's step labels (+-0.9) as the step scorer",
           ["oracle_min - base", "oracle_sum - base", "oracle_sum / base", "oracle_min - prm_min",
            "prm_sum - oracle_sum"])]


def oracle_reading(w):
    """What the oracle control says of sum-form's padding, from the two steps ratios' intervals (or nothing)."""
    r = w["steps_ratio"]
    if "oracle_sum / base" not in r or "prm_sum / base" not in r or verdict(r["prm_sum / base"], 1.0) != "higher":
        return []
    if verdict(r["oracle_sum / base"], 1.0) == "higher":
        return ["Sum-form pads with the program's labels too: at this budget summation pads even with exact scores."]
    return ["Sum-form pads with the learned PRM, and padding is not shown with the program's labels: at this budget "
            "padding is shown only where the step scores carry the PRM's errors."]


def arm_table(w, steps):
    """The world's table, one row per arm (the base first), with its label and prompt budget."""
    b = w["base"]
    lines = ["| arm | seeds | best [95% CI] | final [95% CI] | best step per seed | steps / response | prompts drawn "
             "| outcome labels used |", "|---|---:|---|---|---|---:|---:|---:|",
             f"| base policy | - | {pct(b['accuracy'])} | {pct(b['accuracy'])} | 0 | {b['steps_per_response']:.2f} | 0 "
             "| 0 |"]
    lines += [f"| {ARMS[arm]} | {len(a['seeds'])} | {with_ci(a['best'])} | {with_ci(a['final'])} | "
              f"{', '.join(str(r['best_step']) for r in a['seeds'])} | {a['steps_per_response']:.2f} | "
              f"{a['prompts_drawn']:.0f} | {a['outcome_labels']:.0f} |" for arm, a in w["arms"].items()]
    lines += ["", "Steps per response: greedy, on the test problems, at the last step. Prompts drawn and outcome "
              "labels used: per run, mean over seeds; an outcome label is a sample whose gold answer its reward read."]
    short = [r for a in w["arms"].values() for r in a["seeds"] if r["last_step"] != steps]
    lines += [f"{len(short)} run(s) ended before step {steps}: their final is their last step's."] if short else []
    if "prime" in w["arms"]:
        p, most = w["arms"]["prime"], max([a["prompts_drawn"] for k, a in w["arms"].items() if k != "prime"] or [0])
        lines.append(f"PRIME's budget is not the others': its accuracy filter drew {p['prompts_drawn']:.0f} prompts "
                     f"over {steps} steps (the other arms at most {most:.0f}), and its reward read "
                     f"{p['outcome_labels']:.0f} gold answers, one per sample it graded.")
    return lines


def differences_table(w):
    points = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    return ["| paired by seed | best [95% CI] | final [95% CI] | seeds |", "|---|---|---|---:|",
            *[f"| {k} | {with_ci(d['best'], points)} | {with_ci(d['final'], points)} | {d['best']['n']} |"
              for k, d in w["differences"].items()],
            *[f"| {k}: steps per response | {with_ci(d, lambda x: f'{x:.2f}x')} | | {d['n']} |"
              for k, d in w["steps_ratio"].items()],
            "", "Differences: points of test accuracy, a - b (b = base: each run's own step 0). Ratios: an arm's "
            "steps per response at its last step over its step 0's. A t interval of accuracies may pass 0 or 100%."]


def world_section(ws, w, steps, runs):
    b, prm = w["base"], w["prm"]
    same = (f"the same in all {b['runs']} runs" if b["identical"] else f"NOT the same in its {b['runs']} runs: "
            f"{pct(b['range'][0])} to {pct(b['range'][1])}, their mean is used")
    lines = [f"## World {ws}", "", f"Base policy at step 0 (before any update): {pct(b['accuracy'])} test accuracy, "
             f"{b['steps_per_response']:.2f} steps per response; {same}. PRM (prm_train.py, both stages) on held-out "
             f"samples of the base policy: step AUC {prm['auc']:.3f}, log loss {prm['log_loss']:.3f} against "
             f"{prm['log_loss_constant']:.3f} for the best constant, {prm['n_steps']} steps.", "",
             *arm_table(w, steps), "", *differences_table(w), ""]
    for title, keys in GROUPS:
        said = [x for x in (sentence(w, k) for k in keys) if x] + (oracle_reading(w) if "oracle" in title else [])
        lines += [f"**{title}.**", "", *[f"- {x}" for x in said], ""] if said else []
    if w["rollout_auc"]:
        lines += ["**The PRM on the policy's own rollouts** (step AUC against the program's labels, mean over "
                  "seeds; responses whose text steps and scored steps differ in number are left out).", ""]
    for arm, r in w["rollout_auc"].items():
        last = max(max(a, default=1) for a in r["seeds"].values())
        at = [[a[t] for a in r["seeds"].values() if a.get(t) is not None] for t in (1, last)]
        first, end = (f"{sum(x) / len(x):.3f}" if x else "n/a" for x in at)
        lines.append(f"- {ARMS[arm]}: {first} at step 1, {end} at step {last} ({r['skipped']} of {r['scored']} "
                     "responses left out).")
    return lines + ["", *sample_lines(runs, w)]


def sample_lines(runs, w):
    """The first 2 rollouts of the lowest seed at step 1 and at its last step, for prm_min and prm_sum."""
    lines = []
    for arm in (a for a in ("prm_min", "prm_sum") if a in runs):
        seed, d = next(iter(runs[arm].items()))
        for step in sorted({1, w["arms"][arm]["seeds"][0]["last_step"]}):
            if (d / "rollouts" / f"step-{step}.jsonl").is_file():
                lines += [f"{ARMS[arm]}, seed {seed}, step {step}:", "",
                          *[f"```\n{r['response']}\n```" for r in rollouts(d, step)[:2]], ""]
    return ["**Sample responses** (the first 2 rollouts of a step).", "", *lines] if lines else []


def across_worlds(summary):
    """Whether each effect holds on every world drawn: a table of verdicts and the sentences it supports."""
    worlds = list(summary["worlds"].values())
    cell = lambda w, k: (verdict(w["steps_ratio"][k], 1.0) if k in w["steps_ratio"] else  # noqa: E731
                         verdict(w["differences"][k]["best"]) if k in w["differences"] else "not run")
    rows = {k: [cell(w, k) for w in worlds] for _, keys in GROUPS for k in keys}
    rows = {k: v for k, v in rows.items() if set(v) != {"not run"}}
    lines = ["## Across the world draws", "", "| effect (best test accuracy; steps ratio) | " +
             " | ".join(f"world {w}" for w in summary["worlds"]) + " |", "|---|" + "---|" * len(worlds),
             *[f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items()], ""]
    if len(worlds) == 1:
        return lines + [f"One world was drawn ({next(iter(summary['worlds']))}): whether these effects hold on other "
                        "draws is not tested here (`WORLDS=2 bash run_cpu.sh`)."]
    held = [k for k, v in rows.items() if len(set(v)) == 1 and v[0] in ("higher", "lower")]
    mixed = [k for k, v in rows.items() if "not run" not in v and set(v) & {"higher", "lower"} and k not in held]
    some = [k for k, v in rows.items() if "not run" in v]
    return lines + [" ".join([f"Shown in the same direction on every world drawn: {', '.join(held)}." if held else
                              "No effect is shown in the same direction on every world drawn.",
                              f"Not on every world drawn (not shown on some, or opposite): {', '.join(mixed)}."
                              if mixed else "", f"Run on some draws only: {', '.join(some)}." if some else ""]
                             ).strip()]


def report_text(summary, runs, png):
    s = summary
    lines = [f"# PURE's claim in the stepwise-math world: {s['steps']} RL steps, {len(s['worlds'])} world draw(s)", "",
             f"Machine: {s['machine']}. Date: {s['date']}. Command: `{s['command']}`. Wall time: "
             f"{s['seconds'] / 60:.1f} minutes. RL steps per run: {s['steps']}, fixed before the runs.", "",
             "Accuracy: greedy, on each world's held-out test problems (test.jsonl). Each run's step is chosen on "
             "validation problems (val.jsonl): best = test accuracy at the step of highest validation accuracy (step "
             "0 included, ties -> the earliest); final = test accuracy at the last step. Intervals: 95%, Student t "
             "over seeds, its quantile computed exactly for integer degrees of freedom (Abramowitz & Stegun "
             "26.7.3-4); differences are paired by seed (a seed fixes the prompt order and the sampling seeds). A "
             "sentence states an effect only when its interval excludes 0 (for a ratio, 1).", "", f"![curves]({png})",
             ""]
    for ws, w in s["worlds"].items():
        lines += world_section(ws, w, s["steps"], runs[int(ws)])
    return "\n".join(lines + across_worlds(s)) + "\n"


# ---------------------------------------------------------------------------------------------------- curves
PANELS = [("eval/accuracy", "validation accuracy (greedy)"), ("eval/test/accuracy", "test accuracy (greedy)"),
          ("eval/test/steps_per_response", "steps per response (greedy, test)"),
          ("reward/process", "process reward (sampled)"), ("auc", "PRM step AUC on own rollouts")]


def series(w, seeds, arm, key):
    """{seed: [(step, value)]} of one arm in one panel."""
    if key == "auc":
        return {k: sorted((t, v) for t, v in a.items() if v is not None)
                for k, a in w["rollout_auc"].get(arm, {}).get("seeds", {}).items()}
    return {k: [(r["step"], r[key]) for _, r in read_jsonl(d / "metrics.jsonl") if r.get(key) is not None]
            for k, d in seeds.items()}


def plot_curves(summary, runs, png):
    """A row per world, a panel per PANELS key against RL step: a line per arm (mean over seeds at the steps all its
    seeds have), each seed faint. Saved without metadata: the same runs give the same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), len(PANELS), figsize=(4 * len(PANELS), 3.2 * len(runs)), squeeze=False)
    for row, (ws, arms) in zip(axes, runs.items()):
        for ax, (key, title) in zip(row, PANELS):
            for arm, seeds in arms.items():
                color = f"C{list(ARMS).index(arm)}"
                per_seed = {k: p for k, p in series(summary["worlds"][str(ws)], seeds, arm, key).items() if p}
                for p in per_seed.values():
                    ax.plot(*zip(*p), color=color, alpha=0.25, lw=0.8)
                steps = sorted(set.intersection(*(set(dict(p)) for p in per_seed.values()))) if per_seed else []
                if steps:
                    ax.plot(steps, [sum(dict(p)[t] for p in per_seed.values()) / len(per_seed) for t in steps],
                            color=color, lw=1.8, label=ARMS[arm])
            ax.set(title=f"world {ws}: {title}", xlabel="RL step")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    tmp = Path(png).with_name(f".{Path(png).name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, png)


def main(args):
    summary, runs = summarize(args.out), find_runs(args.out)
    atomic_write(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    for folder, prefix in [(args.out, "")] + ([(args.docs, "world_")] if args.docs else []):
        plot_curves(summary, runs, folder / f"{prefix}curves.png")
        atomic_write(folder / f"{prefix}report.md", report_text(summary, runs, f"{prefix}curves.png"))
    print(f"report -> {args.out / 'report.md'}, curves.png, summary.json" + (f"; {args.docs}" if args.docs else ""))


if __name__ == "__main__":
    import tyro

    try:
        main(tyro.cli(Args))
    except InputError as e:
        sys.exit(f"error: {e}")
