#!/usr/bin/env bash
# The whole PURE recipe on one node with 8 x A100-80GB (untested on GPUs here: written against the same code the
# CPU tests run). Stages:
#   1. PRM stage 1: train only the 2-class token head of Qwen2.5-Math-7B on PRM800K (lr 1e-4, 3 epochs)
#   2. PRM stage 2: train the whole PRM from stage 1 (lr 1e-6, 1 epoch)
#   3. RL: PPO with min-form process rewards + verifiable rewards (PURE-PRM+VR headline, 500 steps)
#   4. Evaluation of the base model and of the RL checkpoints on the paper's five benchmarks (greedy)
# Every stage resumes when rerun after a kill; a finished stage is skipped. Run: bash run_8xa100.sh
set -euo pipefail

# ---- placeholders: edit these. Where each input comes from: ----
#   BASE_MODEL  Qwen/Qwen2.5-Math-7B from the Hugging Face hub (download it, or give the hub name with HF_HUB_OFFLINE=0)
#   PRM_DATA    the hub dataset HuggingFaceH4/prm800k-trl-dedup (PURE's), or a local TRL-format .jsonl/.parquet
#   RL_PROMPTS  PURE's prompt file data/8k_math_879_answers.json (8,523 MATH questions, 879 with a gold answer;
#               2.8 MB). Unset: downloaded once from github.com/CJReinforce/PURE at commit PURE_COMMIT into
#               $OUT/data/. Or a local .json/.jsonl copy (ppo.py reads the JSON array as it is).
#   EVAL_DATA   unset: the paper's five benchmarks from the hub by the names in evaluate.py's BENCHMARKS (math500 =
#               HuggingFaceH4/MATH-500, ...; ~2.5 MB); or a folder holding <benchmark>.jsonl files (no hub).
BASE_MODEL=${BASE_MODEL:-/models/Qwen2.5-Math-7B}           # policy, reference and PRM backbone (HF folder)
PRM_DATA=${PRM_DATA:-HuggingFaceH4/prm800k-trl-dedup}       # PRM800K in TRL stepwise format (PURE's)
OUT=${OUT:-runs/pure_8xa100}                                # everything goes under here
RL_PROMPTS=${RL_PROMPTS:-}                                  # empty: PURE's file, fetched into $OUT/data/
PURE_COMMIT=41f9363b8cc4af044b7fc5f7f9bbbf62139e9553         # of github.com/CJReinforce/PURE
EVAL_DATA=${EVAL_DATA:-}                                    # empty: the benchmarks from the hub
NGPU=${NGPU:-8}
EVAL_STEPS=${EVAL_STEPS:-"100 200 500"}                     # RL checkpoints to evaluate (PURE-PRM was taken at 100)

export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}  # HF_HUB_OFFLINE: as the user set it
if [ -z "$RL_PROMPTS" ]; then  # PURE's prompts, fetched on first use (a rerun finds them)
    RL_PROMPTS=$OUT/data/8k_math_879_answers.json
    url=https://raw.githubusercontent.com/CJReinforce/PURE/$PURE_COMMIT/data/8k_math_879_answers.json
    [ -f "$RL_PROMPTS" ] || { mkdir -p "$OUT/data" && echo "+ curl $url" && curl -fsSL "$url" -o "$RL_PROMPTS.part" \
        && mv "$RL_PROMPTS.part" "$RL_PROMPTS"; } || { echo "error: cannot download PURE's prompts from $url" \
        "(data/8k_math_879_answers.json in https://github.com/CJReinforce/PURE): download it and set RL_PROMPTS" >&2
        exit 1; }
fi
PRM1=$OUT/prm_stage1; PRM2=$OUT/prm_stage2; RL=$OUT/rl; EVAL=$OUT/eval
BENCH=math500,minerva_math,olympiadbench,aime24,amc23

cat <<EOF
PURE on $NGPU GPUs; outputs under $OUT
  1. PRM stage 1  torchrun prm_train.py --stage 1 --model $BASE_MODEL --data $PRM_DATA      -> $PRM1
  2. PRM stage 2  torchrun prm_train.py --stage 2 --model $PRM1                             -> $PRM2
  3. RL (PPO)     torchrun ppo.py --model $BASE_MODEL --prm $PRM2 --prompts $RL_PROMPTS     -> $RL
                  (64 prompts x 4 samples per step, 500 steps, checkpoint every 20; one vLLM engine per GPU)
  4. Evaluation   evaluate.py on $BENCH for the base model and RL steps: $EVAL_STEPS        -> $EVAL
EOF

run() { echo "+ $*"; "$@"; }

# Fail now, not after hours of PRM training, when the RL prompt file is missing.
case "$RL_PROMPTS" in *.json | *.jsonl)
    [ -f "$RL_PROMPTS" ] || { echo "error: RL_PROMPTS=$RL_PROMPTS: no such file. PURE's prompts are" \
        "data/8k_math_879_answers.json in https://github.com/CJReinforce/PURE: download it and set RL_PROMPTS" >&2
        exit 1; } ;;
esac

# 1-2. PRM: 2-class token classifier, label on the "\n" after each step; ZeRO-2, bf16, global batch 128.
[ -f "$PRM1/config.json" ] || run torchrun --standalone --nproc_per_node "$NGPU" prm_train.py \
    --model "$BASE_MODEL" --data "$PRM_DATA" --stage 1 --output-dir "$PRM1"
[ -f "$PRM2/config.json" ] || run torchrun --standalone --nproc_per_node "$NGPU" prm_train.py \
    --model "$PRM1" --data "$PRM_DATA" --stage 2 --output-dir "$PRM2"

# 3. RL. Defaults of ppo.py = PURE's headline run (examples/scripts/train_pure.sh of github.com/CJReinforce/PURE
#    @41f9363b8cc4af044b7fc5f7f9bbbf62139e9553, with its CLI's defaults): reward-mode PRMVR, credit min (T 0.1),
#    token baseline, vr-coef 1, init-kl-coef 0.001, lr 5e-7, train batch 128 / micro 2, temperature 0.5, 2048 new
#    tokens. Each rank: ZeRO-2 actor + frozen reference + frozen PRM + a sleeping vLLM engine (0.3 of the GPU).
#    Rerunning resumes from the latest checkpoint-<step>/ (optimizer, step, prompt order). Every checkpoint keeps its
#    HF weights (~15 GB, evaluated below); only the newest keeps the DeepSpeed state (~105 GB; --keep-all-ds-states).
#    Finished = checkpoint-500/ exists (ppo.py renames it into place complete): a rerun then goes on to stage 4
#    instead of starting 8 engines and loading the models and the DeepSpeed state for zero steps.
[ -f "$RL/checkpoint-500/trainer_state.json" ] || run torchrun --standalone --nproc_per_node "$NGPU" ppo.py \
    --model "$BASE_MODEL" --prm "$PRM2" --prompts "$RL_PROMPTS" --output-dir "$RL" --max-steps 500 --save-steps 20

# 4. Evaluation: greedy, PURE's template, 3000 new tokens (evaluate.py defaults), one GPU each in the background.
#    A bare `wait` returns 0 whatever the jobs returned: wait for each one and fail if any failed.
i=0; pids=(); names=()
for model in "$BASE_MODEL" $(for s in $EVAL_STEPS; do echo "$RL/checkpoint-$s"; done); do
    name=$(basename "$model")
    [ -f "$EVAL/$name/results.json" ] && continue
    CUDA_VISIBLE_DEVICES=$((i % NGPU)) run python evaluate.py --model "$model" --benchmarks "$BENCH" \
        ${EVAL_DATA:+--data-dir "$EVAL_DATA"} --output-dir "$EVAL/$name" &
    pids+=($!); names+=("$name")
    i=$((i + 1))
done
failed=()
for j in "${!pids[@]}"; do
    wait "${pids[$j]}" || failed+=("${names[$j]}")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: evaluation failed for: ${failed[*]} (see its output above; rerun to redo only the unfinished)" >&2
    exit 1
fi
echo "done: PRM in $PRM2, RL run in $RL (metrics.jsonl, curves.png), evaluations in $EVAL"
