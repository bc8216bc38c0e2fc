#!/usr/bin/env bash
# The device check: GPU tests, the training benchmark and packed runs on one GPU, in one call of < 8 minutes.
#
#   bash benchmarks/gpu_check.sh OUT_DIR               # on a CUDA machine (CPU-only: the short mode, automatically)
#   bash benchmarks/gpu_check.sh OUT_DIR --cpu-short   # CPU smoke mode (CI): every step in miniature, well < 1 min
#
# Steps, each time-boxed so the script always ends and writes its table:
#   1. environment: imbcompress importable (else `pip install -e ".[test]"`, never replacing a CUDA torch)
#   2. pytest -m gpu tests/gpu        (skipped without CUDA: collection only)
#   3. benchmarks/bench_training.py   (ResNet-20 and ResNet-56, fit vs bare loop, bf16 channels-last)
#   4. benchmarks/bench_packing.py    (N = 1, 2, 4, 8 ResNet-20 fits at once)
# OUT_DIR gets one log per step and summary.md (the table, also printed). Exit status: 0 when every step passed.
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--cpu-short]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1
MODE=auto
[ $# -ge 2 ] && { [ "$2" = "--cpu-short" ] || usage; MODE=cpu-short; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
SUMMARY_ROWS=()
FAILED=0

# run NAME SECONDS COMMAND...: the command's output goes to OUT/NAME.log; one summary row per step
run() {
  local name=$1 limit=$2 start rc status
  shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [ $rc -eq 0 ] || FAILED=1
  SUMMARY_ROWS+=("| $name | $status | $(($(date +%s) - start)) | $name.log |")
  echo "   $status"
}

# 1. environment --------------------------------------------------------------------------------------------
if ! python3 -c "import imbcompress, lightning, pytest" >/dev/null 2>&1; then
  # Pin an importable torch so that pip never swaps the machine's CUDA build for another one.
  TORCH=$(python3 -c "import torch; print(torch.__version__)" 2>/dev/null || true)
  [ -n "$TORCH" ] && echo "torch==$TORCH" >"$OUT/constraints.txt" || : >"$OUT/constraints.txt"
  run install 100 python3 -m pip install -q -c "$OUT/constraints.txt" -e ".[test]"
fi
CUDA=$(python3 -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
[ "$CUDA" = 1 ] || MODE=cpu-short
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "mode: $MODE"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
  python3 -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__)" 2>&1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "cpus: $(nproc)"
} >"$OUT/environment.txt"
cat "$OUT/environment.txt"

# 2-4. the checks -----------------------------------------------------------------------------------------
if [ "$MODE" = cpu-short ]; then
  # generous limits: they only stop a hang (a quiet 2-core machine needs < 1 min for all three)
  run gpu_tests 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu
  run bench_training 240 python3 benchmarks/bench_training.py --quick --skip-textbook
  run bench_packing 240 python3 benchmarks/bench_packing.py --quick
else
  # budgets: 100 (install, only when needed) + 140 + 90 + 150 = 480 s at most
  run gpu_tests 140 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu
  run bench_training 90 python3 benchmarks/bench_training.py --device cuda --skip-textbook --models resnet20 resnet56 \
    --steps 60 --warmup 10 --repeats 2 --train-images 20000
  run bench_packing 150 python3 benchmarks/bench_packing.py --device cuda --runs 1 2 4 8 --steps 100 --warmup 10 \
    --timeout 45
fi

# the table -----------------------------------------------------------------------------------------------
{
  echo "# GPU check ($MODE)"
  echo
  sed 's/^/    /' "$OUT/environment.txt"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${SUMMARY_ROWS[@]}"
  echo
  echo "## GPU tests"
  echo
  tail -n 3 "$OUT/gpu_tests.log" 2>/dev/null | sed 's/^/    /'
  echo
  echo "## Training throughput (bench_training.py)"
  echo
  grep -E '^(machine|data path|\|)' "$OUT/bench_training.log" 2>/dev/null || echo "(no table: see bench_training.log)"
  echo
  echo "## Packed runs (bench_packing.py)"
  echo
  if grep -q '^| runs at once' "$OUT/bench_packing.log" 2>/dev/null; then
    awk '/^\| runs at once/ {on = 1} on || /^# /' "$OUT/bench_packing.log"
  else
    grep -E '^(# |\| [0-9])' "$OUT/bench_packing.log" 2>/dev/null
    echo "(no final table: see bench_packing.log)"
  fi
} >"$OUT/summary.md"
cat "$OUT/summary.md"
exit $FAILED
