"""The real program, end to end, through `accelerate launch`, plain python and a 2-process torchrun (gloo)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, cli_env, run_cli, train_cmd
from launch import free_port, started
from saved_weights import evaluate_saved_weights
from tracker_files import wandb_steps
from wandb_reader import history_keys, read_records, run_file

from lab2.state.checkpoint import list_checkpoints
from lab2.state.files import read_jsonl
from lab2.state.model_file import read_exported_model

pytestmark = pytest.mark.slow

FIGURES = {
    "confusion_matrix",
    "class_accuracy",
    "calibration",
    "predictions",
    "gradcam",
    "curves",
    "gradients",
    "weights",
    "update_ratio",
    "heatmap_grad_mean",
    "heatmap_weight_mean",
    "heatmap_update_ratio",
}


def test_accelerate_launch_one_epoch_on_the_mini_slice(mini_dir, tmp_path):
    """Half of the slice's 5,085 training images (20 steps of 128), every test image, all the defaults."""
    out = tmp_path / "run"
    flags = ["--data_dir", mini_dir, "--max_train_samples", 2560, "--num_train_epochs", 1, "--output_dir", out]
    result = run_cli(train_cmd(*flags, launcher="accelerate"))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "metrics.jsonl",
        "summary.json",
        "config.json",
        "model.safetensors",
        "flops.json",
        "flow.jsonl",
        "training_log.txt",
        "report.html",
    ):
        assert (out / name).is_file(), name
    assert {p.stem for p in (out / "figures").glob("*.png")} == FIGURES
    # 20 steps and the default --flow_log_steps auto: about 50 snapshots, but at least 10 steps apart.
    assert [json.loads(line)["step"] for line in (out / "flow.jsonl").read_text().splitlines()] == [10, 20]
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and set(metrics[0]) >= {
        "epoch",
        "train_loss",
        "train_acc",
        "eval_loss",
        "eval_acc",
        "lr",
        "epoch_time_s",
        "train_images_per_s",
        "wall_time_s",
        "device",
    }
    assert summary["num_eval_samples"] == 1017 and summary["params"] == 4_441_482
    assert summary["final_eval_acc"] >= 0.18, summary  # chance is 10%; `make smoke` (16 steps) reaches ~23%
    # The saved weights reproduce the reported accuracy exactly.
    assert evaluate_saved_weights(out, mini_dir).accuracy == summary["final_eval_acc"]
    assert "Epoch | Train Loss" in result.stdout and "161,163,264" in result.stdout
    assert "logging offline" in result.stdout  # no credentials: W&B went offline by itself and said so
    keys = history_keys(run_file(out))
    assert {
        "train/loss",
        "train/accuracy",
        "eval/loss",
        "eval/accuracy",
        "model/gflops_per_sample",
        "model/params",
        "perf/train_images_per_s",
        "perf/train_tflops",
    } <= keys
    assert {
        f"{name}/filenames"
        for name in ("gradients", "weights", "update_ratio", "confusion_matrix", "class_accuracy", "predictions")
    } <= keys
    assert any(k.startswith("flow/grad_mean/") for k in keys)


def test_two_process_torchrun_is_exact_and_writes_once(mini_dir, tmp_path):
    out = tmp_path / "ddp"
    common = [
        "--data_dir",
        mini_dir,
        "--max_train_samples",
        512,
        "--per_device_train_batch_size",
        64,
        "--max_eval_samples",
        203,
        "--output_dir",
        out,
        "--flow_log_steps",
        2,
    ]
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port(), "train_accelerate.py"]
    env = cli_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    result = run_cli([*torchrun, *map(str, common), "--num_train_epochs", "1"], env=env, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_eval_samples"] == 203
    assert evaluate_saved_weights(out, mini_dir, max_eval=203).accuracy == summary["final_eval_acc"]
    assert result.stdout.count("done: final eval accuracy") == 1  # rank 0 alone reports
    assert result.stdout.count("161,163,264") == 1  # the FLOPs counter ran on rank 0 only
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1  # rank 0 alone tracks
    assert len(summary["class_accuracy"]) == 10
    assert sum(map(sum, summary["confusion_matrix"])) == 203  # gathered exactly: no padding, no duplicates
    assert {p.stem for p in (out / "figures").glob("*.png")} == FIGURES
    flow = (out / "flow.jsonl").read_text().splitlines()
    assert len(flow) == 2  # 4 steps per process at batch 64 over 256 images; every 2 steps; rank 0 only
    # Resume the 2-process checkpoint on 2 processes for a second epoch.
    again = run_cli(
        [*torchrun, *map(str, common), "--num_train_epochs", "2", "--resume_from_checkpoint", "latest"],
        env=env,
        timeout=400,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["global_step"] == 8
    # The resumed W&B run keeps the run id, and its steps continue from where the first stopped.
    first, second = sorted((out / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    assert first.name.split("-")[-1] == second.name.split("-")[-1]

    def steps(run):
        return [
            r.history.step.num
            for r in read_records(next(run.glob("run-*.wandb")))
            if r.WhichOneof("record_type") == "history"
        ]

    assert min(steps(second)) >= max(steps(first)) == 4
    # Histograms come from rank 0 alone: in the one W&B run, each snapshot's histograms once.
    assert wandb_steps(next(first.glob("run-*.wandb")), "gradients/conv1.weight") == [2, 4]
    assert wandb_steps(next(second.glob("run-*.wandb")), "parameters/fc2.weight") == [6, 8]


def _weights(run_dir):
    return read_exported_model(run_dir)[0]


def _deterministic(metrics_path):
    keys = ("epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "global_step")
    return [{k: m[k] for k in keys} for m in map(json.loads, Path(metrics_path).read_text().splitlines())]


@pytest.mark.parametrize("pipeline", ["device", "torchvision"])
def test_resume_is_bit_exact(mini_dir, tmp_path, pipeline):
    common = [
        "--data_dir",
        mini_dir,
        "--max_train_samples",
        384,
        "--max_eval_samples",
        128,
        "--report_to",
        "none",
        "--num_prediction_samples",
        0,
        "--data_pipeline",
        pipeline,
        "--num_workers",
        0,
        "--flow_log_steps",
        2,
    ]
    straight = run_cli(train_cmd(*common, "--num_train_epochs", 2, "--output_dir", tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    # The straight run's epoch-1 checkpoint (3 steps of 128), resumed in a folder of its own for the second epoch.
    epoch_one = tmp_path / "straight" / "checkpoints" / "checkpoint_00000003"
    assert json.loads((epoch_one / "progress.json").read_text())["epoch"] == 1
    second = run_cli(
        train_cmd(
            *common,
            "--num_train_epochs",
            2,
            "--output_dir",
            tmp_path / "resumed",
            "--resume_from_checkpoint",
            epoch_one,
        )
    )
    assert second.returncode == 0, second.stderr
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight_metrics = _deterministic(tmp_path / "straight" / "metrics.jsonl")
    assert [m["epoch"] for m in straight_metrics] == [1, 2]
    assert _deterministic(tmp_path / "resumed" / "metrics.jsonl") == straight_metrics[1:]


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _start(args, **kwargs):
    env = cli_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_exact_mid_epoch(mini_dir, tmp_path):
    common = [
        "--data_dir",
        mini_dir,
        "--max_train_samples",
        640,
        "--per_device_train_batch_size",
        64,
        "--max_eval_samples",
        256,
        "--report_to",
        "none",
        "--num_prediction_samples",
        0,
        "--flow_log_steps",
        0,
        "--checkpointing_steps",
        2,
    ]
    straight = run_cli(train_cmd(*common, "--num_train_epochs", 1, "--output_dir", tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "stopped"
    proc = _start(train_cmd(*common, "--num_train_epochs", 1, "--output_dir", out))
    # The step-2 checkpoint shows training is under way, 2 of 10 steps in: ask it to stop now.
    assert _wait_for(lambda: list_checkpoints(out / "checkpoints") or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stdout + stderr
    assert "stopped by SIGTERM" in stdout and "--resume_from_checkpoint latest" in stdout
    progress = json.loads((list_checkpoints(out / "checkpoints")[-1] / "progress.json").read_text())
    assert 0 < progress["batch_in_epoch"] < 10, progress  # stopped mid-epoch
    name = json.loads((out / "config.json").read_text())["run_name"]
    time.sleep(1.1)  # a name taken from the clock would differ by now
    resumed_at = time.monotonic()
    resumed = run_cli(
        train_cmd(*common, "--num_train_epochs", 1, "--output_dir", out, "--resume_from_checkpoint", "latest")
    )
    assert resumed.returncode == 0, resumed.stderr
    # The run's wall time carries the stopped process's, up to its checkpoint, and adds the resumed one's.
    wall, epoch_time = (
        json.loads((out / "summary.json").read_text())["wall_time_s"],
        read_jsonl(out / "metrics.jsonl")[-1]["epoch_time_s"],
    )
    assert progress["wall_time_s"] + epoch_time < wall < progress["wall_time_s"] + time.monotonic() - resumed_at
    a, b = _weights(tmp_path / "straight"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _deterministic(tmp_path / "straight" / "metrics.jsonl") == _deterministic(out / "metrics.jsonl")
    assert json.loads((out / "config.json").read_text())["run_name"] == name  # a resumed run keeps its name
    assert f"lab2 run: {name}" in (out / "report.html").read_text()


def test_a_second_ctrl_c_stops_at_once_in_one_line_naming_the_last_complete_checkpoint(mini_dir, tmp_path):
    out = tmp_path / "twice"
    flags = ["--data_dir", mini_dir, "--max_train_samples", 640, "--per_device_train_batch_size", 64]
    flags += ["--max_eval_samples", 128, "--report_to", "none", "--flow_log_steps", 0, "--checkpointing_steps", 1]
    proc = _start(train_cmd(*flags, "--num_train_epochs", 1, "--output_dir", out))
    assert _wait_for(lambda: list_checkpoints(out / "checkpoints") or proc.poll() is not None)
    # Ctrl-C pressed again and again: two signals that come while a C call runs reach Python as one, so one
    # "second" press may count as the first; the stop (a step and a save) outlasts a few presses 0.2 s apart.
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if "second Ctrl-C" in line]
    latest = list_checkpoints(out / "checkpoints")[-1]
    assert f"the last complete checkpoint is {latest}" in line and "--resume_from_checkpoint latest" in line
    resumed = run_cli(
        train_cmd(*flags, "--num_train_epochs", 1, "--output_dir", out, "--resume_from_checkpoint", "latest")
    )
    assert resumed.returncode == 0, resumed.stderr


def test_a_ctrl_c_during_start_up_is_one_line(tmp_path):
    """Before the stop's handlers are in place a Ctrl-C is Python's KeyboardInterrupt, here while torch is being
    imported (its library mapped): one line, exit 130, and no second import of a torch cut short."""
    proc = _start(train_cmd("--dataset", "fake", "--output_dir", tmp_path / "run", "--report_to", "none"))
    maps = Path(f"/proc/{proc.pid}/maps")
    assert _wait_for(lambda: proc.poll() is not None or "libtorch" in maps.read_text(), timeout=60)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "lab2: stopped by Ctrl-C during start-up; nothing was trained."


def test_sigkill_during_a_save_leaves_the_last_checkpoint_loadable(mini_dir, tmp_path):
    out = tmp_path / "killed"
    args = [
        "--data_dir",
        mini_dir,
        "--max_train_samples",
        640,
        "--per_device_train_batch_size",
        64,
        "--max_eval_samples",
        128,
        "--report_to",
        "none",
        "--num_prediction_samples",
        0,
        "--flow_log_steps",
        0,
        "--checkpointing_steps",
        1,
        "--checkpoints_total_limit",
        2,
        "--output_dir",
        out,
    ]
    proc = _start(train_cmd(*args, "--num_train_epochs", 1))

    def saving():
        return (
            any((out / "checkpoints").glob(".checkpoint_*.tmp"))  # a save's temporary folder (new_temporary)
            and len(list_checkpoints(out / "checkpoints")) >= 1
        )

    assert _wait_for(saving), proc.communicate()[1] if proc.poll() is not None else "no save seen"
    proc.kill()  # SIGKILL while a checkpoint is being written
    proc.wait()
    complete = list_checkpoints(out / "checkpoints")
    assert complete, "the previous checkpoint must survive"
    for checkpoint in complete:
        assert (checkpoint / "model.safetensors").is_file() and json.loads((checkpoint / "progress.json").read_text())[
            "global_step"
        ] > 0
    resumed = run_cli(train_cmd(*args, "--num_train_epochs", 1, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "summary.json").exists()
    assert not any((out / "checkpoints").glob(".checkpoint_*.tmp"))  # the killed save's folder: removed by the next


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(mini_dir, tmp_path):
    out = tmp_path / "nan"
    args = [
        "--data_dir",
        mini_dir,
        "--max_train_samples",
        640,
        "--max_eval_samples",
        128,
        "--report_to",
        "none",
        "--num_prediction_samples",
        0,
        "--flow_log_steps",
        0,
        "--output_dir",
        out,
    ]
    first = run_cli(train_cmd(*args, "--num_train_epochs", 1))
    assert first.returncode == 0, first.stderr
    good = list_checkpoints(out / "checkpoints")[-1]
    finished = (out / "summary.json").read_bytes(), (out / "model.safetensors").read_bytes()
    result = run_cli(
        train_cmd(
            *args,
            "--num_train_epochs",
            3,
            "--resume_from_checkpoint",
            "latest",
            "--learning_rate",
            "1e30",
            "--logging_steps",
            2,
        )
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "NaN/inf at step" in result.stdout and str(good) in result.stdout
    assert list_checkpoints(out / "checkpoints")[-1] == good  # nothing saved after it went bad
    # The 1-epoch run's results stay as they were: the NaN weights were never exported.
    assert ((out / "summary.json").read_bytes(), (out / "model.safetensors").read_bytes()) == finished


def _worker_pid(rank: int, marker: str) -> int | None:
    """The pid of the torchrun worker with RANK=rank whose command line mentions marker."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if "train_accelerate.py" in cmdline and marker in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def test_when_one_rank_dies_the_other_does_not_hang(mini_dir, tmp_path):
    out = tmp_path / "dies"
    args = [
        "--data_dir",
        mini_dir,
        "--num_train_epochs",
        5,
        "--output_dir",
        out,
        "--report_to",
        "none",
        "--dist_timeout_s",
        30,
        "--logging_steps",
        2,
    ]
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port(), "train_accelerate.py"]
    env = cli_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with started([*torchrun, *args], cwd=REPO, env=env, **pipes) as proc:  # killed whole if the test fails
        assert _wait_for(lambda: (out / "config.json").exists() or proc.poll() is not None)
        time.sleep(2)  # into the training loop
        victim = _worker_pid(1, str(out))
        assert victim, "rank 1 not found"
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        proc.communicate(timeout=150)
    assert proc.returncode != 0
    assert time.time() - killed_at < 150  # torchrun tears the group down; nobody waits forever
