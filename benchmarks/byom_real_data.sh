#!/usr/bin/env bash
# Bring your own model and image size, on real data: the shared CIFAR-10 JPEG copy as an image folder brought to
# 64x64 (data.image_size, centre crop of the upscaled image), CIFAR-10-LT exponential rho = 100, timm's
# MobileNet-V3 small (random init). FP32 first, then severe filter pruning (Torch-Pruning engine, one filter kept per
# prunable conv) fine-tuned from it. Prints training throughput, NNZ before/after, the per-class table of both runs,
# then the inference benchmark of the pruned vs unpruned model (benchmarks/bench_byom.py).
#
#   [PRECISION=32-true] bash benchmarks/byom_real_data.sh [OUT_DIR] [FP32_EPOCHS] [PRUNED_EPOCHS] [ARCH]
#
# Defaults: runs/byom_real, 6, 6, timm:mobilenetv3_small_100. About 30 minutes on a 2-core CPU with the defaults:
# the one-time decode + resize of the 60,000 JPEGs (~1-2 min, cached in /tmp/data/cifar_jpg/.imbcompress_cache),
# ~110 s per FP32 epoch (estimated from step times measured on a loaded machine: 97 steps of batch 128), pruned
# epochs faster, two tests of 10,000 images, the benchmark ~1 min. Per-epoch validation is off (the test at the end
# is the evaluation). Needs the JPEG copy unpacked to /tmp/data/cifar_jpg. A finished run is not run again.
set -euo pipefail
out=${1:-runs/byom_real}
fp32_epochs=${2:-6}
pruned_epochs=${3:-6}
arch=${4:-timm:mobilenetv3_small_100}
common=(--config configs/trainer/cpu.yaml --config configs/model/timm_mobilenetv3_small_100.yaml
  --model.init_args.arch="$arch" --config configs/data/cifar10_jpeg.yaml
  --data.init_args.profile=exponential --data.init_args.imbalance_ratio=100 --data.init_args.image_size=64
  --trainer.limit_val_batches=0 --trainer.enable_progress_bar=false)
# PRECISION=32-true on a CPU without native bf16 (configs/trainer/cpu.yaml's bf16 is emulated there, and slow)
[ -n "${PRECISION:-}" ] && common+=(--trainer.precision="$PRECISION")
mkdir -p "$out"

run() {  # run NAME EPOCHS ARGS...: one fit (skipped when finished), its wall time in NAME.seconds
  local name=$1 epochs=$2
  shift 2
  [ -f "$out/$name/metrics.json" ] && return
  local start
  start=$(date +%s)
  imbcompress fit "${common[@]}" --trainer.max_epochs="$epochs" "$@" --run_dir "$out/$name"
  echo $(($(date +%s) - start)) >"$out/$name.seconds"
}

run fp32 "$fp32_epochs"
run severe "$pruned_epochs" --config configs/compress/prune_severe.yaml \
  --model.init_args.init_from="$out/fp32/checkpoints/last.ckpt" --model.init_args.lr=0.01 \
  --model.init_args.warmup_epochs=0

python3 - "$out" "$fp32_epochs" "$pruned_epochs" <<'PY'
import json, sys
from pathlib import Path

out, epochs = Path(sys.argv[1]), {"fp32": int(sys.argv[2]), "severe": int(sys.argv[3])}
runs = {name: json.loads((out / name / "metrics.json").read_text()) for name in epochs}
print("| run | epochs | fit wall time (incl. test) | train img/s | NNZ | accuracy | macro-F1 | balanced acc. |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, metrics in runs.items():
    seconds_file = out / f"{name}.seconds"
    seconds = int(seconds_file.read_text()) if seconds_file.exists() else None
    images = sum(metrics["train_class_counts"]) * epochs[name]
    speed = f"{images / seconds:,.0f}" if seconds else "-"
    wall = f"{seconds} s" if seconds else "-"
    test = metrics["test"]
    print(f"| {name} | {epochs[name]} | {wall} | {speed} | {metrics['model_size']['nnz']:,} | "
          f"{100 * test['accuracy']:.2f} | {100 * test['macro_f1']:.2f} | {100 * test['balanced_accuracy']:.2f} |")
(record,) = runs["severe"]["compression"]
print(f"\nNNZ before/after pruning: {record['nnz_before']:,} -> {record['nnz_after']:,} "
      f"(sparsity {100 * record['sparsity']:.2f} %, engine {record['engine_used']}, "
      f"{len(record['kept_filters'])} prunable convs)\n")
names, counts = runs["fp32"]["class_names"], runs["fp32"]["train_class_counts"]
print("| class | train n | FP32 recall | FP32 F1 | severe recall | severe F1 | F1 change |")
print("|---|---:|---:|---:|---:|---:|---:|")
for i, name in enumerate(names):
    fp32, severe = runs["fp32"]["test"]["per_class"], runs["severe"]["test"]["per_class"]
    print(f"| {name} | {counts[i]} | {fp32['recall'][i]:.4f} | {fp32['f1'][i]:.4f} | {severe['recall'][i]:.4f} | "
          f"{severe['f1'][i]:.4f} | {severe['f1'][i] - fp32['f1'][i]:+.4f} |")
PY

echo
python3 benchmarks/bench_byom.py --arch "$arch" --image-size 64 --batch-size 64 --levels moderate,severe --repeats 5
