"""Fuzzing every reader of outside files (issue 11, section 5) with hypothesis, for a bounded number of
derandomized examples: CIFAR batch files, checkpoint progress and manifests, safetensors metadata, and
run-folder JSON. The property: a valid result or a clean UserError, never another exception, and
bounded memory (tracemalloc's peak per example)."""

import io
import json
import pickle
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lab2.data.cifar_files import read_cifar_batch
from lab2.errors import UserError
from lab2.report.pages import build_report
from lab2.state.checkpoint import checkpoint_problem, read_progress
from lab2.state.model_file import load_exported_model

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MEMORY_LIMIT = 48 * 2**20  # bytes any one example may allocate: far above a real file's needs, far below a bomb's

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)


def mutations(original: bytes):
    """Byte strings near `original`: truncated, with bytes overwritten, or with a slice repeated."""
    size = len(original)
    truncate = st.integers(0, size).map(lambda n: original[:n])
    overwrite = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: bytes(_apply(original, edits))
    )
    repeat = st.tuples(st.integers(0, size - 1), st.integers(1, 64), st.integers(2, 50)).map(
        lambda t: original[: t[0]] + original[t[0] : t[0] + t[1]] * t[2] + original[t[0] :]
    )
    return truncate | overwrite | repeat | st.binary(max_size=256)


def _apply(data: bytes, edits) -> bytearray:
    out = bytearray(data)
    for position, value in edits:
        out[position] = value
    return out


def _checked(call):
    """Run `call` under tracemalloc; a UserError is a fine answer, any other exception fails the test."""
    tracemalloc.start()
    try:
        try:
            result = call()
        except UserError as error:
            result = error
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    return result


def _batch_bytes(n=3, labels=None):
    data = np.arange(n * 3072, dtype=np.uint8).reshape(n, 3072)
    batch = {
        "batch_label": "b",
        "labels": list(range(n)) if labels is None else labels,
        "data": data,
        "filenames": [f"f{i}.png" for i in range(n)],
    }
    return pickle.dumps(batch, protocol=2)


@FUZZ
@given(st.data())
def test_fuzz_cifar_batch_files(tmp_path, data):
    original = _batch_bytes()
    raw = data.draw(mutations(original) | json_values.map(lambda v: pickle.dumps({"data": v, "labels": v}, protocol=2)))
    path = tmp_path / "batch"
    path.write_bytes(raw)
    result = _checked(lambda: read_cifar_batch(path))
    if not isinstance(result, UserError):
        images, labels = result
        assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
        assert (
            labels.dtype == np.int64 and labels.shape == (len(images),) and (labels >= 0).all() and (labels < 10).all()
        )


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory):
    """A real (tiny) checkpoint written by save_checkpoint, to mutate."""
    from accelerate import Accelerator

    from lab2.state.checkpoint import save_checkpoint

    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(
        torch.nn.Linear(2, 2), torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    )
    progress = {
        "epoch": 0,
        "batch_in_epoch": 1,
        "global_step": 1,
        "loss_sum": 1.0,
        "correct": 1.0,
        "seen": 2.0,
        "model": "simple_cnn",
        "num_classes": 10,
        "world_size": 1,
    }
    return save_checkpoint(accelerator, tmp_path_factory.mktemp("ck") / "checkpoints", progress, total_limit=1)


@FUZZ
@given(st.data())
def test_fuzz_checkpoint_progress_and_manifest(tmp_path, checkpoint_folder, data):
    import shutil

    folder = tmp_path / "checkpoint"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(checkpoint_folder, folder)
    name = data.draw(st.sampled_from(["progress.json", "manifest.json"]))
    original = (folder / name).read_bytes()
    raw = data.draw(mutations(original) | json_values.map(lambda v: json.dumps(v).encode()))
    (folder / name).write_bytes(raw)
    problem = _checked(lambda: checkpoint_problem(folder))
    assert problem is None or isinstance(problem, str)
    if problem is None:  # a mutation that verifies must have left the content as it was (whitespace aside)
        assert raw == original or (name == "manifest.json" and json.loads(raw) == json.loads(original))
    result = _checked(lambda: read_progress(folder))
    assert isinstance(result, (dict, UserError))


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    """A small safetensors file with lab2's metadata keys
    (tensors of another shape: load must refuse or succeed cleanly)."""
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_file(
        {"fc2.bias": torch.zeros(10)},
        str(path),
        metadata={
            "model": "simple_cnn",
            "num_classes": "10",
            "class_names": json.dumps(list("abcdefghij")),
            "config": "{}",
        },
    )
    return path.read_bytes()


metadata_text = st.one_of(st.text(max_size=30), json_values.map(json.dumps), st.integers().map(str))


@FUZZ
@given(st.data())
def test_fuzz_safetensors_metadata(tmp_path, model_bytes, data):
    path = tmp_path / "model.safetensors"
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutations(model_bytes)))
    else:
        metadata = data.draw(
            st.dictionaries(
                st.sampled_from(["model", "num_classes", "class_names", "config", "other"]), metadata_text, max_size=5
            )
        )
        save_file({"fc2.bias": torch.zeros(10)}, str(path), metadata=metadata)
    result = _checked(lambda: load_exported_model(path))
    assert isinstance(result, UserError), "a file missing almost every tensor must be refused"


run_files = st.fixed_dictionaries(
    {},
    optional={
        "config.json": json_values.map(json.dumps) | st.binary(max_size=64),
        "summary.json": json_values.map(json.dumps) | st.binary(max_size=64),
        "flops.json": json_values.map(json.dumps),
        "metrics.jsonl": st.lists(json_values.map(json.dumps), max_size=4).map("\n".join) | st.binary(max_size=64),
    },
)


@FUZZ
@given(files=run_files, config=st.dictionaries(st.sampled_from(["model", "run_name", "seed"]), json_values, max_size=3))
def test_fuzz_run_folder_json(tmp_path, files, config):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    for old in run.iterdir():
        old.unlink()
    (run / "config.json").write_text(json.dumps(config))
    for name, content in files.items():
        (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    result = _checked(lambda: build_report(run))
    assert isinstance(result, (str, UserError))
    if isinstance(result, str):
        assert result.startswith("<!DOCTYPE html>")


def test_fuzzers_see_valid_files_too(tmp_path):
    """The unmutated inputs are read as valid results (so the properties above are not vacuous)."""
    path = tmp_path / "batch"
    path.write_bytes(_batch_bytes())
    images, labels = read_cifar_batch(path)
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 2]
    assert pickle.load(io.BytesIO(_batch_bytes()))["labels"] == [0, 1, 2]
