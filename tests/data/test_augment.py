"""Batched crop + flip checked against the per-image definition, normalisation and channel statistics by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imbcompress.data.augment import channel_stats, normalize, random_crop_flip


def _reference(images: torch.Tensor, dy: int, dx: int, flip: bool, padding: int) -> torch.Tensor:
    """torchvision's per-image definition, applied with the same (dy, dx, flip) to every image: pad, crop, flip."""
    h, w = images.shape[-2:]
    crop = F.pad(images, (padding,) * 4)[..., dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop


def _matching_transforms(images: torch.Tensor, out: torch.Tensor, padding: int) -> list[list[tuple[int, int, bool]]]:
    """For every image, the (dy, dx, flip) whose reference output equals the batched output."""
    side = 2 * padding + 1
    matches: list[list[tuple[int, int, bool]]] = [[] for _ in images]
    for dy in range(side):
        for dx in range(side):
            for flip in (False, True):
                reference = _reference(images, dy, dx, flip, padding)
                for i in torch.nonzero((reference == out).flatten(1).all(1)).flatten().tolist():
                    matches[i].append((dy, dx, flip))
    return matches


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_output_is_one_crop_and_flip_of_its_input(dtype: torch.dtype) -> None:
    images = torch.randint(1, 256, (200, 3, 6, 6)).to(dtype)  # no zeros inside: padding is recognisable
    out = random_crop_flip(images, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == dtype
    matches = _matching_transforms(images, out, padding=4)
    assert all(len(m) == 1 for m in matches)
    seen = [m[0] for m in matches]
    assert {dy for dy, _, _ in seen} == set(range(9))
    assert {dx for _, dx, _ in seen} == set(range(9))
    flips = sum(flip for _, _, flip in seen)
    assert 60 < flips < 140


def _zeros_only(image: torch.Tensor, rows: slice, cols: slice) -> bool:
    """True when exactly the given rows and columns are zero (the padding of an extreme crop)."""
    zero = torch.zeros_like(image, dtype=torch.bool)
    zero[:, rows, :] = True
    zero[:, :, cols] = True
    return torch.equal(image == 0, zero)


def test_extreme_offsets_shift_content_and_fill_zeros() -> None:
    image = torch.arange(1, 1 + 3 * 32 * 32).view(1, 3, 32, 32).float()
    out = random_crop_flip(image.expand(800, -1, -1, -1), padding=4, generator=torch.Generator().manual_seed(1))
    # offset (0, 0), no flip: content moved down-right by 4, zeros above and to the left
    assert any(
        _zeros_only(o, rows=slice(0, 4), cols=slice(0, 4)) and torch.equal(o[:, 4:, 4:], image[0, :, :28, :28])
        for o in out
    )
    # offset (8, 8), no flip: content moved up-left by 4, zeros below and to the right
    assert any(
        _zeros_only(o, rows=slice(28, 32), cols=slice(28, 32)) and torch.equal(o[:, :28, :28], image[0, :, 4:, 4:])
        for o in out
    )


def test_flip_reverses_columns() -> None:
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(200, 3, 4, 4)
    out = random_crop_flip(image, padding=0, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, image[0].flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, image[0]) for o in out])
    assert bool((flipped ^ same).all())
    assert 0 < int(flipped.sum()) < 200
    assert out[flipped][0, 0, 0].tolist() == [3, 2, 1, 0]


def test_generator_makes_draws_reproducible() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(images, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(images, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        random_crop_flip(images[0])


def test_normalize_matches_the_formula() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(images, mean, std)
    expected = (images.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(
        1, 3, 1, 1
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.float(), mean, std)


def test_channel_stats_match_float_computation() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    images[:, 2] //= 4  # a channel with a different distribution
    mean, std = channel_stats(images)
    x = images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), x.mean((0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), x.std((0, 2, 3), correction=0))
