#!/usr/bin/env bash
# The one prepared check for a lent GPU (issue 35): at most 9 minutes on ONE GPU (an H200 or
# H100), results under $OUT. In order, each stage capped by wall clock:
#   1. smoke-eager    scripts/gpu_smoke.py at the 170M shape (L = 1,024, GPT-2-sized vocabulary,
#                     synthetic data): every stage a few dozen steps, sampling; tokens/s, peak
#                     memory, MFU against the bf16 peak (H100/H200: 989 TFLOPS; else flagged)
#   2. smoke-compile  the same teacher with torch.compile (compilation is per stage, so only the
#                     teacher, whose MFU is the goal: >= 35%)
#   3. the study      configs/gpu-check.yaml on the carried real text: teacher, compass, both
#                     trained evaluators and the AR baseline side by side on the GPU, then the
#                     blind and the shaped student side by side, then `tsdfm pipeline` samples
#                     every row and evaluates (ar-small, ar-large; SmolLM2 if its GGUF is cached)
#   4. report         $OUT/results.json + $OUT/report.md (+ $OUT/study/, logs/), always written
#
#   scripts/gpu_check.sh                          # the GPU run; needs runs/gpu-data (below)
#   scripts/gpu_check.sh --data DIR               # other prepared text
#   scripts/gpu_check.sh --tiny --device cpu      # every stage at toy shapes on a CPU (the tests)
#   OUT=/tmp/x RUN=/scratch/run BUDGET_S=540 scripts/gpu_check.sh
#
# Data: the GPU machine has NO network, so the text is prepared beforehand where the corpus is
# (wiki-summaries: in the cache after one download) and travels with the working tree:
#   PYTHONPATH=src python -m tsdfm data prepare --config configs/gpu-check.yaml --out runs/gpu-data
# (3 MB; the `run` device tool: carry ["runs/gpu-data"]). Missing data is refused (exit 2)
# before any GPU time is spent. docs/scale-out.md says how a lent session runs this.
#
# Exit codes: 0 every stage ok; 1 a stage failed or hit its cap (the report says which; what
# exists is still reported); 2 bad arguments or data; 3 no CUDA device (with --device cuda).
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TINY=0; DEVICE=cuda; DATA=runs/gpu-data
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --device) DEVICE="${2:-}"; shift ;;
    --data) DATA="${2:-}"; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (--tiny, --device cuda|cpu, --data DIR)" >&2; exit 2 ;;
  esac
  shift
done
case "$DEVICE" in cuda|cpu) ;; *) echo "error: --device must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;; esac
OUT="${OUT:-${TMPDIR:-/tmp}/tsdfm-gpu-check}"
RUN="${RUN:-${TMPDIR:-/tmp}/tsdfm-gpu-check-run}"  # checkpoints: not under $OUT (too big)
CFG=configs/gpu-check.yaml

if [ ! -f "$DATA/manifest.json" ]; then
  echo "error: no prepared data in $DATA: the GPU machine has no network, so prepare it first where the corpus is (PYTHONPATH=src python -m tsdfm data prepare --config $CFG --out runs/gpu-data) and carry it with the working tree, or pass --data DIR" >&2
  exit 2
fi
DATA_OVR="$("$PY" scripts/gpu_check.py data "$DATA")" || exit 2
mapfile -t OVR <<<"$DATA_OVR"

if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "error: no CUDA GPU visible to torch; nothing was run (--tiny --device cpu checks the script on a CPU)" >&2
  exit 3
fi

# Time caps (seconds) per stage; the whole run stays inside BUDGET_S.
if [ "$TINY" = 1 ]; then
  BUDGET_S="${BUDGET_S:-900}"; CAP_EAGER=240; CAP_COMPILE=240; CAP_TRAIN=180; CAP_STUDENT=120
  SMOKE=(--tiny --steps 4 --student-steps 2 --batch 4 --student-batch 2 --num-samples 2 --warmup 1)
  kvs="model.dim=16 model.n_layers=1 model.n_heads=2 train.steps=4 train.batch_size=8 train.eval_every=2 train.ckpt_every=2 train.warmup_steps=1 train.num_threads=1"
  for s in teacher compass evaluator_small evaluator_large ar_baseline; do
    for kv in $kvs; do OVR+=("$s.$kv"); done
  done
  OVR+=(student.teacher_steps=16 student.train.steps=2 student.train.batch_size=4
        student.train.eval_every=1 student.train.ckpt_every=1 student.train.warmup_steps=1
        student.train.num_threads=1 evaluation.num_samples=4 evaluation.batch_size=4
        "evaluation.teacher_steps=[16,4]" "evaluation.student_steps=[4,1]")
else
  BUDGET_S="${BUDGET_S:-540}"; CAP_EAGER=100; CAP_COMPILE=80; CAP_TRAIN=165; CAP_STUDENT=100
  SMOKE=()
fi
if [ "$DEVICE" = cpu ]; then
  for s in teacher compass evaluator_small evaluator_large ar_baseline student; do OVR+=("$s.train.device=cpu"); done
fi

mkdir -p "$OUT/logs" "$RUN"
: >"$OUT/stages.tsv"
stamp() { echo "[$(date +%T) +${SECONDS}s] $*"; }
left() { echo $(( BUDGET_S - SECONDS )); }
# stage NAME CAP CMD...: one stage under min(CAP, what is left - 15 s for the report)
stage() {
  local name=$1 cap=$2; shift 2
  local t=$(( $(left) - 15 )); [ "$cap" -lt "$t" ] && t=$cap
  local t0=$SECONDS rc
  if [ "$t" -le 5 ]; then
    stamp "skip $name: no time left"; rc=124
  else
    timeout --signal=TERM --kill-after=10 "$t" "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    stamp "$name: exit $rc after $(( SECONDS - t0 ))s ($(tail -1 "$OUT/logs/$name.log" | cut -c1-140))"
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t0 ))" >>"$OUT/stages.tsv"
  return $rc
}

stamp "gpu check: device $DEVICE, tiny $TINY, budget ${BUDGET_S}s, data $DATA, out $OUT, run $RUN"
"$PY" -c 'import torch; print("torch", torch.__version__, "on", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU")'
unset WORLD_SIZE RANK LOCAL_RANK  # one process per stage: no torchrun

# 1-2. the 170M-shape smoke, eager then compiled (nothing else on the device meanwhile)
stage smoke-eager "$CAP_EAGER" "$PY" scripts/gpu_smoke.py --device "$DEVICE" --out "$OUT/smoke-eager" "${SMOKE[@]}"
stage smoke-compile "$CAP_COMPILE" "$PY" scripts/gpu_smoke.py --device "$DEVICE" --out "$OUT/smoke-compile" --compile --teacher-only "${SMOKE[@]}"
rm -rf "$OUT"/smoke-*/teacher "$OUT"/smoke-*/compass "$OUT"/smoke-*/ar "$OUT"/smoke-*/student-* 2>/dev/null

# 3. the study on real text
[ -f "$RUN/data/manifest.json" ] || { rm -rf "$RUN/data"; cp -r "$DATA" "$RUN/data"; }
T=("$PY" -m tsdfm)
C=(--config "$CFG" --data "$RUN/data" --no-progress)
train() {  # train NAME CAP ARGS...: a stage unless its summary.json already exists
  local name=$1 cap=$2; shift 2
  [ -f "$RUN/$name/summary.json" ] && { stamp "$name: complete, reused"; return 0; }
  stage "$name" "$cap" "${T[@]}" train "$@" "${C[@]}" --out "$RUN/$name" "${OVR[@]}"
}
train teacher "$CAP_TRAIN" teacher &
for role in compass evaluator-small evaluator-large ar; do
  train "$role" "$CAP_TRAIN" causal --role "$role" &
done
wait
if [ -f "$RUN/teacher/summary.json" ] && [ -f "$RUN/compass/summary.json" ]; then
  train student-blind "$CAP_STUDENT" student --teacher "$RUN/teacher" --shaping none --candidates 1 &
  train student-shaped "$CAP_STUDENT" student --teacher "$RUN/teacher" --shaping compass --compass "$RUN/compass" &
  wait
  # every stage is complete now, so the pipeline only samples every row and evaluates
  stage study $(( $(left) - 15 )) "${T[@]}" pipeline --config "$CFG" --run-dir "$RUN" --no-progress "${OVR[@]}"
else
  stamp "the teacher or the compass did not finish: no students, no study (see $OUT/logs)"
  printf 'study\t1\t0\n' >>"$OUT/stages.tsv"
fi

# 4. the report, whatever happened above
"$PY" scripts/gpu_check.py report --out "$OUT" --run "$RUN" --budget-s "$BUDGET_S" --device "$DEVICE"
stamp "done"
if awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad }' "$OUT/stages.tsv"; then exit 0; fi
exit 1
