"""Hugging Face `datasets` as a data source: a Hub id or a `save_to_disk` folder -> DataSplits.

The images are decoded once, by a `Dataset.map` whose result `datasets` caches
as Arrow (in its cache for Hub data, beside the files for a saved folder); the
rest of lab2 then sees the same uint8 (N, 3, 32, 32) tensors as for the
official files, with no per-epoch PIL decoding. Class names come from the
label column's ClassLabel feature; the model's head follows their number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lab2.data.cifar import DataSplits
from lab2.errors import UserError

IMAGE_NAMES = ("img", "image", "images", "pixel_values")
LABEL_NAMES = ("label", "labels", "fine_label", "coarse_label")
TEST_SPLITS = ("test", "validation", "valid")
HUB_HELP = (
    "Without network access, pass --data_dir with a cifar-10-batches-py folder, or --dataset_name with a folder "
    "written by datasets' save_to_disk."
)


def _load(name: str):
    from datasets import DatasetDict, load_dataset, load_from_disk

    if Path(name).exists():
        try:
            dataset = load_from_disk(name)
        except Exception as exc:  # FileNotFoundError / ValueError for folders that are not saved datasets
            raise UserError(f"--dataset_name {name}: not a folder written by save_to_disk ({exc}).") from None
    else:
        try:
            dataset = load_dataset(name)
        except (ConnectionError, OSError) as exc:
            raise UserError(
                f"--dataset_name {name}: could not load it from the Hugging Face Hub ({exc}). {HUB_HELP}"
            ) from None
        except Exception as exc:  # DatasetNotFoundError and friends
            raise UserError(
                f"--dataset_name {name}: {type(exc).__name__}: {exc}. "
                f"Check the id, or {HUB_HELP[0].lower()}{HUB_HELP[1:]}"
            ) from None
    if not isinstance(dataset, DatasetDict):
        raise UserError(
            f"--dataset_name {name} holds a single split; lab2 needs a DatasetDict with 'train' and 'test' splits."
        )
    return dataset


def _pick_column(
    features, wanted: str, names: tuple[str, ...], feature_type, what: str, flag: str, dataset_name: str
) -> str:
    if wanted:
        if wanted not in features:
            raise UserError(f"--{flag} {wanted!r} is not a column of {dataset_name}; its columns are {list(features)}.")
        return wanted
    typed = [c for c, f in features.items() if isinstance(f, feature_type)]
    named = [c for c in features if c in names]
    for candidates in (typed, named):
        if candidates:
            return candidates[0]
    raise UserError(
        f"cannot tell which column of {dataset_name} holds the {what}; "
        f"name it with --{flag} (columns: {list(features)})."
    )


def _to_chw_uint8(batch: dict, image_column: str) -> dict:
    """Decode a batch of images to uint8 (3, 32, 32) arrays; other sizes are resized to 32x32."""
    pixels = []
    for image in batch[image_column]:
        image = image.convert("RGB")
        if image.size != (32, 32):
            image = image.resize((32, 32))
        pixels.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    return {"pixels": pixels}


def load_hf_splits(name: str, image_column: str = "", label_column: str = "") -> DataSplits:
    """Train and test splits of a Hub or saved dataset as DataSplits (uint8 images, int64 labels, class names)."""
    from datasets import ClassLabel, Image

    dataset = _load(name)
    if "train" not in dataset:
        raise UserError(f"--dataset_name {name} has no 'train' split (splits: {list(dataset)}).")
    test_split = next((s for s in TEST_SPLITS if s in dataset), None)
    if test_split is None:
        raise UserError(f"--dataset_name {name} has no test split (one of {TEST_SPLITS}; splits: {list(dataset)}).")
    features = dataset["train"].features
    image_column = _pick_column(features, image_column, IMAGE_NAMES, Image, "images", "image_column", name)
    label_column = _pick_column(features, label_column, LABEL_NAMES, ClassLabel, "labels", "label_column", name)
    label_feature = features[label_column]
    arrays = {}
    for split in ("train", test_split):
        part = dataset[split].select_columns([image_column, label_column])
        # One decode, cached by datasets as Arrow; later runs read the cache.
        converted = part.map(
            _to_chw_uint8,
            batched=True,
            batch_size=1000,
            fn_kwargs={"image_column": image_column},
            remove_columns=[image_column],
            desc=f"decoding {split} images once",
        )
        converted = converted.with_format("numpy")
        arrays[split] = (
            np.asarray(converted["pixels"], dtype=np.uint8),
            np.asarray(converted[label_column], dtype=np.int64),
        )
    if isinstance(label_feature, ClassLabel):
        class_names = tuple(label_feature.names)
    else:
        class_names = tuple(str(i) for i in range(int(arrays["train"][1].max()) + 1))
    for split, (_, labels) in arrays.items():
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise UserError(f"--dataset_name {name}: {split} labels fall outside 0..{len(class_names) - 1}.")
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays[test_split]
    return DataSplits(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        class_names,
    )
