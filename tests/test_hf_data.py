"""Hugging Face datasets as a source, through save_to_disk folders the tests build (no network here)."""

import json

import numpy as np
import pytest
from conftest import assert_clean_error, cli_env, run_cli, train_cmd

from lab2.data.hf_datasets import load_hf_splits
from lab2.errors import UserError


def _saved_dataset(path, num_classes, n_train=120, n_test=30, size=32, names=("img", "label")):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    from lab2.data.fake_cifar import synthetic_images

    def split(n, seed):
        images, labels = synthetic_images(n, num_classes, seed)
        pil = [__import__("PIL.Image").Image.fromarray(im.transpose(1, 2, 0)).resize((size, size)) for im in images]
        features = Features({names[0]: Image(), names[1]: ClassLabel(names=[f"class_{i}" for i in range(num_classes)])})
        return Dataset.from_dict({names[0]: pil, names[1]: labels.tolist()}, features=features), images, labels

    train, train_images, train_labels = split(n_train, 0)
    test, _, test_labels = split(n_test, 1)
    DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return train_images, train_labels, test_labels


def test_saved_dataset_becomes_the_same_uint8_tensors(tmp_path):
    images, labels, test_labels = _saved_dataset(tmp_path / "ds", 10)
    splits = load_hf_splits(str(tmp_path / "ds"))
    assert splits.train_images.dtype.is_floating_point is False and splits.train_images.shape == (120, 3, 32, 32)
    assert np.array_equal(splits.train_images.numpy(), images) and np.array_equal(splits.train_labels.numpy(), labels)
    assert np.array_equal(splits.test_labels.numpy(), test_labels)
    assert splits.class_names[3] == "class_3"


def test_columns_are_detected_or_named(tmp_path):
    _saved_dataset(tmp_path / "ds", 4, names=("picture", "target"))
    splits = load_hf_splits(str(tmp_path / "ds"))  # found by feature type: Image and ClassLabel
    assert splits.num_classes == 4
    with pytest.raises(UserError, match="not a column"):
        load_hf_splits(str(tmp_path / "ds"), image_column="img")


def test_other_sizes_are_resized(tmp_path):
    _saved_dataset(tmp_path / "ds", 3, size=48)
    assert load_hf_splits(str(tmp_path / "ds")).train_images.shape[1:] == (3, 32, 32)


@pytest.mark.slow
def test_cifar100_shaped_set_trains_with_a_100_class_head(tmp_path):
    _saved_dataset(tmp_path / "c100", 100, n_train=256, n_test=64)
    out = tmp_path / "run"
    result = run_cli(
        train_cmd(
            "--dataset_name",
            tmp_path / "c100",
            "--output_dir",
            out,
            "--num_train_epochs",
            1,
            "--report_to",
            "none",
            "--flow_log_steps",
            0,
        )
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["class_accuracy"]) == 100 and "class_99" in summary["class_accuracy"]
    from lab2.state.checkpoint import read_exported_model

    state, metadata = read_exported_model(out)
    assert metadata["num_classes"] == "100" and state["fc2.weight"].shape == (100, 512)


def test_unreachable_hub_names_the_fix(tmp_path):
    result = run_cli(
        train_cmd("--dataset_name", "uoft-cs/cifar10", "--output_dir", tmp_path / "out", "--report_to", "none"),
        env=cli_env(HF_HUB_OFFLINE="1"),
    )
    assert_clean_error(result, "uoft-cs/cifar10", "--data_dir", "save_to_disk")
