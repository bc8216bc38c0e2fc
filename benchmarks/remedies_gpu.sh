#!/usr/bin/env bash
# The remedy table at the published schedule, on one GPU: ResNet-20, CIFAR-10-LT rho = 100 (the quickstart data),
# EPOCHS epochs (default 200, the schedule of the LDAM-DRW and logit-adjustment papers) of cross-entropy, LDAM-DRW
# and the logit-adjusted loss, trained at once on the one GPU (bf16 mixed precision, data resident on the GPU),
# then post-hoc logit adjustment of the cross-entropy model, and the table of benchmarks/remedies_table.py.
#
#   bash benchmarks/remedies_gpu.sh OUT_DIR [EPOCHS] [SEED]
#
# The data must be at /tmp/data/cifar_jpg (docs: README, "Data"). Each fit runs under `timeout $FIT_LIMIT`
# (seconds, default 1800) so that the script always ends; a fit stopped by it leaves no metrics.json and its
# row is left out of the table (named on stderr). Output: OUT_DIR/<row>_s<SEED>/ (runs), OUT_DIR/table.md.
set -uo pipefail

[ $# -ge 1 ] || { echo "usage: bash benchmarks/remedies_gpu.sh OUT_DIR [EPOCHS] [SEED]" >&2; exit 2; }
OUT=$1
EPOCHS=${2:-200}
SEED=${3:-0}
FIT_LIMIT=${FIT_LIMIT:-1800}
[[ $EPOCHS =~ ^[1-9][0-9]*$ ]] || { echo "EPOCHS must be a positive integer, got '$EPOCHS'" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || { echo "SEED must be a non-negative integer, got '$SEED'" >&2; exit 2; }
[[ $FIT_LIMIT =~ ^[1-9][0-9]*$ ]] || { echo "FIT_LIMIT must be a positive integer, got '$FIT_LIMIT'" >&2; exit 2; }
[ -d /tmp/data/cifar_jpg/train ] || { echo "no data at /tmp/data/cifar_jpg (see README, Data)" >&2; exit 2; }
python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA GPU: this script trains on one GPU" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

common=(--config configs/experiments/quickstart.yaml --config configs/trainer/gpu.yaml
  --trainer.devices 1 --trainer.strategy auto --trainer.max_epochs "$EPOCHS" --trainer.check_val_every_n_epoch 10
  --trainer.enable_progress_bar false --seed_everything "$SEED" --data.init_args.subset_seed "$SEED")
pids=()
for row in ce ldam_drw logit_adjusted; do
  remedy=(); [ $row = ce ] || remedy=(--config "configs/remedies/$row.yaml")
  timeout --kill-after=10 "$FIT_LIMIT" python3 -m imbcompress fit "${common[@]}" "${remedy[@]}" \
    --run_dir "$OUT/${row}_s$SEED" >"$OUT/${row}_s$SEED.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
ce=$OUT/ce_s$SEED
if [ -f "$ce/metrics.json" ]; then
  python3 -m imbcompress test --config "$ce/config.yaml" --config configs/remedies/posthoc_logit_adjustment.yaml \
    --trainer.enable_progress_bar false --ckpt_path "$ce/checkpoints/last.ckpt" --run_dir "$OUT/posthoc_la_s$SEED" \
    >"$OUT/posthoc_la_s$SEED.log" 2>&1 || status=1
fi
python3 benchmarks/remedies_table.py "$OUT" --seeds "$SEED" | tee "$OUT/table.md"
exit $status
