"""Post-hoc remedies on a trained linear classifier: no retraining (docs/remedies.md).

Both act on the classifier's parameters, so they hold for every input exactly: subtracting tau log(pi) from the
bias subtracts it from every logit (logit adjustment, Menon et al. 2021), and rescaling each class's weight row gives
the tau-normalised classifier (Kang et al. 2020).
"""

from __future__ import annotations

from torch import Tensor


def logit_adjusted_bias(bias: Tensor, log_prior: Tensor, tau: float) -> Tensor:
    """b_k - tau log(pi_k): the bias whose logits are z - tau log(pi)."""
    return bias - tau * log_prior.to(device=bias.device, dtype=bias.dtype)


def tau_normalized_weight(weight: Tensor, tau: float) -> Tensor:
    """w_k / ||w_k||^tau for every class row k of ``weight`` [K, D] (tau = 0: unchanged, 1: unit rows)."""
    if tau == 0:
        return weight.clone()
    norms = weight.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return weight / norms**tau
