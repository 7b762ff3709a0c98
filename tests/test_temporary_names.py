"""Issue 23, items 1 and 2: lab2's temporary files and folders get names no user file can carry (a new unique
name, created exclusively), cleanup removes only what lab2 created or recorded creating, and every output gets the
mode the user's umask gives. Real files, real saves, a real SIGKILL, real runs of the commands."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from conftest import BIN, REPO, run_cli, train_cmd
from test_write_policy import _plant

from lab2.state.checkpoint import checkpoint_problem, list_checkpoints, save_checkpoint
from lab2.state.run_folder import MARKER, claim, owned_files, remove_owned_files

# The names lab2 itself used for its temporaries before (fixed or pattern-matched), planted as the user's own.
LOOKALIKES = [
    ".config.json.tmp",
    ".config.json.abcdefgh.tmp",
    ".model.safetensors.12345678.tmp",
    ".write-test-0",
    "figures/.calibration.png.tmp",
    "figures/.calibration.png.abcdefgh.tmp",
    "checkpoints/.tmp-checkpoint_00000004/notes.txt",
    "checkpoints/.old-checkpoint_00000004/notes.txt",
    "checkpoints/.tmp-checkpoint_00000002",
    "checkpoints/checkpoint_00000099",  # a plain file, not a checkpoint folder
    "checkpoints/.checkpoint_00000004.abcdefgh.tmp",
]


def _survived(planted):
    lost = [str(p) for p, content in planted.items() if not (p.is_file() and p.read_bytes() == content)]
    assert not lost, f"user files lost: {lost}"


def _hidden_folders(checkpoints):
    return sorted(p.name for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("."))


KILLED_SAVE = """
import os, signal, sys, torch
from accelerate import Accelerator
from lab2.state.checkpoint import save_checkpoint

class KillMidSave:  # Accelerate asks for its state after the model and optimizer files are written
    def state_dict(self):
        os.kill(os.getpid(), signal.SIGKILL)
    def load_state_dict(self, state):
        pass

accelerator = Accelerator(cpu=True)
model = accelerator.prepare(torch.nn.Linear(64, 64))
accelerator.register_for_checkpointing(KillMidSave())
progress = {"epoch": 0, "batch_in_epoch": 4, "global_step": 4, "loss_sum": 0.0, "correct": 0.0, "seen": 0.0,
            "model": "simple_cnn", "num_classes": 10, "world_size": 1}
save_checkpoint(accelerator, sys.argv[1], progress, total_limit=2)
"""

PROGRESS = {"epoch": 0, "batch_in_epoch": 0, "loss_sum": 0.0, "correct": 0.0, "seen": 0.0}
PROGRESS |= {"model": "simple_cnn", "num_classes": 10, "world_size": 1}


def _accelerator():
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(64, 64))
    return accelerator


def _killed_save(checkpoints):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(checkpoints)], env=env, capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()


def test_a_killed_saves_leftover_is_recorded_and_removed_by_the_next_save(tmp_path):
    run = tmp_path / "run"
    claim(run)
    planted = _plant(run, LOOKALIKES)
    for _ in range(3):  # three kills in a row leave one leftover, not three
        _killed_save(run / "checkpoints")
    leftovers = [n for n in _hidden_folders(run / "checkpoints") if n not in {p.parts[-2] for p in planted}]
    assert len(leftovers) == 1, leftovers
    assert json.loads((run / MARKER).read_text())["temporary_checkpoints"] == [f"checkpoints/{leftovers[0]}"]
    saved = save_checkpoint(_accelerator(), run / "checkpoints", {**PROGRESS, "global_step": 6}, total_limit=2)
    assert checkpoint_problem(saved) is None and list_checkpoints(run / "checkpoints") == [saved]
    assert not (run / "checkpoints" / leftovers[0]).exists()
    assert json.loads((run / MARKER).read_text())["temporary_checkpoints"] == []
    _survived(planted)
    # a leftover is also lab2's for --overwrite_output_dir, which removes exactly the recorded one
    _killed_save(run / "checkpoints")
    (leftover,) = [n for n in _hidden_folders(run / "checkpoints") if n not in {p.parts[-2] for p in planted}]
    assert run / "checkpoints" / leftover in owned_files(run)
    remove_owned_files(run)
    assert not (run / "checkpoints" / leftover).exists() and not saved.exists()
    _survived(planted)


KILLED_RESAVE = """
import os, signal, sys, torch
from pathlib import Path
from accelerate import Accelerator
from lab2.state.checkpoint import save_checkpoint

accelerator = Accelerator(cpu=True)
accelerator.prepare(torch.nn.Linear(64, 64))
progress = {"epoch": 0, "batch_in_epoch": 4, "global_step": 4, "loss_sum": 0.0, "correct": 0.0, "seen": 0.0,
            "model": "simple_cnn", "num_classes": 10, "world_size": 1}
final = save_checkpoint(accelerator, sys.argv[1], progress, total_limit=2)
(final / "notes.txt").write_text("mine")
rename = Path.rename
def killed_before_the_new_one_is_in_place(self, target):  # the old one is already moved aside
    if Path(target).name == final.name:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)
Path.rename = killed_before_the_new_one_is_in_place
save_checkpoint(accelerator, sys.argv[1], progress, total_limit=2)  # the same step again
"""


def test_a_same_step_save_killed_between_its_renames_loses_no_user_file(tmp_path):
    run = tmp_path / "run"
    claim(run)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_RESAVE, str(run / "checkpoints")], env=env, capture_output=True
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    save_checkpoint(_accelerator(), run / "checkpoints", {**PROGRESS, "global_step": 6}, total_limit=2)
    remove_owned_files(run)  # --overwrite_output_dir: lab2's files only
    assert [p.read_text() for p in (run / "checkpoints").rglob("notes.txt")] == ["mine"]


def test_checkpoint_folders_lose_only_the_files_their_manifest_lists(tmp_path):
    """Pruning, saving one step again and --overwrite_output_dir remove what lab2 wrote (its manifest's list)."""
    run = tmp_path / "run"
    claim(run)
    accelerator = _accelerator()
    first = save_checkpoint(accelerator, run / "checkpoints", {**PROGRESS, "global_step": 2}, total_limit=1)
    planted = _plant(first, ["optimizer_1.bin", "model_3.safetensors", "notes.txt", "sub/random_states_0.pkl"])
    second = save_checkpoint(accelerator, run / "checkpoints", {**PROGRESS, "global_step": 4}, total_limit=1)
    assert list_checkpoints(run / "checkpoints") == [second]  # the first is no checkpoint any more: pruned
    _survived(planted)
    planted |= _plant(second, ["optimizer_1.bin", "custom_checkpoint_0.pkl"])
    again = save_checkpoint(accelerator, run / "checkpoints", {**PROGRESS, "global_step": 4}, total_limit=1)
    assert again == second and checkpoint_problem(second) is None  # the same step again: replaced, user's kept
    _survived(planted)
    assert _hidden_folders(run / "checkpoints") == []
    remove_owned_files(run)
    _survived(planted)
    assert sorted(p.name for p in second.iterdir()) == ["custom_checkpoint_0.pkl", "optimizer_1.bin"]


TINY = ["--dataset", "fake", "--fake_train_samples", 128, "--fake_test_samples", 32, "--report_to", "none"]
TINY += ["--per_device_train_batch_size", 32, "--flow_log_steps", 2, "--checkpointing_steps", 2]


@pytest.mark.slow
def test_lookalikes_survive_overwrite_resume_and_lab2_eval(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    flags = ["--data_dir", data, "--output_dir", run, *TINY]
    result = run_cli(train_cmd(*flags, "--num_train_epochs", 1))
    assert result.returncode == 0, result.stdout + result.stderr
    planted = _plant(run, LOOKALIKES)
    planted |= _plant(run / "checkpoints" / "checkpoint_00000004", ["optimizer_1.bin", "notes.txt"])
    for _ in range(2):  # the second time into the eval/ it marked, where the user put files since
        result = run_cli([str(BIN / "lab2-eval"), "--model_path", str(run)])
        assert result.returncode == 0, result.stdout + result.stderr
        planted |= _plant(run / "eval", [".eval.json.tmp", ".eval.json.abcdefgh.tmp", ".write-test-0"])
    _survived(planted)
    result = run_cli(train_cmd(*flags, "--num_train_epochs", 2, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stdout + result.stderr
    _survived(planted)
    result = run_cli(train_cmd(*flags, "--num_train_epochs", 1, "--overwrite_output_dir"))
    assert result.returncode == 0, result.stdout + result.stderr
    _survived(planted)
    assert (run / "summary.json").is_file()


# ---- item 2: the user's umask ----


def _under_umask(mask, args, **kwargs):
    return run_cli(["sh", "-c", f'umask {mask:03o} && exec "$@"', "sh", *map(str, args)], **kwargs)


@pytest.mark.slow
def test_every_output_gets_the_mode_the_umask_gives(tmp_path):
    """Files 0666 and folders 0777 less the umask, as any program's; safetensors and mkstemp alone give 0600.
    Umask 027 tells every wrong answer apart: files 0640, not mkstemp's 0600 nor a fixed 0644; folders 0750, not
    mkdtemp's 0700 nor a fixed 0755."""
    from PIL import Image

    mask, mode = 0o027, 0o640

    data, run = tmp_path / "data", tmp_path / "run"
    result = _under_umask(mask, train_cmd("--data_dir", data, "--output_dir", run, *TINY, "--num_train_epochs", 1))
    assert result.returncode == 0, result.stdout + result.stderr
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), "orange").save(image)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    lab = tmp_path / "model_final.pth"
    _torch_save_lab_weights(lab)
    other = tmp_path / "other"
    shutil.copytree(run, other)  # a second run to compare with
    commands = [
        [BIN / "lab2-eval", "--model_path", run],
        [BIN / "lab2-predict", "--model_path", run, image, "--explain", outputs / "explain"],
        [BIN / "lab2-export", lab, "--output", outputs / "exported.safetensors"],
        [BIN / "lab2-report", run],
        [BIN / "lab2-report", run, other, "--output", outputs / "compare.html"],
    ]
    for command in commands:
        result = _under_umask(mask, command)
        assert result.returncode == 0, result.stdout + result.stderr
    written = [p for folder in (run, outputs) for p in folder.rglob("*") if p.is_file()]
    assert len(written) > 20 and (run / "model.safetensors") in written
    assert (outputs / "explain" / "cat.png.gradcam.png") in written
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written if stat.S_IMODE(p.stat().st_mode) != mode}
    assert not wrong, f"files not {oct(mode)} under umask {mask:03o}: {wrong}"
    folders = [p for folder in (run, outputs) for p in folder.rglob("*") if p.is_dir()]
    wrong = {
        str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders if stat.S_IMODE(p.stat().st_mode) != 0o777 & ~mask
    }
    assert not wrong, f"folders not {oct(0o777 & ~mask)} under umask {mask:03o}: {wrong}"


def _torch_save_lab_weights(path):
    import torch

    from lab2.models import create_model

    torch.save(create_model("simple_cnn", 10).state_dict(), path)
