"""Batches straight from in-memory tensors: no Dataset, no workers, no per-image Python.

A batch is ``(uint8 images [B, C, H, W], int64 labels [B])`` taken by index from tensors that may live
on the GPU. Training order is a permutation drawn from ``(seed, epoch)``, so every rank computes the
same one and takes its own strided share; evaluation walks the set in order, one contiguous shard per
rank. The training loader is stateful (``state_dict`` / ``load_state_dict``) so a checkpoint taken
mid-epoch resumes with exactly the batches that had not been seen.

How this fits Lightning (2.6): the fit loop saves ``state_dict()`` of every stateful train loader
when it writes a checkpoint, and on resume calls ``load_state_dict()`` *before* ``iter()``. The data
fetcher only prefetches a batch when the loader has no length; this loader has ``__len__``, so when a
checkpoint is written after batch k, exactly k batches have been taken from it and the count it
reports is exact. Lightning also calls ``iter()`` once just to check the loader is iterable, and on a
resume it does not call ``iter()`` again at the next epoch; so ``__iter__`` is a generator that decides
the epoch and the starting batch at its first ``next()``, not when it is created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from imbcompress.data.imbalance import derive_seed
from imbcompress.remedies.sampling import check_sampler, class_probabilities, sample_with_replacement

Batch = tuple[Tensor, Tensor]
_STATE_KEYS = ("num_samples", "batch_size", "world_size", "seed", "sampling", "sampling_switch_epoch")
# What a state saved before the sampler option existed means.
_STATE_DEFAULTS = {"sampling": "instance_balanced", "sampling_switch_epoch": None}


class TensorBatchLoader:
    """Iterates ``(images, labels)`` batches of in-memory tensors, sharded across ranks.

    Training mode (``train=True``): each epoch uses ``torch.randperm(n)`` from a CPU generator seeded by
    ``(seed, epoch)``, truncated to a multiple of ``world_size`` so that all ranks get the same number of
    samples; rank r takes ``perm[r::world_size]`` in batches of ``batch_size``. The last partial batch is
    kept unless it has fewer than 2 samples (BatchNorm cannot train on one). Evaluation mode: rank r
    takes one contiguous shard of the set in order; together the shards cover every sample exactly
    once (no padding, no duplicates, so shard lengths may differ by one).

    Re-sampling (``sampler`` other than ``instance_balanced``, see ``imbcompress.remedies.sampling``): an epoch
    still has ``n`` positions, drawn with replacement from the sampler's class probabilities with the same
    ``(seed, epoch)`` generator, and is sharded and batched the same way; epochs that are instance-balanced
    (all of them for the default, those before the switch for ``deferred``) are the permutation above.

    Args:
        images: ``[N, C, H, W]`` tensor (uint8), on any device.
        labels: ``[N]`` int64 tensor on the same device.
        batch_size: samples per batch on this rank.
        train: training (shuffled, stateful) or evaluation (sequential) mode.
        seed: shuffle seed (training mode).
        rank: this process's global rank.
        world_size: number of processes.
        epoch_fn: returns the current epoch (e.g. ``lambda: trainer.current_epoch``); without it the
            epoch set by :meth:`set_epoch` is used.
        sampler: training order: ``instance_balanced`` (a permutation), ``class_balanced``, ``square_root``,
            ``progressive`` or ``deferred``.
        sampler_switch_epoch: first class-balanced epoch of ``deferred``.
        max_epochs: total epochs of training (``progressive`` interpolates over them; bounds the switch epoch).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        train: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
        sampler: str = "instance_balanced",
        sampler_switch_epoch: int | None = None,
        max_epochs: int | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch_fn = epoch_fn
        check_sampler(sampler, sampler_switch_epoch, max_epochs)
        # Not named ``sampler``: Lightning reads a loader's ``sampler`` attribute as a torch Sampler.
        self.sampling = sampler
        self.sampling_switch_epoch = sampler_switch_epoch
        self.max_epochs = max_epochs
        self._epoch = 0
        self._batches_yielded = 0  # in epoch self._epoch
        self._pending_state: dict[str, Any] | None = None

    @property
    def num_samples(self) -> int:
        """Samples in the whole set (all ranks)."""
        return len(self.labels)

    def _shard_bounds(self) -> tuple[int, int]:
        """[start, stop) of this rank's samples: positions in the epoch order (train) or in the set (eval)."""
        if self.train:
            per_rank = self.num_samples // self.world_size
            return 0, per_rank
        base, extra = divmod(self.num_samples, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def __len__(self) -> int:
        start, stop = self._shard_bounds()
        full, rest = divmod(stop - start, self.batch_size)
        keep_rest = rest >= 2 if self.train else rest >= 1
        return full + int(keep_rest)

    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, batches yielded in it)`` of the training order: ``batches - 1`` is the last batch handed out."""
        return self._epoch, self._batches_yielded

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch used when no ``epoch_fn`` is given."""
        self._epoch = epoch

    def _current_epoch(self) -> int:
        return self.epoch_fn() if self.epoch_fn is not None else self._epoch

    def _positions(self, epoch: int) -> Tensor:
        """This rank's sample positions for ``epoch``, in the order they are batched."""
        if not self.train:
            start, stop = self._shard_bounds()
            return torch.arange(start, stop)
        generator = torch.Generator(device="cpu").manual_seed(derive_seed(self.seed, epoch))
        perm = self._epoch_order(epoch, generator)
        usable = self.num_samples - self.num_samples % self.world_size
        return perm[:usable][self.rank :: self.world_size]

    def _epoch_order(self, epoch: int, generator: torch.Generator) -> Tensor:
        """The epoch's n sample indices: a permutation, or draws with replacement from the class probabilities."""
        labels = self.labels.cpu()
        probabilities = None
        if self.sampling != "instance_balanced":
            counts = torch.bincount(labels).tolist()
            probabilities = class_probabilities(
                self.sampling, counts, epoch, self.max_epochs, self.sampling_switch_epoch
            )
        if probabilities is None:
            return torch.randperm(self.num_samples, generator=generator)
        return sample_with_replacement(labels, probabilities, self.num_samples, generator)

    def _start_batch(self, epoch: int) -> int:
        """Where this epoch starts: after the batches a loaded state had already consumed, if it is this epoch."""
        pending, self._pending_state = self._pending_state, None
        if pending is not None and pending["epoch"] == epoch:
            return pending["batches_yielded"]
        return 0

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._current_epoch()
        start = self._start_batch(epoch) if self.train else 0
        if self.train:
            self._epoch, self._batches_yielded = epoch, start
        positions = self._positions(epoch).to(self.labels.device)
        for b in range(start, len(self)):
            index = positions[b * self.batch_size : (b + 1) * self.batch_size]
            if self.train:
                self._batches_yielded = b + 1  # counted before the consumer gets it: saved states are exact
            yield self.images[index], self.labels[index]

    def state_dict(self) -> dict[str, Any]:
        """Position in the training order: ``epoch`` and ``batches_yielded``, plus what must match on load."""
        if self._pending_state is not None:  # loaded but not yet iterated: still the position to resume from
            return dict(self._pending_state)
        state: dict[str, Any] = {"epoch": self._epoch, "batches_yielded": self._batches_yielded}
        state.update({key: getattr(self, key) for key in _STATE_KEYS})
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resumes at the saved position the next time this loader is iterated in the saved epoch.

        The rank is not compared: a checkpoint is written by rank 0 and loaded by every rank, and all ranks
        are at the same batch.

        Raises:
            ValueError: when the set, batch size, number of ranks or seed differ from the saved ones, since the
                remaining batches could not be the same.
        """
        if not self.train:
            return
        stored = _STATE_DEFAULTS | dict(state_dict)
        differing = {k: (stored.get(k), getattr(self, k)) for k in _STATE_KEYS if stored.get(k) != getattr(self, k)}
        if differing:
            details = ", ".join(f"{k}: saved {saved}, now {now}" for k, (saved, now) in differing.items())
            raise ValueError(
                f"cannot resume the training loader mid-epoch: {details}. Resume with the same data, batch size, "
                "number of devices, seed and sampler, or from a checkpoint written at the end of an epoch."
            )
        self._pending_state = dict(state_dict)
