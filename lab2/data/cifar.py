"""CIFAR-10 into `DataSplits` (uint8 (N, 3, 32, 32) images, int64 labels, class names) from the source a
configuration names: the official folder (downloaded, md5-checked, when absent), --dataset fake, or --dataset_name;
and the seed's per-image Dataset and transforms."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lab2.data.cifar_files import (
    CIFAR10_CLASSES,
    CIFAR10_FOLDER,
    TEST_FILE,
    TRAIN_FILES,
    make_fake_cifar10,
    read_cifar_batch,
    read_class_names,
)
from lab2.errors import UserError
from lab2.flags import launched_by_make

# Normalisation constants in [0, 1] units: the course lab's, since its recipe is the one reproduced. The mean is the
# training pixels' per-channel mean; the std is NOT their exact per-channel std, (0.2470, 0.2435, 0.2616), but the
# widely copied value (seemingly the mean of per-image stds), kept because the lab trained with it.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

# The augmentation, defined once: the seed's values, used by the per-image path below and by the device Dataset.
CROP_PADDING = 4  # pixels of zero padding before a random 32x32 crop
FLIP_PROBABILITY = 0.5  # horizontal flip


def download_help() -> str:
    """What to do without network, in the words of the command that started lab2 (`make train` takes DATA_DIR=)."""
    if launched_by_make():
        return (
            "Without network access, run make train DATA_DIR=<a folder holding cifar-10-batches-py>, "
            "or TRAIN_ARGS='--dataset fake' for an offline smoke run (synthetic images)."
        )
    return (
        "Without network access, copy the official cifar-10-batches-py folder into --data_dir, pass --dataset_name "
        "with a dataset saved by datasets' save_to_disk, or use --dataset fake for an offline smoke run."
    )


@dataclass
class DataSplits:
    """Both splits as uint8 (N, 3, 32, 32) images and int64 labels, with the class names."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_numpy(cls, train_images, train_labels, test_images, test_labels, class_names) -> DataSplits:
        return cls(*map(torch.from_numpy, (train_images, train_labels, test_images, test_labels)), class_names)

    def truncated(self, max_train: int | None, max_eval: int | None) -> DataSplits:
        """The first `max_train` / `max_eval` images of each split (None keeps all)."""
        train, test = (self.train_images, self.train_labels), (self.test_images, self.test_labels)
        return DataSplits(*(t[:max_train] for t in train), *(t[:max_eval] for t in test), self.class_names)


def find_cifar10_folder(data_dir: str | Path) -> Path | None:
    """The `cifar-10-batches-py` folder under `data_dir` (or `data_dir` itself), or None."""
    candidates = (Path(data_dir) / CIFAR10_FOLDER, Path(data_dir))
    return next((c for c in candidates if (c / TEST_FILE).exists() or (c / TRAIN_FILES[0]).exists()), None)


def read_cifar10_folder(folder: str | Path) -> DataSplits:
    """Read an official-format folder (official or not: no md5 check) into DataSplits."""
    folder = Path(folder)
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{folder} is missing {', '.join(missing)}; a cifar-10-batches-py folder holds data_batch_1..5 "
            "and test_batch. Delete it and download again, or point --data_dir at a complete copy."
        )
    class_names = read_class_names(folder)
    parts = [read_cifar_batch(folder / name, len(class_names)) for name in TRAIN_FILES]
    train = (np.concatenate(column) for column in zip(*parts, strict=True))  # images, labels
    return DataSplits.from_numpy(*train, *read_cifar_batch(folder / TEST_FILE, len(class_names)), class_names)


def load_cifar10(data_dir: str | Path, download: bool = True) -> DataSplits:
    """CIFAR-10 from `data_dir`, first downloading and extracting the official archive with torchvision
    (md5-checked) when no folder is there."""
    data_dir = Path(data_dir)
    folder = find_cifar10_folder(data_dir)
    if folder is None:
        if not download:
            raise UserError(f"no {CIFAR10_FOLDER} folder in {data_dir}. {download_help()}")
        from torchvision.datasets import CIFAR10

        created = not data_dir.exists()  # a failed download removes the folder it made, with the partial archive
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            CIFAR10(root=str(data_dir), train=True, download=True)
        except (OSError, RuntimeError) as exc:  # URLError, a full disk, a read-only folder; RuntimeError: md5
            if created:
                shutil.rmtree(data_dir, ignore_errors=True)
            failed = (
                "could not download CIFAR-10" if isinstance(exc, OSError) else "the CIFAR-10 download failed its check"
            )
            raise UserError(f"{failed} into {data_dir} ({exc}). {download_help()}") from None
        folder = data_dir / CIFAR10_FOLDER
    return read_cifar10_folder(folder)


def load_splits(cfg) -> DataSplits:
    """The data set `cfg` names, truncated; `datasets` is imported only for --dataset_name (the GPU bench
    machine has none)."""
    if cfg.dataset_name:
        from lab2.data.hf_datasets import load_hf_splits

        splits = load_hf_splits(cfg.dataset_name, cfg.image_column, cfg.label_column)
    else:
        # A file at (or above) --data_dir is named as such: the download would fail with a puzzling 'File exists'.
        existing = next((p for p in (Path(cfg.data_dir), *Path(cfg.data_dir).parents) if p.exists()), Path("."))
        if not existing.is_dir():
            raise UserError(
                f"--data_dir {cfg.data_dir}: {existing} is a file, not a folder; point --data_dir at the folder that "
                "holds (or will receive) cifar-10-batches-py/."
            )
        if cfg.dataset == "fake":
            folder = make_fake_cifar10(cfg.data_dir, cfg.fake_train_samples, cfg.fake_test_samples, cfg.seed)
            splits = read_cifar10_folder(folder)
        else:
            splits = load_cifar10(cfg.data_dir)
    return splits.truncated(cfg.max_train_samples, cfg.max_eval_samples)


def train_transform():
    """The seed's training transform: random crop 32 with zero padding 4, horizontal flip, normalise."""
    from torchvision import transforms

    crop_flip = [transforms.RandomCrop(32, padding=CROP_PADDING), transforms.RandomHorizontalFlip(FLIP_PROBABILITY)]
    return transforms.Compose([*crop_flip, *test_transform().transforms])


def test_transform():
    """The seed's test transform: normalise only."""
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


class CustomCIFAR10(Dataset):
    """The seed's map-style Dataset: one (transformed image, label) per index, via PIL."""

    def __init__(self, images: torch.Tensor | np.ndarray, labels, transform=None, class_names=CIFAR10_CLASSES):
        # PIL wants HWC; convert once here rather than per item.
        self.images = np.ascontiguousarray(np.asarray(images).transpose(0, 2, 3, 1))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.classes = list(class_names)

    @classmethod
    def from_folder(cls, data_dir: str | Path, train: bool = True, transform=None) -> CustomCIFAR10:
        splits = load_cifar10(data_dir, download=False)
        split = (splits.train_images, splits.train_labels) if train else (splits.test_images, splits.test_labels)
        return cls(*split, transform, splits.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        return image if self.transform is None else self.transform(image), int(self.labels[index])


def torchvision_loaders(
    splits: DataSplits, train_batch_size: int, eval_batch_size: int, num_workers: int, seed: int, drop_last=False
):
    """The seed's DataLoaders (shuffled train with crop+flip, ordered test), for accelerator.prepare."""
    train_set = CustomCIFAR10(splits.train_images, splits.train_labels, train_transform(), splits.class_names)
    test_set = CustomCIFAR10(splits.test_images, splits.test_labels, test_transform(), splits.class_names)
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    # A seeded generator makes the shuffle order reproducible (bit-exact resume relies on it).
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_set, batch_size=train_batch_size, shuffle=True, generator=generator, drop_last=drop_last, **common
    )
    return train_loader, DataLoader(test_set, batch_size=eval_batch_size, shuffle=False, **common)
