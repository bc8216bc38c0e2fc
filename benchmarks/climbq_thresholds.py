"""ClimbQ `paper` mode: the quantization levels a feature gets in training (with labels) against at test time.

SPEC §4.4: in training, `paper` mode maps a feature x of class k through Phi((x - mu_k) / (c_k sigma_k)), with
c_k = 2 - n_k / N and the batch statistics mu_k, sigma_k of class k at that layer; at test time (no labels) through
Phi(x). With B bits the level edges sit where Phi = i / (2^B - 1) ± 1/2 step, so the outer 2-bit edges are
mu_k ± 0.967 c_k sigma_k in training but ±0.967 at test. This script measures that on one model:

- per quantized feature map: the outer training edge (mean over the classes with >= 2 samples of
  |mu_k| + 0.967 c_k sigma_k, in feature units) against the test edge 0.967;
- the share of feature values whose level differs between the two rules on the *same* BatchNorm output
  (training-mode BN: the threshold mismatch alone);
- the share of values in the two outer levels under each rule (the training rule spreads values over the
  levels as a class-standardised normal would; Phi(x) on features of spread ~1 puts more in the outer levels);
- the outer-level share under the test rule on eval-mode BN outputs (running statistics), as the model is tested
  (the measuring forwards leave the running statistics as the checkpoint has them).

An FP32 checkpoint gets `paper`-mode ClimbQ applied before measuring (its BN statistics are those of a model that
never saw quantized features, so its eval column says little); a checkpoint fine-tuned with `paper`-mode ClimbQ
(`--trainer.callbacks.init_args.mode=paper`) is measured as trained.

It also measures whether the forward pass carries each image's own label in training: accuracy on the training
batches under the test rule, and under the training rule with the true labels and with them shuffled within the
batch (either mode; the edge table is printed for `paper` mode only).

    python3 benchmarks/climbq_thresholds.py                                 # random init, random images, rho 50
    python3 benchmarks/climbq_thresholds.py --checkpoint RUN/checkpoints/last.ckpt --root /tmp/data/cifar_jpg
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from imbcompress.compress.climbq import (
    BatchLabels,
    ClimbQBatchNorm2d,
    apply_climbq,
    clear_class_labels,
    climbq_record,
    normal_cdf,
    paper_standardise,
    set_class_labels,
)
from imbcompress.models import build_model

RHO50 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]  # CIFAR-10-LT exponential, rho 50


def _model(checkpoint: str | None, bits: int) -> tuple[nn.Module, str]:
    """A ClimbQ model and its mode: a checkpoint trained with ClimbQ (either mode) as trained, or an FP32 checkpoint
    (or a random option-B ResNet-20) with `paper`-mode ClimbQ applied. BatchNorm momentum is set to 0, so that the
    measuring forwards in training mode leave the running statistics as the checkpoint has them."""
    torch.manual_seed(0)
    mode, records = "paper", []
    if checkpoint is None:
        model = build_model("resnet20", 10, shortcut="B")
    else:
        from imbcompress.task import ImbalanceClassifier

        task = ImbalanceClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
        model, records = task.model, task.transforms.saved()
        if records and [(r.get("kind"), r.get("bits")) for r in records] != [("climbq", bits)]:
            raise SystemExit(
                f"--checkpoint {checkpoint}: give an FP32 checkpoint or one trained with {bits}-bit ClimbQ alone; "
                f"this one has {[(r.get('kind'), r.get('bits')) for r in records]}"
            )
    if records:
        mode = records[0]["mode"]
    else:
        apply_climbq(model, climbq_record(model, bits, mode="paper"))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0
    return model, mode


def label_dependence(model: nn.Module, batches: list[tuple[Tensor, Tensor]], counts: list[int]) -> dict[str, float]:
    """Accuracy on the batches under the test rule (eval mode, no labels) and under the training rule (training
    mode, the batch's labels given to the quantizers) with the true labels and with them shuffled within the batch
    (the same class composition, the wrong label on each image): a gap between the last two is information about
    each image's own label reaching the forward pass."""
    generator = torch.Generator().manual_seed(0)
    right = {"test rule": 0, "training rule, true labels": 0, "training rule, shuffled labels": 0}
    total = 0
    with torch.no_grad():
        for images, labels in batches:
            model.eval()
            right["test rule"] += int((model(images).argmax(1) == labels).sum())
            model.train()
            shuffled = labels[torch.randperm(len(labels), generator=generator)]
            for name, given in (("training rule, true labels", labels), ("training rule, shuffled labels", shuffled)):
                set_class_labels(model, given, counts)
                right[name] += int((model(images).argmax(1) == labels).sum())
                clear_class_labels(model)
            total += len(labels)
    return {name: value / total for name, value in right.items()}


def _batches(args: argparse.Namespace) -> tuple[list[tuple[Tensor, Tensor]], list[int]]:
    """``args.batches`` training batches (augmented and normalised, as a fit sees them) and the class counts."""
    generator = torch.Generator().manual_seed(args.seed)
    if args.root is None:
        weights = torch.tensor(RHO50, dtype=torch.float)
        batches = [
            (
                torch.randn(args.batch_size, 3, 32, 32, generator=generator),
                torch.multinomial(weights, args.batch_size, replacement=True, generator=generator),
            )
            for _ in range(args.batches)
        ]
        return batches, RHO50
    from imbcompress.data import ImbalancedDataModule

    datamodule = ImbalancedDataModule(
        dataset="image_folder", root=args.root, profile="exponential", imbalance_ratio=args.ratio,
        head="first", subset_seed=0, batch_size=args.batch_size,
    )  # fmt: skip
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    batches = [datamodule.on_after_batch_transfer(next(loader), 0) for _ in range(args.batches)]
    return batches, list(datamodule.train_class_counts)


def _levels(u: Tensor, bits: int) -> Tensor:
    """The integer level index of Q_B(u) (``climbq.round_ste``'s forward is this divided by 2^B - 1, computed as
    u + (level - u), which is not exact in floating point: compare indices, not quantized values)."""
    return torch.round((2**bits - 1) * u)


def measure(model: nn.Module, batches: list[tuple[Tensor, Tensor]], counts: list[int], bits: int) -> dict[str, Any]:
    """Per feature map: lists (one entry per batch) of the four figures of the module docstring."""
    edge = float(torch.special.ndtri(torch.tensor(1 - 0.5 / (2**bits - 1))))  # 0.967 for 2 bits
    outer = (0.0, float(2**bits - 1))
    layers = {name: module for name, module in model.named_modules() if isinstance(module, ClimbQBatchNorm2d)}
    seen: dict[str, Tensor] = {}
    hooks = [
        module.act_quantizer.register_forward_hook(lambda _m, inputs, _o, name=name: seen.__setitem__(name, inputs[0]))
        for name, module in layers.items()
    ]
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    class_counts = torch.tensor(counts)
    with torch.no_grad():
        for images, labels in batches:
            model.train()
            set_class_labels(model, labels, counts)
            model(images)
            clear_class_labels(model)
            stats = BatchLabels(labels, class_counts)
            batch_counts = stats.class_batch_counts
            scale = 2.0 - class_counts.double() / class_counts.sum()
            for name, x in seen.items():
                x = x.double()
                train_level = _levels(normal_cdf(paper_standardise(x, stats)), bits)
                test_level = _levels(normal_cdf(x), bits)
                edges = [
                    float(x[labels == k].mean().abs() + edge * scale[k] * x[labels == k].std())
                    for k in range(len(counts))
                    if batch_counts[k] >= 2
                ]
                row = rows[name]
                row["train_edge"].append(statistics.mean(edges))
                row["differ"].append(float((train_level != test_level).double().mean()))
                row["outer_train"].append(float(torch.isin(train_level, torch.tensor(outer)).double().mean()))
                row["outer_test"].append(float(torch.isin(test_level, torch.tensor(outer)).double().mean()))
            model.eval()
            model(images)
            for name, x in seen.items():
                level = _levels(normal_cdf(x.double()), bits)
                rows[name]["outer_eval"].append(float(torch.isin(level, torch.tensor(outer)).double().mean()))
    for hook in hooks:
        hook.remove()
    return {"edge": edge, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="an FP32 or a ClimbQ-trained checkpoint (option-B ResNet); default: random initialisation"
    )
    parser.add_argument("--root", help="image-folder data root (the shared JPEG copy); default: random images")
    parser.add_argument("--ratio", type=float, default=50, help="exponential imbalance ratio of the training set")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="training batches measured (figures are means)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, mode = _model(args.checkpoint, args.bits)
    batches, counts = _batches(args)
    print(
        f"# {args.checkpoint or 'random initialisation'} ({mode} mode); {args.root or 'random images'}; "
        f"{args.bits} bits; {args.batches} training batches of {args.batch_size}; class counts {counts}"
    )
    accuracy = label_dependence(model, batches, counts)
    print("accuracy on these training batches: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in accuracy.items()))
    if mode != "paper":
        return  # the edges below are `paper` mode's; `official` trains with Phi(x / c_i), c_i ~ 1.99, tests with c = 2
    result = measure(model, batches, counts, args.bits)
    print(f"# test edge (Phi(x)): +-{result['edge']:.3f}")
    header = ["feature map", "train edge |mu_k| + e c_k sigma_k", "levels differ (same BN output)",
              "outer levels, train rule", "outer levels, test rule", "outer levels, test rule on eval BN"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    keys = ("train_edge", "differ", "outer_train", "outer_test", "outer_eval")
    per_map = {name: [statistics.mean(row[key]) for key in keys] for name, row in result["rows"].items()}
    for name, values in per_map.items():
        cells = [f"{values[0]:.2f}", *(f"{100 * value:.1f} %" for value in values[1:])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    columns = list(zip(*per_map.values(), strict=True))
    cells = [f"{statistics.mean(columns[0]):.2f} ({min(columns[0]):.2f}-{max(columns[0]):.2f})"]
    cells += [f"{100 * statistics.mean(c):.1f} % ({100 * min(c):.1f}-{100 * max(c):.1f})" for c in columns[1:]]
    print(f"| mean over the {len(per_map)} maps (min-max) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
