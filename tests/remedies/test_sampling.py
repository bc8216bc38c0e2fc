"""Re-sampling remedies: the training loader draws classes with the target probabilities (fixed-seed chi-square)."""

from __future__ import annotations

import pytest
import scipy.stats
import torch
from torch import Tensor

from imbcompress.data import ImbalancedDataModule
from imbcompress.data.imbalance import derive_seed
from imbcompress.data.loader import TensorBatchLoader
from imbcompress.remedies.sampling import class_probabilities, power_probabilities

COUNTS = [400, 120, 40, 10]
EPOCHS = 40  # 570 draws per epoch: 22,800 draws in all


def _data() -> tuple[Tensor, Tensor]:
    labels = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    ids = torch.arange(len(labels))
    return ids.view(-1, 1, 1, 1), labels  # images hold the sample id, so batches can be compared exactly


def _loader(sampler: str, epoch: dict[str, int], **kwargs) -> TensorBatchLoader:
    images, labels = _data()
    return TensorBatchLoader(
        images,
        labels,
        32,
        train=True,
        seed=kwargs.pop("seed", 5),
        sampler=sampler,
        epoch_fn=lambda: epoch["e"],
        **kwargs,
    )


def _class_draws(loader: TensorBatchLoader, epoch: dict[str, int], epochs: range) -> Tensor:
    counts = torch.zeros(len(COUNTS), dtype=torch.int64)
    for e in epochs:
        epoch["e"] = e
        for _, labels in loader:
            counts += torch.bincount(labels, minlength=len(COUNTS))
    return counts


def _chi_square_p(observed: Tensor, probabilities: Tensor) -> float:
    expected = probabilities * observed.sum()
    return float(scipy.stats.chisquare(observed.double().numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize(("sampler", "power"), [("class_balanced", 0.0), ("square_root", 0.5)])
def test_class_frequencies_match_the_target_distribution(sampler: str, power: float) -> None:
    epoch = {"e": 0}
    observed = _class_draws(_loader(sampler, epoch), epoch, range(EPOCHS))
    target = power_probabilities(COUNTS, power)
    assert _chi_square_p(observed, target) > 0.001
    # the test has power: the instance-balanced frequencies are rejected as this sampler's distribution
    assert _chi_square_p(observed, power_probabilities(COUNTS, 1.0)) < 1e-12


def test_progressive_moves_from_instance_to_class_balanced() -> None:
    first = class_probabilities("progressive", COUNTS, 0, max_epochs=10)
    middle = class_probabilities("progressive", COUNTS, 5, max_epochs=10)
    assert first is not None and middle is not None
    torch.testing.assert_close(first, power_probabilities(COUNTS, 1.0))
    torch.testing.assert_close(middle, 0.5 * power_probabilities(COUNTS, 1.0) + 0.5 * power_probabilities(COUNTS, 0.0))
    epoch = {"e": 0}
    observed = sum(  # epoch 5 of 10 under many seeds
        (
            _class_draws(_loader("progressive", epoch, seed=seed, max_epochs=10), epoch, range(5, 6))
            for seed in range(20)
        ),
        torch.zeros(len(COUNTS), dtype=torch.int64),
    )
    assert _chi_square_p(observed, middle) > 0.001
    assert _chi_square_p(observed, power_probabilities(COUNTS, 1.0)) < 1e-12


def test_deferred_is_the_instance_permutation_before_the_switch_and_class_balanced_after() -> None:
    epoch = {"e": 0}
    deferred = _loader("deferred", epoch, sampler_switch_epoch=3)
    plain = _loader("instance_balanced", epoch)
    for e in range(3):
        epoch["e"] = e
        assert [b[0].flatten().tolist() for b in deferred] == [b[0].flatten().tolist() for b in plain]
    assert class_probabilities("deferred", COUNTS, 2, switch_epoch=3) is None
    observed = _class_draws(deferred, epoch, range(3, 3 + EPOCHS))
    assert _chi_square_p(observed, power_probabilities(COUNTS, 0.0)) > 0.001


@pytest.mark.parametrize("sampler", ["class_balanced", "square_root", "progressive"])
def test_same_seed_same_batches_and_the_epoch_keeps_the_dataset_size(sampler: str) -> None:
    epoch = {"e": 2}

    def batches(seed: int) -> list[list[int]]:
        loader = _loader(sampler, epoch, seed=seed, max_epochs=10)
        assert len(loader) == len(_loader("instance_balanced", epoch))
        return [images.flatten().tolist() for images, _ in loader]

    first = batches(5)
    assert first == batches(5) and first != batches(6)
    assert sum(map(len, first)) == sum(COUNTS)  # n draws per epoch
    assert len(set(sum(first, []))) < sum(COUNTS)  # drawn with replacement


def test_instance_balanced_order_is_todays_permutation() -> None:
    epoch = {"e": 4}
    loader = _loader("instance_balanced", epoch)
    order = torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(derive_seed(5, 4)))
    assert torch.cat([images.flatten() for images, _ in loader]).tolist() == order.tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "balanced"}, "sampler must be one of .*instance_balanced.*'balanced'"),
        ({"sampler": "deferred"}, "sampler='deferred' needs sampler_switch_epoch, an epoch >= 1; got None"),
        ({"sampler": "deferred", "sampler_switch_epoch": 0}, "sampler_switch_epoch, an epoch >= 1; got 0"),
        ({"sampler": "square_root", "sampler_switch_epoch": 3}, "only used by sampler='deferred'; got 3"),
    ],
)
def test_bad_sampler_settings_fail_naming_the_setting(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _loader(epoch={"e": 0}, **kwargs)
    with pytest.raises(ValueError, match=message):
        ImbalancedDataModule(dataset="image_folder", root="/nonexistent", **kwargs)  # before any file is read


def test_switch_epoch_past_the_end_fails() -> None:
    with pytest.raises(ValueError, match=r"sampler_switch_epoch=5 is past the end .*max_epochs=5.*allowed: 1\.\.4"):
        _loader("deferred", {"e": 0}, sampler_switch_epoch=5, max_epochs=5)
