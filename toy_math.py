"""A stepwise-math world small enough to show PURE's claim on a laptop CPU in minutes: PURE's CartPole.

    python toy_math.py world --out runs/cpu/world        # problems, a tokenizer, a base policy, PRM data
    python toy_math.py report --out runs/cpu             # after the PRM and RL runs (run_cpu.sh does all of it)

The paper's claim is a mechanism: with sum-form credit a policy can raise its return by writing more steps that the
PRM likes, whether or not they make progress, until training collapses; with min-form credit the return is bounded
by the worst step, so the only way up is to stop making bad steps. To see it, a world needs three things, and each
design choice below follows from one of them.

1. Steps a program can check. A problem is a chain of 2-4 additions and subtractions of one-digit numbers,
   "Compute 23 + 5 - 9.", every running value in [10, 29]: always two digits, so a wrong step has the same shape
   as a right one, and few enough facts for a tiny model to learn them all. A solution does one operation per
   step, "23 + 5 = 28", then "The answer is \\boxed{19}.", steps separated by "\\n\\n" as PURE's prompt asks.
   Each step is right or wrong by arithmetic (label_steps), and every problem has a gold answer.
2. A base policy that is wrong in a way RL can fix and a PRM can see. The base policy imitates a student with one
   habit: on a step that crosses a ten (a carry or a borrow) the student forgets it 60% of the time (17 + 8 = 15,
   28 - 9 = 29: off by ten), then goes on correctly from the wrong value. A model fit to this student puts 0.6 on
   the slip at a carry step, so greedy decoding slips on most carry steps and is right on the problems without
   one. An operation crosses a ten with probability 0.25, so with 2-4 operations about 43% of problems have no
   carry: a base accuracy with room both ways. The right carry keeps 0.4 of the mass, so sampling finds it and RL
   can move it past 0.5. The slip is local and visible (the step's own arithmetic is wrong), and the policy's own
   features already hold the right sum (it writes it 40% of the time), so a PRM built on the policy can learn to
   see it: the generator-verifier gap RL with a PRM needs, a habit the model can be talked out of, not knowledge
   it lacks.
3. Steps that are true but add nothing. After any step the student writes "Check: 28 = 28" with probability 0.3,
   and after a check another one with the same probability (so the number of checks is unbounded). A check
   restating the right value is a good step, so a PRM scores it high: the affordance a sum-form return rewards.
   Responses are capped at 128 tokens: a policy that checks without end runs out of room before its answer.
The PRM is trained through prm_train.py, both stages, on the base policy's own samples (temperature 1: its whole
distribution, every habit in it) plus as many solutions with one error of each kind RL can drift into
(corrupted_solution), labelled by the program and cut after the first wrong step (PRM800K's labellers stop at the
first error). RL samples at PURE's temperature 0.5. Labels follow the true solution: a step is good iff it
performs the problem's next operation on the true running value and states the true result (a check: restates
the true value; the answer: boxes the true answer after the last operation), so a
step after an earlier error is wrong too. Tokens: a byte-level BPE trained on the world's text, digits one token
each, Qwen2's split pattern ("\\n\\n" one token; the GPT-2-style split, "\\n\\n" as two tokens, is run_cpu.sh's
SmolLM2 part).
"""
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import InputError, atomic_write, log_libraries_to, plot_metrics, read_jsonl, write_jsonl
from rewards import STEP_RUN
from rollout import format_prompt

MIN_VALUE, MAX_VALUE = 10, 29  # every running value has two digits: a carry never changes the shape of a step
P_CARRY = 0.25  # probability that an operation of a generated problem crosses a ten
P_SLIP = 0.6  # the student's habit: probability of forgetting a carry/borrow (result off by ten)
P_CHECK = 0.3  # probability of a "Check: v = v" step after any step (repeatable)
STEP = re.compile(r"^(\d+) ([+-]) (\d+) = (\d+)$")
CHECK = re.compile(r"^Check: (\d+) = (\d+)$")
ANSWER = re.compile(r"^The answer is \\boxed\{(\d+)\}\.$")


# ---------------------------------------------------------------------------------------------------- the world
def make_problem(rng):
    """(start, [(sign, b), ...]): 2-4 operations of one-digit b, each crossing a ten with probability P_CARRY."""
    start, ops = rng.randint(MIN_VALUE, MAX_VALUE), []
    v = start
    for _ in range(rng.randint(2, 4)):
        cross = rng.random() < P_CARRY
        choices = [(s, b) for s in "+-" for b in range(1, 10)
                   if MIN_VALUE <= apply(v, s, b) <= MAX_VALUE and crosses(v, s, b) == cross]
        s, b = rng.choice(choices or [(s, b) for s in "+-" for b in range(1, 10)
                                      if MIN_VALUE <= apply(v, s, b) <= MAX_VALUE])
        ops.append((s, b))
        v = apply(v, s, b)
    return start, ops


def apply(v, sign, b):
    return v + b if sign == "+" else v - b


def crosses(v, sign, b):
    """Whether v +/- b carries or borrows (changes the tens digit)."""
    return apply(v, sign, b) // 10 != v // 10


def question(problem):
    start, ops = problem
    return "Compute " + " ".join([str(start)] + [f"{s} {b}" for s, b in ops]) + "."


def answer(problem):
    v = problem[0]
    for s, b in problem[1]:
        v = apply(v, s, b)
    return v


def student_solution(problem, rng, p_slip=P_SLIP, p_check=P_CHECK):
    """The steps the student writes: one per operation (a carry forgotten with probability p_slip, then carried
    on from the wrong value), each step followed by "Check" steps while rng.random() < p_check, then the answer."""
    v, steps = problem[0], []
    for s, b in problem[1]:
        r = apply(v, s, b)
        if crosses(v, s, b) and rng.random() < p_slip:
            r = r - 10 if s == "+" else r + 10  # forgot the carry / the borrow: the tens digit stays
        steps.append(f"{v} {s} {b} = {r}")
        v = r
        while rng.random() < p_check:
            steps.append(f"Check: {v} = {v}")
    return steps + [f"The answer is \\boxed{{{v}}}."]


ERRORS = ("off", "ten", "operand", "operator", "skip", "early", "check")


def corrupted_solution(problem, rng, kind=None):
    """A solution with one error of a kind a policy under RL can drift into, at a random operation: a result off by
    1, 2 or 10 ("off"), a tens digit moved where no carry is or kept where one is ("ten": the student's slip and
    its mirror), a wrong operand (any other digit) or operator, an operation skipped, the answer given early, a
    check of a wrong value. The steps before it are right (with the student's checks); what follows is
    what a solver would write from there (prm_example cuts it after the first bad step anyway)."""
    kind, v, steps = kind or rng.choice(ERRORS), problem[0], []
    k = rng.randrange(len(problem[1]))
    for i, (s, b) in enumerate(problem[1]):
        r = apply(v, s, b)
        if i == k:
            if kind == "skip":
                continue
            if kind == "early":
                break
            if kind == "check":
                steps.append(f"Check: {v + 1} = {v + 1}")
            elif kind == "operand":
                b = rng.choice([x for x in range(1, 10) if x != b])
            elif kind == "operator":
                s = "-" if s == "+" else "+"
            r = apply(v, s, b) + (rng.choice([-10, -2, -1, 1, 2, 10]) if kind == "off" else 0)
            if kind == "ten":  # the tens digit moved where none should: what a policy learning to carry overdoes
                r = r + 10 if r // 10 == v // 10 else r - 10 if s == "+" else r + 10
        steps.append(f"{v} {s} {b} = {r}")
        v = r
        while rng.random() < P_CHECK:
            steps.append(f"Check: {v} = {v}")
    return steps + [f"The answer is \\boxed{{{v}}}."]


def label_steps(problem, steps):
    """Program labels (True = good) of a solution's steps against the true solution (module docstring, rule 1):
    a step is good iff it performs the next operation on the true value with the true result; a check iff it
    restates the true value; the answer iff it comes after the last operation and boxes the true answer.
    Anything else (a wrong result, a step after an error, a malformed or extra step) is bad."""
    start, ops = problem
    v, i, labels = start, 0, []
    for text in steps:
        text = text.strip()
        m, c, a = STEP.match(text), CHECK.match(text), ANSWER.match(text)
        if m and i < len(ops):
            good = (int(m[1]), m[2], int(m[3])) == (v, *ops[i]) and int(m[4]) == apply(v, *ops[i])
            v, i = apply(v, *ops[i]), i + 1  # the true state moves on: later steps are judged against it
        elif c:
            good = int(c[1]) == int(c[2]) == v
        elif a:
            good = i == len(ops) and int(a[1]) == v
        else:
            good = False
        labels.append(good)
    return labels


def split_text_steps(response):
    """A response's steps as text (PURE's separator: a run of two or more newlines; empty pieces dropped)."""
    return [s for s in STEP_RUN.split(response) if s.strip()]


def prm_example(problem, steps):
    """TRL stepwise row cut after the first bad step (PRM800K's labellers stop at the first error)."""
    labels = label_steps(problem, steps)
    cut = labels.index(False) + 1 if False in labels else len(labels)
    return {"prompt": format_prompt(question(problem)), "completions": steps[:cut], "labels": labels[:cut]}


# ---------------------------------------------------------------------------------------------------- tokenizer, policy
# Qwen2's pre-tokenizer regex: the toy policy is a Qwen2 model, and transformers loads a Qwen2 folder's tokenizer with
# this split whatever it was trained with, so the tokenizer is trained with it too (what it learns is what it sees)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def train_tokenizer(texts, vocab_size=400):
    """Byte-level BPE on the world's text with Qwen2's split (digits one token each, so arithmetic goes digit by
    digit; "\n\n" and ".\n\n" single tokens), eos = pad = <|endoftext|>, no BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def policy_batch(tok, rng, n):
    """n fresh problems solved by the student -> input_ids [n, T] (prompt + solution + EOS, right-padded) and
    labels [n, T] (-100 on the prompt and the padding: the loss is on the solution only)."""
    import torch

    rows = []
    for _ in range(n):
        problem = make_problem(rng)
        prompt = tok.encode(format_prompt(question(problem)), add_special_tokens=False)
        response = tok.encode("\n\n".join(student_solution(problem, rng)), add_special_tokens=False)
        rows.append((prompt, response + [tok.eos_token_id]))
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((n, T), tok.pad_token_id)  # [n, T]
    labels = torch.full((n, T), -100)  # [n, T]
    for i, (p, r) in enumerate(rows):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
    return ids, labels


def train_policy(tok, args, rng):
    """The base policy from scratch: a 2-layer Qwen2 (hidden 128, 2 heads of 64, ~0.47M parameters) fit to the
    student's solutions by next-token cross-entropy, AdamW, linear warm-up then cosine decay. -> (model, losses)."""
    import torch
    from tqdm import tqdm
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(args.seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    warmup, losses = 50, []
    for step in (bar := tqdm(range(args.policy_steps), desc="base policy", unit="step")):
        frac = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.policy_steps))
        for group in opt.param_groups:
            group["lr"] = args.learning_rate * max(frac, 0.05)
        ids, labels = policy_batch(tok, rng, args.batch_size)
        loss = model(input_ids=ids, attention_mask=(labels != -100) | (ids != tok.pad_token_id), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model, losses


# ---------------------------------------------------------------------------------------------------- the world's files
@dataclass
class World:
    """Make the world under --out: base/ (tokenizer + base policy), rl_prompts.jsonl (every prompt with its gold),
    rl_prompts_vr.jsonl (the same prompts, gold kept on --vr-fraction of them as in PURE's 8k file, "null" plus a
    logging-only ref_answer on the rest), test.jsonl (held-out benchmark), prm_train.jsonl and prm_heldout.jsonl
    (the base policy's own samples labelled by the program, TRL stepwise format). A rerun skips what exists."""

    out: Path = Path("runs/cpu/world")
    """output folder"""
    seed: int = 0
    """seed of the problems, the student's habits, the policy's initialisation and its samples"""
    policy_steps: int = 800
    """AdamW steps of the base policy (batches of fresh student solutions)"""
    batch_size: int = 64
    """solutions per base-policy step"""
    learning_rate: float = 3e-3
    """peak base-policy learning rate (50 warm-up steps, cosine decay)"""
    rl_prompts: int = 2000
    """RL prompts"""
    test_problems: int = 300
    """held-out test problems (evaluate.py --benchmarks OUT/test.jsonl)"""
    prm_problems: int = 600
    """problems whose base-policy samples (x4, temperature 1) and 4 solutions with one error each (every kind)
    become PRM training data"""
    prm_heldout_problems: int = 200
    """held-out problems whose base-policy samples (x4) measure the PRM"""
    vr_fraction: float = 0.1
    """share of rl_prompts_vr.jsonl rows that keep their gold (PURE: 879 of 8523)"""


def distinct_problems(rng, n, taken):
    """n problems whose questions are not in `taken` (updated in place): splits never share a problem."""
    out = []
    while len(out) < n:
        p = make_problem(rng)
        if question(p) not in taken:
            taken.add(question(p))
            out.append(p)
    return out


def labelled_samples(model_dir, problem_sets, seed, n=4, max_tokens=128):
    """n samples (temperature 1) of the policy per problem, through rollout.py's vLLM path, for each list of
    problems -> for each, TRL rows labelled by the program and cut after the first bad step (prm_example)."""
    import rollout

    llm = rollout.start_engine(model_dir, seed=seed, dtype="float32", max_model_len=512)
    out = []
    for problems in problem_sets:
        samples = rollout.generate(llm, [format_prompt(question(p)) for p in problems], n=n, temperature=1.0,
                                   max_tokens=max_tokens, seed=seed)
        steps = [(s["prompt_index"], split_text_steps(s["response_text"])) for s in samples]
        out.append([prm_example(problems[i], st) for i, st in steps if st])
    llm.llm_engine.engine_core.shutdown()
    return out


def make_world(args):
    from transformers import AutoTokenizer

    out, rng = Path(args.out), random.Random(args.seed)
    log_libraries_to(out / "library.log")
    taken = set()
    rl, test = distinct_problems(rng, args.rl_prompts, taken), distinct_problems(rng, args.test_problems, taken)
    prm, heldout = (distinct_problems(rng, n, taken) for n in (args.prm_problems, args.prm_heldout_problems))
    vr = set(random.Random(args.seed + 1).sample(range(len(rl)), round(args.vr_fraction * len(rl))))
    write_jsonl(out / "rl_prompts.jsonl", [{"question": question(p), "answer": str(answer(p))} for p in rl])
    write_jsonl(out / "rl_prompts_vr.jsonl", [{"question": question(p), "answer": str(answer(p)) if i in vr else "null",
                                               "ref_answer": str(answer(p))} for i, p in enumerate(rl)])
    write_jsonl(out / "test.jsonl", [{"question": question(p), "answer": str(answer(p))} for p in test])
    base = out / "base"
    if not (base / "config.json").is_file():
        t0 = time.time()
        corpus = [format_prompt(question(p)) + "\n\n".join(student_solution(p, rng))
                  for p in (make_problem(rng) for _ in range(2000))]
        tok = train_tokenizer(corpus)
        model, losses = train_policy(tok, args, rng)
        tmp = out / ".base.tmp"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if AutoTokenizer.from_pretrained(tmp).encode(corpus[0]) != tok.encode(corpus[0]):
            raise RuntimeError("the saved tokenizer splits text differently from the one the policy was trained with")
        write_jsonl(tmp / "losses.jsonl", [{"step": i + 1, "loss": x} for i, x in enumerate(losses)])
        plot_metrics(tmp / "losses.jsonl", out / "base_loss.png", ["loss"])
        tmp.rename(base)
        print(f"base policy: {sum(p.numel() for p in model.parameters()):,} parameters, {len(tok)} tokens, "
              f"final loss {sum(losses[-20:]) / 20:.3f}, {time.time() - t0:.0f} s")
    if not (out / "prm_heldout.jsonl").is_file():
        train_rows, heldout_rows = labelled_samples(base, [prm, heldout], args.seed)
        # + as many solutions with one error of every kind: the policy's own samples hold almost only carry slips,
        # and RL drifts into the errors its PRM never saw (PRM800K's raters rated many generators' mistakes)
        crng = random.Random(args.seed + 2)  # not `rng`: a rerun that finds base/ made draws the same solutions
        train_rows += [prm_example(p, corrupted_solution(p, crng)) for p in prm for _ in range(4)]
        write_jsonl(out / "prm_train.jsonl", train_rows)
        write_jsonl(out / "prm_heldout.jsonl", heldout_rows)
    print(f"world -> {out}: {len(rl)} RL prompts ({len(vr)} with gold in rl_prompts_vr.jsonl), {len(test)} test "
          f"problems, PRM data from the base policy's samples")


# ---------------------------------------------------------------------------------------------------- the report
RUNS = {"min": "PURE-PRM, min-form", "sum": "PURE-PRM, sum-form", "min_vr": "PURE-PRM+VR, min-form",
        "prime": "PRIME (implicit PRM)"}
CURVES = [("reward/process", "process reward"), ("solved", "solved (sampled)"), ("steps_per_response", "steps"),
          ("response_length", "response tokens"), ("kl", "KL")]


@dataclass
class Report:
    """Collect the world's runs under --out (world/, world/prm2/eval.json, world/rl/<run>-seed<k>/,
    world/eval/<name>/) into report.md, curves.png and summary.json there."""

    out: Path = Path("runs/cpu")
    """the run_cpu.sh output folder"""
    started_at: float | None = None
    """epoch seconds when the world part started (summary.json "seconds" = now - this)"""


def eval_stats(eval_dir):
    """Greedy test accuracy (fraction), steps per response and response tokens of one evaluate.py output folder."""
    rows = [r for _, r in read_jsonl(Path(eval_dir) / "test.jsonl")]
    n = len(rows)
    return {"accuracy": sum(r["correct"] for r in rows) / n,
            "steps_per_response": sum(len(split_text_steps(r["response"])) for r in rows) / n,
            "response_length": sum(r["tokens"] for r in rows) / n}


def mean_over(stats, key):
    xs = [s[key] for s in stats]
    return sum(xs) / len(xs)


def read_metrics(run_dir):
    return [r for _, r in read_jsonl(Path(run_dir) / "metrics.jsonl")]


def plot_curves(runs, png):
    """One panel per metric over RL steps, a line per run kind (mean over seeds), each seed faint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for (key, title), ax in zip(CURVES, axes):
        for c, (kind, seeds) in enumerate(runs.items()):
            rows = [read_metrics(d) for d in seeds]
            steps = [r["step"] for r in rows[0]]
            for r in rows:
                ax.plot(steps, [x.get(key) for x in r][:len(steps)], color=f"C{c}", alpha=0.25, lw=0.8)
            mean = [sum(r[i].get(key) or 0 for r in rows) / len(rows) for i in range(min(map(len, rows)))]
            ax.plot(steps[:len(mean)], mean, color=f"C{c}", label=RUNS[kind], lw=1.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def samples(run_dir, step, k=3):
    return [r for _, r in read_jsonl(Path(run_dir) / "rollouts" / f"step-{step}.jsonl")][:k]


def what_it_shows(s):
    """The report's paragraph, written from the numbers (whatever they show)."""
    base, runs, prm = s["base"], s["runs"], s["prm"]
    out = [f"The PRM sees the base policy's errors: held-out step AUC {prm['auc']:.3f}, log loss {prm['log_loss']:.3f} "
           f"against {prm['log_loss_constant']:.3f} for the best constant."]
    if "min" in runs:
        d = runs["min"]["accuracy"] - base["accuracy"]
        out.append(f"Min-form credit {'raised' if d > 0 else 'did not raise'} greedy test accuracy: "
                   f"{base['accuracy']:.1%}"
                   f" -> {runs['min']['accuracy']:.1%} ({d:+.1%}), with {runs['min']['steps_per_response']:.1f} steps "
                   f"per response against the base's {base['steps_per_response']:.1f}.")
    if "sum" in runs:
        r = runs["sum"]["steps_per_response"] / base["steps_per_response"]
        hacked = r >= 1.5 or ("min" in runs and runs["sum"]["accuracy"] <= runs["min"]["accuracy"] - 0.10)
        out.append(f"Sum-form credit, same seeds and budget: {runs['sum']['steps_per_response']:.1f} steps per "
                   "response "
                   f"({r:.2f}x the base), accuracy {runs['sum']['accuracy']:.1%}. "
                   + ("The sum rewards every extra step the PRM likes, and the policy found the one that is free: it "
                      "pads its solutions with checks, the reward hacking min-form removes." if hacked else
                      "Here it was not hacked within this budget: the token baseline charges every extra token the "
                      "average reward per token of the other samples, which can cancel what an extra check earns."))
    for kind in ("min_vr", "prime"):
        if kind in runs:
            out.append(f"{RUNS[kind]}: accuracy {runs[kind]['accuracy']:.1%}, {runs[kind]['steps_per_response']:.1f} "
                       "steps per response.")
    return " ".join(out)


def write_report(args):
    out = Path(args.out)
    world = out / "world"
    runs = {}
    for d in sorted((world / "rl").glob("*-seed*")):
        if (d / "metrics.jsonl").is_file():
            runs.setdefault(d.name.rsplit("-seed", 1)[0], []).append(d)
    runs = {k: runs[k] for k in RUNS if k in runs}
    if not runs:
        raise InputError(world / "rl", None, None, "no finished RL runs (<kind>-seed<k>/metrics.jsonl)")
    base = eval_stats(world / "eval" / "base")
    per_seed = {kind: [eval_stats(world / "eval" / d.name) for d in dirs] for kind, dirs in runs.items()}
    prm = json.loads((world / "prm2" / "eval.json").read_text())["steps"]
    summary = {"base": base, "prm": {k: prm[k] for k in ("auc", "log_loss", "log_loss_constant")},
               "runs": {kind: {**{k: mean_over(st, k) for k in base}, "seeds": st} for kind, st in per_seed.items()},
               "seconds": round(time.time() - args.started_at) if args.started_at else None}
    plot_curves(runs, out / "curves.png")
    lines = ["# PURE's claim on a laptop: min-form vs sum-form credit in a stepwise-math world", "",
             "Made by `bash run_cpu.sh` (toy_math.py's world, prm_train.py, ppo.py, evaluate.py; see toy_math.py's "
             "docstring for the design). Accuracy: greedy, on the world's held-out test problems.", "",
             "![curves](curves.png)", "", "| policy | test accuracy (mean; per seed) | steps / response | tokens |",
             "|---|---|---:|---:|",
             f"| base | {base['accuracy']:.1%} | {base['steps_per_response']:.2f} | {base['response_length']:.1f} |"]
    for kind, st in per_seed.items():
        r = summary["runs"][kind]
        each = ", ".join(f"{x['accuracy']:.1%}" for x in st)
        lines.append(f"| {RUNS[kind]} | {r['accuracy']:.1%} ({each}) | "
                     f"{r['steps_per_response']:.2f} | {r['response_length']:.1f} |")
    lines += ["", f"PRM (prm_train.py, both stages) on held-out samples of the base policy, labelled by the program: "
                  f"step AUC {prm['auc']:.3f}, log loss {prm['log_loss']:.3f} "
                  f"(best constant {prm['log_loss_constant']:.3f}),"
                  f" {prm['n_steps']} steps.", "", "## What it shows", "", what_it_shows(summary), "",
              "## Sample responses (seed 1, first 3 of the step's rollouts)", ""]
    for kind, dirs in runs.items():
        last = read_metrics(dirs[0])[-1]["step"]
        for step in (1, last):
            lines.append(f"**{RUNS[kind]}, step {step}**")
            lines += ["", *[f"```\n{x['response']}\n```" for x in samples(dirs[0], step)], ""]
    if summary["seconds"] is not None:
        lines.append(f"World part: {summary['seconds'] / 60:.1f} minutes on this machine.")
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    atomic_write(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"report -> {out / 'report.md'}, {out / 'curves.png'}, {out / 'summary.json'}")


if __name__ == "__main__":
    import tyro

    cmd = tyro.extras.subcommand_cli_from_dict({"world": World, "report": Report})
    try:
        make_world(cmd) if isinstance(cmd, World) else write_report(cmd)
    except InputError as e:
        sys.exit(f"error: {e}")
