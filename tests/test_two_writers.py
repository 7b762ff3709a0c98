"""Issue 16, section 4: one writer per run folder. The main process holds an flock on <run>/.lab2-run.lock for the
run's life; a second lab2 process on the same folder is refused in one line before it writes anything."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import BIN, REPO, assert_clean_error, cli_env, run_cli, train_cmd
from launch import started

from lab2.errors import UserError
from lab2.state.run_folder import LOCK, RunFolderLock, refuse_if_locked

TINY = ["--dataset", "fake", "--fake_train_samples", 128, "--fake_test_samples", 32]
TINY += ["--per_device_train_batch_size", 32, "--report_to", "none", "--flow_log_steps", 0]
TINY += ["--num_prediction_samples", 0]


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _wait_until_locked(run, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            refuse_if_locked(run)
        except UserError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the first run never held {run / LOCK} (exit code {proc.poll()})")


def test_the_lock_refuses_a_second_holder_and_is_free_again_after_release(tmp_path):
    first = RunFolderLock(tmp_path)
    with pytest.raises(UserError, match="another lab2 process is writing to"):
        RunFolderLock(tmp_path)
    with pytest.raises(UserError, match="another lab2 process is writing to"):
        refuse_if_locked(tmp_path)
    first.release()
    refuse_if_locked(tmp_path)
    RunFolderLock(tmp_path).release()


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    code = "import sys, time; from lab2.state.run_folder import RunFolderLock; RunFolderLock(sys.argv[1]); "
    code += "print('locked', flush=True); time.sleep(600)"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError):
            refuse_if_locked(tmp_path)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    refuse_if_locked(tmp_path)  # the OS dropped the dead process's lock


@pytest.mark.slow
def test_a_second_writer_on_a_running_folder_is_refused_and_the_first_run_stays_whole(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    first = run_cli(train_cmd("--data_dir", data, "--output_dir", run, *TINY, "--num_train_epochs", 1))
    assert first.returncode == 0, first.stdout + first.stderr
    env = cli_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    resume = ["--data_dir", data, "--output_dir", run, *TINY, "--num_train_epochs", 2, "--resume_from_checkpoint"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with started(train_cmd(*resume, "latest"), cwd=REPO, env=env, **pipes) as writer:  # killed whole on a failure
        _wait_until_locked(run, writer)
        os.killpg(writer.pid, signal.SIGSTOP)  # hold the first writer mid-run, so the second surely meets it
        before = _files(run)
        for second in (
            train_cmd(*resume, "latest"),
            train_cmd("--data_dir", data, "--output_dir", run, *TINY, "--overwrite_output_dir"),
            train_cmd("--data_dir", data, "--output_dir", run, *TINY, "--num_train_epochs", 2),
        ):
            result = run_cli(second)
            assert_clean_error(result, "another lab2 process is writing to", str(run), "choose another --output_dir")
            assert result.returncode == 2 and _files(run) == before  # nothing removed, nothing written
        os.killpg(writer.pid, signal.SIGCONT)
        output, _ = writer.communicate(timeout=300)
        assert writer.returncode == 0, output
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    refuse_if_locked(run)  # released at the end of the run
