"""toy_math.py: the generator and the program's step labels on solutions checked by hand, and a toy-size world whose
files load through prm_train.py's, ppo.py's (rollout.load_prompts) and evaluate.py's own readers."""
import json
import random
import subprocess
import sys

import pytest

import toy_math as W
from conftest import ROOT

PROBLEM = (23, [("+", 5), ("-", 9)])  # 23 + 5 = 28, 28 - 9 = 19: no carry in the first step, a borrow in the second
RIGHT = ["23 + 5 = 28", "Check: 28 = 28", "28 - 9 = 19", "The answer is \\boxed{19}."]


def test_question_and_answer_by_hand():
    assert W.question(PROBLEM) == "Compute 23 + 5 - 9."
    assert W.answer(PROBLEM) == 19
    assert not W.crosses(23, "+", 5) and W.crosses(28, "-", 9) and W.crosses(17, "+", 3)


@pytest.mark.parametrize("steps, labels", [
    (RIGHT, [True, True, True, True]),  # right steps, and a true but idle check is a good step
    (["23 + 5 = 18", "18 - 9 = 9", "The answer is \\boxed{9}."], [False, False, False]),  # a slip, then consistent
    # steps from the wrong value: wrong against the true solution
    (["23 + 5 = 28", "Check: 27 = 27", "28 - 9 = 19", "The answer is \\boxed{19}."], [True, False, True, True]),
    (["23 + 5 = 28", "The answer is \\boxed{28}."], [True, False]),  # the answer before the last operation
    (["23 + 5 = 28", "28 - 9 = 19", "19 + 1 = 20", "The answer is \\boxed{20}."], [True, True, False, False]),
    (["23 - 5 = 18", "18 - 9 = 9"], [False, False]),  # wrong operator
    (["23 + 5 = 28", "28 - 9 = 19", "so it is 19", "The answer is \\boxed{19}."], [True, True, False, True]),
])
def test_label_steps_by_hand(steps, labels):
    assert W.label_steps(PROBLEM, steps) == labels


def test_student_habits():
    rng = random.Random(0)
    assert W.student_solution(PROBLEM, rng, p_slip=0.0, p_check=0.0) == [RIGHT[0], RIGHT[2], RIGHT[3]]
    # a forgotten borrow keeps the tens digit: 28 - 9 = 29 (not 19), and the student goes on from there
    assert W.student_solution(PROBLEM, rng, p_slip=1.0, p_check=0.0) == ["23 + 5 = 28", "28 - 9 = 29",
                                                                         "The answer is \\boxed{29}."]
    assert W.student_solution((17, [("+", 8)]), rng, p_slip=1.0, p_check=0.0)[0] == "17 + 8 = 15"


def test_generated_problems_stay_in_range_and_corruptions_are_wrong():
    rng = random.Random(1)
    for _ in range(300):
        p = W.make_problem(rng)
        assert 2 <= len(p[1]) <= 4 and all(1 <= b <= 9 for _, b in p[1])
        v = p[0]
        for s, b in p[1]:
            assert W.MIN_VALUE <= v <= W.MAX_VALUE
            v = W.apply(v, s, b)
        assert W.MIN_VALUE <= v <= W.MAX_VALUE
        assert all(W.label_steps(p, W.student_solution(p, rng, p_slip=0.0)))
        for kind in W.ERRORS:  # every kind of corruption holds at least one step the program calls wrong
            assert not all(W.label_steps(p, W.corrupted_solution(p, rng, kind)))


def test_prm_example_cuts_after_the_first_bad_step():
    steps = ["23 + 5 = 28", "Check: 27 = 27", "28 - 9 = 19", "The answer is \\boxed{19}."]
    row = W.prm_example(PROBLEM, steps)
    assert row["completions"] == steps[:2] and row["labels"] == [True, False]
    assert row["prompt"] == 'Compute 23 + 5 - 9.\n\nPlease reason step by step with steps separated by "\n\n", and ' \
                            'put your final answer within \\boxed{}.'  # PURE's prompt (real newlines in the quotes)
    assert W.split_text_steps("a\n\nb\n\n\n\nc\n\n") == ["a", "b", "c"]


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    """A world at toy size (a few policy steps, a handful of problems), made by the CLI: ~40 s, most of it vLLM."""
    out = tmp_path_factory.mktemp("toy") / "world"
    r = subprocess.run([sys.executable, "toy_math.py", "world", "--out", str(out), "--policy-steps", "3",
                        "--rl-prompts", "20", "--test-problems", "6", "--prm-problems", "3",
                        "--prm-heldout-problems", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_world_files_load_through_the_scripts_readers(toy_world):
    import evaluate
    import prm_train
    import rollout

    examples, _ = prm_train.load_examples(str(toy_world / "prm_train.jsonl"))
    assert len(examples) >= 3 * 4  # at least the 4 corrupted solutions per PRM problem (+ the policy's samples)
    prompts = rollout.load_prompts(str(toy_world / "rl_prompts.jsonl"))
    assert len(prompts) == 20 and all(p["answer"] is not None for p in prompts)
    vr = rollout.load_prompts(str(toy_world / "rl_prompts_vr.jsonl"))
    assert sum(p["answer"] is not None for p in vr) == 2  # 10% keep their gold
    assert all(p["ref_answer"] == q["answer"] for p, q in zip(vr, prompts))
    test = evaluate.load_user_benchmark(str(toy_world / "test.jsonl"))
    assert len(test) == 6
    questions = {json.loads(line)["question"]
                 for f in ("rl_prompts", "test") for line in open(toy_world / f"{f}.jsonl")}
    assert len(questions) == 26  # the splits share no problem
    _, tok = prm_train.load_prm(str(toy_world / "base"), tokenizer_only=True)
    assert tok.encode("Check: 25 = 25\n\n") == tok.encode("Check: 25 = 25") + tok.encode("\n\n")  # "\n\n" one token
