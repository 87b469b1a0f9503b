#!/usr/bin/env bash
# GPU smoke test at the published 170M shape (L = 1,024, GPT-2-sized vocabulary) on ONE GPU:
# trains the teacher, the compass, the AR baseline, a blind and a shaped student for a few dozen
# steps each, then samples the student at 8 steps and the teacher at 1,024 steps, printing
# tokens/s and peak memory per stage. Synthetic data: nothing is downloaded. Budget: 8 minutes.
#
#   scripts/gpu_smoke.sh                 # defaults (see scripts/gpu_smoke.py --help)
#   scripts/gpu_smoke.sh --compile       # the same with torch.compile
#   PYTHON=.venv/bin/python OUT=/scratch/smoke scripts/gpu_smoke.sh
#
# Exit codes: 0 ok, 3 no CUDA device, 124 over the time budget, anything else a failure.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT="${OUT:-${TMPDIR:-/tmp}/tsdfm-gpu-smoke}"
BUDGET_S="${BUDGET_S:-480}"

# Fail fast, before any import-heavy work, when there is no GPU to test.
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "error: no CUDA GPU visible to torch ($("$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1))." >&2
  echo "       The GPU smoke test needs a CUDA build of torch on a GPU machine; nothing was run." >&2
  exit 3
fi
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")'

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
# One GPU: the loop needs no torchrun (WORLD_SIZE unset); see docs/scale-out.md for several.
unset WORLD_SIZE RANK LOCAL_RANK
status=0
timeout --signal=TERM --kill-after=30 "$BUDGET_S" \
  "$PYTHON" scripts/gpu_smoke.py --device cuda --out "$OUT" "$@" || status=$?
if [ "$status" -eq 124 ]; then
  echo "error: the smoke test took longer than its budget of ${BUDGET_S}s" >&2
fi
rm -rf "$OUT"/teacher "$OUT"/compass "$OUT"/ar "$OUT"/student-* 2>/dev/null || true
exit "$status"
