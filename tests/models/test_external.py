"""timm / torchvision models by name: the adapter's interface, names checked at parse time, local weights."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from imbcompress.errors import SettingsError
from imbcompress.models import ExternalModel, build_model, check_arch
from imbcompress.task import ImbalanceClassifier


@pytest.mark.parametrize("arch", ["timm:mobilenetv3_small_050", "timm:resnet10t", "torchvision:mobilenet_v3_small"])
def test_library_models_have_the_task_interface(arch):
    model = build_model(arch, 7).eval()
    assert isinstance(model, ExternalModel) and isinstance(model.classifier, nn.Linear)
    images = torch.randn(2, 3, 32, 32)
    features = model.forward_features(images)
    assert features.shape == (2, model.classifier.in_features)
    assert torch.equal(model(images), model.forward_head(features)) and model(images).shape == (2, 7)
    keys = list(model.state_dict())
    assert keys[-2:] == ["classifier.weight", "classifier.bias"]
    assert all(key.startswith(("net.", "classifier.")) for key in keys)  # the classifier is not stored twice


def test_task_trains_a_timm_model_with_features_for_the_loss_terms():
    task = ImbalanceClassifier(arch="timm:mobilenetv3_small_050", num_classes=3, channels_last=False)
    assert task.hparams["arch"] == "timm:mobilenetv3_small_050" and type(task.hparams["arch"]) is str
    ctx = task._forward((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])), "train")
    assert ctx.features.shape == (4, 1024) and ctx.logits.shape == (4, 3)
    loss, _ = task.compute_loss(ctx)
    loss.backward()
    assert task.model.classifier.weight.grad is not None


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("timm:resnet81", r"timm has no model 'resnet81'; close matches: timm:resnet18"),
        ("torchvision:resnet19", r"torchvision has no model 'resnet19'; close matches: torchvision:resnet18"),
        ("resnet21", r"unknown; close matches: resnet32, resnet20"),
        ("tf:resnet18", r"unknown model library 'tf'; allowed prefixes: timm:, torchvision:"),
    ],
)
def test_unknown_names_fail_at_parse_time_with_close_matches(arch, match):
    with pytest.raises(ValueError, match=match):
        check_arch(arch)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ImbalanceClassifier, "model")
    with pytest.raises(Exception, match=match):  # the parser's own error: nothing is built
        parser.parse_args([f"--model.arch={arch}"])
    assert parser.parse_args(["--model.arch=timm:resnet10t"]).model.arch == "timm:resnet10t"


def test_weights_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000)  # e.g. ImageNet weights
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    model = build_model("timm:resnet10t", 5, weights=str(tmp_path / "resnet10t.pth"))
    assert torch.equal(model.net.layer3[0].conv2.weight, source.layer3[0].conv2.weight)
    assert model.classifier.out_features == 5  # another class count: the classifier stays random
    same_classes = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    torch.save({"state_dict": same_classes.state_dict()}, tmp_path / "five.pth")
    model = build_model("timm:resnet10t", 5, weights=str(tmp_path / "five.pth"))
    assert torch.equal(model.classifier.weight, same_classes.fc.weight)


def test_weights_of_another_architecture_are_refused(tmp_path):
    import timm

    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(SettingsError, match=r"model.weights=.*resnet18.pth.*do not match architecture timm:resnet10t"):
        build_model("timm:resnet10t", 5, weights=str(tmp_path / "resnet18.pth"))
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(SettingsError, match="holds no tensors"):
        build_model("timm:resnet10t", 5, weights=str(tmp_path / "empty.pth"))
    with pytest.raises(SettingsError, match="no such checkpoint file"):
        ImbalanceClassifier(arch="timm:resnet10t", num_classes=5, weights=str(tmp_path / "absent.pth"))


def test_shortcut_is_refused_for_library_models():
    with pytest.raises(ValueError, match="takes no shortcut option"):
        build_model("timm:resnet10t", 5, "B")
