"""A stepwise-math world small enough to show PURE's claim on a laptop CPU in minutes: PURE's CartPole.

    python toy_math.py world --out runs/cpu/world-1 --seed 1   # problems, a tokenizer, a base policy, PRM data
    python toy_report.py --out runs/cpu                        # after the PRM and RL runs (run_cpu.sh does all of it)

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

The PRM's error taxonomy (corrupted_solution, ERRORS), written down before any RL run of issue 18: every deviation
of one step that label_steps can detect, by the step's form.
- An operation step, while operations remain, is good iff its left value, operator, operand and result are all
  right: "value" (starts from a wrong value: 24 + 5 = 29 for 23 + 5), "operator" (23 - 5 = 18), "operand" (any other
  digit: 23 + 6 = 29), "off" (result off by 1 or 2), "ten" (tens digit moved where no carry is, or kept where one
  is: the student's slip and its mirror), "skip" (the next operation done in place of this one, or the answer
  given if it was the last), "repeat" (the step before written again).
- An operation step after the last operation is always bad: "extra" (an operation after the last one, its
  arithmetic right, then its result boxed: "15 - 5 = 10", then \\boxed{10}).
- A check is good iff both sides are the true value: "check" (a check of a wrong value).
- The answer is good iff it comes after the last operation and boxes the true value: "early" (boxed before the
  last operation), "answer" (a wrong value boxed after right steps).
- Any other text is bad: "malformed" (an operation with its result left out: "23 + 5 =").
Each kind is bad at exactly the step it corrupts (tests/test_toy_math.py); prm_example cuts it there.

Choices made after seeing RL results (weigh them accordingly): running values in [0, 49], then [0, 19] (facts a tiny
model learns), then [10, 29] (two digits always, so a wrong step has a right one's shape); RL temperature 1, then
PURE's 0.5; the wider one-error solutions (operand any digit, the "ten" kind) after seeing RL drift into errors the
PRM had not seen; the taxonomy above (new: "value", "repeat", "extra", "answer", "malformed"; "off" no longer by
ten, which is "ten") after a run on another machine showed the policy adding an operation after the last one (issue
18); 1600 base-policy steps instead of 800 after world draw 2 of issue 18's first measured run came out
half-trained (a schedule that held the peak rate until the plateau ended made it worse: 24% on draw 1). val.jsonl
(validation in the RL loop) came with issue 18 too; it is drawn with its own seed, so the other splits of a given
seed stay the same.
"""
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import InputError, log_libraries_to, plot_metrics, write_jsonl
from rewards import split_text_steps
from rollout import format_prompt

MIN_VALUE, MAX_VALUE = 10, 29  # every running value has two digits: a carry never changes the shape of a step
P_CARRY = 0.25  # probability that an operation of a generated problem crosses a ten
P_SLIP = 0.6  # the student's habit: probability of forgetting a carry/borrow (result off by ten)
P_CHECK = 0.3  # probability of a "Check: v = v" step after any step (repeatable)
CONVERGED = 0.08  # base-policy loss of a policy that has learnt the sums (plateau ~0.25; measured 0.064-0.072)
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


ERRORS = ("value", "operator", "operand", "off", "ten", "skip", "repeat", "extra", "check", "early", "answer",
          "malformed")  # the taxonomy of the module docstring
NEAR = (-10, -2, -1, 1, 2, 10)  # how far a wrong value is from the right one


def wrong_step(v, s, b, kind, rng):
    """Operation `v s b` with one error of a step-local kind -> (text, the value it states; None if it states
    none). The text's own arithmetic is right except for "off" and "ten"."""
    if kind == "value":
        v = v + rng.choice([-10, -1, 1, 10])
    elif kind == "operator":
        s = "-" if s == "+" else "+"
    elif kind == "operand":
        b = rng.choice([x for x in range(1, 10) if x != b])
    r = apply(v, s, b)
    if kind == "off":
        r += rng.choice([-2, -1, 1, 2])
    elif kind == "ten":  # a carry where none is, or the carry forgotten where one is
        r += -10 if crosses(v, s, b) == (s == "+") else 10
    elif kind == "malformed":
        return f"{v} {s} {b} =", None
    return f"{v} {s} {b} = {r}", r


def corrupted_solution(problem, rng, kind=None, at=None, p_check=P_CHECK):
    """A solution with one error of the taxonomy's `kind` (module docstring; default: a random kind) at operation
    `at` (default: a random one where the error shows at once: a skip not followed by the same operation). The
    steps before it are right, with the student's checks (p_check); what follows is what a solver would write from
    there (prm_example cuts it after the first bad step anyway). "extra" and "answer" come after the last
    operation, whatever `at`."""
    start, ops = problem
    kind, n = kind or rng.choice(ERRORS), len(ops)
    if at is None:
        at = rng.choice([k for k in range(n) if kind != "skip" or k == n - 1 or ops[k] != ops[k + 1]])
    v, steps = start, []
    for i, (s, b) in enumerate(ops):
        if i == at and kind in ("skip", "early"):
            if kind == "early" or i == n - 1:
                break
            continue
        if i == at and kind == "check":
            w = v + rng.choice(NEAR)
            steps.append(f"Check: {w} = {w}")
        text, r = wrong_step(v, s, b, kind, rng) if i == at else (f"{v} {s} {b} = {apply(v, s, b)}", None)
        steps += [text, text] if i == at and kind == "repeat" else [text]
        v = apply(v, s, b) if r is None else r
        while rng.random() < p_check:
            steps.append(f"Check: {v} = {v}")
    if kind == "extra":
        s, b = rng.choice("+-"), rng.randint(1, 9)
        steps.append(f"{v} {s} {b} = {apply(v, s, b)}")
        v = apply(v, s, b)
    return steps + [f"The answer is \\boxed{{{v + rng.choice(NEAR) if kind == 'answer' else v}}}."]


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


QUESTION = re.compile(r"^Compute (\d+)((?: [+-] \d+)+)\.$")


def parse_question(text):
    """The problem (start, [(sign, b), ...]) of a question written by question(); anything else is an InputError."""
    m = QUESTION.match(text.strip())
    if not m:
        raise InputError("question", None, None, f"{text[:80]!r} is not a toy_math question (\"Compute 23 + 5 - 9.\")")
    return int(m[1]), [(s, int(b)) for s, b in re.findall(r" ([+-]) (\d+)", m[2])]


def oracle_step_scores(questions, steps):
    """The program's step labels as process rewards (ppo.py --step-scorer toy_math:oracle_step_scores): questions
    [B] raw questions, steps [B][K_b] each response's step texts -> [B][K_b] scores, +0.9 for a step label_steps
    calls good, -0.9 for a bad one (an empty step too: it is no step of a solution)."""
    return [[0.9 if good else -0.9 for good in label_steps(parse_question(q), st)]
            for q, st in zip(questions, steps, strict=True)]


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
    student's solutions by next-token cross-entropy, AdamW, linear warm-up then cosine decay over --policy-steps.
    The loss sits on a plateau (~0.25, the sums not learnt yet) for 200 to 650+ steps depending on the seed: an
    800-step schedule left world draw 2 half-trained (loss 0.13, 38% test accuracy, a PRM with AUC 0.70; issue 18),
    and holding the peak rate until the plateau ends made it last longer. -> (model, losses)."""
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
    logging-only ref_answer on the rest), test.jsonl (held-out benchmark), val.jsonl (validation problems, for the
    choice of a run's step), prm_train.jsonl and prm_heldout.jsonl
    (the base policy's own samples labelled by the program, TRL stepwise format). A rerun skips what exists."""

    out: Path = Path("runs/cpu/world")
    """output folder"""
    seed: int = 0
    """seed of the problems, the student's habits, the policy's initialisation and its samples"""
    policy_steps: int = 1600
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
    val_problems: int = 200
    """validation problems (val.jsonl: ppo.py --eval-prompts, the step an arm is taken at), apart from test.jsonl"""
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
    val = distinct_problems(random.Random(args.seed + 3), args.val_problems, taken)  # own rng: `rng` goes on to base/
    vr = set(random.Random(args.seed + 1).sample(range(len(rl)), round(args.vr_fraction * len(rl))))
    write_jsonl(out / "rl_prompts.jsonl", [{"question": question(p), "answer": str(answer(p))} for p in rl])
    write_jsonl(out / "rl_prompts_vr.jsonl", [{"question": question(p), "answer": str(answer(p)) if i in vr else "null",
                                               "ref_answer": str(answer(p))} for i, p in enumerate(rl)])
    for name, problems in (("test", test), ("val", val)):
        write_jsonl(out / f"{name}.jsonl", [{"question": question(p), "answer": str(answer(p))} for p in problems])
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
              f"{len(losses)} steps, final loss {sum(losses[-20:]) / 20:.3f}, {time.time() - t0:.0f} s"
              + (f"; WARNING: above {CONVERGED}, the sums not all learnt: a weak base policy, raise --policy-steps"
                 if sum(losses[-50:]) / 50 > CONVERGED else ""))
    if not (out / "prm_heldout.jsonl").is_file():
        train_rows, heldout_rows = labelled_samples(base, [prm, heldout], args.seed)
        # + as many solutions with one error of every kind: the policy's own samples hold almost only carry slips,
        # and RL drifts into the errors its PRM never saw (PRM800K's raters rated many generators' mistakes)
        crng = random.Random(args.seed + 2)  # not `rng`: a rerun that finds base/ made draws the same solutions
        train_rows += [prm_example(p, corrupted_solution(p, crng)) for p in prm for _ in range(4)]
        write_jsonl(out / "prm_train.jsonl", train_rows)
        write_jsonl(out / "prm_heldout.jsonl", heldout_rows)
    print(f"world -> {out}: {len(rl)} RL prompts ({len(vr)} with gold in rl_prompts_vr.jsonl), {len(test)} test "
          f"and {len(val)} validation problems, PRM data from the base policy's samples")


if __name__ == "__main__":
    import tyro

    cmd = tyro.extras.subcommand_cli_from_dict({"world": World})
    try:
        make_world(cmd)
    except InputError as e:
        sys.exit(f"error: {e}")
