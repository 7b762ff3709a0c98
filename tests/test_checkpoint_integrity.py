"""Damaged checkpoints and full disks (issue 11, sections 2 and 3), on real Accelerate state.

`--resume_from_checkpoint latest` means the newest checkpoint that verifies; a damaged one is
reported in one line and skipped; an explicit damaged path is one error naming the file; a full
disk during a save or the export is one error naming the last good checkpoint, and leaves no
temporary folder. The full-disk cases run on a small tmpfs this test mounts (root only)."""

import json

import pytest
import torch
from accelerate import Accelerator
from conftest import fill_disk

from lab2.engine.resume import check_compatible
from lab2.errors import UserError
from lab2.state.checkpoint import (
    export_model,
    read_progress,
    resolve_resume_path,
    save_checkpoint,
)
from lab2.state.files import append_jsonl

PROGRESS = {
    "epoch": 0,
    "batch_in_epoch": 0,
    "loss_sum": 0.0,
    "correct": 0.0,
    "seen": 0.0,
    "model": "simple_cnn",
    "num_classes": 10,
    "world_size": 1,
}


def _accelerator_with_state(width=8):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(width, width)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, width)).sum().backward()
    optimizer.step()  # so optimizer.bin holds real moments
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model


@pytest.fixture
def two_checkpoints(tmp_path):
    accelerator, _ = _accelerator_with_state()
    folder = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        save_checkpoint(accelerator, folder, {**PROGRESS, "global_step": step, "batch_in_epoch": step}, total_limit=3)
    older, newest = sorted(folder.iterdir())
    return tmp_path / "run", older, newest


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def _edit_progress(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


DAMAGE = {
    "model-garbage": lambda c: (c / "model.safetensors").write_bytes(b"\x00garbage" * 64),
    "model-truncated": lambda c: _truncate(c / "model.safetensors", 100),
    "optimizer-empty": lambda c: (c / "optimizer.bin").write_bytes(b""),
    "optimizer-truncated": lambda c: _truncate(c / "optimizer.bin", 300),
    "progress-list": lambda c: (c / "progress.json").write_text("[]"),
    "progress-epoch-text": lambda c: _edit_progress(c / "progress.json", epoch="1"),
    "random-states-missing": lambda c: (c / "random_states_0.pkl").unlink(),
}
NAMED_FILE = {
    "model-garbage": "model.safetensors",
    "model-truncated": "model.safetensors",
    "optimizer-empty": "optimizer.bin",
    "optimizer-truncated": "optimizer.bin",
    "progress-list": "progress.json",
    "progress-epoch-text": "progress.json",
    "random-states-missing": "random_states_0.pkl",
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_latest_skips_a_damaged_checkpoint_in_one_line(two_checkpoints, damage):
    run, older, newest = two_checkpoints
    DAMAGE[damage](newest)
    lines = []
    assert resolve_resume_path("latest", run, report=lines.append) == older
    assert len(lines) == 1 and newest.name in lines[0] and NAMED_FILE[damage] in lines[0], lines
    assert read_progress(older)["global_step"] == 2


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_an_explicit_damaged_checkpoint_is_one_error_naming_the_file(two_checkpoints, damage):
    _, _, newest = two_checkpoints
    DAMAGE[damage](newest)
    with pytest.raises(UserError) as error:
        resolve_resume_path(str(newest), "unused")
    assert NAMED_FILE[damage] in str(error.value) and "\n" not in str(error.value)


def test_when_every_checkpoint_is_damaged_latest_says_so(two_checkpoints):
    run, older, newest = two_checkpoints
    for checkpoint in (older, newest):
        (checkpoint / "optimizer.bin").write_bytes(b"")
    with pytest.raises(UserError, match="no checkpoint .* is complete"):
        resolve_resume_path("latest", run, report=lambda line: None)


@pytest.mark.parametrize(
    "progress",
    [
        [],
        {"epoch": "1"},
        {**PROGRESS, "global_step": -3},
        {**PROGRESS, "global_step": 2, "seen": float("nan")},
        {**PROGRESS, "global_step": 2, "model": 7},
        {**PROGRESS, "global_step": True},
    ],
)
def test_read_progress_checks_every_field(tmp_path, progress):
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(UserError, match="progress.json"):
        read_progress(tmp_path)


@pytest.mark.parametrize(
    "setting, value",
    [("per_device_train_batch_size", 32), ("seed", 7), ("num_train_samples", 200), ("data_pipeline", "torchvision")],
)
def test_mid_epoch_resume_refuses_settings_that_move_the_position(tmp_path, setting, value):
    position = {
        "per_device_train_batch_size": 64,
        "seed": 42,
        "data_pipeline": "device",
        "num_train_samples": 256,
        "world_size": 1,
    }
    progress = {**PROGRESS, "global_step": 2, "batch_in_epoch": 2, "position": position}
    check_compatible(progress, tmp_path, "simple_cnn", 10, dict(position))  # same settings: fine
    with pytest.raises(UserError, match=f"--{setting}"):
        check_compatible(progress, tmp_path, "simple_cnn", 10, {**position, setting: value})
    check_compatible({**progress, "batch_in_epoch": 0}, tmp_path, "simple_cnn", 10, {**position, setting: value})


# --------------------------------------------------------------------------- full disk, on a real tmpfs


def test_full_disk_during_a_checkpoint(small_disk):
    accelerator, _ = _accelerator_with_state(width=128)  # ~200 KB per checkpoint
    folder = small_disk / "run" / "checkpoints"
    first = save_checkpoint(accelerator, folder, {**PROGRESS, "global_step": 2}, total_limit=3)
    fill_disk(small_disk, 50_000)
    with pytest.raises(UserError) as error:
        save_checkpoint(accelerator, folder, {**PROGRESS, "global_step": 4}, total_limit=3)
    message = str(error.value)
    assert "disk is full" in message and str(first) in message and "\n" not in message, message
    assert f"writing {folder / 'checkpoint_00000004'} failed" in message  # its name, not the temporary folder's
    assert getattr(error.value, "exit_code", None) == 6
    assert sorted(p.name for p in folder.iterdir()) == [first.name]  # no .tmp-checkpoint_* left behind
    assert resolve_resume_path("latest", small_disk / "run", report=lambda line: None) == first


def test_full_disk_during_the_final_export(small_disk):
    accelerator, model = _accelerator_with_state(width=128)
    run = small_disk / "run"
    first = save_checkpoint(accelerator, run / "checkpoints", {**PROGRESS, "global_step": 2}, total_limit=3)
    fill_disk(small_disk, 20_000)
    with pytest.raises(UserError) as error:
        export_model(accelerator, model, run / "model.safetensors", {"model": "linear"})
    message = str(error.value)
    assert "disk is full" in message and str(first) in message and message.count("is full") == 1, message  # not nested
    assert getattr(error.value, "exit_code", None) == 6
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # no .model.safetensors.tmp


def test_full_disk_during_a_log_append_leaves_whole_lines(small_disk):
    path = small_disk / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    fill_disk(small_disk, 0)
    with pytest.raises(OSError):
        append_jsonl(path, {"epoch": 2, "padding": "x" * 100_000})
    assert path.read_text() == '{"epoch": 1}\n'
