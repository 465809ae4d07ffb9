"""toy_report.py: the t interval against textbook quantiles and a hand computation, the AUC against a hand count,
best/final selection by validation on a hand-written metrics file, sentences that follow their intervals, and a
synthetic run folder through the whole report (schema, rerun byte-identical)."""
import json

import pytest

import toy_report as R
from rollout import format_prompt


@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_textbook_table(df, t):  # two-sided 95% (t_0.975) from any t table
    assert R.t_quantile(0.975, df) == pytest.approx(t, abs=6e-4)


def test_mean_ci_by_hand():
    # 0.5, 0.6, 0.7: mean 0.6, s = 0.1, half width 4.303 * 0.1 / sqrt(3) = 0.24843
    d = R.mean_ci([0.5, 0.6, 0.7])
    assert d["mean"] == pytest.approx(0.6) and d["n"] == 3
    assert d["ci95"] == pytest.approx([0.6 - 0.24843, 0.6 + 0.24843], abs=1e-4)
    assert R.mean_ci([0.4])["ci95"] == [None, None]


def test_auc_by_hand():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 of 4 pairs
    assert R.auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert R.auc([0.5, 0.5, 0.2], [True, False, False]) == pytest.approx(0.75)  # a tie counts half: (1 + 0.5) / 2
    assert R.auc([0.5, 0.6], [True, True]) is None


def eval_keys(val, test, steps=4.0):
    return {"eval/accuracy": val, "eval/steps_per_response": steps, "eval/response_length": 30.0,
            "eval/test/accuracy": test, "eval/test/steps_per_response": steps, "eval/test/response_length": 30.0}


def test_best_is_chosen_by_validation_ties_to_the_earliest():
    rows = [{"step": 0, **eval_keys(0.5, 0.6)},
            {"step": 1, "solved": 0.5, **eval_keys(0.7, 0.65)},
            {"step": 2, "solved": 0.5, **eval_keys(0.7, 0.8)},  # same validation as step 1: not chosen
            {"step": 3, "solved": 0.5},  # not evaluated
            {"step": 4, "solved": 0.5, **eval_keys(0.6, 0.9, steps=6.0)}]
    s = R.run_stats(rows, "metrics.jsonl")
    assert (s["best"], s["best_step"], s["final"], s["steps_per_response"], s["base"]) == (0.65, 1, 0.9, 6.0, 0.6)
    with pytest.raises(R.InputError, match="last step"):
        R.run_stats(rows[:4], "metrics.jsonl")


def world(diffs, ratio):
    """A world summary whose prm_min - prm_sum interval and prm_sum / base ratio interval are given."""
    return {"differences": {"prm_min - prm_sum": {m: {"mean": sum(diffs) / 2, "ci95": list(diffs), "n": 3}
                                                  for m in ("best", "final")}},
            "steps_ratio": {"prm_sum / base": {"mean": sum(ratio) / 2, "ci95": list(ratio), "n": 3}}}


def test_sentences_follow_their_intervals():
    w = world((-0.02, 0.06), (0.9, 1.3))  # both intervals hold the null
    assert R.sentence(w, "prm_min - prm_sum").count("not shown at this budget") == 2
    assert "not shown at this budget" in R.sentence(w, "prm_sum / base")
    w = world((0.05, 0.15), (1.8, 2.6))
    assert R.sentence(w, "prm_min - prm_sum").startswith(
        "Best test accuracy: PRM min-form is above PRM sum-form by 10.0 points (95% CI +5.0 to +15.0 points")
    assert "not shown" not in R.sentence(w, "prm_min - prm_sum")
    assert "PRM sum-form writes more steps per response at its last step than at step 0: 2.20x" in \
        R.sentence(w, "prm_sum / base")
    w = world((-0.15, -0.05), (0.5, 0.7))
    assert "PRM min-form is below PRM sum-form by 10.0 points" in R.sentence(w, "prm_min - prm_sum")
    assert "writes fewer steps" in R.sentence(w, "prm_sum / base")


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(d, test, val, prm_good=0.8, prm_bad=-0.5):
    """A 2-step run: test/val accuracies per step 0..2, rollouts of 2 prompts x 2 samples (right and slipped)."""
    write(d / "metrics.jsonl", [{"step": 0, **eval_keys(val[0], test[0])}] + [
        {"step": t, "reward/process": 0.1 * t, "filter/drawn": 2, "answered_frac": 1.0, **eval_keys(val[t], test[t])}
        for t in (1, 2)])
    right = "23 + 5 = 28\n\n28 - 9 = 19\n\nThe answer is \\boxed{19}."
    slip = "23 + 5 = 28\n\n28 - 9 = 29\n\nThe answer is \\boxed{29}."
    for t in (1, 2):
        write(d / "rollouts" / f"step-{t}.jsonl", [
            {"prompt": format_prompt("Compute 23 + 5 - 9."), "prompt_id": i // 2, "response": r, "correct": r == right,
             "prm_scores": [prm_good] + [prm_good if r == right else prm_bad] * 2}
            for i, r in enumerate([right, slip, right, slip])])


@pytest.fixture
def runs(tmp_path):
    (tmp_path / "run_info.json").write_text(json.dumps({"command": "bash run_cpu.sh", "machine": "a test",
                                                         "date": "2025-01-01", "seconds": 120.0, "steps": 2}))
    for ws in (1, 2):
        w = tmp_path / f"world-{ws}"
        (w / "prm2").mkdir(parents=True)
        (w / "prm2" / "eval.json").write_text(json.dumps({"steps": {"auc": 0.9, "log_loss": 0.3,
                                                                    "log_loss_constant": 0.6, "n_steps": 100}}))
        for k in (1, 2, 3):
            make_run(w / "rl" / f"prm_min-seed{k}", [0.6, 0.7 + 0.01 * k, 0.75], [0.5, 0.8, 0.7])
            # prm_sum: on world 1 clearly below min-form, on world 2 the same up to noise
            tests = [0.6, 0.3 + 0.01 * k, 0.2] if ws == 1 else [0.6, 0.7 + 0.02 * (k - 2) ** 2, 0.75 - 0.01 * k]
            make_run(w / "rl" / f"prm_sum-seed{k}", tests, [0.5, 0.8, 0.7])
    return tmp_path


def test_report_on_synthetic_runs(runs, tmp_path):
    R.main(R.Args(out=runs, docs=tmp_path / "docs"))
    s = json.loads((runs / "summary.json").read_text())
    assert (s["steps"], s["seconds"]) == (2, 120.0) and set(s["worlds"]) == {"1", "2"}
    w = s["worlds"]["1"]
    assert set(w) >= {"base", "prm", "arms"} and set(w["base"]) >= {"accuracy", "steps_per_response"}
    assert set(w["prm"]) >= {"auc", "log_loss", "log_loss_constant"}
    a = w["arms"]["prm_min"]
    assert set(a) >= {"seeds", "final", "best", "steps_per_response"} and set(a["final"]) >= {"mean", "ci95"}
    assert set(a["seeds"][0]) >= {"seed", "final", "best", "best_step", "steps_per_response"}
    assert [r["best_step"] for r in a["seeds"]] == [1, 1, 1] and a["best"]["mean"] == pytest.approx(0.72)
    assert w["base"] == {**w["base"], "accuracy": 0.6, "identical": True}
    # the PRM ranks every right step above every slipped one: AUC 1 on the rollouts (labels from the program)
    assert w["rollout_auc"]["prm_min"]["seeds"]["1"] == {"1": 1.0, "2": 1.0}
    report = (runs / "report.md").read_text()
    assert "Machine: a test. Date: 2025-01-01. Command: `bash run_cpu.sh`." in report
    # world 1: min-form above sum-form (shown); world 2: not shown -> the effect holds on one draw only
    assert "| prm_min - prm_sum | higher | not shown |" in report
    assert "Not on every world drawn (not shown on some, or opposite): prm_min - prm_sum." in report
    assert (tmp_path / "docs" / "world_report.md").read_text() == report.replace("(curves.png)",
                                                                                 "(world_curves.png)")
    before = {p.name: p.read_bytes() for p in (runs / "report.md", runs / "summary.json", runs / "curves.png")}
    R.main(R.Args(out=runs))
    assert before == {p.name: p.read_bytes() for p in (runs / "report.md", runs / "summary.json",
                                                       runs / "curves.png")}
