"""prm_train.py: label placement, PRM800K -> TRL conversion, both DeepSpeed stages on 2 ranks (with a resume),
reload + scoring through rewards.py, the evaluation metrics, bad input."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT

import prm_train as pt
from common import InputError, write_jsonl

ENV = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"), "OMP_NUM_THREADS": "1"}
PROMPT = "Let $x$ be a real number such that $x^2 + 2x + 1 = 0$.\n\nWhat is $x$?"
STEPS = ["Then $(x+1)^2 = 0$, so $x = -1$.\n\nCheck: $1 - 2 + 1 = 0$.",  # ".\n\n" inside a step: a merged token
         "First, compute $3 \\cdot 4 = 12$.",
         "So the final answer is $\\boxed{-1}$.\n\n"]
LABELS = [True, False, True]


def test_label_placement(tiny_tokenizer, smollm2_tokenizer):
    # merged tokens: the tiny BPE (Qwen2's regex) fuses "$.\n\n"; SmolLM2 (GPT-2 style) fuses "$." and "\n\n\n"
    for tok, merged in ((tiny_tokenizer, "$.\n\n"), (smollm2_tokenizer, "$.")):
        counts = Counter()
        (feat,) = pt.tokenize_examples(tok, [{"prompt": PROMPT, "completions": STEPS, "labels": LABELS}], 10**6,
                                       counts)
        ids = feat["input_ids"]
        assert merged in [tok.decode([i]) for i in ids]
        batch = pt.collate([feat, {"input_ids": ids[:5], "labels": [-100] * 5}], pad_id=0)
        labels = batch["labels"][0]
        assert labels.dtype == torch.long and batch["labels"][1, 5:].eq(-100).all() and not counts
        labelled = labels.ne(-100).nonzero().flatten().tolist()
        assert labels[labelled].tolist() == [1, 0, 1]
        # independent check in text space: the prefix up to each labelled token is prompt + steps so far, each
        # followed by the separator "\n", and the labelled token itself is exactly the separator
        for k, pos in enumerate(labelled):
            assert tok.decode([ids[pos]]) == "\n"
            assert tok.decode(ids[:pos + 1], skip_special_tokens=True) == PROMPT + "".join(
                s + "\n" for s in STEPS[:k + 1])
        assert labelled[-1] == len(ids) - 1


def test_truncation_is_counted(tiny_tokenizer):
    ex = {"prompt": PROMPT, "completions": STEPS, "labels": LABELS}
    full = pt.tokenize_examples(tiny_tokenizer, [ex], 10**6, Counter())[0]["labels"]
    ends = [i for i, y in enumerate(full) if y != -100]
    counts = Counter()
    feats = pt.tokenize_examples(tiny_tokenizer, [ex, ex], ends[1] + 1, counts)  # keeps steps 0 and 1
    assert [sum(y != -100 for y in f["labels"]) for f in feats] == [2, 2]
    assert counts["truncated: step labels cut off"] == 2 and sum(v for k, v in counts.items() if "longer" in k) == 2
    counts = Counter()
    assert pt.tokenize_examples(tiny_tokenizer, [ex], 3, counts) == []
    assert counts["dropped: no labelled step left after truncation"] == 1


def critique(prompt, hist, step, rating, preferred=False, human=False, answer=None):
    return {"instruction": prompt, "responses": hist, "next_response": step, "answer": answer, "rating": rating,
            "is_preferred_response": preferred, "is_human_response": human, "is_solution": answer is not None}


def test_prm800k_conversion_rule(tmp_path):
    rows = [critique("Q", [], "A", 1, preferred=True), critique("Q", [], "B", -1),
            critique("Q", ["A"], "C", 0, preferred=True), critique("Q", ["A"], "F", -1),
            critique("Q", ["A"], "G", 0.0), critique("Q", ["A", "C"], "D", None, human=True, answer="5"),
            critique("Q", ["A", "C"], "E", None), critique("Q", [], "B", -1)]
    write_jsonl(tmp_path / "c.jsonl", rows)
    examples, counts = pt.load_examples(tmp_path / "c.jsonl")
    got = sorted((tuple(e["completions"]), tuple(e["labels"])) for e in examples)
    assert got == sorted([(("B",), (False,)), (("A", "F"), (True, False)), (("A", "G"), (True, True)),
                          (("A", "C", "D\n\n# Answer\n\n5"), (True, True, True))])
    assert counts["merged: chosen step that is continued (labelled inside longer examples)"] == 2
    assert counts["dropped: model-written step with a null rating (left unrated)"] == 1
    assert counts["dropped: exact duplicate example"] == 1


def test_prm800k_test_file_accounts_for_every_row(shared_data):
    path = shared_data / "prm800k" / "phase1_test_stepwise_critique.jsonl"
    examples, counts = pt.load_examples(path)
    n_rows = sum(1 for _ in open(path, encoding="utf-8"))
    assert n_rows == 5449
    assert len(examples) + sum(v for k, v in counts.items() if k.startswith(("dropped", "merged"))) == n_rows
    rated = Counter(json.loads(line)["rating"] for line in open(path, encoding="utf-8"))
    last = Counter(e["labels"][-1] for e in examples)
    assert last[False] <= rated[-1] and all(all(e["labels"][:-1]) for e in examples)  # history steps are good


# ---------------------------------------------------------------------------------------------- DeepSpeed runs


def torchrun(*args, nproc=2):
    cmd = [str(ROOT / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "prm_train.py"), *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:  # never leave ranks behind (a hung rendezvous, a failed assert)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, shared_data):
    from safetensors.torch import load_file

    tmp = tmp_path_factory.mktemp("prm_runs")
    examples, _ = pt.load_examples(shared_data / "prm800k" / "phase1_test_stepwise_critique.jsonl")
    write_jsonl(tmp / "trl.jsonl", sorted(examples, key=lambda e: len(e["completions"]))[:32])
    common = ["--data", tmp / "trl.jsonl", "--global-batch-size", 4, "--per-device-batch-size", 1]
    torchrun("--model", tiny_model_dir, "--output-dir", tmp / "s1", "--stage", 1, *common, "--max-steps", 2)
    step2 = load_file(tmp / "s1" / "model.safetensors")
    log = torchrun("--model", tiny_model_dir, "--output-dir", tmp / "s1", "--stage", 1, *common, "--max-steps", 3)
    torchrun("--model", tmp / "s1", "--output-dir", tmp / "s2", "--stage", 2, *common, "--max-steps", 2)
    return {"tmp": tmp, "step2": step2, "resume_log": log}


def test_stage1_trains_only_the_head_and_resumes(runs, tiny_model_dir):
    from safetensors.torch import load_file

    base, s1 = load_file(tiny_model_dir / "model.safetensors"), load_file(runs["tmp"] / "s1" / "model.safetensors")
    for name, w in base.items():
        if name != "lm_head.weight":
            assert torch.equal(s1[name], w), name  # frozen base: bit-identical
    torch.manual_seed(42)  # the head's initialisation, as prm_train draws it
    init_head = pt.load_prm(tiny_model_dir)[0].score.weight.detach()
    assert not torch.equal(s1["score.weight"], init_head)
    assert not torch.equal(s1["score.weight"], runs["step2"]["score.weight"])  # the resumed step 3 moved it
    assert "resuming at step 2" in runs["resume_log"]
    rows = [json.loads(line) for line in open(runs["tmp"] / "s1" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["learning_rate"] == 1e-4 and 0 <= r["step_accuracy"] <= 1 and r["tokens_per_s"] > 0 and r["loss"] > 0
               for r in rows)
    assert (runs["tmp"] / "s1" / "loss.png").stat().st_size > 0
    assert list((runs["tmp"] / "s1" / "tensorboard").glob("events.*"))


def test_stage2_trains_everything_and_reloads_for_rewards(runs, tiny_tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    import rewards

    s1, s2 = (load_file(runs["tmp"] / d / "model.safetensors") for d in ("s1", "s2"))
    changed = [n for n in s1 if not torch.equal(s1[n], s2[n])]
    assert "score.weight" in changed and any(n.startswith("model.layers.") for n in changed)
    model = AutoModelForTokenClassification.from_pretrained(runs["tmp"] / "s2").eval()
    assert model.config.id2label == {0: "bad", 1: "good"}
    # score one response through rewards.prm_scores; its PRM input equals the training layout here (steps end in a
    # bare "\n\n" token, no BOS), so p_k must equal 2 P(good) - 1 read at the training label positions
    steps = ["We have 3 and 4", "so the sum is 7", "The answer is 7"]
    sep = tiny_tokenizer.encode("\n\n", add_special_tokens=False)
    assert len(sep) == 1
    enc = [tiny_tokenizer.encode(s, add_special_tokens=False) for s in steps]
    response = enc[0] + sep + enc[1] + sep + enc[2] + [tiny_tokenizer.eos_token_id]
    counts = rewards.split_steps(response, tiny_tokenizer)
    assert counts == [len(enc[0]) + 1, len(enc[1]) + 1, len(enc[2]) + 1]
    prompt_ids = tiny_tokenizer.encode(PROMPT, add_special_tokens=False)
    (p,) = rewards.prm_scores(model, tiny_tokenizer, [prompt_ids], [response])
    (p_good,) = pt.step_probs(model, tiny_tokenizer, [(PROMPT, steps)])
    assert p == pytest.approx([2 * q - 1 for q in p_good], abs=1e-6)


def test_eval_only_end_to_end(runs, shared_data, capsys):
    out = runs["tmp"] / "s2"
    args = pt.Args(model=str(out), output_dir=str(out), eval_only=True, limit=4, eval_data=str(shared_data))
    res = pt.evaluate(args)
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(res))
    assert {"processbench_gsm8k", "processbench_math", "processbench_olympiadbench", "processbench_omnimath",
            "prm800k_phase1_test", "best_of_8_math"} <= set(res)
    bon = res["best_of_8_math"]
    assert bon["random"] <= bon["oracle"] and all(0 <= bon[k] <= bon["oracle"] for k in ("bon_min", "bon_last"))


# ---------------------------------------------------------------------------------------------- metrics


def test_processbench_f1_hand_computed():
    assert pt.first_error([0.9, 0.4, 0.2]) == 1 and pt.first_error([0.6, 0.5]) == -1
    assert pt.first_error([0.6, 0.55], threshold=0.58) == 1
    # erroneous samples (label >= 0): hits 1 of 3; correct samples (label -1): hits 1 of 2
    res = pt.processbench_f1(preds=[2, 1, -1, -1, 0], labels=[2, 0, 1, -1, -1])
    assert res["acc_erroneous"] == pytest.approx(1 / 3) and res["acc_correct"] == pytest.approx(1 / 2)
    assert res["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # = 0.4
    assert pt.processbench_f1([0], [0])["f1"] is None


def test_step_metrics_and_best_of_n_hand_computed():
    m = pt.step_metrics([0.9, 0.2, 0.6, 0.4], [True, False, False, True])
    # preds good,bad,good,bad; bad class: tp 1 (idx1), fp 1 (idx3), fn 1 (idx2) -> F1 0.5
    assert m["accuracy"] == 0.5 and m["f1_bad"] == pytest.approx(0.5) and m["f1_good"] == pytest.approx(0.5)
    # log loss: -(ln .9 + ln .8 + ln .4 + ln .4) / 4 = 0.5403; constant P(good) = 1/2 -> ln 2
    assert m["log_loss"] == pytest.approx(0.540271, abs=1e-6) and m["log_loss_constant"] == pytest.approx(0.693147)
    probs = [[[0.6, 0.99], [0.7, 0.8], [0.65]],  # min: .6 .7 .65 -> #2; product: .594 .56 .65 -> #3; last -> #1
             [[0.3, 0.95], [0.6]]]  # min and product -> #2; last -> #1
    correct = [[False, False, True], [True, False]]
    answers = [["1", "1", "3"], ["7", "8"]]
    res = pt.best_of_n(probs, correct, answers)
    assert (res["bon_min"], res["bon_product"], res["bon_last"]) == (0.0, 0.5, 0.5)
    assert res["majority_vote"] == 0.5  # "1" (wrong) in problem 1; the 1-1 tie goes to the first seen, "7" (right)
    assert res["oracle"] == 1.0 and res["random"] == pytest.approx((1 / 3 + 1 / 2) / 2)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_one_line_errors(tmp_path, tiny_tokenizer):
    good = {"prompt": "Q", "completions": ["a", "b"], "labels": [True, False]}
    write_jsonl(tmp_path / "empty.jsonl", [good, {**good, "completions": ["a", " "]}])
    with pytest.raises(InputError, match=r"empty\.jsonl:2: completions\[1\]: empty step text"):
        pt.load_examples(tmp_path / "empty.jsonl")
    write_jsonl(tmp_path / "n.jsonl", [{**good, "labels": [True]}])
    with pytest.raises(InputError, match=r"n\.jsonl:1: labels: 1 labels for 2 steps"):
        pt.load_examples(tmp_path / "n.jsonl")
    write_jsonl(tmp_path / "r.jsonl", [critique("Q", [], "A", 1), critique("Q", [], "B", 2)])
    with pytest.raises(InputError, match=r"r\.jsonl:2: rating: 2 is not one of -1, 0, 1, null"):
        pt.load_examples(tmp_path / "r.jsonl")
    with pytest.raises(InputError, match="no such file"):
        pt.load_examples(tmp_path / "missing.jsonl")
    # a causal LM architecture with no token-classification class: one line from the CLI
    from transformers import BartConfig

    bad = tmp_path / "bart"
    BartConfig(vocab_size=len(tiny_tokenizer), d_model=16, encoder_layers=1, decoder_layers=1).save_pretrained(bad)
    tiny_tokenizer.save_pretrained(bad)
    proc = subprocess.run([sys.executable, str(ROOT / "prm_train.py"), "--model", str(bad), "--output-dir",
                           str(tmp_path / "o"), "--eval-only"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {bad / 'config.json'}: model_type: 'bart' has no token-classification class in transformers")
