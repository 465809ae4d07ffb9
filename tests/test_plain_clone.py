"""A plain clone: the repo's own files (git ls-files: tracked, and new ones not ignored) copied to a folder with
nothing beside it, the hub unreachable (HF_HUB_OFFLINE=1). There every loader reads the slices shipped in data/, and
prm_train.py -> ppo.py -> evaluate.py run one tiny call each, each on the previous one's output. Without the hub,
the loaders' errors name the dataset and the local way in; run_8xa100.sh fetches PURE's prompts when none is given.
Counts from the files (data/README.md: wc -l and jq)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate as E
import prm_train as pt
import rollout
from common import InputError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
       "TOKENIZERS_PARALLELISM": "false",
       "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))}


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    dest = tmp_path_factory.mktemp("plain") / "repo"
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    assert (dest / "data" / "README.md").is_file() and not (dest.parent / "shared").exists()
    assert not (dest / ".venv").exists() and not (dest / "runs").exists()
    return dest


def run_in(clone, *args, timeout=300):
    """python SCRIPT ARGS in the clone (this checkout's interpreter: the clone has no .venv of its own)."""
    r = subprocess.run([sys.executable, *map(str, args)], cwd=clone, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


LOADERS = """
import json
import evaluate as E, prm_train as pt, rollout
out = {name: len(E.load_benchmark(name, "data/eval")) for name in E.BENCHMARKS}
prompts = rollout.load_prompts("data/train/pure_prompts_256.jsonl")
out["prompts"], out["golds"] = len(prompts), sum(p["answer"] is not None for p in prompts)
out["prm_train"] = len(pt.load_examples("data/prm800k/phase1_train_stepwise_critique.jsonl")[0])
out["prm_test_steps"] = [len(e["completions"]) for e in pt.load_examples(
    "data/prm800k/phase1_test_stepwise_critique.jsonl")[0][:4]]
print(json.dumps(out))
"""


def test_loaders_read_the_shipped_slices(clone):
    got = json.loads(run_in(clone, "-c", LOADERS).splitlines()[-1])
    assert {name: got[name] for name in E.BENCHMARKS} == {name: 20 for name in E.BENCHMARKS}
    assert (got["prompts"], got["golds"]) == (256, 22)
    assert got["prm_train"] >= 64  # run_cpu.sh part B trains on --limit 64
    assert got["prm_test_steps"] == [2, 2, 2, 2]  # rows 2-5 of the file: one history step + the rated one


def test_prm_train_ppo_evaluate_in_the_clone(clone, tiny_model_dir):
    """Stage 1 on the shipped PRM800K slice, --eval-only on the default --eval-data (the clone's data/), one PURE
    RL step on the shipped prompts with that PRM, evaluate.py on the RL checkpoint with the shipped MATH500."""
    run_in(clone, "prm_train.py", "--model", tiny_model_dir, "--output-dir", "out/prm", "--data",
           "data/prm800k/phase1_train_stepwise_critique.jsonl", "--limit", 8, "--global-batch-size", 4,
           "--per-device-batch-size", 4, "--max-steps", 1, "--no-gradient-checkpointing")
    run_in(clone, "prm_train.py", "--model", "out/prm", "--output-dir", "out/prm", "--eval-only", "--limit", 2)
    res = json.loads((clone / "out" / "prm" / "eval.json").read_text())
    assert res["prm800k_phase1_test"]["n_steps"] == 4  # the first 2 examples, 2 steps each
    assert [res[f"processbench_{b}"]["n"] for b in ("gsm8k", "math", "olympiadbench", "omnimath")] == [2] * 4
    assert "best_of_8_math" in res
    run_in(clone, "ppo.py", "--model", tiny_model_dir, "--prm", "out/prm", "--prompts",
           "data/train/pure_prompts_256.jsonl", "--output-dir", "out/rl", "--rollout-batch-size", 2,
           "--n-samples-per-prompt", 2, "--generate-max-len", 8, "--train-batch-size", 4,
           "--micro-train-batch-size", 2, "--max-steps", 1, "--save-steps", 1, "--no-gradient-checkpointing")
    (row,) = [json.loads(line) for line in open(clone / "out" / "rl" / "metrics.jsonl")]
    assert row["step"] == 1 and row["reward/process"] is not None
    run_in(clone, "evaluate.py", "--model", "out/rl/checkpoint-1", "--benchmarks", "math500", "--data-dir",
           "data/eval", "--limit", 2, "--max-tokens", 8, "--output-dir", "out/eval", "--workers", 1)
    results = json.loads((clone / "out" / "eval" / "results.json").read_text())
    assert results["math500"]["n"] == 2 and results["settings"]["data"] == "data/eval"


@pytest.mark.parametrize("load, name, hint", [
    (E.load_benchmark, "math500", r"hf:HuggingFaceH4/MATH-500: cannot load .*pass --data-dir DIR with a local copy "
                                  r"at DIR/math500.jsonl"),
    (pt.load_examples, "HuggingFaceH4/prm800k-trl-dedup", r"^HuggingFaceH4/prm800k-trl-dedup: not a local file, "
                                                          r"and the hub dataset failed to load .*pass --data "),
    (rollout.load_prompts, "someone/prompts", r"^someone/prompts: not a local file, .*pass the path of a .jsonl"),
    (rollout.load_prompts, "prompts.json", r"^prompts.json: no such file$"),
])
def test_without_the_hub_the_error_names_the_dataset_and_a_local_way(load, name, hint):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: the hub is out of reach
    with pytest.raises(InputError, match=hint):
        load(name)


def run_8xa100(tmp_path, **env):
    """run_8xa100.sh with RL_PROMPTS unset and stubs on PATH that log their calls: torchrun and python do nothing,
    curl writes "[]" to its -o path (or fails with FAIL_CURL set). Returns (result, the calls but curl's)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(exist_ok=True)
    stub = f'#!/bin/sh\necho "$(basename "$0") $*" >> "{log}"\n'
    for name in ("torchrun", "python"):
        (bin_dir / name).write_text(stub)
    curl = stub.replace(str(log), str(tmp_path / "curl.log"))
    (bin_dir / "curl").write_text(curl + '[ -n "$FAIL_CURL" ] && exit 22\n'
                                  'while [ $# -gt 0 ]; do [ "$1" = -o ] && echo "[]" > "$2"; shift; done\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "BASE_MODEL": str(tmp_path / "base"), "RL_PROMPTS": "", "EVAL_STEPS": "100", **env}
    r = subprocess.run(["bash", "run_8xa100.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return r, log.read_text().splitlines() if log.exists() else []


def test_run_8xa100_fetches_pures_prompts_when_none_is_given(tmp_path):
    """RL_PROMPTS unset: curl fetches PURE's file at a pinned commit into $OUT/data/ and ppo.py gets that path; a
    failed download stops the script before any stage, naming the URL and RL_PROMPTS."""
    r, calls = run_8xa100(tmp_path, FAIL_CURL="1")
    assert r.returncode == 1 and calls == []
    assert "error: cannot download PURE's prompts from https://raw.githubusercontent.com/CJReinforce/PURE/" in r.stderr
    assert "set RL_PROMPTS" in r.stderr
    r, calls = run_8xa100(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    fetched = tmp_path / "out" / "data" / "8k_math_879_answers.json"
    assert fetched.read_text() == "[]\n"
    (ppo_call,) = [c for c in calls if c.startswith("torchrun") and " ppo.py " in c]
    assert f"--prompts {fetched} " in ppo_call
    (url,) = {c.split()[-3] for c in (tmp_path / "curl.log").read_text().splitlines()}
    assert url == ("https://raw.githubusercontent.com/CJReinforce/PURE/41f9363b8cc4af044b7fc5f7f9bbbf62139e9553/"
                   "data/8k_math_879_answers.json")
