"""The bad-input corpus: each case gets one line naming the problem and the fix, a non-zero exit,
no traceback, and nothing overwritten."""

import pickle
import shutil

import numpy as np
import pytest
from conftest import assert_clean_error, built_once, run_cli, train_cmd, write_synthetic_folder

from lab2.data.cifar_files import synthetic_images, write_cifar10_folder

FAST = ["--report_to", "none", "--flow_log_steps", "0", "--num_prediction_samples", "0", "--num_train_epochs", "1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    def build(root):
        data = write_synthetic_folder(root / "data", num_train=256, num_test=64)
        result = run_cli(train_cmd("--data_dir", data, "--output_dir", root / "run", *FAST))
        assert result.returncode == 0, result.stderr

    root = built_once(tmp_path_factory, "bad_input_finished", build)
    return root / "data", root / "run"


def _corrupt(data_root, name, how):
    path = data_root / "cifar-10-batches-py" / name
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif how == "shape":
        batch = pickle.loads(path.read_bytes(), encoding="latin1")
        batch["data"] = batch["data"][:, :1024]
        path.write_bytes(pickle.dumps(batch, protocol=2))
    elif how == "labels":
        batch = pickle.loads(path.read_bytes(), encoding="latin1")
        batch["labels"][0] = 42
        path.write_bytes(pickle.dumps(batch, protocol=2))
    elif how == "delete":
        path.unlink()
    elif how == "text":
        path.write_text("<html>404 Not Found</html>\n")


@pytest.mark.parametrize(
    "name, how, fragments",
    [
        ("data_batch_3", "truncate", ["data_batch_3", "truncated or corrupt"]),
        ("data_batch_1", "shape", ["data_batch_1", "shape (N, 3072)"]),
        ("test_batch", "labels", ["test_batch", "0..9"]),
        ("test_batch", "delete", ["missing test_batch"]),
        ("data_batch_2", "text", ["data_batch_2", "not a CIFAR-10 batch file"]),
    ],
    ids=["truncated-batch", "wrong-shape", "labels-out-of-range", "missing-test-batch", "text-file-as-data"],
)
def test_bad_data_files(tmp_path, name, how, fragments):
    data = write_synthetic_folder(tmp_path / "data", num_train=100, num_test=20)
    _corrupt(data, name, how)
    result = run_cli(train_cmd("--data_dir", data, "--output_dir", tmp_path / "out", *FAST))
    assert_clean_error(result, *fragments)


def test_missing_data_folder_without_network(tmp_path):
    result = run_cli(train_cmd("--data_dir", tmp_path / "nowhere", "--output_dir", tmp_path / "out", *FAST))
    assert_clean_error(result, "could not download", "--data_dir", "--dataset fake")


@pytest.mark.parametrize("dataset, inside", [("cifar10", ""), ("fake", ""), ("cifar10", "sub")])
def test_a_data_dir_that_is_a_file_is_named_so(tmp_path, dataset, inside):
    """Issue 16, section 3: it said 'could not download ... File exists'."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    data_dir = notes / inside if inside else notes
    result = run_cli(train_cmd("--dataset", dataset, "--data_dir", data_dir, "--output_dir", tmp_path / "out", *FAST))
    assert_clean_error(result, "--data_dir", "a file, not a folder")
    assert "could not download" not in result.stderr and notes.read_text() == "mine"


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(train_cmd("--data_dir", tmp_path / "empty", "--output_dir", tmp_path / "out", *FAST))
    assert_clean_error(result, "could not download", "cifar-10-batches-py")


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--model", "vgg99"], ["--model", "'vgg99'", "simple_cnn"]),  # argparse's choices, from the registry's names
        (["--num_train_epochs", "-1"], ["--num_train_epochs must be >= 1"]),
        (["--checkpointing_steps", "often"], ["--checkpointing_steps"]),
        (["--dataset", "fake", "--dataset_name", "uoft-cs/cifar10"], ["conflict"]),
        (["--resume_from_checkpoint", "latest", "--overwrite_output_dir"], ["conflict"]),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], ["no such folder"]),
    ],
    ids=[
        "unknown-model",
        "negative-epochs",
        "bad-checkpointing-steps",
        "dataset-conflict",
        "resume-overwrite-conflict",
        "missing-checkpoint",
    ],
)
def test_bad_flags(tmp_path, flags, fragments):
    result = run_cli(
        train_cmd(
            "--dataset", "fake", "--data_dir", tmp_path / "data", "--output_dir", tmp_path / "out", *FAST[:4], *flags
        )
    )
    assert_clean_error(result, *fragments)


def test_argparse_type_errors_are_one_line_too(tmp_path):
    result = run_cli(train_cmd("--learning_rate", "fast"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--learning_rate must be a finite decimal number, got 'fast'" in result.stderr


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli(
        train_cmd("--dataset", "fake", "--data_dir", tmp_path / "data", "--output_dir", blocker / "run", *FAST)
    )
    assert_clean_error(result, "cannot write to --output_dir")


def test_finished_run_is_not_overwritten(finished_run):
    data, out = finished_run
    before = {p: p.read_bytes() for p in (out / "summary.json", out / "model.safetensors")}
    result = run_cli(train_cmd("--data_dir", data, "--output_dir", out, *FAST))
    assert_clean_error(result, "holds a finished run", "--overwrite_output_dir")
    assert all(p.read_bytes() == content for p, content in before.items())


def test_checkpoint_from_a_model_with_other_classes_is_refused(finished_run, tmp_path):
    data, out = finished_run
    five = tmp_path / "five"
    train = synthetic_images(100, 5, 0)
    test = synthetic_images(20, 5, 1)
    write_cifar10_folder(five / "cifar-10-batches-py", *train, *test, class_names=["a", "b", "c", "d", "e"])
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    result = run_cli(
        train_cmd("--data_dir", five, "--output_dir", tmp_path / "out", "--resume_from_checkpoint", checkpoint, *FAST)
    )
    assert_clean_error(result, "10 classes", "with 5")


def test_overwrite_output_dir_replaces_a_finished_run(finished_run, tmp_path):
    data, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "notes.txt").write_text("mine")
    result = run_cli(train_cmd("--data_dir", data, "--output_dir", copy, "--overwrite_output_dir", *FAST))
    assert result.returncode == 0, result.stderr
    assert (copy / "notes.txt").read_text() == "mine"  # only the run's own files were replaced
    assert np.isfinite(__import__("json").loads((copy / "summary.json").read_text())["final_eval_acc"])
