"""prm_train.py: label placement, PRM800K -> TRL conversion, both DeepSpeed stages on 2 ranks (with a resume),
reload + scoring through rewards.py, the evaluation metrics, bad input."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT

import prm_train as pt
from common import InputError, read_jsonl, write_jsonl

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
    """Every count below was read from the file with jq, not with load_examples' code (F = the file):
      rows                        jq -s length F                                                          5449
      model step, null rating     jq -s '[.[] | select(.rating == null and (.is_human_response|not))] | length'  110
      chosen and continued        preferred/human rows whose [instruction] + responses + [next_response] is some
                                  row's [instruction] + responses (a jq map of the latter, then a lookup)  1754
      exact duplicates            the other rows as tojson of [instruction, responses, next_response, answer,
                                  rating != -1]: length - (unique | length)                                 373
      unique rows rated -1                                                                                1698
      steps: sum of (responses | length) + 1 over the unique rows                                        47355"""
    path = shared_data / "prm800k" / "phase1_test_stepwise_critique.jsonl"
    examples, counts = pt.load_examples(path)
    assert sum(1 for _ in open(path, encoding="utf-8")) == 5449
    assert counts["dropped: model-written step with a null rating (left unrated)"] == 110
    assert counts["merged: chosen step that is continued (labelled inside longer examples)"] == 1754
    assert counts["dropped: exact duplicate example"] == 373
    assert len(examples) == 5449 - 110 - 1754 - 373
    labels = [y for e in examples for y in e["labels"]]
    assert len(labels) == 47355 and labels.count(False) == 1698
    assert sum(not e["labels"][-1] for e in examples) == 1698  # every bad label is the rated candidate's


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
def runs(tmp_path_factory, tiny_model_dir, repo_data):
    """Stage 1 interrupted (2 steps, then a rerun to 3), the same 3 steps uninterrupted, and stage 2 from the first.
    The base is the tiny policy with the token-classification head's dropout off (transformers' Qwen2 default is
    0.1): dropout draws from an RNG that a resume does not restore, so only a dropout-free run can be compared bit
    for bit, and only then is a logged loss a plain forward's. The 32 shortest examples of data/'s PRM800K train slice
    (1-5 steps each)."""
    from safetensors.torch import load_file

    tmp = tmp_path_factory.mktemp("prm_runs")
    base = tmp / "base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "classifier_dropout": 0.0}))
    examples, _ = pt.load_examples(repo_data / "prm800k" / "phase1_train_stepwise_critique.jsonl")
    write_jsonl(tmp / "trl.jsonl", sorted(examples, key=lambda e: len(e["prompt"]) + sum(map(len, e["completions"])))
                [:32])
    common = ["--data", tmp / "trl.jsonl", "--global-batch-size", 4, "--per-device-batch-size", 1]
    torchrun("--model", base, "--output-dir", tmp / "s1", "--stage", 1, *common, "--max-steps", 2)
    step2 = load_file(tmp / "s1" / "model.safetensors")
    log = torchrun("--model", base, "--output-dir", tmp / "s1", "--stage", 1, *common, "--max-steps", 3)
    torchrun("--model", base, "--output-dir", tmp / "s1_full", "--stage", 1, *common, "--max-steps", 3)
    torchrun("--model", tmp / "s1", "--output-dir", tmp / "s2", "--stage", 2, *common, "--max-steps", 2)
    return {"tmp": tmp, "step2": step2, "resume_log": log}


def metrics(run_dir):
    return [r for _, r in read_jsonl(run_dir / "metrics.jsonl")]


def test_stage1_trains_only_the_head(runs, tiny_model_dir):
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
    rows = metrics(runs["tmp"] / "s1")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["learning_rate"] == 1e-4 and 0 <= r["step_accuracy"] <= 1 and r["tokens_per_s"] > 0 and r["loss"] > 0
               for r in rows)
    assert (runs["tmp"] / "s1" / "loss.png").stat().st_size > 0
    assert list((runs["tmp"] / "s1" / "tensorboard").glob("events.*"))


def optimizer_states(ckpt):
    """Per rank (file), from a DeepSpeed ZeRO-2 checkpoint folder: the torch AdamW state of its partition (step,
    exp_avg, exp_avg_sq per parameter group), the fp32 master weights of that partition, and the param groups."""
    out = []
    for f in sorted(ckpt.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt")):
        sd = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        out.append((sd["base_optimizer_state"]["state"], sd["single_partition_of_fp32_groups"],
                    sd["base_optimizer_state"]["param_groups"]))
    return out


def test_stage1_resume_equals_an_uninterrupted_run(runs):
    """2 steps, stop, rerun to 3 == 3 steps in one go: the weights, each rank's Adam moments and step counts, the
    fp32 master weights and the logged rows, bit for bit. A resume that drops the optimizer state (fresh moments),
    the step counter or the data position cannot pass."""
    from safetensors.torch import load_file

    resumed, full = (load_file(runs["tmp"] / d / "model.safetensors") for d in ("s1", "s1_full"))
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)
    states = [optimizer_states(runs["tmp"] / d / "checkpoint" / "step3") for d in ("s1", "s1_full")]
    assert len(states[0]) == len(states[1]) == 2  # one file per rank
    for (adam_r, fp32_r, _), (adam_f, fp32_f, _) in zip(*states):
        assert adam_r.keys() == adam_f.keys() == {0, 1}  # weight-decay group (score.weight) and the rest (bias)
        for group in adam_f:
            assert adam_f[group]["step"].item() == adam_r[group]["step"].item() == 3
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(adam_r[group][key], adam_f[group][key])
        assert all(torch.equal(a, b) for a, b in zip(fp32_r, fp32_f, strict=True))
    for key in ("exp_avg", "exp_avg_sq"):  # the moments compared are real ones (a rank may hold only padding)
        assert sum(adam[0][key].abs().sum() for adam, _, _ in states[1]) > 0
    drop_speed = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert drop_speed(metrics(runs["tmp"] / "s1")) == drop_speed(metrics(runs["tmp"] / "s1_full"))


def plain_global_batch(runs):
    """(features of the run's data, its 3 global batches, and loss(model, batch) -> (loss, argmax hits, label counts)):
    the loss by one plain forward per example, Σ -log p(y) / N over all N labelled tokens of the global batch."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(runs["tmp"] / "s1")
    feats = pt.tokenize_examples(tok, [r for _, r in read_jsonl(runs["tmp"] / "trl.jsonl")], 10**6, Counter())
    batches = pt.batch_schedule([len(f["input_ids"]) for f in feats], 4, 3.0, 42, False)[:3]  # tested below

    def loss(model, batch):
        nll, hits, counts = 0.0, 0, []
        for i in batch:
            y = torch.tensor(feats[i]["labels"])  # [T]
            logits = model(input_ids=torch.tensor([feats[i]["input_ids"]])).logits[0][y != -100]  # [n_i, 2]
            y = y[y != -100]  # [n_i]
            nll = nll - torch.log_softmax(logits, -1)[torch.arange(len(y)), y].sum()
            hits, counts = hits + (logits.argmax(-1) == y).sum().item(), counts + [len(y)]
        return nll / sum(counts), hits, counts

    return batches, loss


def test_logged_step_equals_a_plain_forward(runs):
    """The resumed step 3's logged loss, step accuracy and grad norm, recomputed from the saved step-2 weights by
    plain forwards over step 3's global batch (4 examples = 2 ranks x 2 micro-batches, unequal label counts):
    accuracy = argmax hits / N, grad norm = |dloss/d head| before clipping. A mean per micro-batch or per rank, a
    lost x world factor or a wrong N changes the loss or the gradient."""
    from transformers import AutoModelForTokenClassification

    batches, global_loss = plain_global_batch(runs)
    model = AutoModelForTokenClassification.from_pretrained(runs["tmp"] / "s1", dtype=torch.float32)
    model.load_state_dict(runs["step2"])
    model.base_model.requires_grad_(False)
    loss, hits, counts = global_loss(model, batches[2])
    assert len(set(counts)) > 1  # so a mean of micro-batch means would differ from the global mean
    loss.backward()
    grad_norm = torch.cat([model.score.weight.grad.flatten(), model.score.bias.grad.flatten()]).norm().item()
    row = metrics(runs["tmp"] / "s1")[2]
    assert row["step"] == 3 and row["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert row["step_accuracy"] == hits / sum(counts) and row["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)


def test_stage1_weights_equal_three_plain_adamw_steps(runs, tiny_model_dir):
    """A second implementation of the paper's stage-1 step in plain torch: the seed-42 head, the global-batch mean
    loss, gradient clipping at norm 1, torch AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.1 on the weight matrix
    only), 3 steps. DeepSpeed's 2-rank result must match it (to float rounding)."""
    from safetensors.torch import load_file

    batches, global_loss = plain_global_batch(runs)
    torch.manual_seed(42)  # the head's initialisation, as prm_train draws it
    model = pt.load_prm(runs["tmp"] / "base")[0]
    model.base_model.requires_grad_(False)
    opt = torch.optim.AdamW([{"params": [model.score.weight], "weight_decay": 0.1},
                             {"params": [model.score.bias], "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.95))
    for batch in batches:
        global_loss(model, batch)[0].backward()
        assert torch.nn.utils.clip_grad_norm_([model.score.weight, model.score.bias], 1.0) > 1  # clipping acts
        opt.step()
        opt.zero_grad()
    trained = load_file(runs["tmp"] / "s1_full" / "model.safetensors")
    for name in ("score.weight", "score.bias"):
        torch.testing.assert_close(trained[name], model.state_dict()[name], rtol=0, atol=1e-7)
    # the bias's weight decay moves it by ~1e-9 here, below that tolerance: read the groups DeepSpeed ran with
    for *_, groups in optimizer_states(runs["tmp"] / "s1_full" / "checkpoint" / "step3"):
        assert [(g["lr"], g["betas"], g["weight_decay"], g["params"]) for g in groups] == [
            (1e-4, (0.9, 0.95), 0.1, [0]), (1e-4, (0.9, 0.95), 0.0, [1])]


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


def test_eval_only_on_the_shipped_data_plumbing(runs):
    """Plumbing: the trained stage-2 PRM through the real step_probs on the first 4 items of every set in data/ (the
    default --eval-data); the numbers themselves are checked on hand-built data below. Counts from the files:
    PRM800K's first 4 examples (rows 2-5) have 2 steps each."""
    out = runs["tmp"] / "s2"
    args = pt.Args(model=str(out), output_dir=str(out), eval_only=True, limit=4)
    res = pt.evaluate(args)
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(res))
    assert {"processbench_gsm8k", "processbench_math", "processbench_olympiadbench", "processbench_omnimath",
            "prm800k_phase1_test", "best_of_8_math"} <= set(res)
    assert res["prm800k_phase1_test"]["n_steps"] == 8 and res["prm800k_phase1_test_last_step"]["n_steps"] == 4
    assert all(res[f"processbench_{b}"]["n"] == 4 for b in ("gsm8k", "math", "olympiadbench", "omnimath"))


def text_keyed_step_probs(model, tokenizer, items, batch_size=8):
    """A PRM stub for evaluate(): P(good) of a step is the number its text gives after "p="."""
    return [[float(re.search(r"p=([0-9.]+)", step).group(1)) for step in steps] for _, steps in items]


def test_eval_only_hand_built_sets(tmp_path, tiny_model_dir, monkeypatch):
    """evaluate() on hand-made files in the shared layout, with a PRM whose scores are written in the steps, so
    every metric is computed here by hand from the rows: which score meets which label is evaluate's job."""
    data = tmp_path / "data"
    write_jsonl(data / "prm800k" / "phase1_test_stepwise_critique.jsonl", [
        critique("Q1", [], "p=0.9 first", 1, preferred=True), critique("Q1", ["p=0.9 first"], "p=0.3 bad", -1),
        critique("Q1", ["p=0.9 first"], "p=0.6 neutral", 0), critique("Q2", [], "p=0.4 alone", 1)])
    pb = lambda steps, label: {"problem": "Q", "steps": steps, "label": label}  # noqa: E731
    write_jsonl(data / "processbench" / "a.jsonl", [
        pb(["p=0.9 s", "p=0.2 s", "p=0.8 s"], 1), pb(["p=0.9 s", "p=0.7 s"], -1), pb(["p=0.6 s", "p=0.55 s"], 1),
        pb(["p=0.3 s", "p=0.9 s"], -1), pb(["p=0.8 s", "p=0.1 s", "p=0.1 s"], 2)])
    write_jsonl(data / "processbench" / "b.jsonl", [pb(["p=0.9 s"], -1), pb(["p=0.1 s", "p=0.9 s"], 0)])
    bon = lambda resp, score, pred: {"question": "Q", "response": resp, "score": score, "pred": pred}  # noqa: E731
    write_jsonl(data / "extras" / "qwen25math_math_cot_100_rm_maj.jsonl", [
        bon(["p=0.6 x\n\np=0.99 y", "p=0.7 x\n\n\n\np=0.8 y", "p=0.65 x\np=0.01 y"], [False, False, True],
            ["1", "1", "3"]),
        bon(["p=0.3 x\n\np=0.95 y", "p=0.6 x", "p=0.5 x"], [False, False, True], ["7", "8", "9"]),
        bon(["p=0.9 x", "p=0.2 x", "p=0.4 x"], [True, False, True], ["5", "6", "5"])])
    monkeypatch.setattr(pt, "step_probs", text_keyed_step_probs)
    args = pt.Args(model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), eval_only=True, eval_data=str(data))
    res = pt.evaluate(args)
    assert json.loads((tmp_path / "out" / "eval.json").read_text()) == json.loads(json.dumps(res))
    ln = math.log
    # PRM800K: examples [first, bad] (good, bad), [first, neutral] (good, good), [alone] (good): pooled scores
    # .9 .3 .9 .6 .4 -> predicted good, bad, good, good, bad; 4 of 5 right; bad class tp 1 fp 1 fn 0; good tp 3 fn 1
    assert res["prm800k_phase1_test"] == pytest.approx({
        "accuracy": 4 / 5, "f1_bad": 2 / 3, "f1_good": 6 / 7, "good_fraction": 4 / 5, "n_steps": 5,
        "auc": 1.0,  # the one bad step (.3) scores below every good one
        "log_loss": -(2 * ln(0.9) + ln(0.7) + ln(0.6) + ln(0.4)) / 5,
        "log_loss_constant": -(0.8 * ln(0.8) + 0.2 * ln(0.2))})
    # rated candidates only: .3 (bad) .6 (good) .4 (good) -> right, right, wrong
    assert res["prm800k_phase1_test_last_step"] == pytest.approx({
        "accuracy": 2 / 3, "f1_bad": 2 / 3, "f1_good": 2 / 3, "good_fraction": 2 / 3, "n_steps": 3, "auc": 1.0,
        "log_loss": -(ln(0.7) + ln(0.6) + ln(0.4)) / 3, "log_loss_constant": -(2 / 3 * ln(2 / 3) + 1 / 3 * ln(1 / 3))})
    # a: first step below 0.5 -> 1 (hit), -1 (hit), -1 (miss: 0.55 is not an error), 0 (miss), 1 (miss: label 2)
    assert res["processbench_a"] == pytest.approx({"acc_erroneous": 1 / 3, "acc_correct": 1 / 2, "f1": 0.4, "n": 5})
    assert res["processbench_b"] == {"acc_erroneous": 1.0, "acc_correct": 1.0, "f1": 1.0, "n": 2}
    assert res["processbench_avg_f1"] == pytest.approx(0.7)
    # best of 3 (responses split at blank lines, the empty piece dropped; "p=0.65 x\np=0.01 y" is one step whose
    # score is its first "p="): min .6 .7 .65 | .3 .6 .5 | .9 .2 .4 ->
    # #2 (wrong), #2 (wrong), #1 (right); product .594 .56 .65 | .285 .6 .5 | -> #3 (right), #2 (wrong), #1 (right);
    # last .99 .8 .65 | .95 .6 .5 | -> #1 (wrong), #1 (wrong), #1 (right); votes "1" (wrong), "7" (first of a
    # three-way tie, wrong), "5" (right)
    assert res["best_of_8_math"] == pytest.approx({"bon_min": 1 / 3, "bon_product": 2 / 3, "bon_last": 1 / 3,
                                                   "majority_vote": 1 / 3, "oracle": 1.0,
                                                   "random": (1 / 3 + 1 / 3 + 2 / 3) / 3})


# ---------------------------------------------------------------------------------------------- metrics


def test_processbench_f1_hand_computed():
    assert pt.first_error([0.9, 0.4, 0.2]) == 1 and pt.first_error([0.6, 0.5]) == -1
    assert pt.first_error([0.6, 0.55], threshold=0.58) == 1
    # erroneous samples (label >= 0): hits 1 of 3; correct samples (label -1): hits 1 of 2
    res = pt.processbench_f1(preds=[2, 1, -1, -1, 0], labels=[2, 0, 1, -1, -1])
    assert res["acc_erroneous"] == pytest.approx(1 / 3) and res["acc_correct"] == pytest.approx(1 / 2)
    assert res["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # = 0.4
    assert pt.processbench_f1([0], [0])["f1"] is None


def test_auc_by_hand():
    # good steps score 0.9 and 0.4, bad ones 0.2 and 0.6: 3 of the 4 (good, bad) pairs are ordered right
    assert pt.auc([0.9, 0.2, 0.6, 0.4], [True, False, False, True]) == 0.75
    assert pt.auc([0.5, 0.5, 0.1], [True, False, False]) == 0.75  # a tie counts half: (0.5 + 1) / 2
    assert pt.auc([0.3, 0.2], [True, True]) is None


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


# ---------------------------------------------------------------------------------------------- loss and batches


def test_prm_loss_is_the_mean_over_the_labelled_tokens_of_the_global_batch():
    """Two micro-batches of one global batch, 2 and 1 labelled tokens (N = 3); logits chosen so each term is a
    known log: softmax(0, 0) = (1/2, 1/2), softmax(0, ln 3) = (1/4, 3/4). The summed shares must be the global
    mean (ln 2 + ln 4 + ln 4/3) / 3, not the mean of the micro-batch means (ln 8 / 2 + ln 4/3) / 2."""
    ln = math.log
    la = torch.tensor([[[0.0, 0.0], [50.0, -50.0], [0.0, ln(3)], [-50.0, 50.0]]], requires_grad=True)  # [1, 4, 2]
    ya = torch.tensor([[1, -100, 0, -100]])  # unlabelled positions carry wild logits that must not count
    lb = torch.tensor([[[0.0, ln(3)], [9.0, -9.0]]], requires_grad=True)  # [1, 2, 2]
    yb = torch.tensor([[1, -100]])
    (loss_a, hits_a, n_a), (loss_b, hits_b, n_b) = pt.prm_loss(la, ya, 3), pt.prm_loss(lb, yb, 3)
    assert (loss_a + loss_b).item() == pytest.approx((ln(2) + ln(4) + ln(4 / 3)) / 3)
    assert loss_b.item() == pytest.approx(ln(4 / 3) / 3)
    assert (n_a.item(), n_b.item(), hits_a.item(), hits_b.item()) == (2, 1, 0, 1)  # argmax(0, 0) = class 0
    (loss_a + loss_b).backward()
    # d loss / d logits = (softmax - onehot(y)) / N on labelled tokens, 0 elsewhere
    torch.testing.assert_close(la.grad, torch.tensor([[[1 / 6, -1 / 6], [0, 0], [-1 / 4, 1 / 4], [0, 0]]]))
    torch.testing.assert_close(lb.grad, torch.tensor([[[1 / 12, -1 / 12], [0, 0]]]))


def test_batch_schedule_epochs_last_batch_seed_and_length_groups():
    lengths = [5, 40, 12, 7, 33, 21, 2, 18, 27, 9, 14, 30]  # 12 examples, distinct lengths
    sched = pt.batch_schedule(lengths, 4, 2.0, seed=3, group_by_length=True)
    assert len(sched) == 6 and all(len(b) == 4 for b in sched)
    for epoch in (sched[:3], sched[3:]):
        assert sorted(i for b in epoch for i in b) == list(range(12))  # every example exactly once per epoch
        # one mega-batch (12 < 64 x 4): sorted by length and cut, so the 4 longest share a batch, and so on
        assert sorted(sorted(lengths[i] for i in b) for b in epoch) == [[2, 5, 7, 9], [12, 14, 18, 21],
                                                                       [27, 30, 33, 40]]
    # several mega-batches of 64 x 2 = 128 examples: 300 examples -> 150 batches, each example once
    many = pt.batch_schedule([(i * 37) % 101 for i in range(300)], 2, 1.0, seed=0, group_by_length=True)
    assert len(many) == 150 and sorted(i for b in many for i in b) == list(range(300))
    # 10 examples, batch 4: 2 batches per epoch, the last partial batch (2 examples) dropped
    plain = pt.batch_schedule(list(range(10)), 4, 3.0, seed=0, group_by_length=False)
    assert len(plain) == 6
    assert all(len(set(plain[e] + plain[e + 1])) == 8 for e in (0, 2, 4))
    assert pt.batch_schedule(list(range(10)), 4, 3.0, seed=0, group_by_length=False) == plain  # a function of seed
    assert pt.batch_schedule(list(range(10)), 4, 3.0, seed=1, group_by_length=False) != plain
    assert {i for b in plain for i in b} == set(range(10))  # the examples left out differ between epochs
    # fractional epochs: 1.5 epochs x 2 batches = 3 batches, the same as the start of the 3-epoch schedule
    assert pt.batch_schedule(list(range(10)), 4, 1.5, seed=0, group_by_length=False) == plain[:3]
    assert len(pt.batch_schedule(list(range(10)), 4, 0.5, seed=0, group_by_length=False)) == 1


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
