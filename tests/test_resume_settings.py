"""Issue 16, section 1: a resumed run trains with the settings it reports.

Every flag that defines the training is either applied exactly on resume (the test reads the new value back
from the next checkpoint's optimizer and scheduler) or refused before training in one line naming each
flag's old and new value; a schedule whose length changed is refused too (issue 21: refused instead of re-laid).
Damaged random states and pickled objects in optimizer.bin are one line, exit 2."""

import io
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_clean_error, built_once, run_cli, train_cmd

from lab2.engine.loop import Progress
from lab2.engine.optim import create_optimizer
from lab2.engine.resume import apply_optimizer_settings, checkpoint_record, refuse_changed_settings
from lab2.errors import UserError
from lab2.state.checkpoint import write_manifest

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
    """A finished 1-epoch Adam / one_cycle run: checkpoints at step 1 (mid-epoch) and 2 (the schedule's end)."""

    def build(root):
        flags = [*TINY, *BASE, "--checkpointing_steps", 1, "--output_dir", root / "run"]
        result = run_cli(train_cmd("--data_dir", root / "data", *flags))
        assert result.returncode == 0, result.stdout + result.stderr

    root = built_once(tmp_path_factory, "resume_settings_one_cycle", build)
    return root / "data", root / "run"


def _checkpoint(run, step):
    return run / "checkpoints" / f"checkpoint_{step:08d}"


def _resume(data, run, out, *flags, step=2):
    return run_cli(
        train_cmd(
            "--data_dir", data, *TINY, "--output_dir", out, "--resume_from_checkpoint", _checkpoint(run, step), *flags
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


def _recorded(**changes):
    values = dict(optim="adam", lr_scheduler_type="constant", warmup_ratio=0.0, learning_rate=1e-3, weight_decay=0.0)
    values.update(momentum=0.9, label_smoothing_factor=0.0, num_train_epochs=1)
    return SimpleNamespace(**{**values, **changes})


def test_constant_to_one_cycle_is_refused_naming_the_flag():
    """The reverse direction (was KeyError: 'max_lr'), on the recorded settings themselves."""
    cfg = _recorded()
    saved = checkpoint_record(cfg, Progress(), {}, schedule_steps=2)["training"]
    cfg.lr_scheduler_type = "one_cycle"
    with pytest.raises(UserError, match="--lr_scheduler_type constant -> one_cycle"):
        refuse_changed_settings(saved, cfg, 2, "ckpt", report=print)
    notes = []
    refuse_changed_settings(None, cfg, 2, "ckpt", report=notes.append)  # an older checkpoint: said, not hidden
    assert len(notes) == 1 and "no record of its training settings" in notes[0]


@pytest.mark.parametrize("kind, warmup", [("linear", 0.0), ("cosine", 0.0), ("one_cycle", 0.0), ("constant", 0.1)])
def test_a_schedule_whose_length_changed_is_refused_with_what_to_pass(kind, warmup):
    saved = checkpoint_record(_recorded(lr_scheduler_type=kind, warmup_ratio=warmup), Progress(), {}, 4)
    longer = _recorded(lr_scheduler_type=kind, warmup_ratio=warmup, num_train_epochs=2)
    with pytest.raises(UserError, match=r"length 4 -> 8 steps \(--num_train_epochs 1 -> 2") as refused:
        refuse_changed_settings(saved["training"], longer, 8, "ckpt", report=print)
    assert "resume with the checkpoint's values" in str(refused.value)
    refuse_changed_settings(saved["training"], longer, 4, "ckpt", report=print)  # the same length: accepted


def test_a_constant_rate_trains_longer_on_resume():
    """A constant rate without warm-up is the same at every step, so more epochs are simply applied."""
    saved = checkpoint_record(_recorded(), Progress(), {}, schedule_steps=4)["training"]
    refuse_changed_settings(saved, _recorded(num_train_epochs=3), 12, "ckpt", report=print)


def test_weight_decay_is_applied_exactly_and_a_longer_one_cycle_refused(one_cycle_run, tmp_path):
    data, run = one_cycle_run
    out = tmp_path / "out"
    result = _resume(data, run, out, *BASE, "--weight_decay", 0.05, step=1)  # mid-epoch: one step left to train
    assert result.returncode == 0, result.stdout + result.stderr
    after = _checkpoint(out, 2)
    optimizer = torch.load(after / "optimizer.bin", weights_only=True)
    scheduler = torch.load(after / "scheduler.bin", weights_only=True)
    assert [group["weight_decay"] for group in optimizer["param_groups"]] == [0.05]  # was 0.0: the flag was ignored
    assert scheduler["total_steps"] == 2 and scheduler["last_epoch"] == 2  # the checkpoint's schedule, to its end
    assert json.loads((after / "progress.json").read_text())["training"]["weight_decay"] == 0.05
    refused = _resume(data, run, tmp_path / "longer", *BASE[:-2], "--num_train_epochs", 2)
    assert_clean_error(
        refused, "other settings", "one_cycle schedule's length 2 -> 4 steps", "--num_train_epochs 1 -> 2"
    )
    assert refused.returncode == 2 and not (tmp_path / "longer" / "checkpoints").exists()


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
    params = [torch.zeros(2, requires_grad=True)]
    for momentum, scheduler in ((0.5, "constant"), (0.0, "cosine")):
        resumed = create_optimizer(params, "sgd", weight_decay=0.0, momentum=0.9)
        cfg = SimpleNamespace(weight_decay=0.01, momentum=momentum, lr_scheduler_type=scheduler)
        apply_optimizer_settings(resumed, cfg)
        fresh = create_optimizer(params, "sgd", weight_decay=0.01, momentum=momentum)
        keys = ("weight_decay", "momentum", "nesterov")
        assert [resumed.param_groups[0][k] for k in keys] == [fresh.param_groups[0][k] for k in keys]


def test_a_checkpoint_without_the_record_is_said_and_resumes(one_cycle_run, tmp_path):
    data, run = one_cycle_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoint = _checkpoint(copy, 1)
    progress = json.loads((checkpoint / "progress.json").read_text())
    del progress["training"]  # as a lab2 before the record wrote it
    _replace(checkpoint, "progress.json", json.dumps(progress).encode())
    result = _resume(data, copy, tmp_path / "out", *BASE, step=1)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "has no record of its training settings" in output
    assert torch.load(_checkpoint(tmp_path / "out", 2) / "scheduler.bin", weights_only=True)["last_epoch"] == 2
