"""rollout.py on the real vLLM CPU engine with the tiny fp32 policy: the prompt template, prompt loading, sampling
(groups adjacent, seeds, EOS kept, sampler log-probs = the trainer's), the CLI, and the weight push (after a
training step vLLM's log-probs of a fixed sequence equal the trainer's and differ from before), temperature 0 = the
trainer's argmax; and, with a recording stand-in for vllm.LLM, that every sampling setting of generate() and of the
CLI reaches vLLM's SamplingParams. One engine for the whole file; the weight-push test runs last because it changes
the engine's weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import InputError
from rollout import PROMPT_TEMPLATE, format_prompt, generate, load_prompts, start_engine, sync_weights

ROOT = Path(__file__).resolve().parents[1]


def test_format_prompt_is_the_reference_template():
    assert format_prompt("What is 1+1?") == ('What is 1+1?\n\nPlease reason step by step with steps separated by '
                                             '"\n\n", and put your final answer within \\boxed{}.')
    assert "\\n" not in PROMPT_TEMPLATE  # real newlines, not backslash-n


def test_load_prompts(tmp_path, repo_data):
    prompts = load_prompts(repo_data / "train" / "pure_prompts_256.jsonl")  # counts by jq (data/README.md)
    assert len(prompts) == 256 and sum(p["answer"] is not None for p in prompts) == 22  # "null" -> None
    arr = tmp_path / "p.json"  # PURE's original file is a JSON array
    arr.write_text(json.dumps([{"question": "q1", "answer": "null"}, {"question": "q2", "answer": 27.0}]))
    assert load_prompts(arr) == [{"question": "q1", "answer": None, "ref_answer": None},
                                 {"question": "q2", "answer": "27.0", "ref_answer": "27.0"}]
    pure = prompts[:50]  # PURE's file: the golds of the 90% without a verifiable reward sit in ref_answer (logging)
    assert all(p["ref_answer"] is not None for p in pure) and any(p["answer"] is None for p in pure)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"problem": "no question key"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: question: missing"):
        load_prompts(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no prompts"):
        load_prompts(empty)


class RecordingLLM:
    """Stands in for vllm.LLM: records the SamplingParams generate() passes, answers each request with n samples
    of two tokens (token 5 + j, then EOS), returned in reverse index order as vLLM may."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=True):
        from types import SimpleNamespace as NS

        self.calls.append((prompts, params))
        eos = self.tokenizer.eos_token_id
        return [NS(outputs=[NS(index=j, token_ids=[5 + j, eos], text=f"t{j}", finish_reason="stop",
                               logprobs=[{5 + j: NS(logprob=-1.0 - j)}, {eos: NS(logprob=-0.5)}])
                            for j in reversed(range(p.n))]) for p in params]


def test_generate_passes_every_sampling_setting_to_vllm(tiny_tokenizer):
    stub = RecordingLLM(tiny_tokenizer)
    out = generate(stub, ["What is 2?", [7, 8, 9]], n=3, temperature=0.7, top_p=0.9, max_tokens=17, seed=5,
                   stop=["</s>"])
    ((prompts, params),) = stub.calls
    assert prompts == [{"prompt_token_ids": tiny_tokenizer.encode("What is 2?", add_special_tokens=False)},
                       {"prompt_token_ids": [7, 8, 9]}]
    assert [(p.n, p.temperature, p.top_p, p.max_tokens, p.seed, p.stop, p.logprobs, p.min_tokens) for p in params] == [
        (3, 0.7, 0.9, 17, 5, ["</s>"], 0, 1), (3, 0.7, 0.9, 17, 8, ["</s>"], 0, 1)]  # seed + i * n
    eos = tiny_tokenizer.eos_token_id
    assert [(s["prompt_index"], s["response_ids"], s["logprobs"]) for s in out] == [
        (i, [5 + j, eos], [-1.0 - j, -0.5]) for i in (0, 1) for j in range(3)]  # samples in index order
    generate(stub, ["x"], n=2)  # the reference's defaults: temperature 0.5, top_p 1, 2048 new tokens, no seed
    p = stub.calls[-1][1][0]
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.seed, p.stop) == (2, 0.5, 1.0, 2048, None, [])


def test_cli_passes_its_flags_to_the_engine_and_sampler(tmp_path, tiny_tokenizer, monkeypatch):
    """rollout.main with a recording engine: every sampling flag reaches vLLM's SamplingParams, and the engine gets
    the seed, dtype and prompt + generation context length."""
    import rollout

    stub, engine_kwargs = RecordingLLM(tiny_tokenizer), {}
    monkeypatch.setattr(rollout, "start_engine", lambda model, **kw: engine_kwargs.update(kw, model=model) or stub)
    (tmp_path / "p.jsonl").write_text('{"question": "q1", "answer": "1"}\n{"question": "q2", "answer": null}\n')
    rollout.main(rollout.Args(model="m", prompts=str(tmp_path / "p.jsonl"), output=str(tmp_path / "r.jsonl"),
                              n_samples_per_prompt=3, temperature=0.8, top_p=0.95, generate_max_len=12,
                              prompt_max_len=64, dtype="float32", seed=7))
    assert engine_kwargs == {"model": "m", "seed": 7, "max_model_len": 76, "dtype": "float32"}
    params = stub.calls[0][1]
    assert [(p.n, p.temperature, p.top_p, p.max_tokens, p.seed) for p in params] == [(3, 0.8, 0.95, 12, 7),
                                                                                     (3, 0.8, 0.95, 12, 10)]
    rows = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert [(r["group"], r["gold"], r["response_text"]) for r in rows] == [
        (0, "1", "t0"), (0, "1", "t1"), (0, "1", "t2"), (1, None, "t0"), (1, None, "t1"), (1, None, "t2")]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    engine = start_engine(tiny_model_dir, dtype="float32", max_model_len=1024)
    yield engine
    engine.llm_engine.engine_core.shutdown()  # now, while pytest's log streams are still open


def trainer_logprobs(model, prompt_ids, response_ids):
    """log pi(y_t | x, y_<t) by a plain forward over one unpadded sequence. -> [L]"""
    ids = torch.tensor([prompt_ids + response_ids])
    logits = model(ids).logits[0, len(prompt_ids) - 1:-1]  # [L, V]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(prompt_ids):, None])[:, 0]


def test_generate_groups_seeds_logprobs_and_eos(llm, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    prompts = [format_prompt("What is $3 \\cdot 4$?"), format_prompt("Compute $\\frac{1}{2} + \\frac{1}{3}$.")]
    a = generate(llm, prompts, n=3, max_tokens=40, seed=1)
    assert [s["prompt_index"] for s in a] == [0, 0, 0, 1, 1, 1]  # n samples of a prompt are adjacent
    assert a[0]["prompt_ids"] == tiny_tokenizer.encode(prompts[0], add_special_tokens=False)
    assert len({tuple(s["response_ids"]) for s in a}) == 6  # every sample has its own random stream
    assert generate(llm, prompts, n=3, max_tokens=40, seed=1) == a  # reproducible from the seed
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for s in a:
        assert len(s["logprobs"]) == len(s["response_ids"]) >= 1
        ref = trainer_logprobs(model, s["prompt_ids"], s["response_ids"])
        assert torch.allclose(torch.tensor(s["logprobs"]), ref, atol=1e-4)  # raw log-probs (no temperature)
    # EOS: the random tiny model stops on it now and then; when it does, the EOS id ends response_ids.
    many = generate(llm, [[5, 6, 7]], n=48, temperature=1.0, max_tokens=60, seed=3)
    stopped = [s for s in many if s["finish_reason"] == "stop"]
    assert stopped and all(s["response_ids"][-1] == tiny_tokenizer.eos_token_id for s in stopped)
    assert all(len(s["response_ids"]) == 60 for s in many if s["finish_reason"] == "length")
    # Over-long prompts keep their last tokens.
    long = generate(llm, [list(range(3, 300))], n=2, max_tokens=4, seed=0, max_prompt_len=100)
    assert long[0]["prompt_ids"] == list(range(200, 300))


def test_temperature_zero_is_the_greedy_argmax(llm, tiny_model_dir):
    """On the real engine: temperature 0 gives, token by token, the argmax of the trainer's own logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = [5, 17, 42, 99, 7]
    (s,) = generate(llm, [prompt], n=1, temperature=0.0, max_tokens=12, seed=0)
    ids = list(prompt)
    with torch.no_grad():
        while len(ids) < len(prompt) + len(s["response_ids"]):
            ids.append(model(torch.tensor([ids])).logits[0, -1].argmax().item())
    assert s["response_ids"] == ids[len(prompt):] and len(ids) > len(prompt) + 1
    sampled = generate(llm, [prompt], n=4, temperature=1.0, max_tokens=12, seed=0)
    assert any(x["response_ids"] != s["response_ids"] for x in sampled)  # and temperature 1 does sample


def test_cli_writes_rollouts(tmp_path, tiny_model_dir, repo_data):
    src = repo_data / "train" / "pure_prompts_256.jsonl"
    rows = [json.loads(line) for line in src.read_text().splitlines()[:40]]
    pick = [r for r in rows if r["answer"] != "null"][:1] + [r for r in rows if r["answer"] == "null"][:1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in pick))
    out = tmp_path / "rollouts.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    subprocess.run([sys.executable, "rollout.py", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                    "--output", str(out), "--n-samples-per-prompt", "2", "--generate-max-len", "16"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["group"] for r in got] == [0, 0, 1, 1]
    assert got[0]["gold"] == pick[0]["answer"] and got[2]["gold"] is None
    assert got[0]["prompt"] == format_prompt(pick[0]["question"])
    for r in got:
        assert {"prompt_ids", "response_text", "response_ids", "logprobs", "finish_reason"} <= set(r)
        assert len(r["logprobs"]) == len(r["response_ids"])


def test_sync_weights_after_a_training_step(llm, tiny_model_dir, tmp_path):
    """The test every anchor project lacked: push trained weights, then vLLM scores a fixed sequence exactly as
    the trainer does (fp32, 1e-4) and differently from before the push. Tied embeddings: lm_head must be written."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    seq = [5, 17, 42, 99, 7, 250, 3, 64, 128, 11]

    def vllm_logprobs():
        out = llm.generate([{"prompt_token_ids": seq}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                           use_tqdm=False)[0]
        return torch.tensor([d[t].logprob for d, t in zip(out.prompt_logprobs[1:], seq[1:])])  # [9]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = vllm_logprobs()
    assert torch.allclose(before, trainer_logprobs(model, seq[:1], seq[1:]), atol=1e-4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = -trainer_logprobs(model, seq[:1], seq[1:]).mean()
    loss.backward()
    opt.step()
    assert model.config.tie_word_embeddings  # the case where a state_dict without lm_head reloads wrong
    sync_weights(llm, model.state_dict(), tmp_path / "sync")
    after = vllm_logprobs()
    with torch.no_grad():
        expected = trainer_logprobs(model, seq[:1], seq[1:])
    assert torch.allclose(after, expected, atol=1e-4)
    assert (after - before).abs().max() > 1e-2
