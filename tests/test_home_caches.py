"""Issue 16, section 3: with HOME read-only, W&B printed 17 INFO lines (its core process logs to stderr when
~/.cache cannot be written) and matplotlib two more. lab2 points those caches at a temporary folder, in one line."""

import os
import subprocess

import pytest
from conftest import cli_env, run_cli, train_cmd

from lab2.tracking.startup import REDIRECTED, redirect_unwritable_caches


def test_caches_under_an_unwritable_home_are_redirected_and_writable_ones_kept(tmp_path):
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")  # nothing can be created below a file, whoever runs the test
    env = {"HOME": str(blocker), "MPLCONFIGDIR": str(tmp_path / "mine")}
    note = redirect_unwritable_caches(env)
    assert note and str(blocker) in note and note.count("\n") == 0
    assert env["MPLCONFIGDIR"] == str(tmp_path / "mine")  # the user's writable choice stays
    moved = {name: env[name] for name in REDIRECTED if name != "MPLCONFIGDIR"}
    folders = {os.path.dirname(value) for value in moved.values()}
    assert len(folders) == 1 and "lab2-cache-" in note and os.access(folders.pop(), os.W_OK)
    assert redirect_unwritable_caches({"HOME": str(tmp_path)}) is None  # a writable HOME: nothing changes


@pytest.mark.slow
def test_a_read_only_home_adds_one_note_and_no_wandb_log_lines(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    (tmp_path / "home-src").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    if subprocess.run(["mount", "--bind", str(tmp_path / "home-src"), str(home)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True)
        env = cli_env(HOME=str(home))
        for name in REDIRECTED:
            env.pop(name, None)
        flags = ["--dataset", "fake", "--data_dir", tmp_path / "data", "--fake_train_samples", 64]
        flags += ["--fake_test_samples", 32, "--per_device_train_batch_size", 64, "--num_train_epochs", 1]
        flags += ["--flow_log_steps", 0, "--num_prediction_samples", 0]
        flags += ["--output_dir", tmp_path / "run", "--report_to", "wandb"]
        result = run_cli(train_cmd(*flags), env=env)
    finally:
        subprocess.run(["umount", str(home)], check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert " INFO " not in output and "read-only file system" not in output.lower(), output  # was 17 INFO lines
    assert "Matplotlib created a temporary cache" not in output
    assert sum("cannot be written" in line for line in output.splitlines()) == 1


def test_an_unset_home_gets_the_accounts_home_and_no_wandb_log_lines(tmp_path):
    """Issue 23, item 7: with HOME unset, Go finds no cache folder and wandb-core logged 17 INFO lines to stderr."""
    import pwd

    env = {}
    redirect_unwritable_caches(env)
    assert env["HOME"] == pwd.getpwuid(os.getuid()).pw_dir
    env = cli_env()
    for name in ("HOME", *REDIRECTED):
        env.pop(name, None)
    flags = ["--dataset", "fake", "--data_dir", tmp_path / "data", "--fake_train_samples", 64]
    flags += ["--fake_test_samples", 32, "--per_device_train_batch_size", 64, "--num_train_epochs", 1]
    flags += ["--flow_log_steps", 0, "--num_prediction_samples", 0, "--output_dir", tmp_path / "run"]
    result = run_cli(train_cmd(*flags, "--report_to", "wandb"), env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and " INFO " not in output, output
