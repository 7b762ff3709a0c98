"""Hugging Face datasets as a source, through save_to_disk folders the tests build (no network here)."""

import json

import numpy as np
import pytest
from conftest import assert_clean_error, cli_env, run_cli, train_cmd

from lab2.data.hf_datasets import load_hf_splits
from lab2.errors import UserError


def _saved_dataset(path, num_classes, n_train=120, n_test=30, size=32, names=("img", "label")):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    from lab2.data.cifar_files import synthetic_images

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
    from lab2.state.model_file import read_exported_model

    state, metadata = read_exported_model(out)
    assert metadata["num_classes"] == "100" and state["fc2.weight"].shape == (100, 512)


def test_unreachable_hub_names_the_fix(tmp_path):
    result = run_cli(
        train_cmd("--dataset_name", "uoft-cs/cifar10", "--output_dir", tmp_path / "out", "--report_to", "none"),
        env=cli_env(HF_HUB_OFFLINE="1"),
    )
    assert_clean_error(result, "uoft-cs/cifar10", "--data_dir", "save_to_disk")


# Issue 16, section 3: bad save_to_disk folders are one line, never trained silently or a traceback.


def _bad_dataset(path, train_images=None, train_labels=None, label_feature=None, n_test=4, image_feature=None):
    """A save_to_disk folder whose train split has the given images / labels (4 rows); the test split is fine."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    good = [PIL.Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)) for i in range(4)]
    classes = ClassLabel(names=["a", "b"])
    train = Dataset.from_dict(
        {"img": good if train_images is None else train_images, "label": train_labels or [0, 1, 0, 1]},
        features=Features({"img": image_feature or Image(), "label": label_feature or classes}),
    )
    test = Dataset.from_dict(
        {"img": good[:n_test], "label": [0, 1, 0, 1][:n_test]}, features=Features({"img": Image(), "label": classes})
    )
    DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


def _bad_cases():
    import PIL.Image
    from datasets import Value

    good = PIL.Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    return {
        "float-labels": (dict(train_labels=[0.5, 1.5, 0.5, 1.5], label_feature=Value("float32")), ["float32", "label"]),
        "string-labels": (dict(train_labels=["a", "b", "a", "b"], label_feature=Value("string")), ["string", "label"]),
        "none-image": (dict(train_images=[good, good, None, good]), ["train row 2 has no image"]),
        "damaged-bytes": (
            dict(train_images=[good, {"bytes": b"\x89PNG not really", "path": None}, good, good]),
            ["train row 1", "does not decode"],
        ),
        "empty-test": (dict(n_test=0), ["'test' split holds no rows"]),
        "image-column-of-numbers": (
            dict(train_images=[1, 2, 3, 4], image_feature=Value("int64")),
            ["image column 'img' is a Value column"],
        ),
    }


@pytest.mark.parametrize(
    "case", ["float-labels", "string-labels", "none-image", "damaged-bytes", "empty-test", "image-column-of-numbers"]
)
def test_bad_saved_datasets_are_refused_naming_the_problem(tmp_path, case):
    kwargs, fragments = _bad_cases()[case]
    folder = _bad_dataset(tmp_path / "ds", **kwargs)
    with pytest.raises(UserError) as raised:
        load_hf_splits(str(folder))
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.slow
def test_float_labels_are_refused_by_the_program_not_truncated(tmp_path):
    kwargs, _ = _bad_cases()["float-labels"]
    folder = _bad_dataset(tmp_path / "ds", **kwargs)
    result = run_cli(
        train_cmd(
            "--dataset_name", folder, "--output_dir", tmp_path / "out", "--report_to", "none", "--num_train_epochs", 1
        )
    )
    assert_clean_error(result, "float32", "not class numbers")  # was: trained on labels 0, 1, exit 0
    assert result.returncode == 2


def test_a_folder_on_a_read_only_mount_is_decoded_in_memory(tmp_path):
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    images, labels, _ = _saved_dataset(tmp_path / "ds", 3, n_train=8, n_test=4)
    mount = tmp_path / "ro"
    mount.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(tmp_path / "ds"), str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        splits = load_hf_splits(str(mount))  # was: OSError [Errno 30] writing the cache beside the files
        assert np.array_equal(splits.train_images.numpy(), images) and np.array_equal(
            splits.train_labels.numpy(), labels
        )
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# Issue 23, item 4: a ClassLabel's names key the results (class_accuracy); duplicates, empty or non-text names are
# refused in one line. datasets refuses duplicates itself while loading; a dataset_info.json edited by hand (or
# written by another tool) carries the others through to lab2.


@pytest.mark.parametrize(
    "names, fragments",
    [
        (["a", "a"], ["names a class more than once", "its own name"]),
        (["a", ""], ["class 1's name is ''", "non-empty string"]),
        ([1, 2], ["class 0's name is 1", "non-empty string"]),
    ],
    ids=["duplicate", "empty", "not-text"],
)
def test_bad_class_label_names_are_refused(tmp_path, names, fragments):
    folder = _bad_dataset(tmp_path / "ds")
    for split in ("train", "test"):
        info_file = folder / split / "dataset_info.json"
        info = json.loads(info_file.read_text())
        info["features"]["label"]["names"] = names
        info_file.write_text(json.dumps(info))
    with pytest.raises(UserError) as raised:
        load_hf_splits(str(folder))
    assert "\n" not in str(raised.value) and str(folder) in str(raised.value)
    for fragment in fragments:
        assert fragment in str(raised.value)
