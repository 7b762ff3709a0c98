"""Writing CIFAR-10 in the official format: synthetic data for offline smoke runs (--dataset fake) and tests.

The files are the same pickled batches torchvision downloads, so every reader path
(lab2.data.cifar_reader) is exercised by the synthetic set too.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np

from lab2.data.cifar_reader import (
    CIFAR10_CLASSES,
    CIFAR10_FOLDER,
    IMAGE_SHAPE,
    META_FILE,
    ROW_BYTES,
    TEST_FILE,
    TRAIN_FILES,
)
from lab2.errors import UserError


def write_cifar_batch(path: str | Path, images: np.ndarray, labels, batch_label: str = "") -> None:
    """Write uint8 (N, 3, 32, 32) images and labels as one official-format batch (pickle protocol 2)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    batch = {
        "batch_label": batch_label,
        "labels": [int(label) for label in labels],
        "data": images.reshape(len(images), ROW_BYTES),
        "filenames": [f"image_{i:05d}.png" for i in range(len(images))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def write_cifar10_folder(
    folder: str | Path,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names=CIFAR10_CLASSES,
) -> Path:
    """Write a complete official-format folder: 5 training batches, test_batch and batches.meta."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(train_images)), len(TRAIN_FILES))
    for name, idx in zip(TRAIN_FILES, chunks, strict=True):
        write_cifar_batch(
            folder / name, train_images[idx], np.asarray(train_labels)[idx], f"training batch {name[-1]} of 5"
        )
    write_cifar_batch(folder / TEST_FILE, test_images, test_labels, "testing batch 1 of 1")
    with open(folder / META_FILE, "wb") as handle:
        pickle.dump(
            {"num_cases_per_batch": len(chunks[0]), "label_names": list(class_names), "num_vis": ROW_BYTES},
            handle,
            protocol=2,
        )
    return folder


def synthetic_images(num: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic 32x32 images: each class has its own colour and stripe pattern, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num)
    class_rng = np.random.default_rng(1234)  # the class look is fixed; only the samples depend on `seed`
    colours = class_rng.uniform(40, 215, size=(num_classes, 3, 1, 1))
    frequencies = class_rng.uniform(0.2, 1.2, size=num_classes)
    angles = class_rng.uniform(0, np.pi, size=num_classes)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    images = np.empty((num, *IMAGE_SHAPE), dtype=np.uint8)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        stripes = 40 * np.sin(frequencies[c] * (np.cos(angles[c]) * xx + np.sin(angles[c]) * yy))
        noise = rng.normal(0, 25, size=(len(members), *IMAGE_SHAPE))
        images[members] = np.clip(colours[c] + stripes + noise, 0, 255).astype(np.uint8)
    return images, labels


def _remove_partial_fake_set(folder: Path) -> None:
    """Delete a half-written fake set left by an interrupted run, but never a folder holding other files."""
    if not folder.exists():
        return
    foreign = (
        sorted(p.name for p in folder.iterdir() if p.name not in (*TRAIN_FILES, TEST_FILE, META_FILE))
        if folder.is_dir()
        else [folder.name]
    )
    if foreign:
        raise UserError(
            f"{folder} holds files lab2 did not write ({', '.join(foreign[:4])}); "
            "move them away or choose another --data_dir."
        )
    shutil.rmtree(folder)


def make_fake_cifar10(data_dir: str | Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Write (once) a synthetic set in the official format under data_dir; return its folder."""
    folder = Path(data_dir) / f"lab2-fake-{num_train}-{num_test}-{seed}" / CIFAR10_FOLDER
    if not (folder / META_FILE).exists():  # batches.meta is written last: its presence means complete
        train = synthetic_images(num_train, 10, seed)
        test = synthetic_images(num_test, 10, seed + 1)
        # Written under a temporary name and renamed, so an interrupted run never leaves half a set.
        tmp = folder.with_name(folder.name + ".tmp")
        _remove_partial_fake_set(tmp)
        _remove_partial_fake_set(folder)
        write_cifar10_folder(tmp, *train, *test)
        tmp.rename(folder)
    return folder
