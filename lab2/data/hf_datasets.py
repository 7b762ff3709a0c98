"""Hugging Face `datasets` as a data source: a Hub id or a `save_to_disk` folder -> DataSplits.

The images are decoded once by a `Dataset.map` that `datasets` caches as Arrow (in memory for a read-only folder),
so no PIL decoding happens per epoch; class names come from the label column's ClassLabel. Bad input (labels that
are not whole numbers, a row with no image or bytes that do not decode, an empty split) is one UserError.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from lab2.data.cifar import DataSplits
from lab2.data.cifar_files import check_class_names
from lab2.errors import UserError

IMAGE_NAMES = ("img", "image", "images", "pixel_values")
LABEL_NAMES = ("label", "labels", "fine_label", "coarse_label")
TEST_SPLITS = ("test", "validation", "valid")


def _load(name: str):
    from datasets import DatasetDict, load_dataset, load_from_disk

    saved = Path(name).exists()
    try:
        dataset = load_from_disk(name) if saved else load_dataset(name)
    except Exception as exc:  # ConnectionError, DatasetNotFoundError; FileNotFoundError for folders not saved ones
        if "label names are duplicated" in str(exc):  # datasets' ClassLabel refuses them while loading
            raise UserError(
                f"--dataset_name {name}: its ClassLabel names a class more than once; results are reported by "
                "class name, so give each class its own name (then save the dataset again)."
            ) from None
        if not saved:
            raise UserError(
                f"--dataset_name {name}: could not load it from the Hub ({type(exc).__name__}: {exc}). Check the id; "
                "without network access, pass --data_dir with a cifar-10-batches-py folder, or --dataset_name with a "
                "folder written by datasets' save_to_disk."
            ) from None
        try:  # load_from_disk fails on a 0-row split (IndexError): its state.json lists no data file
            states = {p.parent.name: json.loads(p.read_text("utf-8")) for p in sorted(Path(name).glob("*/state.json"))}
            _refuse_empty(name, [split for split, state in states.items() if not state["_data_files"]])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not a save_to_disk folder: said below
        raise UserError(f"--dataset_name {name}: not a folder written by save_to_disk ({exc}).") from None
    if not isinstance(dataset, DatasetDict):
        raise UserError(
            f"--dataset_name {name} holds a single split; lab2 needs a DatasetDict with 'train' and 'test' splits."
        )
    return dataset


def _refuse_empty(name: str, splits: list[str]) -> None:
    if splits:
        raise UserError(
            f"--dataset_name {name}: the {' and '.join(map(repr, splits))} split holds no rows; "
            "lab2 needs images in both the train and the test split."
        ) from None


def _pick_column(features, wanted: str, names: tuple[str, ...], feature_type, what: str, flag: str, name: str) -> str:
    """`wanted`, else the first column of `feature_type`, else the first with a usual name (checked per split later)."""
    found = wanted or next((c for c, f in features.items() if isinstance(f, feature_type)), None)
    found = found or next((c for c in features if c in names), None)
    if found:
        return found
    raise UserError(
        f"cannot tell which column of {name} holds the {what}; name it with --{flag} (columns: {list(features)})."
    )


def _to_chw_uint8(batch: dict, rows: list[int], image_column: str, split: str, name: str) -> dict:
    """A batch of stored images (datasets' {'bytes', 'path'} records) as uint8 (3, 32, 32) arrays, resized."""
    from PIL import Image as PILImage

    pixels = []
    for item, row in zip(batch[image_column], rows, strict=True):
        if item is None or not (item.get("bytes") or item.get("path")):
            raise UserError(f"--dataset_name {name}: {split} row {row} has no image (None); drop or fill that row.")
        try:
            with PILImage.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
                pixels.append(np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.uint8).transpose(2, 0, 1))
        except Exception as exc:  # noqa: BLE001 - whatever PIL raises, the row's bytes are the problem
            raise UserError(
                f"--dataset_name {name}: {split} row {row}'s image does not decode ({type(exc).__name__}); "
                "drop or re-encode that row."
            ) from None
    return {"pixels": pixels}


def load_hf_splits(name: str, image_column: str = "", label_column: str = "") -> DataSplits:
    """Train and test splits of a Hub or saved dataset as DataSplits (uint8 images, int64 labels, class names)."""
    from datasets import ClassLabel, Image, Value

    dataset = _load(name)
    _refuse_empty(name, [split for split in dataset if len(dataset[split]) == 0])
    if "train" not in dataset:
        raise UserError(f"--dataset_name {name} has no 'train' split (splits: {list(dataset)}).")
    test_split = next((s for s in TEST_SPLITS if s in dataset), None)
    if test_split is None:
        raise UserError(f"--dataset_name {name} has no test split (one of {TEST_SPLITS}; splits: {list(dataset)}).")
    features = dataset["train"].features
    image_column = _pick_column(features, image_column, IMAGE_NAMES, Image, "images", "image_column", name)
    label_column = _pick_column(features, label_column, LABEL_NAMES, ClassLabel, "labels", "label_column", name)
    arrays = {}
    for split in ("train", test_split):
        features = dataset[split].features
        for column, flag in ((image_column, "image_column"), (label_column, "label_column")):
            if column not in features:
                raise UserError(
                    f"--{flag} {column!r} is not a column of {name}'s {split} split; its columns are {list(features)}."
                )
        label = features[label_column]  # class numbers: floats would be truncated silently
        whole = isinstance(label, ClassLabel) or (isinstance(label, Value) and label.dtype.startswith(("int", "uint")))
        if not whole:
            kind = label.dtype if isinstance(label, Value) else type(label).__name__
            raise UserError(
                f"--dataset_name {name}: the {split} split's label column {label_column!r} holds {kind} values, not "
                "class numbers; lab2 needs whole-number labels 0..C-1 (a ClassLabel or an integer column): convert "
                f"it, e.g. dataset.class_encode_column({label_column!r}) for names, or pick another --label_column."
            )
        if not isinstance(features[image_column], Image):
            raise UserError(
                f"--dataset_name {name}: the {split} split's image column {image_column!r} is a "
                f"{type(features[image_column]).__name__} column, not an Image one; name it with --image_column."
            )
        # decode=False: lab2 decodes the stored bytes itself, so a damaged image names its row.
        part = dataset[split].select_columns([image_column, label_column])
        part = part.cast_column(image_column, Image(decode=False))
        # One decode, cached by datasets as Arrow beside the files (later runs read it); in memory when read-only.
        converted = part.map(
            _to_chw_uint8,
            batched=True,
            batch_size=1000,
            with_indices=True,
            fn_kwargs={"image_column": image_column, "split": split, "name": name},
            remove_columns=[image_column],
            # datasets cannot write its cache beside a read-only mount's files: decode in memory there
            keep_in_memory=not all(os.access(os.path.dirname(f["filename"]), os.W_OK) for f in part.cache_files),
            desc=f"decoding {split} images once",
        ).with_format("numpy")
        arrays[split] = (
            np.asarray(converted["pixels"], dtype=np.uint8),
            np.asarray(converted[label_column], dtype=np.int64),
        )
    label_feature = dataset["train"].features[label_column]
    if isinstance(label_feature, ClassLabel):
        class_names = check_class_names(label_feature.names, f"--dataset_name {name}: ClassLabel {label_column!r}")
    else:
        class_names = tuple(str(i) for i in range(int(arrays["train"][1].max()) + 1))
    for split, (_, labels) in arrays.items():
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise UserError(f"--dataset_name {name}: {split} labels fall outside 0..{len(class_names) - 1}.")
    return DataSplits.from_numpy(*arrays["train"], *arrays[test_split], class_names)
