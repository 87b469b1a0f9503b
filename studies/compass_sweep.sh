#!/usr/bin/env bash
# Issue 36: can a stronger energy compass make the shaped 8-step student beat its 1,024-step
# teacher at equal entropy? The compass-strength sweep on the project's best CPU text teacher,
# stage by stage across working sessions (about 25 hours on 2 cores in all, host-dependent).
#
#   DEADLINE=15:20 studies/compass_sweep.sh   # work until 15:20 (UTC, `date -d`; tomorrow if past), stop with exit 3
#   DRY_RUN=1 studies/compass_sweep.sh        # print the plan and what is done, run nothing
#   BEST=c025 studies/compass_sweep.sh        # then also K = 8 and the navigation window at BEST
#   SEEDS="0" CHAIN= EXTRA="student.train.steps=200" ...   # fewer seeds, no chain arm, overrides
#
# Why these stages: a navigated student distils the teacher's trajectories tilted by the compass,
# so it can gain only what the compass knows and the teacher does not; on CPU text a causal LM
# learns far faster than the DFM teacher, so compass size is the lever to measure. Every stage is
# skipped once done and resumes exactly when the deadline interrupted it (studies/stages.sh).
#   rebuild      studies/rebuild_bench_longer.sh: the bench-longer teacher and the evaluators
#   teacher      bench-longest: +10,000 steps from bench-longer, lr 3e-4 cosine to 3e-5, bf16
#                (~2 h); then its curve across all four stages with the fall over the last
#                5,000 steps (the issue: extend until it falls by less than 1% per 5,000 steps,
#                teacher_curve.md) and the train/valid gap
#   compasses    causal LMs of ~0.1x / 0.25x / 1x the teacher's 5.25M parameters (c010, c025,
#                c100), the AR baseline's recipe (1,000 steps, batch 32, lr 2e-3, 100 warm-up),
#                seed 7, training split only: none is, or shares weights with, an evaluator
#   teacher rows @ 1,024 at T = 1, 0.9, 0.85, 0.8 and @ 8 (its temperature curve; 256 samples)
#   students     for each seed, each arm (blind, c010-k4, c025-k4, c100-k4; the bench student
#                budget: 1,000 steps, batch 16, corrected target), sampled @ 8; and issue 31's
#                chain student (CHAIN=8 codes by default, `changeable` features, Di4C data term)
#   blind curve  the blind student of the first seed @ 8 at T = 0.95, 0.9, 0.85, 0.8 (after that seed)
#   follow-ups   with BEST=cNNN: BEST-k8, BEST-k4-from25, BEST-k4-from50 (t_start 0.25, 0.5)
#   evaluate     ar-small, ar-large, SmolLM2-135M over every row (study.md), both equal-entropy
#                tables with a verdict per arm over its seeds, invented words, how the compasses'
#                ranking of samples agrees with the evaluators' (agreement.md), seconds per
#                training step, energy gap per arm and each compass's own CE (cost.md)
# Exit status: 0 when everything asked for is done, 3 when the deadline stopped a stage, 2 on bad
# input, otherwise the failing stage's.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT="${ROOT:-runs}"
DRY_RUN="${DRY_RUN:-}"
DEADLINE="${DEADLINE:-}"
SEEDS="${SEEDS:-0 1 2}"
BEST="${BEST:-}"
CHAIN="${CHAIN-8}"  # issue 31's text rows: a chain student with this many codes ("" for none)
EXTRA="${EXTRA:-}"  # config overrides appended to every student_study call (space-separated)
OUT="${OUT:-docs/results/bench-compass}"
TSDFM="${TSDFM:-$( [ -x .venv/bin/tsdfm ] && echo .venv/bin/tsdfm || echo tsdfm )}"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
CFG=configs/bench.yaml
DATA="$ROOT/bench/data"
RUN="$ROOT/bench-longest"
# the three evaluators (EVALUATORS="..." to choose others: SmolLM2 takes ~80 s per row on 2 cores)
read -r -a EVAL <<< "${EVALUATORS:-ar-small=$ROOT/bench/evaluator-small/model ar-large=$ROOT/bench/evaluator-large/model smollm2-135m}"

. studies/stages.sh  # minutes_left, until_deadline, stage

declare -A SHAPE=([c010]="56 2 2" [c025]="120 2 2" [c100]="256 4 4")  # dim, layers, heads
if [ -n "$BEST" ] && [ -z "${SHAPE[$BEST]:-}" ]; then
  echo "error: BEST='$BEST' is not a compass of this sweep (c010, c025 or c100)" >&2; exit 2
fi
if [ -n "$CHAIN" ] && ! [[ $CHAIN =~ ^[1-9][0-9]*$ ]]; then
  echo "error: CHAIN='$CHAIN' is not a number of codes (e.g. 8), or empty for no chain arm" >&2; exit 2
fi

# --- the teacher and the evaluators (their published recipes); then the extended teacher
if [ -n "$DRY_RUN" ]; then
  DRY_RUN=1 ROOT="$ROOT" bash studies/rebuild_bench_longer.sh | grep -v "dry run"
else
  DEADLINE="$DEADLINE" ROOT="$ROOT" bash studies/rebuild_bench_longer.sh || exit $?
fi
stage "bench-longest teacher" "$RUN/teacher" \
  "$TSDFM" train teacher --config "$CFG" --data "$DATA" --out "$RUN/teacher" --no-progress \
  teacher.init_from="$ROOT/bench-longer/teacher/model" teacher.train.steps=10000 \
  teacher.train.lr=0.0003 teacher.train.stop_at_step=0 teacher.train.warmup_steps=200 \
  teacher.train.precision=bf16 teacher.train.eval_every=1000 teacher.train.ckpt_every=500 \
  teacher.train.max_minutes=0
if [ -z "$DRY_RUN" ]; then
  mkdir -p "$OUT" && ln -sfn "$(realpath "$DATA")" "$RUN/data"
  "$PY" studies/teacher_curve.py "$ROOT"/bench{,-long,-longer}/teacher "$RUN/teacher" \
    --out "$OUT/teacher_curve.md" || exit $?
  [ -f "$OUT/split_gap.md" ] || "$PY" studies/split_gap.py --data "$DATA" --passes 8 --out "$OUT/split_gap.md" \
    --model bench-longer="$ROOT/bench-longer/teacher" bench-longest="$RUN/teacher"
fi

# --- the compasses: same recipe, three sizes
for c in c010 c025 c100; do
  read -r dim layers heads <<< "${SHAPE[$c]}"
  stage "compass $c" "$RUN/compass-$c" \
    "$TSDFM" train causal --role compass --config "$CFG" --data "$DATA" --out "$RUN/compass-$c" \
    --teacher "$RUN/teacher" --no-progress compass.model.dim="$dim" compass.model.n_layers="$layers" \
    compass.model.n_heads="$heads" compass.train.steps=1000 compass.train.warmup_steps=100 \
    compass.train.eval_every=250 compass.train.ckpt_every=250 compass.train.seed=7 \
    compass.train.max_minutes=0
done

# --- rows: student_study trains what is missing, resumes what was interrupted, samples once
STUDY=("$PY" studies/student_study.py --config "$CFG" --run-dir "$RUN" --out "$OUT" --no-eval
       --no-progress --num 256 --batch-size 64 --sample-seed 1234)
arm_spec() {  # ARM -> the --arm (and --compass) arguments of student_study.py
  case $1 in
    blind) echo "--arm blind=student.target_space=probs" ;;
    chain-k*) echo "--arm $1=student.kind=chain;student.latent_codes=${1#chain-k};student.data_weight=1;student.latent_lr_scale=100;student.chain_features=changeable" ;;
    *) local c=${1%%-*} rest=${1#*-} k=4 from=0
       [[ $rest == k8 ]] && k=8
       [[ $rest == *-from* ]] && from=0.${rest##*-from}
       echo "--arm $1=student.shaping.compass=ar;student.shaping.candidates=$k;student.shaping.t_start=$from --compass $1=$RUN/compass-$c" ;;
  esac
}
rows() {  # NAME ARGS...: one student_study call (skips what exists)
  local name=$1; shift
  if [ -n "$DRY_RUN" ]; then echo "== $name: would run: student_study.py $*"; return 0; fi
  echo "== $name (until ${DEADLINE:-done})"
  # shellcheck disable=SC2086  # EXTRA is a list of overrides
  until_deadline "$name" "${STUDY[@]}" "$@" -- student.train.max_minutes=0 $EXTRA
}
rows "teacher rows" --teacher-steps 1024 --temperatures 1 0.9 0.85 0.8 --student-steps 8
rows "teacher @ 8" --teacher-steps 8 --student-steps 8
ARMS=(blind c010-k4 c025-k4 c100-k4)
[ -n "$CHAIN" ] && ARMS+=("chain-k$CHAIN")
[ -n "$BEST" ] && ARMS+=("$BEST-k8" "$BEST-k4-from25" "$BEST-k4-from50")
CURVE_SEED=${SEEDS%% *}  # the blind student whose temperature curve places the others
for seed in $SEEDS; do
  for arm in "${ARMS[@]}"; do
    # shellcheck disable=SC2046  # arm_spec's words are separate arguments
    rows "$arm seed $seed" --teacher-steps --student-steps 8 --seeds "$seed" $(arm_spec "$arm")
  done
  # shellcheck disable=SC2046  # after the first seed, so that a first look can be evaluated early
  [ "$seed" = "$CURVE_SEED" ] && rows "blind curve" --teacher-steps --student-steps 8 \
    --seeds "$seed" --temperatures 0.95 0.9 0.85 0.8 $(arm_spec blind)
done

# --- evaluation: every row under the three evaluators, the two equal-entropy tables, words, cost
if [ -n "$DRY_RUN" ]; then echo "== evaluate: would score $OUT/samples with ${EVAL[*]}"; exit 0; fi
if [ -f "$OUT/cost.md" ] && [ -z "$(find "$OUT/samples" -newer "$OUT/cost.md" -print -quit)" ]; then
  echo "== evaluate: done ($OUT/study.md; no samples newer than $OUT/cost.md)"; exit 0
fi
if [[ " ${EVAL[*]} " == *" smollm2-135m "* ]]; then "$TSDFM" evaluators fetch smollm2 || exit $?; fi
until_deadline "evaluate" "$PY" studies/student_study.py --config "$CFG" --run-dir "$RUN" \
  --out "$OUT" --eval-only --no-plots --evaluators "${EVAL[@]}"
"$PY" studies/equal_entropy.py "$OUT/results.json" --reference 'teacher_1024' 'teacher-T*_1024' \
  --rows 'student-*_8' 'teacher_8' --by-arm --out "$OUT/equal_entropy_teacher.md" || exit $?
"$PY" studies/equal_entropy.py "$OUT/results.json" --reference "student-blind-s${CURVE_SEED}_8" \
  "student-blind-s${CURVE_SEED}-T*_8" --rows 'student-c*_8' 'teacher_1024' 'teacher-T*_1024' \
  --by-arm --out "$OUT/equal_entropy_blind.md" || exit $?
"$PY" studies/novel_words.py --data "$DATA" --samples "$OUT"/samples/*.jsonl* \
  --out "$OUT/novel_words.md" || exit $?
# do the compasses rank samples as the evaluators do? (the first seed's rows and the teacher's)
until_deadline "agreement" "$PY" studies/scorer_agreement.py --data "$DATA" --out "$OUT/agreement.md" \
  --samples "$OUT"/samples/teacher_1024.jsonl* "$OUT"/samples/student-*-s"${CURVE_SEED}"_8.jsonl* \
  --scorers c010="$RUN/compass-c010" c025="$RUN/compass-c025" c100="$RUN/compass-c100" "${EVAL[@]}"
"$PY" studies/arm_cost.py "$RUN" --out "$OUT/cost.md" || exit $?
echo "== every stage done: $OUT/study.md, equal_entropy_{teacher,blind}.md, novel_words.md, agreement.md, cost.md"
[ -n "$BEST" ] || echo "== next: BEST=<c010|c025|c100> studies/compass_sweep.sh adds K = 8 and the navigation window"
