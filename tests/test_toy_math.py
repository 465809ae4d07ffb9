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


# one hand-written solution per kind of the taxonomy (toy_math's docstring) of 23 + 5 - 9, labels by hand: each is
# bad at exactly the step it corrupts (a wrong operation step uses up its operation: the step after a repeat is
# judged against the operation after it; a check of a wrong value leaves the true state where it was)
KIND_CASES = {
    "value": (["23 + 5 = 28", "27 - 9 = 18", "The answer is \\boxed{18}."], [True, False, False]),
    "operator": (["23 + 5 = 28", "28 + 9 = 37", "The answer is \\boxed{37}."], [True, False, False]),
    "operand": (["23 + 6 = 29", "29 - 9 = 20", "The answer is \\boxed{20}."], [False, False, False]),
    "off": (["23 + 5 = 28", "28 - 9 = 20", "The answer is \\boxed{20}."], [True, False, False]),
    "ten": (["23 + 5 = 38", "38 - 9 = 29", "The answer is \\boxed{29}."], [False, False, False]),
    "skip": (["23 - 9 = 14", "The answer is \\boxed{14}."], [False, False]),
    "repeat": (["23 + 5 = 28", "23 + 5 = 28", "28 - 9 = 19", "The answer is \\boxed{19}."], [True, False, False, True]),
    "extra": (["23 + 5 = 28", "28 - 9 = 19", "19 - 5 = 14", "The answer is \\boxed{14}."], [True, True, False, False]),
    "check": (["23 + 5 = 28", "Check: 28 = 29", "28 - 9 = 19", "The answer is \\boxed{19}."],
              [True, False, True, True]),
    "early": (["23 + 5 = 28", "The answer is \\boxed{28}."], [True, False]),
    "answer": (["23 + 5 = 28", "28 - 9 = 19", "The answer is \\boxed{18}."], [True, True, False]),
    "malformed": (["23 + 5 = 28", "28 - 9 =", "The answer is \\boxed{19}."], [True, False, False]),
}


@pytest.mark.parametrize("kind", sorted(KIND_CASES))
def test_every_kind_of_error_is_bad_at_its_step(kind):
    steps, labels = KIND_CASES[kind]
    assert W.label_steps(PROBLEM, steps) == labels


def test_the_issue_18_extra_operation_is_bad():
    # the greedy outputs of issue 18: "10 + 5 = 15", "15 - 5 = 10", then boxed 10
    assert W.label_steps((10, [("+", 5)]), ["10 + 5 = 15", "15 - 5 = 10", "The answer is \\boxed{10}."]) == [
        True, False, False]


def test_corrupted_solution_writes_each_kind():
    assert set(W.ERRORS) == set(KIND_CASES)  # a new kind needs its hand-written case
    rng = random.Random(0)
    # the kinds that draw nothing, written by hand
    assert W.corrupted_solution(PROBLEM, rng, "skip", at=0, p_check=0) == KIND_CASES["skip"][0]
    assert W.corrupted_solution(PROBLEM, rng, "repeat", at=0, p_check=0) == KIND_CASES["repeat"][0]
    assert W.corrupted_solution(PROBLEM, rng, "early", at=1, p_check=0) == KIND_CASES["early"][0]
    assert W.corrupted_solution(PROBLEM, rng, "operator", at=1, p_check=0) == KIND_CASES["operator"][0]
    assert W.corrupted_solution(PROBLEM, rng, "ten", at=0, p_check=0) == KIND_CASES["ten"][0]
    assert W.corrupted_solution(PROBLEM, rng, "ten", at=1, p_check=0)[1] == "28 - 9 = 29"  # the student's slip
    assert W.corrupted_solution(PROBLEM, rng, "malformed", at=1, p_check=0)[:2] == ["23 + 5 = 28", "28 - 9 ="]
    # a skip is drawn where it shows at once, never before the same operation: of 12 + 3 + 3 only the last
    assert all(W.corrupted_solution((12, [("+", 3), ("+", 3)]), rng, "skip", p_check=0) == [
        "12 + 3 = 15", "The answer is \\boxed{15}."] for _ in range(50))
    extra = W.corrupted_solution(PROBLEM, rng, "extra", p_check=0)
    assert extra[:2] == ["23 + 5 = 28", "28 - 9 = 19"] and extra[2].startswith("19 ")
    assert extra[3] == f"The answer is \\boxed{{{extra[2].split(' = ')[1]}}}."  # the extra result is boxed


def expected_bad_step(kind, at, n):
    """Index of the corrupted step of a solution without checks: the operation's own step, except a repeat (the
    copy after it) and the two kinds after the last operation."""
    return {"repeat": at + 1, "extra": n, "answer": n}.get(kind, at)


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
        n, ops = len(p[1]), p[1]
        for kind in W.ERRORS:  # right up to the corrupted step, wrong at it
            for at in range(n):
                if kind == "skip" and at < n - 1 and ops[at] == ops[at + 1]:
                    continue  # skipping an operation before the same one shows later: never drawn
                labels = W.label_steps(p, W.corrupted_solution(p, rng, kind, at=at, p_check=0))
                j = expected_bad_step(kind, at, n)
                assert labels[:j + 1] == [True] * j + [False], (p, kind, at)
            assert not all(W.label_steps(p, W.corrupted_solution(p, rng, kind)))  # with checks, at a drawn step


def test_oracle_step_scores_by_hand():
    questions = ["Compute 23 + 5 - 9.", "Compute 17 + 8."]
    steps = [["23 + 5 = 28", "28 - 9 = 29", "The answer is \\boxed{29}."],  # the slipped borrow, then consistent
             ["17 + 8 = 25", "Check: 25 = 25", "The answer is \\boxed{25}.", ""]]  # an empty step is no step
    assert W.oracle_step_scores(questions, steps) == [[0.9, -0.9, -0.9], [0.9, 0.9, 0.9, -0.9]]
    assert W.parse_question("Compute 23 + 5 - 9.") == PROBLEM
    assert W.parse_question(W.question((17, [("+", 8)]))) == (17, [("+", 8)])
    with pytest.raises(W.InputError, match="question"):
        W.oracle_step_scores(["What is 2 + 2?"], [["4"]])


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
                        "--prm-heldout-problems", "2", "--val-problems", "5"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
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
    val = evaluate.load_user_benchmark(str(toy_world / "val.jsonl"))
    assert len(test) == 6 and len(val) == 5
    questions = {json.loads(line)["question"]
                 for f in ("rl_prompts", "test", "val") for line in open(toy_world / f"{f}.jsonl")}
    assert len(questions) == 31  # the splits share no problem
    prm = {json.loads(line)["prompt"].split("\n")[0]
           for f in ("prm_train", "prm_heldout") for line in open(toy_world / f"{f}.jsonl")}
    assert prm and not prm & questions  # nor with the PRM's problems
    _, tok = prm_train.load_prm(str(toy_world / "base"), tokenizer_only=True)
    assert tok.encode("Check: 25 = 25\n\n") == tok.encode("Check: 25 = 25") + tok.encode("\n\n")  # "\n\n" one token
