# Shared by the multi-session study drivers (rebuild_bench_longer.sh, compass_sweep.sh): run a
# stage until DEADLINE, skip it once finished, resume it when interrupted. Source it after
# setting DEADLINE and DRY_RUN; it checks DEADLINE at once (exit 2 on a time date(1) cannot read).
#
# Why SIGTERM at the deadline is safe: the training loop turns it into a stop at the next step
# boundary with a checkpoint (tsdfm.training.loop), and `--resume` continues bit-exactly.
# Exit status of a driver: 3 when the deadline stopped a stage (run it again later).

minutes_left() {  # whole minutes until DEADLINE (a large number without one)
  [ -z "$DEADLINE" ] && { echo 100000; return; }
  echo $(( ( $(date -d "$DEADLINE" +%s) - $(date +%s) ) / 60 ))
}
if [ -n "$DEADLINE" ] && ! date -d "$DEADLINE" +%s >/dev/null 2>&1; then
  echo "error: DEADLINE='$DEADLINE' is not a time date(1) understands (e.g. 07:15)" >&2; exit 2
fi
# Fixed once to an absolute instant, so that every stage counts down to the same moment (a
# relative "tomorrow 02:15" read again after midnight would move a day on). A bare clock time
# already past today means that time tomorrow (a session crossing midnight).
if [ -n "$DEADLINE" ]; then
  if [[ "$DEADLINE" =~ ^[0-9]{1,2}:[0-9]{2}$ ]] && [ "$(date -d "$DEADLINE" +%s)" -le "$(date +%s)" ]; then
    DEADLINE="tomorrow $DEADLINE"
  fi
  DEADLINE="$(date -d "$DEADLINE" '+%F %T %Z')"
fi

# until_deadline NAME COMMAND...: run COMMAND under `timeout` at the deadline; exit 3 when it was
# stopped there, the command's status when it failed.
until_deadline() {
  local name=$1; shift
  local mins; mins=$(minutes_left)
  if [ "$mins" -lt 3 ]; then echo "== $name: deadline reached before it started"; exit 3; fi
  timeout -s TERM "${mins}m" "$@"
  local rc=$?
  [ "$rc" -eq 0 ] && return 0
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then
    echo "== $name: stopped at the deadline; it resumes when this script runs again"
    exit 3
  fi
  echo "== $name: failed (exit $rc)" >&2; exit "$rc"
}

# stage NAME RUN_DIR COMMAND...: a training run, skipped when RUN_DIR/summary.json exists (a
# finished run), resumed (--resume) when RUN_DIR/checkpoints exists.
stage() {
  local name=$1 dir=$2; shift 2
  if [ -f "$dir/summary.json" ]; then echo "== $name: done ($dir)"; return 0; fi
  local resume=() from=""; [ -d "$dir/checkpoints" ] && resume=(--resume)
  [ -f "$dir/checkpoints/latest.json" ] && \
    from=" (from its step $(sed -n 's/^ *"step": *\([0-9]*\).*/\1/p' "$dir/checkpoints/latest.json"))"
  if [ -n "$DRY_RUN" ]; then echo "== $name: would run: $* ${resume[*]}$from"; return 0; fi
  echo "== $name: ${resume[*]:-start}$from (until ${DEADLINE:-done})"
  until_deadline "$name" "$@" "${resume[@]}"
}

# The CPU a stage runs on, for the log: float32 matrix products are not bit-identical across
# CPU families (session 50: the bench teacher replayed on an AMD EPYC host left the published
# run's trajectory, 5.648 against 5.569 validation CE at step 3,965, while every resume on one
# host was exact), so a replay is exact only on the kind of host that made the original.
if [ -z "${STAGES_HOST_SHOWN:-}" ]; then  # once per driver, not again in the rebuild it calls
  echo "== host: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) cores, $(date -u +%FT%TZ)"
  export STAGES_HOST_SHOWN=1
fi
