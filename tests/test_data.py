import pickle

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_cli, train_cmd

from lab2.data.cifar import CustomCIFAR10, load_cifar10, read_cifar10_folder, train_transform
from lab2.data.cifar import (
    test_transform as normalise_only,  # aliased: pytest would collect test_*
)
from lab2.data.cifar_files import (
    CIFAR10_CLASSES,
    make_fake_cifar10,
    read_cifar_batch,
    synthetic_images,
    write_cifar10_folder,
    write_cifar_batch,
)
from lab2.errors import UserError


def test_reader_returns_shapes_dtypes_labels_on_written_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 3, 32, 32), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9, 2]
    write_cifar_batch(tmp_path / "b", images, labels)
    got_images, got_labels = read_cifar_batch(tmp_path / "b")
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 3, 32, 32)
    assert np.array_equal(got_images, images)  # channel-planar row layout survives the round trip
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels


def test_reader_on_the_real_mini_slice(mini_dir):
    splits = read_cifar10_folder(mini_dir / "cifar-10-batches-py")
    assert splits.train_images.shape == (5085, 3, 32, 32) and splits.train_images.dtype == torch.uint8
    assert splits.test_images.shape == (1017, 3, 32, 32)
    assert splits.train_labels.dtype == torch.int64 and int(splits.train_labels.max()) == 9
    assert splits.class_names == CIFAR10_CLASSES
    # Balanced within about 15% per class, as the slice's README says: a check that labels are real.
    counts = torch.bincount(splits.train_labels, minlength=10).float()
    assert counts.min() > 0.8 * counts.mean()


def test_load_cifar10_accepts_the_parent_or_the_folder_itself(mini_dir):
    a = load_cifar10(mini_dir, download=False)
    b = load_cifar10(mini_dir / "cifar-10-batches-py", download=False)
    assert torch.equal(a.test_labels, b.test_labels)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/lab2-pwned",))


def test_malicious_pickle_is_refused_before_it_runs(tmp_path):
    marker = "/tmp/lab2-pwned"
    import os

    if os.path.exists(marker):
        os.remove(marker)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": _Exploit(), "labels": []}, protocol=2))
    with pytest.raises(UserError, match="unsafe"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            lambda p: p.write_bytes(
                pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4}, protocol=2)[:100]
            ),
            "truncated",
        ),
        (lambda p: write_cifar_batch(p, np.zeros((4, 3, 32, 32), np.uint8), [0] * 4) or _reshape(p), "shape"),
        (lambda p: write_cifar_batch(p, np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 10, 2]), "0..9"),
        (lambda p: p.write_text("these are not the images you are looking for\n"), "not a cifar-10 batch"),
        (lambda p: p.write_bytes(pickle.dumps({"labels": [1]}, protocol=2)), "lacks"),
    ],
    ids=["truncated", "wrong-shape", "label-out-of-range", "text-file", "missing-key"],
)
def test_bad_batch_files_raise_one_clear_user_error(tmp_path, content, message):
    path = tmp_path / "data_batch_1"
    content(path)
    with pytest.raises(UserError) as info:
        read_cifar_batch(path)
    assert message in str(info.value).lower()
    assert str(path) in str(info.value)


def _reshape(path):
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch["data"] = batch["data"].reshape(4, 32, 96)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def test_missing_test_batch_is_named(synthetic_dir):
    (synthetic_dir / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match="missing test_batch"):
        read_cifar10_folder(synthetic_dir / "cifar-10-batches-py")


def test_failed_download_says_what_to_do(tmp_path):
    # No network here (and in CI): torchvision's real download fails, and the message must name the fixes.
    with pytest.raises(UserError) as info:
        load_cifar10(tmp_path / "empty")
    message = str(info.value)
    assert "could not download" in message and "--data_dir" in message and "--dataset fake" in message


def test_custom_dataset_matches_torchvision_semantics(synthetic_dir):
    dataset = CustomCIFAR10.from_folder(synthetic_dir, train=False, transform=normalise_only())
    raw = read_cifar10_folder(synthetic_dir / "cifar-10-batches-py")
    assert len(dataset) == 101
    image, label = dataset[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == int(raw.test_labels[5])
    # Normalised pixel = (x / 255 - mean) / std, per channel, with the course lab's constants.
    expected = (raw.test_images[5].float() / 255 - torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)) / torch.tensor(
        [0.2023, 0.1994, 0.2010]
    ).view(3, 1, 1)
    assert torch.allclose(image, expected, atol=1e-5)


def test_train_transform_keeps_shape_and_changes_pixels(synthetic_dir):
    torch.manual_seed(0)
    dataset = CustomCIFAR10.from_folder(synthetic_dir, train=True, transform=train_transform())
    plain = CustomCIFAR10.from_folder(synthetic_dir, train=True, transform=normalise_only())
    outs = [dataset[0][0] for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(o, plain[0][0]) for o in outs)


def test_fake_dataset_is_written_in_the_official_format_and_reused(tmp_path):
    folder = make_fake_cifar10(tmp_path, 64, 32, seed=1)
    splits = read_cifar10_folder(folder)
    assert splits.train_images.shape == (64, 3, 32, 32) and splits.test_images.shape == (32, 3, 32, 32)
    stamp = (folder / "data_batch_1").stat().st_mtime_ns
    assert make_fake_cifar10(tmp_path, 64, 32, seed=1) == folder
    assert (folder / "data_batch_1").stat().st_mtime_ns == stamp  # not regenerated


# Issue 23, item 4: batches.meta's label_names key the results (class_accuracy by name): a duplicate would silently
# lose a class, so duplicates, empty names and names that are not text are refused in one line, before training.


def _folder_with_class_names(root, names):
    train, test = synthetic_images(40, len(names), 0), synthetic_images(10, len(names), 1)
    return write_cifar10_folder(root / "cifar-10-batches-py", *train, *test, class_names=names)


@pytest.mark.parametrize(
    "names, fragment",
    [
        (
            ["cat", "dog", "cat", "frog", "dog"],
            "names a class more than once: 'cat' (classes 0, 2), 'dog' (classes 1, 4)",
        ),
        (["cat", "", "dog"], "class 1's name is ''"),
        (["cat", "   ", "dog"], "class 1's name is '   '"),
        (["cat", 7, "dog"], "class 1's name is 7"),
        (["cat", None, "dog"], "class 1's name is None"),
        (["cat", "de\ner", "dog"], "class 1's name is 'de\\ner'"),
        (["cat", "dog", "tab\there"], "class 2's name is 'tab\\there'"),
    ],
    ids=["duplicates", "empty", "blank", "number", "none", "newline", "tab"],
)
def test_bad_label_names_are_refused_naming_the_file(tmp_path, names, fragment):
    folder = _folder_with_class_names(tmp_path, names)
    with pytest.raises(UserError) as raised:
        read_cifar10_folder(folder)
    message = str(raised.value)
    assert fragment in message and "batches.meta" in message and "\n" not in message


def test_duplicate_label_names_stop_the_run_before_training(tmp_path):
    _folder_with_class_names(tmp_path / "data", ["cat", "dog", "cat"])
    out = tmp_path / "run"
    result = run_cli(train_cmd("--data_dir", tmp_path / "data", "--output_dir", out, "--report_to", "none"))
    assert_clean_error(result, "names a class more than once: 'cat' (classes 0, 2)", "give each class its own name")
    assert result.returncode == 2 and not (out / "summary.json").exists() and not list(out.glob("checkpoint*"))
