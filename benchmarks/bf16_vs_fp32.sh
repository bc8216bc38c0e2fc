#!/usr/bin/env bash
# Does the fast default (bf16 autocast + channels-last) cost accuracy? The quickstart recipe, shortened, trained
# once with the default and once in exact fp32 (NCHW), same seed and data; prints both test results.
# (Speed is measured by benchmarks/bench_training.py; this script is about accuracy.)
#
#   bash benchmarks/bf16_vs_fp32.sh [OUT_DIR] [EPOCHS]
#
# Needs the JPEG copy unpacked to /tmp/data/cifar_jpg (see README).
set -euo pipefail
out=${1:-runs/bf16_vs_fp32}
epochs=${2:-15}
common=(--config configs/experiments/quickstart.yaml --trainer.max_epochs="$epochs" --trainer.enable_progress_bar=false)
for precision in bf16 fp32; do
  extra=()
  [ "$precision" = fp32 ] && extra=(--config configs/trainer/fp32.yaml)
  [ -f "$out/$precision/metrics.json" ] ||
    imbcompress fit "${common[@]}" "${extra[@]}" --run_dir "$out/$precision" > "$out.$precision.log" 2>&1
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("| precision | accuracy | macro-F1 | balanced accuracy | F1 of the smallest class |")
print("|---|---|---|---|---|")
for name in ("bf16", "fp32"):
    test = json.loads((out / name / "metrics.json").read_text())["test"]
    print(f"| {name} | {100 * test['accuracy']:.2f} | {100 * test['macro_f1']:.2f} | "
          f"{100 * test['balanced_accuracy']:.2f} | {100 * test['per_class']['f1'][-1]:.2f} |")
PY
