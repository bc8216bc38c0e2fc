#!/usr/bin/env bash
# Real-data deployment table on the shared CIFAR-10 JPEG copy, CIFAR-10-LT exponential rho = 100: the quickstart's
# FP32 model vs PTQ int8 calibrated on imbalanced training images vs calibrated class-balanced vs DoReFa (A8, W8)
# fine-tuned a few epochs from the FP32 model and converted exactly to int8. Every int8 row is the int8 ONNX model
# run by ONNX Runtime on the whole test set. Prints accuracy, macro-F1 and tail-class F1.
#
#   bash benchmarks/deploy_real_data.sh [FP32_RUN] [OUT_DIR] [QAT_EPOCHS] [CALIBRATION_SIZE]
#
# --ckpt_path=null: a resumed FP32 fit's config.yaml records the checkpoint it resumed from, which the DoReFa fit
# must not resume. FP32_RUN defaults to /work/runs/ce/seed0 (a finished `imbcompress fit --config configs/experiments/quickstart.yaml`
# run: config.yaml, checkpoints/last.ckpt, metrics.json). Needs the JPEG copy unpacked to /tmp/data/cifar_jpg.
set -euo pipefail
fp32=${1:-/work/runs/ce/seed0}
out=${2:-runs/deploy_real}
qat_epochs=${3:-5}
size=${4:-500}
ckpt="$fp32/checkpoints/last.ckpt"
common=(--config "$fp32/config.yaml" --calibration_size "$size")

[ -f "$out/ptq_imbalanced/metrics.json" ] || imbcompress ptq "${common[@]}" --ckpt_path "$ckpt" \
  --calibration imbalanced --run_dir "$out/ptq_imbalanced"
[ -f "$out/ptq_balanced/metrics.json" ] || imbcompress ptq "${common[@]}" --ckpt_path "$ckpt" \
  --calibration balanced --run_dir "$out/ptq_balanced"
[ -f "$out/dorefa_a8w8/metrics.json" ] || imbcompress fit --config "$fp32/config.yaml" \
  --config configs/compress/dorefa_a8w4.yaml --trainer.callbacks.init_args.weight_bits=8 \
  --model.init_args.init_from="$ckpt" --model.init_args.lr=0.01 --model.init_args.warmup_epochs=0 \
  --trainer.max_epochs="$qat_epochs" --trainer.enable_progress_bar=false --ckpt_path=null --run_dir "$out/dorefa_a8w8"
[ -f "$out/dorefa_a8w8_int8/metrics.json" ] || imbcompress ptq --config "$out/dorefa_a8w8/config.yaml" \
  --ckpt_path "$out/dorefa_a8w8/checkpoints/last.ckpt" --run_dir "$out/dorefa_a8w8_int8"

python3 - "$fp32" "$out" <<'PY'
import json, sys
from pathlib import Path

fp32, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = {"FP32 (PyTorch)": fp32, "PTQ int8, imbalanced calibration": out / "ptq_imbalanced",
        "PTQ int8, balanced calibration": out / "ptq_balanced", "DoReFa A8W8 (fake-quant, PyTorch)": out / "dorefa_a8w8",
        "DoReFa A8W8 -> int8": out / "dorefa_a8w8_int8"}
print("| model | accuracy | macro-F1 | F1 of the 3 tail classes (mean) | F1 of the smallest class | agreement with source |")
print("|---|---|---|---|---|---|")
for name, run in runs.items():
    metrics = json.loads((run / "metrics.json").read_text())
    test, counts = metrics["test"], metrics["train_class_counts"]
    tail = sorted(range(len(counts)), key=counts.__getitem__)[:3]
    f1 = test["per_class"]["f1"]
    agreement = next((r["agreement_with_source"] for r in metrics["compression"] if "agreement_with_source" in r), None)
    print(f"| {name} | {100 * test['accuracy']:.2f} | {100 * test['macro_f1']:.2f} | "
          f"{100 * sum(f1[i] for i in tail) / 3:.2f} | {100 * f1[tail[0]]:.2f} | "
          f"{'-' if agreement is None else f'{100 * agreement:.2f} %'} |")
PY
