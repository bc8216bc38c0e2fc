"""Argmax agreement of DoReFa -> int8 ONNX models with their fake-quant PyTorch models, per bit width and per ONNX
Runtime graph-optimisation level (the check behind docs/deploy.md's agreement table).

Uses the deploy tests' generated task (a class-specific colour plus noise): ResNet-20 trained 20 fp32 steps, then
DoReFa QAT 5 steps per setting, 1000 test images. Prints one row per setting and level: agreement, the largest
logit difference, and the top-2 margins of the fake-quant model at the disagreeing images.

    python3 benchmarks/dorefa_int8_agreement.py

With ``--run RUN`` (a DoReFa fit's run directory: config.yaml and checkpoints/last.ckpt) it instead splits the
disagreement of that model on its whole test set into its two sources: the PyTorch model with BatchNorm folded
(float rounding of the fold alone) and ONNX Runtime's int8 arithmetic on top of it.

    python3 benchmarks/dorefa_int8_agreement.py --run runs/deploy_real/dorefa_a8w8
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the deploy tests' generated task
from deploy.helpers import learnable_images, train_few_steps  # noqa: E402

from imbcompress.compress.dorefa import apply_dorefa, dorefa_record  # noqa: E402
from imbcompress.deploy.dorefa_int8 import dorefa_int8_bytes  # noqa: E402
from imbcompress.models import build_model  # noqa: E402

SETTINGS = [(8, 8), (4, 8), (1, 8), (8, 3), (3, 3), (2, 2)]  # (weight bits, activation bits)
LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--run", type=Path, help="a DoReFa run directory: measure on its test set instead")
    args = parser.parse_args()
    if args.run is not None:
        real_run(args.run)
        return
    torch.manual_seed(0)
    base = train_few_steps(build_model("resnet20", 10))
    images, labels = learnable_images(args.images, seed=2)
    print("| W | A | ORT level | fake-quant accuracy | agreement | max abs logit diff | margins at disagreements |")
    print("|---|---|---|---|---|---|---|")
    for weight_bits, activation_bits in SETTINGS:
        model = copy.deepcopy(base)
        apply_dorefa(model, dorefa_record(model, weight_bits, activation_bits, None))
        train_few_steps(model, steps=5, lr=1e-3)
        with torch.no_grad():
            logits = model(images)
        top2 = logits.topk(2, dim=1).values
        margins = top2[:, 0] - top2[:, 1]
        accuracy = float((logits.argmax(1) == labels).float().mean())
        data = dorefa_int8_bytes(model)
        for name, level in LEVELS.items():
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            out = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
            differ = out.argmax(1) != logits.argmax(1)
            shown = ", ".join(f"{m:.1e}" for m in sorted(margins[differ].tolist())[:6]) or "-"
            agreement = 1 - float(differ.float().mean())
            print(
                f"| {weight_bits} | {activation_bits} | {name} | {accuracy:.3f} | {agreement:.4f}"
                f" | {float((out - logits).abs().max()):.4f} | {shown} |"
            )


def real_run(run: Path) -> None:
    """Agreement of the folded PyTorch deploy model and of the int8 ONNX model with the fake-quant model of ``run``."""
    from imbcompress.deploy import command, ptq
    from imbcompress.deploy.dorefa_int8 import int8_deploy_model

    config = command.read_config(str(run / "config.yaml"))
    _, model = command.load_model(str(run / "checkpoints" / "last.ckpt"))
    datamodule = command.build_datamodule(config, None)
    normalize = command.normalizer(datamodule)
    images, _ = command.whole_test_set(datamodule)

    def logits_of(module: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([module(normalize(images[i : i + 500])) for i in range(0, len(images), 500)])

    source = logits_of(model.eval())
    folded = logits_of(int8_deploy_model(model).eval())
    int8 = ptq.onnx_logits(ptq.session(dorefa_int8_bytes(model)), images, normalize)
    print(f"{run}: {len(images)} test images")
    print("| comparison | agreement | disagreements | largest top-2 margin of the reference there |")
    print("|---|---|---|---|")
    for name, out, reference in [
        ("PyTorch, BN folded vs fake-quant", folded, source),
        ("ONNX Runtime int8 vs PyTorch, BN folded", int8, folded),
        ("ONNX Runtime int8 vs fake-quant", int8, source),
    ]:
        record = ptq.agreement(out, reference)
        margin = record["source_margin_at_disagreement"]
        print(
            f"| {name} | {100 * record['agreement_with_source']:.2f} % | {record['disagreements']} | "
            f"{'-' if margin is None else f'{margin:.4f}'} |"
        )


if __name__ == "__main__":
    main()
