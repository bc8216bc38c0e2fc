#!/usr/bin/env bash
# Like-for-like 2-bit comparison of DoReFa, ClimbQ and ClimbQ+ (issue 17, docs/climbq.md), resumable.
#
# Shared CIFAR-10 JPEG copy (/tmp/data/cifar_jpg), CIFAR-10-LT exponential rho = 50, ResNet-20 with option-B
# shortcuts, a stratified validation split (VAL_FRACTION of every class, taken out of the training subset, seeded).
# One FP32 parent (quickstart recipe: SGD 0.1 cosine, FP32_EPOCHS), then for every seed, FT_EPOCHS of fine-tuning
# from it with [CQ]'s optimiser (SGD 0.04 constant, momentum 0.9, wd 1e-4, batch 128) for each row:
#   dorefa_w2a2        DoReFa (W2, A2), stem and classifier full precision
#   climbq_stem_fp     ClimbQ 2-bit, stem conv + its features full precision (exclude: [stem.conv])
#   climbq             ClimbQ 2-bit, stem quantized (the official setting)
#   climbqplus_official ClimbQ+ (HomoVar official: lt_loss.py's arithmetic, softmax + weighted BCE)
#   climbqplus_paper   ClimbQ+ (HomoVar paper: Levene's test per batch, weighted CE)
#   climbq_cb          ClimbQ + class-balanced cross-entropy as HomoVar reduces it, mean_i w_y CE_i
#                      (configs/compress/climbq_cb_w2.yaml): the ablation that isolates HomoVar's bounds
#   climbq_cb_remedy   ClimbQ + the class_balanced remedy (issue 11) at beta 0.999: weighted mean
#                      sum_i w_y CE_i / sum_i w_y, the re-weighting a user would reach for
# Every seed starts from that parent on the same subset and validation split; the seed sets the training order and the
# augmentation (data.shuffle_seed follows --seed_everything; each metrics.json records it).
# Every fine-tuning run also keeps checkpoints/best.ckpt, the epoch with the best validation macro-F1, and tests it
# into <run>/best/metrics.json; <run>/metrics.json is the final epoch. Never selected on the test set.
#
#   bash benchmarks/climbq_comparison.sh [OUT_DIR]
#   FP32_EPOCHS=60 FT_EPOCHS=30 SEEDS="0 1" VAL_FRACTION=0.1 bash benchmarks/climbq_comparison.sh runs/climbq_cmp
#   CLIMBQ_COMPARISON_TINY=1 bash benchmarks/climbq_comparison.sh /tmp/climbq_tiny   # 1 epoch, 2 batches: a smoke test
#   ROWS="climbq_cb_remedy climbq_cb" bash benchmarks/climbq_comparison.sh runs/climbq_cmp   # these rows, in this order
#
# ROWS (default: all, in the order above) splits the work between processes or machines that share OUT_DIR: a run
# directory takes one fit at a time (a second fit of it is refused), so give each process disjoint rows.
#
# Resumable: a run whose metrics.json exists is skipped; a run with checkpoints/last.ckpt continues from it.
# Extra arguments for every run (e.g. a GPU trainer): EXTRA_ARGS="--trainer.accelerator=gpu --trainer.devices=1".
# PRECISION overrides the quickstart's bf16-mixed: use PRECISION=32-true on a CPU without AVX-512 BF16 / AMX, where
# bf16 convolutions fall back to a slow path (torch.backends.cpu.get_cpu_capability() says AVX2 there).
set -euo pipefail
out=${1:-runs/climbq_comparison}
fp32_epochs=${FP32_EPOCHS:-60}
ft_epochs=${FT_EPOCHS:-30}
seeds=${SEEDS:-"0 1"}
val_fraction=${VAL_FRACTION:-0.1}
# The rows: name, then the arguments that make it (one definition; ROWS names a subset of them)
rows=(
  "dorefa_w2a2 --config configs/compress/dorefa_a3w3.yaml --trainer.callbacks.init_args.weight_bits=2
   --trainer.callbacks.init_args.activation_bits=2"
  "climbq_stem_fp --config configs/compress/climbq_w2.yaml --trainer.callbacks.init_args.exclude=[stem.conv]"
  "climbq --config configs/compress/climbq_w2.yaml"
  "climbqplus_official --config configs/compress/climbqplus_w2.yaml"
  "climbqplus_paper --config configs/compress/climbqplus_w2.yaml --trainer.callbacks.init_args.homovar_mode=paper"
  "climbq_cb --config configs/compress/climbq_cb_w2.yaml"
  "climbq_cb_remedy --config configs/compress/climbq_w2.yaml --config $out/class_balanced_0999.yaml"
)
declare -A row_args=()
all_rows=()
for row in "${rows[@]}"; do
  read -r -d "" -a words <<<"$row" || true  # the row may span lines
  all_rows+=("${words[0]}")
  row_args[${words[0]}]="${words[*]:1}"
done
selected=${ROWS:-${all_rows[*]}}
for name in $selected; do
  if [ -z "${row_args[$name]+set}" ]; then
    echo "ROWS=${ROWS@Q}: unknown row '$name'; allowed: ${all_rows[*]}" >&2
    exit 2
  fi
done
read -r -a extra <<<"${EXTRA_ARGS:-}"
[ -n "${PRECISION:-}" ] && extra+=(--trainer.precision="$PRECISION")
limits=()
if [ "${CLIMBQ_COMPARISON_TINY:-0}" = 1 ]; then
  fp32_epochs=1 ft_epochs=1
  limits=(--trainer.limit_train_batches=2 --trainer.limit_val_batches=2 --trainer.limit_test_batches=2
    --data.init_args.eval_batch_size=100)
fi
mkdir -p "$out"

# The validation-selected checkpoint, beside last.ckpt in <run>/checkpoints/. First in the callback list, so that a
# later --trainer.callbacks.init_args.* override reaches the compression callback appended after it.
cat >"$out/select_best.yaml" <<'YAML'
trainer:
  callbacks+:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        monitor: val/macro_f1
        mode: max
        save_top_k: 1
        filename: best
        auto_insert_metric_name: false
        enable_version_counter: false
YAML

# The class_balanced remedy at HomoVar's beta (0.999), for the climbq_cb_remedy row.
cat >"$out/class_balanced_0999.yaml" <<'YAML'
trainer:
  callbacks+:
    - class_path: imbcompress.callbacks.ClassBalancedLoss
      init_args:
        beta: 0.999
        gamma: 0.0
YAML

data=(--config configs/experiments/quickstart.yaml --data.init_args.root=/tmp/data/cifar_jpg
  --data.init_args.imbalance_ratio=50 --data.init_args.val_fraction="$val_fraction"
  --model.init_args.shortcut=B --trainer.enable_progress_bar=false)
finetune=(--config "$out/select_best.yaml" --model.init_args.init_from="$out/fp32/checkpoints/last.ckpt"
  --model.init_args.lr=0.04 --model.init_args.scheduler=constant --model.init_args.warmup_epochs=0
  --model.init_args.weight_decay=0.0001 --trainer.max_epochs="$ft_epochs")

fit() {  # fit NAME ARGS...: one resumable run in $out/NAME
  local dir="$out/$1" start=$SECONDS
  shift
  if [ -f "$dir/metrics.json" ]; then
    echo "== $dir: done (metrics.json exists), skipped"
    return
  fi
  local resume=()
  [ -f "$dir/checkpoints/last.ckpt" ] && resume=(--ckpt_path "$dir/checkpoints/last.ckpt")
  echo "== $dir: fit${resume:+ (resuming from last.ckpt)}"
  imbcompress fit "${data[@]}" "$@" "${limits[@]}" "${extra[@]}" --run_dir "$dir" "${resume[@]}"
  printf '%s\tfit\t%s\n' "$dir" $((SECONDS - start)) >>"$out/timings.tsv"
}

test_best() {  # test_best NAME: test the validation-selected checkpoint into $out/NAME/best/metrics.json
  local dir="$out/$1"
  [ -f "$dir/best/metrics.json" ] && return
  imbcompress test --config "$dir/config.yaml" --ckpt_path "$dir/checkpoints/best.ckpt" --run_dir "$dir/best" \
    "${extra[@]}"
}

fit fp32 --trainer.max_epochs="$fp32_epochs" --seed_everything=0
for seed in $seeds; do
  for name in $selected; do
    read -r -a args <<<"${row_args[$name]}"
    fit "${name}_s$seed" "${finetune[@]}" "${args[@]}" --seed_everything="$seed"
    test_best "${name}_s$seed"
  done
done

python3 benchmarks/climbq_comparison_table.py "$out" --seeds $seeds
