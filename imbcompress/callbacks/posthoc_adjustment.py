"""Post-hoc remedies at test time: logit adjustment and tau-normalisation of the classifier (no retraining)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from imbcompress.callbacks.base import task_of, train_class_counts
from imbcompress.callbacks.loss_remedy import check_non_negative
from imbcompress.models.heads import CosineLinear
from imbcompress.remedies.losses import log_priors
from imbcompress.remedies.posthoc import logit_adjusted_bias, tau_normalized_weight

PostHocMethod = Literal["logit_adjustment", "tau_norm"]


class PostHocAdjustment(Callback):
    """Adjust a trained (or compressed) model's classifier for the test, then put it back.

    ``logit_adjustment`` (Menon et al. 2021): test logits z - tau log(pi), pi_k = n_k / N the training prior from the
    data module, done exactly by subtracting tau log(pi) from the classifier's bias. ``tau_norm`` (Kang et al. 2020):
    each class's weight row w_k becomes w_k / ||w_k||^tau (the bias is kept). The edit is made at the start of
    ``test`` and undone at its end, so checkpoints and the model after the test are unchanged. Works on pruned and
    quantized models whose classifier is a full-precision ``nn.Linear`` (the default of every compression method
    here); ``tau_norm`` refuses a quantized classifier, whose forward pass uses quantized weights.

    Use it at ``test`` on any checkpoint, e.g.
    ``imbcompress test --config RUN/config.yaml --config configs/remedies/posthoc_logit_adjustment.yaml
    --ckpt_path RUN/checkpoints/last.ckpt --run_dir RUN/posthoc_la``.

    Args:
        method: "logit_adjustment" or "tau_norm".
        tau: Strength >= 0 (logit adjustment: 1 is the Bayes-optimal shift for a balanced test set; tau-norm: 0 is the
            identity, 1 gives unit-norm rows).
    """

    metrics_section: ClassVar[str] = "remedies"  # RunReport lists metrics_record() there ...
    metrics_at_test: ClassVar[bool] = True  # ... for the tests it runs in, not for the fit

    def __init__(self, method: PostHocMethod = "logit_adjustment", tau: float = 1.0) -> None:
        if method not in ("logit_adjustment", "tau_norm"):
            raise ValueError(f"PostHocAdjustment.method must be 'logit_adjustment' or 'tau_norm', got {method!r}")
        check_non_negative("PostHocAdjustment.tau", tau)
        self.method = method
        self.tau = tau
        self._saved: tuple[Tensor, Tensor] | None = None  # (the classifier's parameter, its original value)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        callbacks = getattr(trainer, "callbacks", [])
        same = [cb for cb in callbacks if isinstance(cb, PostHocAdjustment) and cb.method == self.method]
        if len(same) > 1:
            raise ValueError(
                f"{len(same)} PostHocAdjustment callbacks with method={self.method!r}; use one (set its tau instead)"
            )

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        classifier = self._classifier(pl_module)
        with torch.no_grad():
            if self.method == "logit_adjustment":
                assert classifier.bias is not None
                prior = log_priors(train_class_counts(trainer, "PostHocAdjustment"))
                self._saved = (classifier.bias, classifier.bias.detach().clone())
                classifier.bias.copy_(logit_adjusted_bias(classifier.bias, prior, self.tau))
            else:
                self._saved = (classifier.weight, classifier.weight.detach().clone())
                classifier.weight.copy_(tau_normalized_weight(classifier.weight, self.tau))
        rank_zero_info(f"PostHocAdjustment: {self.method} with tau={self.tau} applied to the classifier for this test")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()  # also when the test stopped with an error

    def _restore(self) -> None:
        if self._saved is not None:
            parameter, original = self._saved
            with torch.no_grad():
                parameter.copy_(original)
            self._saved = None

    def _classifier(self, pl_module: LightningModule) -> nn.Linear:
        classifier = getattr(task_of(pl_module, "PostHocAdjustment").model, "classifier", None)
        if not isinstance(classifier, nn.Linear):
            raise ValueError(
                f"PostHocAdjustment needs the model's classifier to be an nn.Linear, got {type(classifier).__name__}"
            )
        if self.method == "logit_adjustment" and classifier.bias is None:
            raise ValueError(
                f"PostHocAdjustment(method='logit_adjustment') needs a classifier with a bias; this model's "
                f"{type(classifier).__name__} has none (model.init_args.classifier=cosine, e.g. from ldam_drw.yaml)"
            )
        if self.method == "tau_norm" and isinstance(classifier, CosineLinear):
            raise ValueError(
                "PostHocAdjustment(method='tau_norm') on a cosine classifier (model.init_args.classifier=cosine) would "
                "do nothing: it normalises its weight rows in every forward pass. Use method='logit_adjustment' on a "
                "linear classifier instead"
            )
        if self.method == "tau_norm" and hasattr(classifier, "weight_quantizer"):
            raise ValueError(
                f"PostHocAdjustment(method='tau_norm') cannot normalise a quantized classifier "
                f"({type(classifier).__name__}, weight_bits={getattr(classifier, 'weight_bits', '?')}): its forward "
                "pass uses quantized weights, not the rows it would rescale. Keep the classifier in full precision "
                "(the default exclude of QuantizationAwareTraining) or use method='logit_adjustment'."
            )
        return classifier

    def metrics_record(self) -> dict[str, Any]:
        """The run-report hook (see ``RunReport``): this remedy's entry in ``metrics.json["remedies"]``."""
        return {"method": f"posthoc_{self.method}", "tau": self.tau}
