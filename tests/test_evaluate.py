"""evaluate.py: benchmark loaders on the real files (data/eval's first 20 problems, and the whole files where
conftest's shared_data has them; counts and golds checked by hand), accuracy/avg from hand-made verdict files (the
paper's own rows), the compare table, bad input, one end-to-end run through vLLM, and main with a scripted engine
whose responses' verdicts are known (greedy, avg@k, resume, the user's own JSONL set)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate as E
from common import InputError

ROOT = Path(__file__).resolve().parents[1]
FIVE = ["math500", "minerva_math", "olympiadbench", "aime24", "amc23"]
EVAL_DATA = ROOT / "data" / "eval"  # the shipped first 20 problems of each benchmark

# name -> (rows in the whole file, {row index: gold read by eye from the file}); data/eval ships the first 20 rows
EXPECTED = {
    "math500": (500, {0: r"\left( 3, \frac{\pi}{2} \right)", 1: "p - q", 2: r"\frac{14}{3}", 3: "9"}),
    "minerva_math": (272, {0: "1.6", 1: "4.5e33", 2: "41.8", 5: "np.arcsin(10/13)"}),
    "olympiadbench": (675, {0: "2", 1: r"\frac{1}{2 n+2}", 2: "2^{1009}", 5: "(1,8,19), (2,7,13), (4,5,7)"}),
    "aime24": (30, {0: "204", 1: "113", 7: "025"}),  # "025" stays as written: the grader compares values
    "amc23": (40, {0: "27", 3: "3159", 15: "-1"}),  # stored as floats 27.0, 3159.0, -1.0
    "gsm8k": (1319, {0: "18", 3: "540"}),
    "aimo_aime": (90, {0: "116"}),
    "aimo_amc": (83, {0: "142"}),
}


@pytest.mark.parametrize("name", list(E.BENCHMARKS))
def test_loader_counts_and_golds(name):
    rows = E.load_benchmark(name, EVAL_DATA)
    _, golds = EXPECTED[name]
    assert len(rows) == 20
    assert {i: rows[i]["gold"] for i in golds} == golds
    assert all(r["question"].strip() for r in rows)
    assert len(E.load_benchmark(name, EVAL_DATA, limit=3)) == 3


def test_whole_files_math500_gold_is_answer_field_and_gsm8k_keeps_separators(shared_data):
    for name, (n, golds) in EXPECTED.items():
        rows = E.load_benchmark(name, shared_data / "eval")
        assert len(rows) == n and {i: rows[i]["gold"] for i in golds} == golds
    raw = [json.loads(line) for line in open(shared_data / "eval" / "math500.jsonl")]
    golds = [r["gold"] for r in E.load_benchmark("math500", shared_data / "eval")]
    assert golds == [r["answer"] for r in raw]  # all 500
    gsm = [r["gold"] for r in E.load_benchmark("gsm8k", shared_data / "eval")]
    assert sum("," in g for g in gsm) == 14 and "1,600" in gsm


def test_last_boxed():
    assert E.last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert E.last_boxed(r"\boxed{\{1,2\} \cup \{3\}}") == r"\{1,2\} \cup \{3\}"
    assert E.last_boxed(r"\boxed{12") is None and E.last_boxed("no box") is None
    assert [E.number_text(x) for x in (27.0, 2.5, "025", 7)] == ["27", "2.5", "025", "7"]


def test_cut_at_stop_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    stop = E.stop_token_ids(tok)
    assert stop == {im_end, eos}  # "</s>" is not a token of this vocabulary
    head, tail = tok.encode("x = 1", add_special_tokens=False), tok.encode(" and more", add_special_tokens=False)
    sample = {"prompt_index": 0, "response_ids": head + [im_end] + tail + [eos], "response_text": "x = 1 and more",
              "finish_reason": "stop"}
    cut = E.cut_at_stop(sample, stop, tok)
    assert cut == {"prompt_index": 0, "response_ids": head + [im_end], "response_text": "x = 1",
                   "finish_reason": "stop"}
    ends_on_eos = {**sample, "response_ids": head + [eos]}
    running = {**sample, "response_ids": head + tail, "finish_reason": "length"}
    assert E.cut_at_stop(ends_on_eos, stop, tok) is ends_on_eos and E.cut_at_stop(running, stop, tok) is running


def test_prompts_pure_and_chat(tiny_tokenizer):
    pure = 'What is 1+1?\n\nPlease reason step by step with steps separated by "\n\n", and put your final answer ' \
           "within \\boxed{}."
    assert E.build_prompts(["What is 1+1?"], "pure") == [pure]
    assert E.build_prompts(["What is 1+1?"], "chat", tiny_tokenizer) == [
        f"<|im_start|>user\n{pure}<|im_end|>\n<|im_start|>assistant\n"]


def test_bad_input_names_file_line_and_field(tmp_path):
    with pytest.raises(InputError, match="--benchmarks: math5000: unknown benchmark"):
        E.parse_benchmarks("math500,math5000")
    with pytest.raises(InputError, match=r"math500.jsonl: no such file"):
        E.load_benchmark("math500", tmp_path)
    (tmp_path / "math500.jsonl").write_text(json.dumps({"problem": "1+1?", "solution": r"\boxed{2}"}) + "\n"
                                            + json.dumps({"problem": "2+2?"}) + "\n")
    with pytest.raises(InputError, match=r"math500.jsonl:2: solution: missing"):
        E.load_benchmark("math500", tmp_path)
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"question": "?", "answer": "1"}) + "\n"
                                           + json.dumps({"answer": "2"}) + "\n")
    with pytest.raises(InputError, match=r"aime24.jsonl:2: question: missing"):
        E.load_benchmark("aime24", tmp_path)
    (tmp_path / "minerva_math.jsonl").write_text(json.dumps({"problem": "?", "solution": "no box"}) + "\n")
    with pytest.raises(InputError, match=r"minerva_math.jsonl:1: gold: no gold answer"):
        E.load_benchmark("minerva_math", tmp_path)


def test_cli_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "evaluate.py", "--model", "x", "--benchmarks", "math500,nope",
                        "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["error: --benchmarks: nope: unknown benchmark (known: "
                                             + ", ".join(E.BENCHMARKS) + "; or the path of a .jsonl file)"]


def test_cli_missing_model_is_one_line(tmp_path):
    """Checked before vLLM starts (which would end in a transformers "Repo id must be in the form" traceback)."""
    r = subprocess.run([sys.executable, "evaluate.py", "--model", "no/such/dir", "--benchmarks", "aime24",
                        "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: no/such/dir: no such model folder, nor a Hugging Face hub model (HFValidationError)"]
    with pytest.raises(InputError, match=r"^no/such: no such model folder, nor a Hugging Face hub model"):
        E.check_model("no/such")  # a valid hub id, but offline (conftest) and not cached
    with pytest.raises(InputError, match=f"^{tmp_path}: not a model folder \\(no config.json\\)"):
        E.check_model(str(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing written


def write_verdicts(folder, name, correct_counts, samples=1):
    """A hand-made outputs file: len(correct_counts) problems, problem i has correct_counts[i] of `samples` right."""
    rows = [{"index": i, "sample": k, "correct": k < c} for i, c in enumerate(correct_counts) for k in range(samples)]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# PURE README rows (AIME24, MATH500, AMC, Minerva, OlympiadBench, Avg) and right-answer counts that give them.
PAPER_ROWS = {
    "Qwen2.5-7B-PURE-PRM+VR": ([6, 413, 33, 101, 298], [20.0, 82.6, 82.5, 37.1, 44.1], 53.3),  # 266.3/5 = 53.26
    "Qwen2.5-Math-7B-Base": ([4, 359, 19, 81, 237], [13.3, 71.8, 47.5, 29.8, 35.1], 39.5),  # 197.5/5 = 39.5
}
SIZES = {"aime24": 30, "math500": 500, "amc23": 40, "minerva_math": 272, "olympiadbench": 675}


def write_paper_run(folder, counts):
    folder.mkdir(parents=True)
    for (name, size), c in zip(SIZES.items(), counts):
        write_verdicts(folder, name, [1] * c + [0] * (size - c))


@pytest.mark.parametrize("row", list(PAPER_ROWS))
def test_accuracy_and_avg_from_verdicts(row, tmp_path):
    counts, accs, avg = PAPER_ROWS[row]
    write_paper_run(tmp_path / "run", counts)
    res = E.results_from_outputs(tmp_path / "run", FIVE)
    assert [res[b]["accuracy"] for b in SIZES] == accs
    assert [res[b]["n"] for b in SIZES] == list(SIZES.values())
    assert res["avg"] == {"accuracy": avg}
    assert "avg" not in E.results_from_outputs(tmp_path / "run", FIVE[:4])  # Avg only over all five


def test_avg_at_k_and_bad_verdict(tmp_path):
    write_verdicts(tmp_path, "aime24", [4, 1, 0], samples=4)  # 5 of 12 samples right, 3 problems
    assert E.results_from_outputs(tmp_path, ["aime24"]) == {"aime24": {"accuracy": 41.7, "n": 3}}
    (tmp_path / "amc23.jsonl").write_text('{"index": 0, "correct": true}\n{"index": 1, "correct": null}\n')
    with pytest.raises(InputError, match=r"amc23.jsonl:2: correct: must be true or false"):
        E.results_from_outputs(tmp_path, ["amc23"])


def test_compare_table(tmp_path, capsys):
    for label, run in (("base", "Qwen2.5-Math-7B-Base"), ("pure", "Qwen2.5-7B-PURE-PRM+VR")):
        write_paper_run(tmp_path / label, PAPER_ROWS[run][0])
        settings = {"model": f"/ckpt/{label}", "prompt_template": "pure", "decoding": "greedy", "n_samples": 1,
                    "max_tokens": 3000 if label == "base" else 2048, "seed": 42, "limit": None}
        res = E.results_from_outputs(tmp_path / label, FIVE)
        (tmp_path / label / "results.json").write_text(json.dumps({**res, "settings": settings}))
    text = E.compare([tmp_path / "base", tmp_path / "pure"], tmp_path / "out")
    lines = text.splitlines()
    assert "| Model | AIME 2024 | MATH 500 | AMC | Minerva Math | OlympiadBench | Avg. |" in lines
    assert "| base | 13.3 | 71.8 | 47.5 | 29.8 | 35.1 | 39.5 |" in lines
    assert "| pure | 20.0 | 82.6 | 82.5 | 37.1 | 44.1 | 53.3 |" in lines
    assert "settings differ in max_tokens." in text
    assert (tmp_path / "out" / "compare.md").read_text() == text == capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"math500": {"acc": 1}}')
    with pytest.raises(InputError, match=r"results.json: math500: must be"):
        E.compare([tmp_path / "bad"], tmp_path / "out")


def test_end_to_end_tiny_model(tiny_model_dir, tmp_path):
    """Plumbing through the real vLLM engine and grader: two problems of two benchmarks (the random model never
    answers right, so verdict values are checked with the scripted engine below); a rerun resumes without one."""
    import rewards

    out = tmp_path / "eval"
    cmd = [sys.executable, "evaluate.py", "--model", str(tiny_model_dir), "--benchmarks", "math500,aime24",
           "--data-dir", str(EVAL_DATA), "--limit", "2", "--max-tokens", "16", "--output-dir", str(out),
           "--workers", "2"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    for name in ("math500", "aime24"):
        rows = [json.loads(line) for line in open(out / f"{name}.jsonl")]
        golds = [row["gold"] for row in E.load_benchmark(name, EVAL_DATA, limit=2)]
        assert [row["gold"] for row in rows] == golds and [row["index"] for row in rows] == [0, 1]
        assert all(1 <= row["tokens"] <= 16 and isinstance(row["correct"], bool) for row in rows)
        assert [row["correct"] for row in rows] == [rewards.is_correct(row["response"], g)
                                                    for row, g in zip(rows, golds)]
        acc = round(100 * sum(row["correct"] for row in rows) / 2, 1)
        assert saved[name] == {"accuracy": acc, "n": 2}
    assert "avg" not in saved and saved["settings"]["max_tokens"] == 16 and saved["settings"]["seed"] == 42
    md = (out / "results.md").read_text()
    assert (f"| {tiny_model_dir.name} | {saved['aime24']['accuracy']:.1f} | {saved['math500']['accuracy']:.1f} "
            "| – | – | – | – |") in md
    assert "greedy" in md and "max new tokens: 16" in md and "vllm 0.32.0" in md and "--limit 2" in md
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}
    args = E.Args(model=str(tiny_model_dir), benchmarks="aime24", data_dir=EVAL_DATA, limit=2, max_tokens=16,
                  output_dir=out, workers=2)
    assert E.main(args) == {k: v for k, v in saved.items() if k != "settings"}  # nothing regenerated
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")} == before
    with pytest.raises(InputError, match="settings: differ from this run \\(max_tokens\\)"):
        E.main(E.Args(model=str(tiny_model_dir), benchmarks="aime24", data_dir=EVAL_DATA, limit=2, max_tokens=8,
                      output_dir=out))


# ---------------------------------------------------------------------------------------------- scripted engine
class ScriptedLLM:
    """Stands in for vllm.LLM in evaluate.main: sample j of the prompt holding question q is script[q][j] ("<|im_end|>"
    in it becomes that special token, which vLLM's text leaves out), then EOS. Records every request's prompts and
    SamplingParams; the call numbered `fail_on_call` raises, as a run killed midway."""

    def __init__(self, tokenizer, script, fail_on_call=None):
        self.tok, self.script, self.fail_on_call, self.calls = tokenizer, script, fail_on_call, []

    def get_tokenizer(self):
        return self.tok

    def encode(self, text):
        im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
        pieces = [self.tok.encode(t, add_special_tokens=False) for t in text.split("<|im_end|>")]
        return [i for k, ids in enumerate(pieces) for i in ([im_end] if k else []) + ids] + [self.tok.eos_token_id]

    def generate(self, prompts, params, use_tqdm=True):
        from types import SimpleNamespace as NS

        texts = [self.tok.decode(p["prompt_token_ids"]) for p in prompts]
        self.calls.append((texts, params))
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("killed")
        outs = []
        for text, p in zip(texts, params):
            (question,) = [q for q in self.script if q in text]
            ids = [self.encode(self.script[question][j]) for j in range(p.n)]
            outs.append(NS(outputs=[NS(index=j, token_ids=x, text=self.tok.decode(x, skip_special_tokens=True),
                                       finish_reason="stop", logprobs=[{t: NS(logprob=-1.0)} for t in x])
                                    for j, x in enumerate(ids)]))
        return outs


def scripted_run(monkeypatch, llm, tmp_path, **kw):
    """evaluate.main with the engine replaced by `llm`; returns (results, the engine's start arguments)."""
    import rollout

    started = {}
    monkeypatch.setattr(rollout, "start_engine", lambda model, **a: started.update(a, model=model) or llm)
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")  # check_model needs a model folder; no engine reads it
    args = E.Args(**{"model": str(tmp_path / "model"), "data_dir": EVAL_DATA, "limit": 2, "max_tokens": 64,
                     "output_dir": tmp_path / "out", "workers": 2, **kw})
    return E.main(args), started


def rows_of(path):
    return [json.loads(line) for line in open(path)]


BOX = "So the answer is $\\boxed{{{}}}$.".format


def test_scripted_engine_right_answers_and_resume(tmp_path, tiny_tokenizer, monkeypatch):
    """Responses whose verdicts are known (golds read by eye, EXPECTED): math500 both right, one only after its
    <|im_end|> cut (a wrong \\boxed{7} follows it); aime24 one right, one wrong. The first run dies on aime24 after
    finishing math500; the rerun generates aime24 only and keeps math500's file as it was."""
    (m0, m1), (a0, a1) = (E.load_benchmark(b, EVAL_DATA, limit=2) for b in ("math500", "aime24"))
    script = {m0["question"]: [BOX(r"\left( 3, \frac{\pi}{2} \right)")],
              m1["question"]: [BOX("p - q") + "<|im_end|>Or rather $\\boxed{7}$"],
              a0["question"]: [BOX("204")], a1["question"]: [BOX("112")]}  # gold 113
    first = ScriptedLLM(tiny_tokenizer, script, fail_on_call=2)
    with pytest.raises(RuntimeError, match="killed"):
        scripted_run(monkeypatch, first, tmp_path, benchmarks="math500,aime24")
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["math500"] == {"accuracy": 100.0, "n": 2}
    assert not (out / "aime24.jsonl").exists()
    math_rows = rows_of(out / "math500.jsonl")
    assert [(r["index"], r["sample"], r["correct"], r["extracted"]) for r in math_rows] == [
        (0, 0, True, r"\left( 3, \frac{\pi}{2} \right)"), (1, 0, True, "p - q")]
    cut = first.encode(BOX("p - q"))[:-1] + [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert math_rows[1]["response"] == BOX("p - q") and math_rows[1]["tokens"] == len(cut)
    (_, params), _ = first.calls  # greedy, the reference's settings
    assert [(p.n, p.temperature, p.top_p, p.max_tokens, p.seed, p.stop) for p in params] == [
        (1, 0.0, 1.0, 64, 42, E.STOP), (1, 0.0, 1.0, 64, 43, E.STOP)]
    before = (out / "math500.jsonl").read_bytes()
    second = ScriptedLLM(tiny_tokenizer, script)
    res, started = scripted_run(monkeypatch, second, tmp_path, benchmarks="math500,aime24")
    assert [[a0["question"] in t for t in texts] for texts, _ in second.calls] == [[True, False]]  # aime24 only
    assert (out / "math500.jsonl").read_bytes() == before
    assert res == {"math500": {"accuracy": 100.0, "n": 2}, "aime24": {"accuracy": 50.0, "n": 2}}
    assert [r["correct"] for r in rows_of(out / "aime24.jsonl")] == [True, False]
    assert started == {"model": str(tmp_path / "model"), "seed": 42, "max_model_len": None, "dtype": "auto"}


def test_scripted_engine_avg_at_k(tmp_path, tiny_tokenizer, monkeypatch):
    """--n-samples 4 --temperature 0.7: samples 1-3 of problem 0 right, sample 2 of problem 1 right: avg@4 =
    4/8 = 50.0 (sample 0 alone: 0.0); every sample graded against its own problem's gold."""
    m0, m1 = E.load_benchmark("math500", EVAL_DATA, limit=2)
    right0, right1 = BOX(r"\left( 3, \frac{\pi}{2} \right)"), BOX("p - q")
    script = {m0["question"]: [BOX("3"), right0, right0, right0], m1["question"]: [BOX("q"), right0, right1, BOX("0")]}
    llm = ScriptedLLM(tiny_tokenizer, script)
    res, _ = scripted_run(monkeypatch, llm, tmp_path, benchmarks="math500", n_samples=4, temperature=0.7)
    assert res == {"math500": {"accuracy": 50.0, "n": 2}}
    rows = rows_of(tmp_path / "out" / "math500.jsonl")
    assert [(r["index"], r["sample"], r["correct"]) for r in rows] == [
        (0, 0, False), (0, 1, True), (0, 2, True), (0, 3, True), (1, 0, False), (1, 1, False), (1, 2, True),
        (1, 3, False)]
    ((_, params),) = llm.calls
    assert [(p.n, p.temperature, p.top_p, p.seed) for p in params] == [(4, 0.7, 1.0, 42), (4, 0.7, 1.0, 46)]
    assert "sampling (temperature 0.7, top_p 1), n_samples 4" in (tmp_path / "out" / "results.md").read_text()


def test_user_jsonl_benchmark(tmp_path, tiny_tokenizer, monkeypatch):
    """--benchmarks PATH.jsonl: `question` or `problem`, and `answer` (a number too); named by the file stem,
    its file recorded; a rerun naming another file of that stem into the same folder is refused."""
    sets = tmp_path / "sets"
    sets.mkdir()
    (sets / "my_set.jsonl").write_text('{"question": "What is 2+2?", "answer": "4"}\n'
                                       '{"problem": "What is 3*4?", "answer": 12}\n')
    script = {"What is 2+2?": [BOX("4")], "What is 3*4?": [BOX("13")]}
    res, _ = scripted_run(monkeypatch, ScriptedLLM(tiny_tokenizer, script), tmp_path,
                          benchmarks=f"{sets / 'my_set.jsonl'}", limit=None)
    assert res == {"my_set": {"accuracy": 50.0, "n": 2, "file": str(sets / "my_set.jsonl")}}
    rows = rows_of(tmp_path / "out" / "my_set.jsonl")
    assert [(r["question"], r["gold"], r["correct"]) for r in rows] == [("What is 2+2?", "4", True),
                                                                       ("What is 3*4?", "12", False)]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| Avg. | my_set |" in md and "| – | 50.0 |" in md
    assert "| – | 50.0 |" in E.compare([tmp_path / "out"], tmp_path / "cmp")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "my_set.jsonl").write_text('{"question": "What is 2+2?", "answer": "4"}\n')
    with pytest.raises(InputError, match=r"results.json: my_set: evaluated here on .*sets/my_set.jsonl, not "):
        scripted_run(monkeypatch, None, tmp_path, benchmarks=str(tmp_path / "other" / "my_set.jsonl"), limit=None)


@pytest.mark.parametrize("lines, msg", [
    (['{"answer": "1"}'], r"x.jsonl:1: question: missing or not a non-empty string"),
    (['{"question": "q", "answer": "1"}', '{"problem": " ", "answer": "1"}'], r"x.jsonl:2: problem: missing"),
    (['{"question": "q", "answer": null}'], r"x.jsonl:1: answer: missing or not a non-empty string or a number"),
    (['{"question": "q", "answer": [1]}'], r"x.jsonl:1: answer: missing or not"),
    (['{"question": "q", "answer": ""}'], r"x.jsonl:1: answer: missing or not"),
    (['{"question": "q"', ], r"x.jsonl:1: not valid JSON"),
    ([], r"x.jsonl: no rows"),
])
def test_user_jsonl_bad_rows(tmp_path, lines, msg):
    (tmp_path / "x.jsonl").write_text("".join(line + "\n" for line in lines))
    with pytest.raises(InputError, match=msg):
        E.load_user_benchmark(tmp_path / "x.jsonl")


def test_user_jsonl_bad_names(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"--benchmarks: sets/math500.jsonl: the file is named like the built-in"):
        E.parse_benchmarks("aime24,sets/math500.jsonl")
    with pytest.raises(InputError, match=r"--benchmarks: b/x.jsonl: a second benchmark named 'x'"):
        E.parse_benchmarks("a/x.jsonl,b/x.jsonl")
    with pytest.raises(InputError, match=r"--benchmarks: x.txt: unknown benchmark"):
        E.parse_benchmarks("x.txt")
    assert E.parse_benchmarks("aime24, d/mine.jsonl") == {"aime24": None, "mine": Path("d/mine.jsonl")}
    with pytest.raises(InputError, match=r"missing.jsonl: no such file"):  # before any engine starts
        scripted_run(monkeypatch, None, tmp_path, benchmarks=str(tmp_path / "missing.jsonl"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(InputError, match=r"--output-dir: its mine.jsonl would overwrite the benchmark file"):
        scripted_run(monkeypatch, None, tmp_path, benchmarks=str(tmp_path / "out" / "mine.jsonl"))
    assert (tmp_path / "out" / "mine.jsonl").read_text() == '{"question": "q", "answer": "1"}\n'
