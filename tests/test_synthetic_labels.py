"""A run on --dataset fake never reports an accuracy without saying the data is synthetic (console, summary.json,
report.html, the W&B run summary), so a made-up 90% is never mistaken for a CIFAR-10 result."""

import json
import re

import pytest
from conftest import run_cli, train_cmd
from tracker_files import _records

pytestmark = pytest.mark.slow


def _wandb_summary(run_dir) -> dict:
    values = {}
    for record in _records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def test_every_accuracy_on_synthetic_data_says_so(tmp_path):
    out = tmp_path / "fake"
    flags = ["--dataset", "fake", "--fake_train_samples", 256, "--fake_test_samples", 128, "--num_train_epochs", 2]
    flags += ["--report_to", "wandb", "--flow_log_steps", 0, "--num_prediction_samples", 0]
    flags += ["--eval_strategy", "steps", "--eval_steps", 1]
    result = run_cli(train_cmd(*flags, "--output_dir", out))
    assert result.returncode == 0, result.stderr
    accuracy_lines = [line for line in result.stdout.splitlines() if re.search(r"\bacc(uracy)? [0-9.]+%", line)]
    kinds = {line.split()[0] for line in accuracy_lines}
    assert {"epoch", "step", "done:"} <= kinds, result.stdout  # epoch lines, step evaluations, the final line
    assert all("synthetic" in line for line in accuracy_lines), accuracy_lines
    assert "Training log on synthetic images" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert "synthetic" in summary["data"]
    report = (out / "report.html").read_text()
    assert "final eval accuracy (synthetic data)" in report and "<b>Synthetic data</b>" in report
    assert "synthetic" in _wandb_summary(out)["data"]


def test_a_real_run_is_not_called_synthetic(mini_dir, tmp_path):
    out = tmp_path / "real"
    flags = ["--data_dir", mini_dir, "--max_train_samples", 256, "--max_eval_samples", 128, "--num_train_epochs", 1]
    flags += ["--report_to", "none", "--flow_log_steps", 0, "--num_prediction_samples", 0]
    result = run_cli(train_cmd(*flags, "--output_dir", out))
    assert result.returncode == 0, result.stderr
    assert "synthetic" not in result.stdout.lower() and "synthetic" not in (out / "report.html").read_text().lower()
    assert json.loads((out / "summary.json").read_text())["data"] == f"CIFAR-10 from {mini_dir}"
