"""Classifier heads: the plain linear layer every model is built with, or a cosine classifier in its place.

The cosine classifier is the normalised linear layer of LDAM-DRW (Cao et al. 2019): logits are cosine
similarities cos(x, w_k) in [-1, 1] between the pooled features and each class's weight row, with no bias. The
LDAM loss's scale s (30) and margins (largest 0.5) are meant for logits on that scale.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ClassifierKind = Literal["linear", "cosine"]
CLASSIFIER_KINDS: tuple[str, ...] = get_args(ClassifierKind)


class CosineLinear(nn.Linear):
    """``nn.Linear`` without bias whose logits are cos(x, w_k): rows and inputs are L2-normalised in the forward pass.

    Computed in fp32 even under autocast (bf16 would round cosines to ~0.004, which a logit scale of 30 multiplies).
    Weight rows start at unit norm; their norm never changes the output.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        with torch.no_grad():
            self.weight.copy_(F.normalize(torch.empty_like(self.weight).uniform_(-1, 1), dim=1))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))


def classifier_kind(model: nn.Module | None) -> ClassifierKind:
    """The kind of ``model.classifier``: "cosine" for a :class:`CosineLinear`, else "linear"."""
    return "cosine" if isinstance(getattr(model, "classifier", None), CosineLinear) else "linear"


def set_classifier(model: nn.Module, kind: str) -> None:
    """Give ``model`` (one with a ``classifier`` ``nn.Linear``) the classifier ``kind``; "linear" keeps it as built."""
    if kind not in CLASSIFIER_KINDS:
        raise ValueError(f"model.classifier must be one of {', '.join(CLASSIFIER_KINDS)}, got {kind!r}")
    if kind == "linear":
        return
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"model.classifier={kind!r} needs a model whose classifier is an nn.Linear")
    model.classifier = CosineLinear(head.in_features, head.out_features).to(head.weight.device)
