"""Devices, precision, threads and trackers, on small synthetic data through the real program."""

import json
import os
import socket

import pytest
from conftest import cli_env, run_cli, train_cmd

from lab2.engine.setup import cpu_has_fast_bf16

pytestmark = pytest.mark.slow
TINY = [
    "--dataset",
    "fake",
    "--fake_train_samples",
    64,
    "--fake_test_samples",
    32,
    "--num_train_epochs",
    1,
    "--per_device_train_batch_size",
    16,
    "--flow_log_steps",
    2,
]


def test_bf16_autocast_works_on_the_cpu(tmp_path):
    out = tmp_path / "bf16"
    # Two steps of 16: emulated bf16 is ~15x slower than fp32 on a CPU without AMX.
    flags = [*TINY, "--fake_train_samples", 32, "--data_dir", tmp_path / "data", "--output_dir", out]
    result = run_cli(train_cmd(*flags, "--report_to", "none"), env=cli_env(ACCELERATE_MIXED_PRECISION="bf16"))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["precision"] == "bf16"
    # On a CPU without AMX/AVX512-BF16 the user is told bf16 is emulated and slow.
    assert ("bf16 autocast on a CPU without AMX" in result.stdout) == (not cpu_has_fast_bf16())


@pytest.mark.parametrize("precision", ["fp16", "garbage"])
def test_a_precision_the_cpu_would_not_run_is_refused_before_anything_is_written(tmp_path, precision):
    """Accelerate on a CPU takes ACCELERATE_MIXED_PRECISION=fp16 (or a misspelt value) and trains fp32: lab2
    refuses it in one line instead of recording a precision that never ran."""
    out = tmp_path / "run"
    flags = [*TINY, "--data_dir", tmp_path / "data", "--output_dir", out, "--report_to", "none"]
    result = run_cli(train_cmd(*flags), env=cli_env(ACCELERATE_MIXED_PRECISION=precision))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    why = "cannot run on cpu" if precision == "fp16" else "is not a precision"
    assert len(errors) == 1 and f"mixed precision '{precision}'" in errors[0] and why in errors[0]
    assert not out.exists()


def test_a_single_threaded_launch_is_given_all_cores(tmp_path):
    """`accelerate launch` without --num_cpu_threads_per_process passes on OMP_NUM_THREADS, 1 when unset: lab2 takes
    all cores for its one process and says so."""
    flags = [*TINY, "--data_dir", tmp_path / "data", "--output_dir", tmp_path / "out", "--report_to", "none"]
    result = run_cli(train_cmd(*flags, launcher="accelerate"), env=cli_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    cores = len(os.sched_getaffinity(0))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["cpu_threads"] == cores
    told = "gave this one process 1 CPU thread" in result.stdout and "OMP_NUM_THREADS=1 python" in result.stdout
    assert told == (cores > 1)


def test_tensorboard_beside_an_unreachable_wandb_and_a_users_omp_num_threads(tmp_path):
    """One run, three things a user may meet at once: TensorBoard's events are written; W&B, whose server does not
    answer, goes offline and the run completes; and OMP_NUM_THREADS=1, which started by python (or torchrun) is
    the user's choice (two runs sharing the cores), is honoured."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "tb"
    env = cli_env(OMP_NUM_THREADS="1", WANDB_API_KEY="0" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}")
    env["WANDB_PROJECT"] = "from-the-environment"  # names the W&B project: --project_name is at its default
    flags = [*TINY, "--data_dir", tmp_path / "data", "--output_dir", out, "--report_to", "tensorboard,wandb"]
    result = run_cli(train_cmd(*flags), env=env)
    assert result.returncode == 0, result.stderr
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 10_000  # scalars and the figure images
    assert (
        f"W&B: could not start online at http://127.0.0.1:{port}" in result.stdout
        and "logging offline" in result.stdout
    )
    assert (out / "summary.json").exists() and (out / "report.html").exists()
    # The printed command keeps every snapshot's images (TensorBoard's default keeps 10 per tag).
    assert f"tensorboard --logdir {out / 'tensorboard'} --samples_per_plugin images=0" in result.stdout
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert json.loads((out / "config.json").read_text())["project_name"] == "from-the-environment"  # as W&B's
    assert json.loads((out / "summary.json").read_text())["cpu_threads"] == 1
    assert "1 CPU thread" not in result.stdout
