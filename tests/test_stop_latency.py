"""A stop is prompt in every process count: SIGTERM mid-epoch stops within two optimizer steps, in steps.

Before lab2.engine.distributed.StopRequest, several processes checked for a stop only every --logging_steps steps (a
blocking collective), so SIGTERM at step 10 of a --logging_steps 50 run trained on to step 50.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import BIN, REPO, cli_env
from launch import descendants, free_port, started

from lab2.state.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

LOGGING_STEPS = 50
PIPES = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
STEPS_PER_EPOCH = 200  # 3200 images, 8 per process and step, on 2 processes; 400 on one


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_stops_within_two_steps_with_any_number_of_processes(processes, mini_dir, tmp_path):
    out = tmp_path / "run"
    flags = ["--data_dir", mini_dir, "--max_train_samples", 3200, "--max_eval_samples", 128]
    flags += ["--per_device_train_batch_size", 8, "--logging_steps", LOGGING_STEPS, "--num_train_epochs", 1]
    # A checkpoint every 5 steps shows from outside that training is under way (and slows the steps).
    flags += ["--checkpointing_steps", 5, "--checkpoints_total_limit", 2, "--report_to", "none"]
    flags += ["--flow_log_steps", 0, "--num_prediction_samples", 0, "--output_dir", out]
    if processes == 1:
        head = [sys.executable]
        env = cli_env()
    else:  # torchrun, as a user stops it: SIGTERM to the launcher, which passes it on to every worker
        head = [BIN / "torchrun", "--nproc_per_node", processes, "--master_port", free_port()]
        env = cli_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    with started([*head, "train_accelerate.py", *flags], cwd=REPO, env=env, **PIPES) as proc:
        assert _wait_for(lambda: list_checkpoints(out / "checkpoints") or proc.poll() is not None, timeout=300)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    report = re.search(r"stopped by SIGTERM at step (\d+) \(epoch 1, received after step (\d+)\)", output)
    assert report, output
    stopped_at, received_after = int(report[1]), int(report[2])
    checkpoint = list_checkpoints(out / "checkpoints")[-1]
    saved = json.loads((checkpoint / "progress.json").read_text())
    assert saved["global_step"] == stopped_at and 0 < saved["batch_in_epoch"] < STEPS_PER_EPOCH, output
    # The signal came during step received_after + 1 (or in its checkpoint): that step and at most one more ran.
    assert 0 <= stopped_at - received_after <= 2, output
    assert stopped_at < LOGGING_STEPS, output  # measured from outside too: long before the old check
    assert output.count("stopped by SIGTERM") == 1, output  # rank 0 alone reports


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The worker of `rank` among the launcher's descendants (torchrun passes RANK in the environment)."""
    for pid in descendants(launcher_pid):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and pid != launcher_pid:
            return pid
    return None


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(mini_dir, tmp_path):
    """A scheduler or a user may signal one worker only: the others learn it through the exchange and stop with
    it, at the same step (a rank that left alone would leave the others waiting in the next all-reduce)."""
    out = tmp_path / "run"
    flags = ["--data_dir", mini_dir, "--max_train_samples", 3200, "--max_eval_samples", 128]
    flags += ["--per_device_train_batch_size", 8, "--logging_steps", LOGGING_STEPS, "--num_train_epochs", 1]
    flags += ["--checkpointing_steps", 5, "--checkpoints_total_limit", 2, "--report_to", "none"]
    flags += ["--flow_log_steps", 0, "--num_prediction_samples", 0, "--output_dir", out]
    head = [BIN / "torchrun", "--nproc_per_node", 2, "--master_port", free_port()]
    env = cli_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    with started([*head, "train_accelerate.py", *flags], cwd=REPO, env=env, **PIPES) as proc:
        assert _wait_for(lambda: list_checkpoints(out / "checkpoints") or proc.poll() is not None, timeout=300)
        rank1 = _rank_pid(proc.pid, 1)
        assert rank1 and proc.poll() is None, "rank 1 not found"
        os.kill(rank1, signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    # Rank 0, which reports, had no signal itself.
    report = re.search(r"stopped by a signal to another process at step (\d+) \(epoch 1\)", output)
    assert report, output
    saved = json.loads((list_checkpoints(out / "checkpoints")[-1] / "progress.json").read_text())
    assert saved["global_step"] == int(report[1]) < LOGGING_STEPS, output
    # Rank 1 exits 3 (stopped) and torchrun then ends rank 0, which has already saved and reported; no lost peer.
    assert "exitcode  : 3" in output and "lost contact" not in output, output
