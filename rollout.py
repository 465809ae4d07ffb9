"""Sampling with vLLM, exactly as PURE's experience maker does it (openrlhf/trainer/ppo_utils/experience_maker.py of
github.com/CJReinforce/PURE@41f9363b8cc4af044b7fc5f7f9bbbf62139e9553, below "PURE@41f9363"): the reference prompt
template, prompts tokenized without special tokens, n samples per prompt kept ADJACENT (a group is n consecutive
rows), temperature 0.5, top_p 1, up to 2048 new tokens, stop on EOS only. Each sample keeps its token ids (with the
EOS when one was generated), its text and the sampler's log-prob of every sampled token.

Also holds `sync_weights`, the one function that pushes trainer weights into a running engine, `sync_folder`, which
picks where it writes, and `wake_engine`, which wakes a sleeping GPU engine.

    python rollout.py --model M --prompts F --output rollouts.jsonl      # JSONL that `rewards.py` reads
"""
import gc
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from common import InputError, log_libraries_to, read_jsonl, write_jsonl

# PURE@41f9363 openrlhf/cli/train_pure_ray.py:269 `--input_template`; the "\n" are real newlines, as there.
PROMPT_TEMPLATE = ('{}\n\nPlease reason step by step with steps separated by "\n\n", '
                   "and put your final answer within \\boxed{{}}.")


def format_prompt(question, template=PROMPT_TEMPLATE):
    """The RL prompt of one question (no chat template: PURE trains a base model)."""
    return template.format(question)


def load_prompts(path_or_name, question_key="question", answer_key="answer"):
    """Questions and golds from a JSONL file, a JSON array file (PURE's `8k_math_879_answers.json`), or a Hugging
    Face dataset name (split "train"). Returns [dict(question, answer, ref_answer)]: answer None when the row has no
    usable gold (missing, null, empty or PURE's string "null": those prompts get no verifiable reward, as in
    PURE@41f9363 openrlhf/datasets/prompts_dataset.py and experience_maker.py:1118-1129); ref_answer = answer, else
    the row's `ref_answer` (PURE's file keeps the other golds there, for logging only)."""
    path = Path(path_or_name)
    if path.suffix == ".json":
        if not path.is_file():
            raise InputError(path, None, None, "no such file")
        try:
            rows = list(enumerate(json.loads(path.read_text(encoding="utf-8")), 1))
        except json.JSONDecodeError as e:
            raise InputError(path, None, None, f"not valid JSON ({e.msg})") from None
    elif path.suffix == ".jsonl" or path.exists():
        rows = list(read_jsonl(path))
    else:  # a Hugging Face dataset name (needs the hub, or its local cache with HF_HUB_OFFLINE=1)
        import datasets

        try:
            rows = list(enumerate(datasets.load_dataset(str(path_or_name), split="train"), 1))
        except Exception as e:  # offline, unknown name, ...: one line, not a hub traceback
            raise InputError(path_or_name, None, None, "not a local file, and the hub dataset failed to load "
                             f"({type(e).__name__}: {str(e).splitlines()[0]}); without the hub, pass the path of a "
                             ".jsonl or .json file (data/train/ ships 256 of PURE's prompts)") from None
    prompts = []
    for line, row in rows:
        question = row.get(question_key) if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise InputError(path, line, question_key, "missing or empty question")
        answer, ref = (None if row.get(k) in (None, "null", "") else str(row[k]) for k in (answer_key, "ref_answer"))
        prompts.append({"question": question, "answer": answer, "ref_answer": answer or ref})
    if not prompts:
        raise InputError(path, None, None, "no prompts")
    return prompts


def start_engine(model, *, seed=42, max_model_len=3072, dtype="auto", gpu_memory_utilization=0.9, **kw):
    """One vLLM engine (default multiprocess mode: the engine core runs in a subprocess, which is also what lets it
    share a torchrun rank with DeepSpeed). Reference: max_model_len = 1024 + 2048, seed = 42 + engine index."""
    import torch
    from vllm import LLM

    if not torch.cuda.is_available():  # CPU backend: no CUDA graphs; a fixed KV cache (VLLM_CPU_KVCACHE_SPACE GiB
        kw.setdefault("enforce_eager", True)  # overrides it), else vLLM reserves gpu_memory_utilization of the RAM
        kw.setdefault("kv_cache_memory_bytes", 2**30)
        # vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a seeded request's prefill is
        # chunked, i.e. whenever one call's prompts exceed max_num_batched_tokens: prefill prompts whole
        kw.setdefault("enable_chunked_prefill", False)
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if ranks > 1:  # vLLM's "auto" binding pins every rank's engine to the same first core: give each its own
            cores, rank = sorted(os.sched_getaffinity(0)), int(os.environ["LOCAL_RANK"])
            mine = cores[rank * len(cores) // ranks:(rank + 1) * len(cores) // ranks] or cores
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, mine)))
    kw.setdefault("use_tqdm_on_load", False)  # no load-time progress bar on the console
    return LLM(model=str(model), seed=seed, max_model_len=max_model_len, dtype=dtype,
               gpu_memory_utilization=gpu_memory_utilization, **kw)


def generate(llm, prompts, *, n=4, temperature=0.5, top_p=1.0, max_tokens=2048, seed=None, stop=None,
             max_prompt_len=1024):
    """Sample n responses per prompt. prompts: strings (tokenized here without special tokens) or token-id lists.

    Over-long prompts keep their LAST `max_prompt_len` tokens (left truncation, so the instruction that ends the
    template survives). The reference truncates on the right (`truncation=True`, PURE@41f9363
    experience_maker.py:184-201), which would cut the instruction off; no PURE prompt comes near 1024 tokens, so
    the two agree on the paper's data.
    Prompt i's samples use seeds seed + i*n + j (vLLM gives child j of a request seed + j), so every sample has
    its own random stream and a run is reproducible from `seed`.
    Returns len(prompts) * n dicts, the n samples of a prompt adjacent: prompt_index, prompt_ids, response_ids
    (incl. the EOS when the model stopped on it), response_text, logprobs (sampler's log-prob of each response
    token, raw logits, i.e. what the trainer recomputes), finish_reason ("stop" or "length")."""
    from vllm import SamplingParams

    tok = llm.get_tokenizer()
    ids_list = [tok.encode(p, add_special_tokens=False) if isinstance(p, str) else list(p) for p in prompts]
    ids_list = [ids[-max_prompt_len:] for ids in ids_list]
    params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, min_tokens=1,
                             seed=None if seed is None else seed + i * n, stop=stop, logprobs=0,
                             include_stop_str_in_output=True) for i in range(len(ids_list))]
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in ids_list], params, use_tqdm=False)
    samples = []
    for i, out in enumerate(outputs):
        for o in sorted(out.outputs, key=lambda o: o.index):
            samples.append({"prompt_index": i, "prompt_ids": ids_list[i], "response_ids": list(o.token_ids),
                            "response_text": o.text, "finish_reason": o.finish_reason,
                            "logprobs": [d[t].logprob for d, t in zip(o.logprobs, o.token_ids)]})
    return samples


def sync_weights(llm, state_dict, folder, barrier=None):
    """Push trainer weights into a running engine: write the full state_dict as one safetensors file in `folder`
    (sync_folder: /dev/shm when it has room), then have every engine worker reload from it (in place: the engine's
    weight storage, sleep pool and CUDA graphs stay valid) and drop cached prefixes (their KV is stale). The host
    holds one copy of the weights meanwhile (GPU tensors are copied once; CPU tensors are written as they are).

    This is the route that is exact on vLLM's CPU backend (there `load_weights` fails on the repacked linear weights
    and tensors cannot pass through `collective_rpc`; tests/test_rollout.py checks the log-probs after a sync), and
    it works the same on GPU. The file must hold `lm_head.weight` even when embeddings are tied, or vLLM reloads
    silently wrong weights.
    Several engines on one machine share one copy: the writer passes the state_dict, the others None, and all pass
    `barrier` (e.g. torch.distributed.barrier), which runs between the write and the reloads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if state_dict is not None:
        tensors, storages = {}, set()
        for k, v in state_dict.items():
            t = v.detach().to("cpu").contiguous()  # a host copy of a GPU tensor; the trainer's own tensor on CPU
            if t.untyped_storage().data_ptr() in storages:  # tied weights on CPU: safetensors wants one per name
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            tensors[k] = t
        if "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "model.safetensors"))
    if barrier is not None:
        barrier()
    llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
    llm.reset_prefix_cache()


def sync_folder(name, nbytes, fallback, shm="/dev/shm", free_bytes=lambda d: shutil.disk_usage(d).free):
    """Where sync_weights writes: shm/name (RAM-backed: fast) when it has room for the `nbytes` weight file plus 5%,
    else `fallback` (a disk folder). /dev/shm can be tiny (64 MB, Docker's default) next to a 15 GB file. A file that
    an earlier sync left in shm/name is overwritten, so its size counts as free. -> Path."""
    shm = Path(shm)
    if shm.is_dir():
        old = shm / name / "model.safetensors"
        if free_bytes(shm) + (old.stat().st_size if old.is_file() else 0) >= 1.05 * nbytes:
            return shm / name
    return Path(fallback)


def wake_engine(llm, tags=None):
    """Wake a sleeping GPU engine (all of it, or only `tags`, e.g. ["weights"] for a weight reload). First hand the
    blocks this process's PyTorch cache holds back to the driver: the engine is another process and cannot use
    them (github.com/huggingface/trl@f2cd57710ae345ea6428ae95363267fcf38a3dc8 trl/generation/vllm_generation.py
    does the same before every wake_up)."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    llm.wake_up(tags=tags)


@dataclass
class Args:
    model: str
    """policy checkpoint folder (vLLM-loadable)"""
    prompts: str
    """JSONL/JSON prompt file (PURE: `question`, gold in `answer` or "null") or a Hugging Face dataset name"""
    output: str
    """rollouts JSONL to write (one row per sample; the input of `python rewards.py`)"""
    n_samples_per_prompt: int = 4
    """samples per prompt, adjacent rows (reference 4)"""
    temperature: float = 0.5
    """sampling temperature (reference 0.5)"""
    top_p: float = 1.0
    """nucleus sampling (reference 1.0)"""
    generate_max_len: int = 2048
    """max new tokens per sample (reference 2048)"""
    prompt_max_len: int = 1024
    """prompt token budget; longer prompts keep their last tokens (reference 1024)"""
    limit: int | None = None
    """use only the first LIMIT prompts"""
    question_key: str = "question"
    """field holding the question"""
    answer_key: str = "answer"
    """field holding the gold answer ("null" or missing = no verifiable reward)"""
    dtype: str = "auto"
    """engine dtype (auto = the checkpoint's)"""
    seed: int = 42
    """sampling seed (reference 42)"""


def main(args):
    log_libraries_to(Path(args.output).with_name("library.log"))
    prompts = load_prompts(args.prompts, args.question_key, args.answer_key)[: args.limit]
    llm = start_engine(args.model, seed=args.seed, max_model_len=args.prompt_max_len + args.generate_max_len,
                       dtype=args.dtype)
    texts = [format_prompt(p["question"]) for p in prompts]
    samples = generate(llm, texts, n=args.n_samples_per_prompt, temperature=args.temperature, top_p=args.top_p,
                       max_tokens=args.generate_max_len, seed=args.seed, max_prompt_len=args.prompt_max_len)
    rows = [{"group": s["prompt_index"], "prompt": texts[s["prompt_index"]], "prompt_ids": s["prompt_ids"],
             "response_text": s["response_text"], "response_ids": s["response_ids"],
             "gold": prompts[s["prompt_index"]]["answer"], "logprobs": s["logprobs"],
             "finish_reason": s["finish_reason"]} for s in samples]
    write_jsonl(args.output, rows)
    print(f"wrote {len(rows)} samples of {len(prompts)} prompts to {args.output}")


if __name__ == "__main__":
    import tyro

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main(tyro.cli(Args))
    except InputError as e:
        sys.exit(f"error: {e}")
