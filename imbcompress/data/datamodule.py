"""ImbalancedDataModule: an imbalanced training subset of CIFAR-10/100 or an image folder, as tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from imbcompress.data.augment import channel_stats, normalize, random_crop_flip
from imbcompress.data.imbalance import Head, Profile, class_counts, derive_seed, select_indices, stratified_split
from imbcompress.data.loader import TensorBatchLoader
from imbcompress.data.resize import ResizeMode, check_image_size, crop_padding
from imbcompress.data.sources import DatasetArrays, dataset_info, load_cifar, load_image_folder
from imbcompress.remedies.sampling import Sampler, check_sampler, check_sampler_for_fit

DatasetName = Literal["cifar10", "cifar100", "image_folder"]
DATASETS: tuple[str, ...] = get_args(DatasetName)

# Per-channel statistics of the full training sets, in [0, 1] units. (LDAM-DRW's code uses CIFAR-10's mean
# with std 0.2023/0.1994/0.2010 for both sets; BatchNorm follows the input, so the choice hardly matters.)
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CROP_PADDING = 4  # without image_size; with it, scaled to the size (imbcompress.data.resize.crop_padding)


@dataclass(frozen=True)
class _Split:
    images: Tensor
    labels: Tensor

    def to(self, device: torch.device) -> _Split:
        return _Split(self.images.to(device), self.labels.to(device))


def _count_table(names: list[str], train: list[int], test: list[int], val: list[int] | None) -> str:
    columns = [("train", train)] + ([("val", val)] if val is not None else []) + [("test", test)]
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}" + "".join(f"{title:>8}" for title, _ in columns)]
    for c, name in enumerate(names):
        lines.append(f"{name:<{width}}" + "".join(f"{counts[c]:>8}" for _, counts in columns))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(counts):>8}" for _, counts in columns))
    return "\n".join(lines)


def _check_settings(dataset: str, download: bool, batch_size: int, eval_batch_size: int, val_fraction: float) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if download and dataset == "image_folder":
        raise ValueError("download only applies to the CIFAR datasets; set download: false for an image_folder")
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def default_shuffle_seed(subset_seed: int) -> int:
    """The training order's and augmentation's seed when ``shuffle_seed`` is not given.

    The seed of Lightning's ``seed_everything`` when one was set (``PL_GLOBAL_SEED``: the CLI sets it from
    ``--seed_everything`` before it builds the data module), so that runs that differ only in ``--seed_everything``
    (fine-tunes of one parent on one subset) see different batches; else ``subset_seed``.
    """
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else subset_seed


class ImbalancedDataModule(LightningDataModule):
    """An imbalanced training subset of a classification set; the full balanced test set for testing.

    Batches are ``(uint8 images, int64 labels)`` taken straight from in-memory tensors (no workers);
    ``on_after_batch_transfer`` normalises them on the device and, for training batches, applies the
    random crop (zero padding 4; with ``image_size``, 1/8 of the side: 4 at 32, 8 at 64) and horizontal flip
    to the whole batch at once.

    Args:
        dataset: ``cifar10``, ``cifar100`` (fine labels) or ``image_folder`` (``root/train/<class>/*`` and
            ``root/test/<class>/*``; the class order is the sorted directory names).
        root: directory containing ``cifar-10-batches-py/`` / ``cifar-100-python/``, or the image folder.
        download: download CIFAR with torchvision when it is absent (needs internet access).
        profile: imbalance profile of the training set: ``balanced``, ``step``, ``linear`` or ``exponential``
            (long-tail; what [C24] calls "linear").
        imbalance_ratio: rho = images of the largest class / images of the smallest class (1 for balanced).
        minority_classes: number of minority classes of the ``step`` profile (1..K-1).
        head: ``first``: label 0 has the most images ([LD] convention); ``last``: the reverse ([BU]).
        subset_seed: seed of the random choice of each class's images (and of the validation split).
        shuffle_seed: seed of the per-epoch training order and augmentation; defaults to the seed of
            ``seed_everything`` (the CLI's ``--seed_everything``), else ``subset_seed`` (see
            :func:`default_shuffle_seed`).
        batch_size: training batch size per device.
        eval_batch_size: evaluation batch size per device.
        val_fraction: fraction of every class of the training subset held out for validation. 0 (default, the
            papers' protocol): validate on the test set.
        augment: random crop + horizontal flip of training batches.
        cache_dir: where to keep the decoded image-folder cache instead of ``root/.imbcompress_cache``.
        data_on_device: keep the selected images on the training device when it is a GPU.
        sampler: training order (a re-sampling remedy, docs/remedies.md): ``instance_balanced`` (every image once
            per epoch, the default), ``class_balanced`` (every class equally likely), ``square_root`` (class
            probability proportional to sqrt(n_k)), ``progressive`` (instance- to class-balanced over the epochs)
            or ``deferred`` (instance-balanced, then class-balanced from ``sampler_switch_epoch``). The
            re-samplers draw with replacement; an epoch keeps the training set's size.
        sampler_switch_epoch: the first class-balanced epoch of ``sampler: deferred`` (1..max_epochs-1).
        image_size: side of the square images the model sees (>= 8). Every image is brought to it once, as it
            is decoded (cached per size for an image folder); needed for an image folder whose images differ in
            size. Unset (default): the images' own size (32x32 for CIFAR).
        resize: how ``image_size`` is reached: ``center_crop`` (shorter side to ``image_size``, then the central
            square) or ``stretch`` (both sides to ``image_size``, distorting non-square images).
    """

    def __init__(
        self,
        dataset: DatasetName = "cifar10",
        root: str = "data",
        download: bool = False,
        profile: Profile = "balanced",
        imbalance_ratio: float = 1.0,
        minority_classes: int | None = None,
        head: Head = "first",
        subset_seed: int = 0,
        shuffle_seed: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_fraction: float = 0.0,
        augment: bool = True,
        cache_dir: str | None = None,
        data_on_device: bool = True,
        sampler: Sampler = "instance_balanced",
        sampler_switch_epoch: int | None = None,
        image_size: int | None = None,
        resize: ResizeMode = "center_crop",
    ) -> None:
        super().__init__()
        _check_settings(dataset, download, batch_size, eval_batch_size, val_fraction)
        check_image_size(image_size, resize)
        check_sampler(sampler, sampler_switch_epoch)
        # No save_hyperparameters(): the CLI's config.yaml records these, and Lightning refuses to log a model and
        # a data module that share a hyperparameter name with different values.
        self.dataset = dataset
        self.root = root
        self.download = download
        self.profile = profile
        self.imbalance_ratio = imbalance_ratio
        self.minority_classes = minority_classes
        self.head = head
        self.subset_seed = subset_seed
        self.shuffle_seed = default_shuffle_seed(subset_seed) if shuffle_seed is None else shuffle_seed
        derive_seed(self.subset_seed, self.shuffle_seed)  # rejects negative seeds now
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.augment = augment
        self.cache_dir = cache_dir
        self.data_on_device = data_on_device
        self.sampler = sampler
        self.sampler_switch_epoch = sampler_switch_epoch
        self.image_size = image_size
        self.resize = resize

        info = dataset_info(dataset, root, download)
        self.num_classes: int = info.num_classes
        self.class_names: list[str] = info.class_names
        self._subset_counts(info.train_class_sizes)  # invalid profiles and empty classes fail here, cheaply

        self._train: _Split | None = None
        self._val: _Split | None = None
        self._test: _Split | None = None
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self._train_loader: TensorBatchLoader | None = None
        self._announced = False

    # ------------------------------------------------------------------------------------- selection

    def _subset_counts(self, class_sizes: list[int]) -> list[int]:
        """Images to keep per class, given the source's training class sizes."""
        counts = class_counts(
            self.profile, self.num_classes, max(class_sizes), self.imbalance_ratio, self.minority_classes, self.head
        )
        if self.profile == "balanced":
            return list(class_sizes)  # every image, also of an unevenly sized image folder
        short = [
            f"{self.class_names[c]!r} (label {c}): {have} < {want}"
            for c, (want, have) in enumerate(zip(counts, class_sizes))
            if want > have
        ]
        if short:
            raise ValueError(
                f"profile {self.profile!r} with imbalance_ratio={self.imbalance_ratio} needs more training images than "
                f"{self.dataset} at {self.root!r} has for class(es) {'; '.join(short)} (available < needed, with "
                f"n_max={max(class_sizes)}). Use profile 'balanced' to keep every image, or another dataset."
            )
        return counts

    def _load(self) -> DatasetArrays:
        if self.dataset == "image_folder":
            return load_image_folder(self.root, self.cache_dir, self.image_size, self.resize)
        return load_cifar(self.root, self.dataset, self.download, self.image_size, self.resize)

    def _prepare(self) -> None:
        """Loads the source once and keeps the selected training subset, the validation split and the test set."""
        if self._train is not None:
            return
        data = self._load()
        if data.class_names != self.class_names:
            raise ValueError(f"class names changed since the data module was created: {data.class_names}")
        sizes = torch.bincount(data.train_labels, minlength=self.num_classes).tolist()
        subset = select_indices(data.train_labels, self._subset_counts(sizes), self.subset_seed)
        train = _Split(data.train_images[subset], data.train_labels[subset])
        if self.val_fraction > 0:
            kept, held = stratified_split(train.labels, self.val_fraction, self.subset_seed)
            train, self._val = (
                _Split(train.images[kept], train.labels[kept]),
                _Split(train.images[held], train.labels[held]),
            )
        self._train = train
        self._test = _Split(data.test_images, data.test_labels)
        if self.dataset in CIFAR_STATS:
            self.mean, self.std = CIFAR_STATS[self.dataset]
        else:
            mean, std = channel_stats(train.images)
            self.mean, self.std = tuple(mean), tuple(std)

    @property
    def train_class_counts(self) -> list[int]:
        """Training images per class label (after the validation split). Loads the source on first use."""
        self._prepare()
        assert self._train is not None
        return torch.bincount(self._train.labels.cpu(), minlength=self.num_classes).tolist()

    @property
    def train_tensors(self) -> tuple[Tensor, Tensor]:
        """The selected training subset as ``(uint8 images [N, 3, H, W], int64 labels)``. Loads it on first use."""
        self._prepare()
        assert self._train is not None
        return self._train.images, self._train.labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the model sees. Loads the source on first use."""
        self._prepare()
        assert self._train is not None
        channels, height, width = self._train.images.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def test_class_counts(self) -> list[int]:
        """Test images per class label. Loads the source on first use."""
        self._prepare()
        assert self._test is not None
        return torch.bincount(self._test.labels.cpu(), minlength=self.num_classes).tolist()

    # ---------------------------------------------------------------------------------------- hooks

    def prepare_data(self) -> None:
        """Downloads CIFAR when asked to and absent (Lightning runs this on one process per node)."""
        if self.download:
            load_cifar(self.root, self.dataset, download=True)

    def setup(self, stage: str) -> None:
        """Loads and selects the data (once), moves it to the GPU if asked, and reports the class counts."""
        if stage == "fit":  # a switch epoch past the end fails before any work
            check_sampler_for_fit(self.sampler, self.sampler_switch_epoch, self._max_epochs())
        self._prepare()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.data_on_device and device.type == "cuda":
            self._train, self._test = self._train.to(device), self._test.to(device)  # type: ignore[union-attr]
            self._val = self._val.to(device) if self._val is not None else None
        if not self._announced:
            self._announced = True
            self._report_counts()

    def _report_counts(self) -> None:
        if self.trainer is not None and not self.trainer.is_global_zero:
            return
        val_counts = None
        if self._val is not None:
            val_counts = torch.bincount(self._val.labels.cpu(), minlength=self.num_classes).tolist()
        print(_count_table(self.class_names, self.train_class_counts, self.test_class_counts, val_counts))
        # The class-count figure is logged by the RunReport callback (imbcompress/callbacks/run_report.py).

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _max_epochs(self) -> int | None:
        max_epochs = getattr(self.trainer, "max_epochs", None)  # None also without a trainer
        return max_epochs if isinstance(max_epochs, int) and max_epochs > 0 else None

    def _eval_loader(self, split: _Split | None) -> TensorBatchLoader:
        assert split is not None, "call setup() first"
        rank, world_size = self._rank_and_world()
        return TensorBatchLoader(split.images, split.labels, self.eval_batch_size, rank=rank, world_size=world_size)

    def train_dataloader(self) -> TensorBatchLoader:
        """The shuffled, stateful training loader of this rank."""
        self._prepare()
        assert self._train is not None
        rank, world_size = self._rank_and_world()
        self._train_loader = TensorBatchLoader(
            self._train.images,
            self._train.labels,
            self.batch_size,
            train=True,
            seed=self.shuffle_seed,
            rank=rank,
            world_size=world_size,
            epoch_fn=self._current_epoch,
            sampler=self.sampler,
            sampler_switch_epoch=self.sampler_switch_epoch,
            max_epochs=self._max_epochs(),
        )
        return self._train_loader

    def val_dataloader(self) -> TensorBatchLoader:
        """The held-out split when ``val_fraction > 0``, else the test set (the papers' protocol)."""
        self._prepare()
        return self._eval_loader(self._val if self._val is not None else self._test)

    def test_dataloader(self) -> TensorBatchLoader:
        """The full balanced test set."""
        self._prepare()
        return self._eval_loader(self._test)

    def predict_dataloader(self) -> TensorBatchLoader:
        """The test images (with their labels)."""
        return self.test_dataloader()

    def _augment_generator(self, device: torch.device) -> torch.Generator | None:
        # Keyed on the batch's place in the training order, so a resumed run draws the same crops and flips.
        if self._train_loader is None:
            return None
        epoch, batches = self._train_loader.position
        rank, _ = self._rank_and_world()
        return torch.Generator(device=device).manual_seed(derive_seed(self.shuffle_seed, epoch, batches, rank))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 -> normalised float32 on the device; random crop + flip for training batches."""
        images, labels = batch
        if self.augment and self.trainer is not None and self.trainer.training:
            padding = CROP_PADDING if self.image_size is None else crop_padding(self.image_size)
            images = random_crop_flip(images, padding, generator=self._augment_generator(images.device))
        return normalize(images, self.mean, self.std), labels

    # ----------------------------------------------------------------------------------- reporting

    def describe(self) -> dict[str, Any]:
        """The data part of ``metrics.json`` (plain values); ``image_size`` and ``resize`` when images were resized."""
        resized = {"image_size": self.image_size, "resize": self.resize} if self.image_size is not None else {}
        return {
            "dataset": self.dataset,
            "root": str(self.root),
            "imbalance": {
                "profile": self.profile,
                "ratio": float(self.imbalance_ratio),
                "minority_classes": self.minority_classes,
                "head": self.head,
                "seed": self.subset_seed,
            },
            "class_names": list(self.class_names),
            "train_class_counts": self.train_class_counts,
            "test_class_counts": self.test_class_counts,
            "val_fraction": self.val_fraction,
            "shuffle_seed": self.shuffle_seed,
        } | resized

    def remedy_record(self) -> dict[str, Any] | None:
        """The re-sampling remedy for ``metrics.json["remedies"]``; None for the default instance-balanced order."""
        if self.sampler == "instance_balanced":
            return None
        record: dict[str, Any] = {"method": f"sampler_{self.sampler}"}
        if self.sampler == "deferred":
            record["switch_epoch"] = self.sampler_switch_epoch
        return record

    def state_dict(self) -> dict[str, Any]:
        """The training class counts, to check on resume that the same subset is selected."""
        return {"train_class_counts": self.train_class_counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Checks that the checkpoint was trained on the subset this configuration selects."""
        saved = state_dict.get("train_class_counts")
        if saved is not None and list(saved) != self.train_class_counts:
            raise ValueError(
                f"the checkpoint was trained with train_class_counts={list(saved)} but this data configuration "
                f"selects {self.train_class_counts}; use the same dataset, profile, imbalance_ratio, "
                "minority_classes, head, subset_seed and val_fraction as the checkpoint's run"
            )
