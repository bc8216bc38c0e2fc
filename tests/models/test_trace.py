"""Layers found by their place in the forward pass (first conv, last linear, conv -> BatchNorm), not by names."""

from __future__ import annotations

import torch
from torch import nn

from imbcompress.compress.climbq import climbq_record
from imbcompress.compress.dorefa import default_exclude, dorefa_record
from imbcompress.models import build_model
from imbcompress.models.trace import execution_order


class Scrambled(nn.Module):
    """A small conv net whose modules are registered in an order unlike the one they run in (and with no names
    the registry models use): the head first, the stem last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.hidden = nn.Linear(16, 16)
        self.act_out = nn.ReLU()
        self.body_bn = nn.BatchNorm2d(16)
        self.body = nn.Conv2d(8, 16, 3, padding=1)
        self.act_mid = nn.ReLU()
        self.entry_norm = nn.BatchNorm2d(8)
        self.entry = nn.Conv2d(3, 8, 3, padding=1)
        self.act_in = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_in(self.entry_norm(self.entry(x)))
        x = self.act_out(self.body_bn(self.body(x)))
        x = self.act_mid(self.hidden(x.mean(dim=(2, 3))))
        return self.head(x)


def test_execution_order_not_registration_order():
    model = Scrambled()
    assert execution_order(model) == ["entry", "entry_norm", "act_in", "body", "body_bn", "act_out", "hidden",
                                      "act_mid", "head"]  # fmt: skip


def test_dorefa_keeps_the_first_conv_and_last_linear_in_execution_order():
    model = Scrambled()
    # stem conv + its activation, classifier + the activation after the last conv (feeding the pooling)
    assert default_exclude(model) == ["entry", "act_in", "head", "act_out"]
    record = dorefa_record(model, 4, 4, None)
    assert record["layers"] == ["hidden", "body"]  # module order; the excluded first conv and last linear are not
    assert record["activations"] == ["act_mid"]  # after the quantized hidden linear


def test_climbq_pairs_each_conv_with_the_batchnorm_it_feeds():
    record = climbq_record(Scrambled(), 4)
    assert record["weight_layers"] == ["entry", "body"]
    assert record["activation_layers"] == ["entry_norm", "body_bn"]


def test_timm_resnet_defaults():
    model = build_model("timm:resnet10t", 3)
    assert default_exclude(model) == ["net.conv1.0", "net.conv1.2", "classifier", "net.layer4.0.act2"]
    record = climbq_record(model, 4)
    assert record["weight_layers"][0] == "net.conv1.0" and record["activation_layers"][0] == "net.conv1.1"
    assert len(record["weight_layers"]) == len(record["activation_layers"]) == 14
