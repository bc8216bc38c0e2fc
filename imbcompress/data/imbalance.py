"""Per-class counts of the imbalanced training sets and the seeded choice of their images.

Pure functions (tensors and lists in, tensors and lists out), no Lightning. The formulas are SPEC §1:
counts are computed per class with ``int()`` truncation (``round()`` for the linear profile), label 0
is the head by default ([LD] convention) and ``head="last"`` reverses the order ([BU] convention).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from imbcompress.names import HEADS, PROFILES
from imbcompress.names import Head as Head  # re-exported: the data module's option types
from imbcompress.names import Profile as Profile

# Independent random streams for the subset choice and the validation split, even under one seed.
_SUBSET_STREAM = 0
_SPLIT_STREAM = 1


def derive_seed(*values: int) -> int:
    """Mixes non-negative integers into one 64-bit seed, the same on every machine.

    Used so that e.g. (subset seed, class) or (shuffle seed, epoch) give independent, well-spread
    generator seeds instead of neighbouring ones.
    """
    if any(v < 0 for v in values):
        raise ValueError(f"seeds must be non-negative integers, got {values}")
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0])


def _check_profile_args(
    profile: str, num_classes: int, n_max: int, imbalance_ratio: float, minority_classes: int | None, head: str
) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if n_max < 1:
        raise ValueError(f"n_max (images per class of the balanced set) must be at least 1, got {n_max}")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}")
    if profile == "balanced" and imbalance_ratio != 1:
        raise ValueError(f"imbalance_ratio must be 1 for profile 'balanced', got {imbalance_ratio}")
    if profile == "step":
        if minority_classes is None or not 1 <= minority_classes <= num_classes - 1:
            raise ValueError(
                f"profile 'step' needs minority_classes in 1..{num_classes - 1} (number of minority classes), "
                f"got {minority_classes}"
            )
    elif minority_classes is not None:
        raise ValueError(f"minority_classes only applies to profile 'step', got {minority_classes} for {profile!r}")


def _count(profile: str, rank: int, num_classes: int, n_max: int, rho: float, minority: int | None) -> int:
    """Images of the class at imbalance rank ``rank`` (0 = head)."""
    last = num_classes - 1
    if profile == "step":
        assert minority is not None
        return n_max if rank < num_classes - minority else int(n_max / rho)
    if profile == "linear":
        return round(n_max - rank * (n_max - n_max / rho) / last)
    if profile == "exponential":
        return int(n_max * rho ** (-rank / last))
    return n_max


def class_counts(
    profile: str,
    num_classes: int,
    n_max: int,
    imbalance_ratio: float = 1.0,
    minority_classes: int | None = None,
    head: str = "first",
) -> list[int]:
    """Training images per class label for an imbalance profile (SPEC §1).

    Args:
        profile: ``balanced``, ``step``, ``linear`` or ``exponential``.
        num_classes: number of classes K.
        n_max: images per class in the balanced training set (the head class keeps this many).
        imbalance_ratio: rho = n_max / n_min, at least 1 (exactly 1 for ``balanced``).
        minority_classes: number of minority classes for ``step`` (1..K-1); must be unset otherwise.
        head: ``first``: label 0 is the head and the highest labels are the tail ([LD], default);
            ``last``: the reverse ([BU]).

    Returns:
        ``counts[label]`` for every label 0..K-1.

    Raises:
        ValueError: for invalid settings, and when a class would end with zero images.
    """
    _check_profile_args(profile, num_classes, n_max, imbalance_ratio, minority_classes, head)
    counts = [_count(profile, i, num_classes, n_max, imbalance_ratio, minority_classes) for i in range(num_classes)]
    if head == "last":
        counts.reverse()
    empty = [label for label, n in enumerate(counts) if n < 1]
    if empty:
        raise ValueError(
            f"profile {profile!r} with imbalance_ratio={imbalance_ratio} and n_max={n_max} leaves classes {empty} "
            "with zero training images; lower imbalance_ratio (n_max / imbalance_ratio must be at least 1)"
        )
    return counts


def _class_positions(labels: Tensor, num_classes: int) -> list[Tensor]:
    labels = labels.detach().to("cpu", torch.int64)
    return [torch.nonzero(labels == c).flatten() for c in range(num_classes)]


def _class_generator(seed: int, label: int, stream: int) -> torch.Generator:
    # One generator per class: a class's subset does not depend on the other classes' counts, and for a fixed
    # seed a smaller count keeps a prefix of the same permutation (subsets are nested across ratios).
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, label, stream))


def select_indices(labels: Tensor, counts: list[int], seed: int) -> Tensor:
    """Seeded random subset of each class: ``counts[c]`` positions of ``labels`` with label ``c``.

    Args:
        labels: int labels of the full training set, any device.
        counts: images to keep per label (from :func:`class_counts`).
        seed: subset seed; the same seed gives the same subset on every machine and rank.

    Returns:
        Sorted int64 CPU tensor of positions into ``labels``.

    Raises:
        ValueError: when a class has fewer images than asked for.
    """
    chosen = []
    for label, (positions, count) in enumerate(zip(_class_positions(labels, len(counts)), counts)):
        if count > len(positions):
            raise ValueError(f"class {label} has {len(positions)} training images but {count} were asked for")
        perm = torch.randperm(len(positions), generator=_class_generator(seed, label, _SUBSET_STREAM))
        chosen.append(positions[perm[:count]])
    return torch.sort(torch.cat(chosen)).values


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Splits positions of ``labels`` into (kept, held-out) parts, class by class.

    Each class gives ``round(fraction * n_c)`` images to the held-out part, clamped so that both parts
    keep at least one image of every class.

    Args:
        labels: int labels of the set to split.
        fraction: held-out fraction, strictly between 0 and 1.
        seed: split seed.

    Returns:
        Two sorted int64 CPU tensors of positions into ``labels``.

    Raises:
        ValueError: for a fraction outside (0, 1) or a class with fewer than two images.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be strictly between 0 and 1, got {fraction}")
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    kept, held = [], []
    for label, positions in enumerate(_class_positions(labels, num_classes)):
        n = len(positions)
        if n == 0:
            continue
        if n < 2:
            raise ValueError(f"class {label} has {n} image(s): a stratified split needs at least 2 per class")
        n_held = min(max(round(fraction * n), 1), n - 1)
        perm = torch.randperm(n, generator=_class_generator(seed, label, _SPLIT_STREAM))
        held.append(positions[perm[:n_held]])
        kept.append(positions[perm[n_held:]])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values
