"""The GPU face's plumbing, checked on the CPU: ppo.py narrows each rank to its own GPU before anything imports
DeepSpeed or vLLM (a fake nvidia-smi and an import recorder); checkpoint rotation keeps every checkpoint's HF weights
and the newest DeepSpeed state only (a fake folder tree, then real DeepSpeed saves and a resume); the weight-sync
folder falls back to disk when /dev/shm is too small (a stubbed free-space probe); run_8xa100.sh fails when a
background evaluation fails (stub `torchrun` and `python` on PATH)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from ppo import drop_old_ds_states, latest_checkpoint
from rollout import sync_folder

ROOT = Path(__file__).resolve().parents[1]

# Imported by every Python process that has its folder on PYTHONPATH: records each torch.cuda availability query and,
# at the first import of deepspeed or vllm, dumps what it saw (and the env right then) to $RECORD and exits.
RECORDER = """
import json, os, sys
import torch

queries = []
for name in ("is_available", "device_count"):
    def wrap(f, name=name):
        def query(*a, **k):
            queries.append([name, os.environ.get("CUDA_VISIBLE_DEVICES")])
            return f(*a, **k)
        return query
    setattr(torch.cuda, name, wrap(getattr(torch.cuda, name)))

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("deepspeed", "vllm"):
            with open(os.environ["RECORD"], "w") as f:
                json.dump({"module": name, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "VLLM_WORKER_MULTIPROC_METHOD": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"),
                           "cuda_queries_before": queries}, f)
            os._exit(0)
        return None

sys.meta_path.insert(0, Recorder())
"""


def fake_gpu_env(tmp_path, **env):
    """A PATH with an `nvidia-smi` that does nothing, the recorder on PYTHONPATH, local rank 1 of 2 on GPUs 4,5."""
    bin_dir, site = tmp_path / "bin", tmp_path / "site"
    bin_dir.mkdir()
    site.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    (site / "sitecustomize.py").write_text(RECORDER)
    base = {k: v for k, v in os.environ.items() if k not in ("VLLM_WORKER_MULTIPROC_METHOD", "RANK", "WORLD_SIZE")}
    return {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": f"{site}:{ROOT}",
            "RECORD": str(tmp_path / "record.json"), "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "CUDA_VISIBLE_DEVICES": "4,5", **env}


def run_ppo(env):
    return subprocess.run([sys.executable, "ppo.py", "--model", "m", "--prm", "none", "--prompts", "p.jsonl"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def test_gpu_rank_is_narrowed_before_deepspeed_or_vllm_is_imported(tmp_path):
    r = run_ppo(fake_gpu_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["module"] == "deepspeed"  # start_run imports it first
    assert record["CUDA_VISIBLE_DEVICES"] == "5"  # local rank 1 of GPUs "4,5"
    assert record["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert all(seen == "5" for _, seen in record["cuda_queries_before"]), record["cuda_queries_before"]


def test_gpu_rank_without_a_gpu_of_its_own_is_one_line(tmp_path):
    r = run_ppo(fake_gpu_env(tmp_path, LOCAL_RANK="2"))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == "error: local rank 2 has no GPU of its own in CUDA_VISIBLE_DEVICES=4,5"
    assert not (tmp_path / "record.json").exists()  # stopped before importing deepspeed


def fake_checkpoint(out, step):
    d = out / f"checkpoint-{step}"
    (d / "ds").mkdir(parents=True)
    (d / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (d / "latest").write_text("ds")
    (d / "zero_to_fp32.py").write_text("")
    (d / "model.safetensors").write_bytes(b"w")
    (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    return d


def test_rotation_keeps_every_hf_folder_and_the_newest_ds_state(tmp_path):
    for step in (20, 40, 100):  # 100 sorts before 20 and 40 as text
        fake_checkpoint(tmp_path, step)
    (tmp_path / ".checkpoint-120.tmp" / "ds").mkdir(parents=True)  # a save in progress is not a checkpoint
    drop_old_ds_states(tmp_path, tmp_path / "checkpoint-100")
    for step in (20, 40):
        d = tmp_path / f"checkpoint-{step}"
        assert sorted(p.name for p in d.iterdir()) == ["model.safetensors", "trainer_state.json"]
    assert sorted(p.name for p in (tmp_path / "checkpoint-100").iterdir()) == \
        ["ds", "latest", "model.safetensors", "trainer_state.json", "zero_to_fp32.py"]
    assert (tmp_path / ".checkpoint-120.tmp" / "ds").is_dir()
    assert latest_checkpoint(tmp_path) == (100, tmp_path / "checkpoint-100")  # resume still reads the newest


# Three real save_checkpoint calls of a world-of-one DeepSpeed ZeRO-2 engine (gloo, tiny model), then a resume: every
# checkpoint loads with from_pretrained, only the newest has ds/, and load_checkpoint restores the newest's state.
SAVE_THREE = """
import os, sys, torch, deepspeed
from pathlib import Path
from types import SimpleNamespace
sys.path.insert(0, {tests!r})
import ppo
from conftest import build_tiny_model, build_tiny_tokenizer
from transformers import AutoModelForCausalLM

tok, out = build_tiny_tokenizer(), Path({out!r})
model = AutoModelForCausalLM.from_pretrained(build_tiny_model(out / "init", tok))
ppo.setup_distributed()
args = SimpleNamespace(train_batch_size=1, micro_train_batch_size=1)
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                  config=ppo.ds_config(args, False))
for step in (1, 2, 3):
    engine.backward(engine(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss)
    engine.step()
    ppo.save_checkpoint(engine, tok, out, step, 0)
for step in (1, 2, 3):
    assert AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{{step}}").config.vocab_size == len(tok)
print(sorted(str(p.relative_to(out)) for p in out.glob("checkpoint-*/ds")))
step, newest = ppo.latest_checkpoint(out)
fresh = AutoModelForCausalLM.from_pretrained(out / "init")
engine2, *_ = deepspeed.initialize(model=fresh, optimizer=torch.optim.AdamW(fresh.parameters(), lr=1e-2),
                                   config=ppo.ds_config(args, False))
engine2.load_checkpoint(str(newest), tag="ds")
same = all(torch.equal(a, b) for a, b in zip(engine.module.parameters(), engine2.module.parameters()))
print("resumed", newest.name, step, engine2.global_steps, same)
"""


def test_real_saves_keep_three_hf_checkpoints_and_one_ds_state(tmp_path):
    script = SAVE_THREE.format(tests=str(ROOT / "tests"), out=str(tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path.home() / ".cache" / "torch_extensions"))}
    env.pop("RANK", None)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-2] == "['checkpoint-3/ds']"
    assert lines[-1] == "resumed checkpoint-3 3 3 True"  # a fresh engine gets the newest's 3 steps and weights


def test_sync_folder_falls_back_to_disk_when_shm_is_too_small(tmp_path):
    shm, disk, gb = tmp_path / "shm", tmp_path / "out" / ".weight-sync-host", 10**9
    shm.mkdir()
    assert sync_folder("run", 15.2 * gb, disk, shm=shm, free_bytes=lambda d: 64 * 2**20) == disk  # Docker's 64 MB
    assert sync_folder("run", 15.2 * gb, disk, shm=shm, free_bytes=lambda d: 15.5 * gb) == disk  # under the 5% margin
    assert sync_folder("run", 15.2 * gb, disk, shm=shm, free_bytes=lambda d: 16 * gb) == shm / "run"
    assert sync_folder("run", 15.2 * gb, disk, shm=tmp_path / "no-shm", free_bytes=lambda d: 10**15) == disk
    # The file an earlier push left there is overwritten in place: its size counts as free space.
    (shm / "run").mkdir()
    with open(shm / "run" / "model.safetensors", "wb") as f:
        f.truncate(100 * 2**20)  # sparse: 100 MiB of size, no space
    assert sync_folder("run", 100 * 2**20, disk, shm=shm, free_bytes=lambda d: 10 * 2**20) == shm / "run"
    assert sync_folder("other", 100 * 2**20, disk, shm=shm, free_bytes=lambda d: 10 * 2**20) == disk


STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
case "$*" in *{fail}*) exit 3 ;; esac
exit 0
"""


def run_script(tmp_path, fail="no-such-argument", **env):
    """run_8xa100.sh with stub torchrun/python (log every call; exit 3 when the arguments contain `fail`)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(exist_ok=True)
    for name in ("torchrun", "python"):
        (bin_dir / name).write_text(STUB.format(log=log, fail=fail))
        (bin_dir / name).chmod(0o755)
    prompts = tmp_path / "8k_math_879_answers.json"
    prompts.write_text("[]")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "BASE_MODEL": str(tmp_path / "base"), "RL_PROMPTS": str(prompts), "EVAL_STEPS": "100 200 500", **env}
    r = subprocess.run(["bash", "run_8xa100.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return r, calls


def test_run_8xa100_fails_when_a_background_evaluation_fails(tmp_path):
    r, calls = run_script(tmp_path, fail="checkpoint-200")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: evaluation failed for: checkpoint-200 " in r.stderr
    assert "done:" not in r.stdout
    assert sum(c.startswith("python evaluate.py") for c in calls) == 4  # base + 3 checkpoints, all waited for


def test_run_8xa100_passes_when_every_stage_passes(tmp_path):
    """Plumbing control for the test above: the same stubs, nothing fails."""
    r, calls = run_script(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "done:" in r.stdout
    assert [c.split()[0] for c in calls].count("torchrun") == 3  # PRM stages 1, 2 and RL


def test_run_8xa100_missing_prompt_file_says_where_it_comes_from(tmp_path):
    r, calls = run_script(tmp_path, RL_PROMPTS=str(tmp_path / "absent.jsonl"))
    assert r.returncode == 1
    assert "https://github.com/CJReinforce/PURE" in r.stderr and "data/8k_math_879_answers.json" in r.stderr
    assert calls == []  # nothing started
