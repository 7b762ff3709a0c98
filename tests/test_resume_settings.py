"""Issue 16, section 1: a resumed run trains with the settings it reports.

Every flag that defines the training is either applied exactly on resume (the test reads the new value back
from the next checkpoint's optimizer and scheduler) or refused before training in one line naming each
flag's old and new value. Damaged random states and pickled objects in optimizer.bin are one line, exit 2."""

import io
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_clean_error, built_once, run_cli, train_cmd

from lab2.engine.optim import create_optimizer, create_scheduler
from lab2.engine.resume_settings import refuse_changed_settings, relay_schedule, training_settings
from lab2.errors import UserError
from lab2.state.checkpoint_check import write_manifest

pytestmark = pytest.mark.slow

# 128 images in batches of 64: two optimizer steps per epoch.
TINY = [
    "--dataset",
    "fake",
    "--fake_train_samples",
    128,
    "--fake_test_samples",
    32,
    "--per_device_train_batch_size",
    64,
    "--report_to",
    "none",
    "--flow_log_steps",
    0,
    "--num_prediction_samples",
    0,
]
BASE = ["--optim", "adam", "--lr_scheduler_type", "one_cycle", "--num_train_epochs", 1]


@pytest.fixture(scope="module")
def one_cycle_run(tmp_path_factory):
    """A finished 1-epoch Adam / one_cycle run: its checkpoint is at step 2, the schedule's end."""

    def build(root):
        result = run_cli(train_cmd("--data_dir", root / "data", *TINY, *BASE, "--output_dir", root / "run"))
        assert result.returncode == 0, result.stdout + result.stderr

    root = built_once(tmp_path_factory, "resume_settings_one_cycle", build)
    return root / "data", root / "run"


def _checkpoint(run, step):
    return run / "checkpoints" / f"checkpoint_{step:08d}"


def _resume(data, run, out, *flags):
    return run_cli(
        train_cmd(
            "--data_dir", data, *TINY, "--output_dir", out, "--resume_from_checkpoint", _checkpoint(run, 2), *flags
        )
    )


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (
            ["--lr_scheduler_type", "one_cycle", "--optim", "sgd"],
            ["--optim adam -> sgd"],
        ),  # was KeyError: 'momentum' at the first step
        (
            ["--lr_scheduler_type", "one_cycle", "--optim", "adamw", "--weight_decay", 0.05],
            ["--optim adam -> adamw"],
        ),  # was silently adam, decay 0
        (["--lr_scheduler_type", "constant"], ["--lr_scheduler_type one_cycle -> constant"]),  # blamed the version
        (["--recipe", "fast"], ["--optim adam -> adamw", "--warmup_ratio 0.0 -> 0.2"]),
    ],
    ids=["adam-to-sgd", "adam-to-adamw", "one_cycle-to-constant", "recipe-fast"],
)
def test_settings_the_checkpoint_cannot_carry_are_refused_before_training(one_cycle_run, tmp_path, flags, fragments):
    data, run = one_cycle_run
    result = _resume(data, run, tmp_path / "out", *flags)
    assert_clean_error(result, "other settings", *fragments)
    assert result.returncode == 2
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before training: nothing was saved


def test_constant_to_one_cycle_is_refused_naming_the_flag():
    """The reverse direction (was KeyError: 'max_lr'), on the recorded settings themselves."""
    cfg = SimpleNamespace(optim="adam", lr_scheduler_type="constant", warmup_ratio=0.0, learning_rate=1e-3)
    cfg.__dict__.update(weight_decay=0.0, momentum=0.9, label_smoothing_factor=0.0, num_train_epochs=1)
    saved = training_settings(cfg, schedule_steps=2)
    cfg.lr_scheduler_type = "one_cycle"
    with pytest.raises(UserError, match="--lr_scheduler_type constant -> one_cycle"):
        refuse_changed_settings(saved, cfg, "ckpt", report=print)
    notes = []
    refuse_changed_settings(None, cfg, "ckpt", report=notes.append)  # an older checkpoint: said, not hidden
    assert len(notes) == 1 and "no record of its training settings" in notes[0]


def test_weight_decay_and_longer_one_cycle_are_applied_exactly(one_cycle_run, tmp_path):
    data, run = one_cycle_run
    out = tmp_path / "out"
    result = _resume(data, run, out, *BASE[:-2], "--num_train_epochs", 2, "--weight_decay", 0.05)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "one_cycle schedule is re-laid over 2 epochs (4 steps, was 1 epochs, 2 steps)" in output, output
    after = _checkpoint(out, 4)
    optimizer = torch.load(after / "optimizer.bin", weights_only=True)
    scheduler = torch.load(after / "scheduler.bin", weights_only=True)
    assert [group["weight_decay"] for group in optimizer["param_groups"]] == [0.05]  # was 0.0: the flag was ignored
    assert scheduler["total_steps"] == 4 and scheduler["last_epoch"] == 4  # was 2: frozen past the old end
    # The rate each epoch ended at is the 4-step schedule's (a fresh OneCycleLR stepped alike), not a frozen one.
    reference = create_scheduler(create_optimizer([torch.zeros(1, requires_grad=True)]), "one_cycle", 4)
    rates = []
    for _ in range(4):
        reference.optimizer.step()
        reference.step()
        rates.append(reference.get_last_lr()[0])
    logged = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == pytest.approx(rates[3])
    assert json.loads((after / "progress.json").read_text())["training"]["weight_decay"] == 0.05


def test_a_linear_schedule_is_re_laid_at_the_same_step():
    """A LambdaLR keeps its position (step 2) and follows the new length's formula from there."""
    params = [torch.zeros(1, requires_grad=True)]
    short = create_scheduler(create_optimizer(params, lr=1.0), "linear", 4)
    for _ in range(2):
        short.optimizer.step()
        short.step()
    longer = create_scheduler(create_optimizer(params, lr=1.0), "linear", 8)
    fresh = longer.state_dict()
    longer.optimizer.load_state_dict(short.optimizer.state_dict())
    longer.load_state_dict(short.state_dict())  # what load_state does
    cfg = SimpleNamespace(lr_scheduler_type="linear", warmup_ratio=0.0, num_train_epochs=2)
    notes = []
    relay_schedule(longer, fresh, {"schedule_steps": 4, "num_train_epochs": 1}, cfg, 8, notes.append)
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(1 - 2 / 8)  # was 1 - 2 / 4
    assert len(notes) == 1 and "re-laid" in notes[0]


class NotAState:  # any pickled object: weights_only refuses to build it
    pass


def _saved_object() -> bytes:
    buffer = io.BytesIO()
    torch.save(NotAState(), buffer)
    return buffer.getvalue()


def _replace(checkpoint, name, content):
    (checkpoint / name).write_bytes(content)
    write_manifest(checkpoint)  # the manifest rewritten to match, so only loading can tell


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("random_states_0.pkl", b"not a pickle at all", ["random_states_0.pkl does not load", "not be exact"]),
        ("optimizer.bin", _saved_object(), ["not a saved state"]),
        ("scheduler.bin", _saved_object(), ["not a saved state"]),
    ],
    ids=["random-states", "optimizer-object", "scheduler-object"],
)
def test_state_files_that_do_not_load_are_one_line(one_cycle_run, tmp_path, name, content, fragments):
    data, run = one_cycle_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _replace(_checkpoint(copy, 2), name, content)
    result = _resume(data, copy, tmp_path / "out", *BASE)
    assert_clean_error(result, *fragments)
    assert result.returncode == 2


def test_momentum_and_weight_decay_are_written_as_a_fresh_sgd_would_hold_them():
    from lab2.engine.resume_settings import apply_optimizer_settings

    params = [torch.zeros(2, requires_grad=True)]
    for momentum, scheduler in ((0.5, "constant"), (0.0, "cosine")):
        resumed = create_optimizer(params, "sgd", weight_decay=0.0, momentum=0.9)
        cfg = SimpleNamespace(weight_decay=0.01, momentum=momentum, lr_scheduler_type=scheduler)
        apply_optimizer_settings(resumed, cfg)
        fresh = create_optimizer(params, "sgd", weight_decay=0.01, momentum=momentum)
        keys = ("weight_decay", "momentum", "nesterov")
        assert [resumed.param_groups[0][k] for k in keys] == [fresh.param_groups[0][k] for k in keys]


def test_a_checkpoint_without_the_record_is_said_and_its_one_cycle_still_re_laid(one_cycle_run, tmp_path):
    data, run = one_cycle_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoint = _checkpoint(copy, 2)
    progress = json.loads((checkpoint / "progress.json").read_text())
    del progress["training"]  # as a lab2 before the record wrote it
    _replace(checkpoint, "progress.json", json.dumps(progress).encode())
    result = _resume(data, copy, tmp_path / "out", *BASE[:-2], "--num_train_epochs", 2)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "has no record of its training settings" in output
    assert "re-laid over 2 epochs (4 steps, was 2 steps)" in output
    assert torch.load(_checkpoint(tmp_path / "out", 4) / "scheduler.bin", weights_only=True)["total_steps"] == 4
