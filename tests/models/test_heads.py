"""The cosine classifier (LDAM-DRW's normalised linear layer) and how the rest of the package treats it."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from imbcompress.compress.dorefa import apply_dorefa, dorefa_record
from imbcompress.models import build_model
from imbcompress.models.heads import CosineLinear, set_classifier
from imbcompress.remedies.losses import LDAMCriterion, ldam_margins
from imbcompress.task import ImbalanceClassifier


def test_cosine_logits_are_cosine_similarities_by_hand() -> None:
    torch.manual_seed(0)
    head = CosineLinear(5, 3)
    assert head.bias is None and torch.allclose(head.weight.norm(dim=1), torch.ones(3))
    x = torch.randn(4, 5)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([[2.0], [0.5], [7.0]]))  # row norms never change the output
        expected = torch.stack([torch.stack([(xi @ wk) / (xi.norm() * wk.norm()) for wk in head.weight]) for xi in x])
        assert torch.allclose(head(x), expected, atol=1e-6)
        assert head(10 * x).abs().max() <= 1 + 1e-6


def test_cosine_logits_stay_fp32_under_bf16_autocast() -> None:
    head, x = CosineLinear(8, 4), torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, F.linear(F.normalize(x.bfloat16().float()), F.normalize(head.weight)), atol=1e-6)


def test_the_task_builds_and_checks_the_classifier_kind() -> None:
    task = ImbalanceClassifier(num_classes=10, classifier="cosine")
    assert isinstance(task.model.classifier, CosineLinear) and task.hparams["classifier"] == "cosine"
    assert type(ImbalanceClassifier(num_classes=10).model.classifier) is torch.nn.Linear
    with pytest.raises(ValueError, match="model.classifier must be one of linear, cosine, got 'norm'"):
        set_classifier(build_model("resnet20", 10), "norm")


def test_dorefa_refuses_to_quantize_a_cosine_classifier_but_keeps_it_by_default() -> None:
    model = build_model("resnet20", 10)
    set_classifier(model, "cosine")
    apply_dorefa(model, dorefa_record(model, 4, 4, None))  # the default exclude keeps the classifier FP
    assert type(model.classifier) is CosineLinear
    model = build_model("resnet20", 10)
    set_classifier(model, "cosine")
    with pytest.raises(ValueError, match="'classifier' is a cosine classifier"):
        apply_dorefa(model, dorefa_record(model, 4, 4, ["stem.conv"]))


def test_a_cosine_model_exports_to_onnx_with_the_same_logits() -> None:
    import onnxruntime as ort

    from imbcompress.deploy.onnx_export import onnx_bytes

    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    set_classifier(model, "cosine")
    model.eval()
    images = torch.randn(4, 3, 32, 32)
    session = ort.InferenceSession(onnx_bytes(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(images), atol=1e-5)


def test_a_cosine_classifier_warns_unless_the_loss_scales_its_logits() -> None:
    task = ImbalanceClassifier(num_classes=10, classifier="cosine")
    with pytest.warns(UserWarning, match=r"model.classifier=cosine with a base loss .*\(cross_entropy\).* at most "):
        task.on_fit_start()
    task.set_criterion(LDAMCriterion(ldam_margins([50, 5], 0.5), scale=30.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.on_fit_start()  # LDAM's scale s is what the cosine logits are for
        ImbalanceClassifier(num_classes=10).on_fit_start()  # a linear classifier never warns
