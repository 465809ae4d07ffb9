"""The GPU face's plumbing, checked on the CPU: ppo.py narrows each rank to its own GPU before anything imports
DeepSpeed or vLLM (a fake nvidia-smi, or none, and an import recorder) and stops a rank that sees several GPUs;
GPU detection without nvidia-smi (a stubbed PATH, /dev and environment); the chunked log-probs equal the plain
log-softmax and hold less memory (torch's profiler); a frozen model's visit to a device leaves its host tensors in
place; checkpoint rotation keeps every checkpoint's HF weights and the newest DeepSpeed state only (a fake folder
tree, then real DeepSpeed saves, through host copies, and a resume); the weight-sync folder falls back to disk when
/dev/shm is too small (a stubbed free-space probe); run_8xa100.sh fails when a background evaluation fails and
skips finished stages (stub `torchrun` and `python` on PATH)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common
import ppo
import runtime
from runtime import drop_old_ds_states, has_nvidia_gpus, latest_checkpoint, on_device, pin_to_host, token_logprobs
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


def fake_gpu_env(tmp_path, smi=True, **env):
    """A PATH with an `nvidia-smi` that does nothing (smi=False: none at all), the recorder on PYTHONPATH, local rank
    1 of 2 on GPUs 4,5."""
    bin_dir, site = tmp_path / "bin", tmp_path / "site"
    bin_dir.mkdir()
    site.mkdir()
    if smi:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    (site / "sitecustomize.py").write_text(RECORDER)
    path = [d for d in os.environ["PATH"].split(":") if not (Path(d) / "nvidia-smi").exists()]
    base = {k: v for k, v in os.environ.items() if k not in ("VLLM_WORKER_MULTIPROC_METHOD", "RANK", "WORLD_SIZE")}
    return {**base, "PATH": ":".join([str(bin_dir), *path]), "PYTHONPATH": f"{site}:{ROOT}",
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


def test_gpu_rank_is_narrowed_without_nvidia_smi(tmp_path):
    """A container with GPUs but no nvidia-smi on PATH: CUDA_VISIBLE_DEVICES as given still narrows each rank."""
    r = run_ppo(fake_gpu_env(tmp_path, smi=False))
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["CUDA_VISIBLE_DEVICES"] == "5" and record["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_gpu_detection_without_nvidia_smi(tmp_path, monkeypatch):
    exists = os.path.exists
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/nvidiactl" else exists(p))
    assert not has_nvidia_gpus()  # a CPU machine
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")  # CUDA base images set it with or without GPUs
    assert not has_nvidia_gpus()
    for visible, gpus in (("", False), ("-1", False), ("4,5", True)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert has_nvidia_gpus() == gpus, visible
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(os.path, "exists", lambda p: True if p == "/dev/nvidiactl" else exists(p))
    assert has_nvidia_gpus()  # the driver's control device: a container with GPUs and no nvidia-smi
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/nvidiactl" else exists(p))
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    assert has_nvidia_gpus()


def test_a_rank_that_sees_several_gpus_stops_with_one_line(monkeypatch):
    """Narrowing skipped (no sign of the GPUs found before the first CUDA call): every rank would bind cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(common.InputError) as e:
        runtime.init_ranks()
    assert str(e.value) == ("CUDA_VISIBLE_DEVICES: local rank 1 sees 8 GPUs (None); each rank needs exactly one: "
                            "set CUDA_VISIBLE_DEVICES to the node's GPUs")


# ------------------------------------------------------------------------------------------ log-probs and memory
def tiny_batch(tiny_model_dir, dtype, lengths, seed=0):
    """The tiny policy's logits [b, T, V] on random token ids of the given lengths (right-padded with id 0)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, model.config.vocab_size, (n,), generator=g)
    with torch.no_grad():
        return model(input_ids=ids).logits, ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_equal_the_plain_log_softmax(tiny_model_dir, dtype):
    logits, ids = tiny_batch(tiny_model_dir, dtype, [37, 20, 5])
    plain = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])[..., 0]  # [b, T]
    for chunk in (1, 7, 512):  # chunk borders inside, at and beyond the sequence
        chunked = token_logprobs(logits, ids, chunk=chunk)
        assert chunked.dtype == torch.float32 and chunked.shape == ids.shape
        assert (chunked - plain).abs().max().item() < 1e-6
    shifted = token_logprobs(logits[:, :-1], ids[:, 1:], chunk=7)  # a view, as response_logprobs passes it
    expected = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert (shifted - expected).abs().max().item() < 1e-6


def test_response_logprobs_equal_each_unpadded_sequence(tiny_model_dir):
    """Left-padded prompts, right-padded responses, chunked log-softmax: each response's log-probs as its own
    unpadded forward pass gives them, 0 on padding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    samples = [{"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 10, 11, 12]},
               {"prompt_ids": [12, 13, 14, 15, 16], "response_ids": [17, 18]}]
    with torch.no_grad():
        got = ppo.response_logprobs(model, samples, 0, "cpu")  # [2, 5]
        for i, x in enumerate(samples):
            seq, P = torch.tensor([x["prompt_ids"] + x["response_ids"]]), len(x["prompt_ids"])
            L = len(x["response_ids"])
            logits = model(input_ids=seq).logits[0, P - 1:-1]  # [L, V] predicting each response token
            want = torch.log_softmax(logits, -1).gather(-1, seq[0, P:, None])[:, 0]
            assert (got[i, :L] - want).abs().max().item() < 1e-5
            assert (got[i, L:] == 0).all()


def peak_bytes(fn):
    """Most bytes held at once by the CPU allocations made inside fn() (torch's profiler, allocation events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        event = todo.pop()
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))  # negative: a free
        todo.extend(event.children)
    held = peak = 0
    for _, size in sorted(sizes):
        held += size
        peak = max(peak, held)
    return peak


def test_chunked_logprobs_hold_less_memory_on_a_long_sequence(tiny_model_dir):
    logits, ids = tiny_batch(tiny_model_dir, torch.bfloat16, [4096, 4096])
    b, T, V = logits.shape
    plain = peak_bytes(lambda: torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]))
    chunked = peak_bytes(lambda: token_logprobs(logits, ids))
    assert plain >= 2 * b * T * V * 4  # an fp32 copy of the logits and an fp32 log-softmax of it, at once
    assert chunked <= 2 * 512 * V * 4 + 4 * b * T * 4  # one chunk's fp32 copy and log-softmax; [b, T] fp32 results
    assert chunked < plain / 4


def test_a_visit_to_the_device_a_model_is_on_leaves_it_as_it_is():
    """The actor's case (buffer_logprobs on the trainer's own model): its tensors stay, changes made in the block too.
    The frozen models' case, host -> GPU -> the same host tensors, runs on GPU only (the test below)."""
    model = torch.nn.Linear(4, 3)
    ptrs = [p.data_ptr() for p in model.parameters()]
    with torch.no_grad(), on_device(model, torch.device("cpu")):
        model.weight.add_(1.0)
        changed = model.weight.clone()
    assert [p.data_ptr() for p in model.parameters()] == ptrs and torch.equal(model.weight, changed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_reference_visits_the_gpu_and_comes_back_without_a_copy(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = pin_to_host(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16))
    params = list(model.parameters())
    assert all(p.is_pinned() for p in params)
    assert len({p.untyped_storage().data_ptr() for p in params}) == 1  # one buffer: one power-of-two rounding
    ptrs = [p.data_ptr() for p in params]
    with on_device(model, torch.device("cuda")):
        assert all(p.is_cuda for p in params)
    assert [p.data_ptr() for p in params] == ptrs and all(p.is_pinned() for p in params)


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
import runtime
from conftest import build_tiny_model, build_tiny_tokenizer
from transformers import AutoModelForCausalLM

tok, out = build_tiny_tokenizer(), Path({out!r})
model = AutoModelForCausalLM.from_pretrained(build_tiny_model(out / "init", tok))
runtime.init_ranks()
args = SimpleNamespace(train_batch_size=1, micro_train_batch_size=1)
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                  config=runtime.ds_config(args, False))
storages = lambda tensors: {{t.untyped_storage().data_ptr() for t in tensors}}
flat = len(storages(engine.module.parameters())) == 1  # ZeRO-2's parameters: views of one flat buffer
host, save = [], engine.module.save_pretrained
def recording_save(folder, state_dict=None, **kw):  # what save_pretrained is handed: host copies, one per tensor
    host.append(state_dict is not None and all(t.device.type == "cpu" for t in state_dict.values())
                and len(storages(state_dict.values())) == len({{id(t) for t in state_dict.values()}})
                and not storages(state_dict.values()) & storages(engine.module.parameters()))
    return save(folder, state_dict=state_dict, **kw)
engine.module.save_pretrained = recording_save
for step in (1, 2, 3):
    engine.backward(engine(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss)
    engine.step()
    runtime.save_checkpoint(engine, tok, out, step, 0)
for step in (1, 2, 3):
    assert AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{{step}}").config.vocab_size == len(tok)
saved = AutoModelForCausalLM.from_pretrained(out / "checkpoint-3")
print("flat", flat, "host copies", host, "equal", all(torch.equal(a, b) for a, b in
      zip(saved.state_dict().values(), engine.module.state_dict().values())))
print(sorted(str(p.relative_to(out)) for p in out.glob("checkpoint-*/ds")))
step, newest = runtime.latest_checkpoint(out)
fresh = AutoModelForCausalLM.from_pretrained(out / "init")
engine2, *_ = deepspeed.initialize(model=fresh, optimizer=torch.optim.AdamW(fresh.parameters(), lr=1e-2),
                                   config=runtime.ds_config(args, False))
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
    assert lines[-3] == "flat True host copies [True, True, True] equal True"  # tied embeddings saved once, as one
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


def test_run_8xa100_skips_every_finished_stage(tmp_path):
    out = tmp_path / "out"
    for done in ("prm_stage1/config.json", "prm_stage2/config.json", "rl/checkpoint-480/trainer_state.json",
                 "eval/base/results.json", *(f"eval/checkpoint-{s}/results.json" for s in (100, 200, 500))):
        (out / done).parent.mkdir(parents=True, exist_ok=True)
        (out / done).write_text("{}")
    r, calls = run_script(tmp_path)  # step 480 of 500: the RL stage resumes, the rest is done
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c.split()[:7] for c in calls] == [["torchrun", "--standalone", "--nproc_per_node", "8", "ppo.py",
                                               "--model", str(tmp_path / "base")]]
    (out / "rl" / "checkpoint-500").mkdir()
    (out / "rl" / "checkpoint-500" / "trainer_state.json").write_text('{"step": 500}')
    (tmp_path / "calls.log").unlink()
    r, calls = run_script(tmp_path)  # every stage's outputs present: nothing is launched
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls == [] and "done:" in r.stdout


def test_run_8xa100_missing_prompt_file_says_where_it_comes_from(tmp_path):
    r, calls = run_script(tmp_path, RL_PROMPTS=str(tmp_path / "absent.jsonl"))
    assert r.returncode == 1
    assert "https://github.com/CJReinforce/PURE" in r.stderr and "data/8k_math_879_answers.json" in r.stderr
    assert calls == []  # nothing started
