#!/usr/bin/env bash
# Short real-data comparison at 2 bits on the shared CIFAR-10 JPEG copy, CIFAR-10-LT exponential rho = 50:
# DoReFa (W2, A2) vs ClimbQ vs ClimbQ+, each fine-tuned for a few epochs from the same FP32 checkpoint with
# [CQ]'s optimiser (SGD 0.04 constant, wd 1e-4). Prints macro-F1, accuracy and tail-class F1.
#
#   bash benchmarks/climbq_real_data.sh [OUT_DIR] [FP32_EPOCHS] [QUANT_EPOCHS]
#
# Needs the JPEG copy unpacked to /tmp/data/cifar_jpg (see README).
set -euo pipefail
out=${1:-runs/climbq_real}
fp32_epochs=${2:-20}
quant_epochs=${3:-5}
base=(--config configs/experiments/quickstart.yaml --data.init_args.imbalance_ratio=50 --trainer.enable_progress_bar=false)
finetune=(--model.init_args.init_from="$out/fp32/checkpoints/last.ckpt" --model.init_args.lr=0.04
  --model.init_args.scheduler=constant --model.init_args.warmup_epochs=0 --model.init_args.weight_decay=0.0001
  --trainer.max_epochs="$quant_epochs")

[ -f "$out/fp32/metrics.json" ] || imbcompress fit "${base[@]}" --trainer.max_epochs="$fp32_epochs" --run_dir "$out/fp32"
[ -f "$out/dorefa_w2a2/metrics.json" ] || imbcompress fit "${base[@]}" "${finetune[@]}" \
  --config configs/compress/dorefa_a3w3.yaml --trainer.callbacks.init_args.weight_bits=2 \
  --trainer.callbacks.init_args.activation_bits=2 --run_dir "$out/dorefa_w2a2"
[ -f "$out/climbq_w2/metrics.json" ] || imbcompress fit "${base[@]}" "${finetune[@]}" \
  --config configs/compress/climbq_w2.yaml --run_dir "$out/climbq_w2"
[ -f "$out/climbqplus_w2/metrics.json" ] || imbcompress fit "${base[@]}" "${finetune[@]}" \
  --config configs/compress/climbqplus_w2.yaml --run_dir "$out/climbqplus_w2"

python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("| method | accuracy | macro-F1 | F1 of the 3 tail classes (mean) | F1 of the smallest class |")
print("|---|---|---|---|---|")
for name in ("fp32", "dorefa_w2a2", "climbq_w2", "climbqplus_w2"):
    metrics = json.loads((out / name / "metrics.json").read_text())
    test, counts = metrics["test"], metrics["train_class_counts"]
    tail = sorted(range(len(counts)), key=counts.__getitem__)[:3]
    f1 = test["per_class"]["f1"]
    print(f"| {name} | {100 * test['accuracy']:.2f} | {100 * test['macro_f1']:.2f} | "
          f"{100 * sum(f1[i] for i in tail) / 3:.2f} | {100 * f1[tail[0]]:.2f} |")
EOF
