"""CUDA-only checks: skipped on machines without a GPU (CI has none); run them where one is lent."""

import json

import pytest
import torch
from conftest import cli_env, run_cli, train_cmd

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _first_flow(run_dir):
    record = json.loads((run_dir / "flow.jsonl").read_text().splitlines()[0])
    return {layer: stats["grad_mean"] for layer, stats in record["layers"].items()}


def test_fp16_flow_shows_unscaled_gradients(tmp_path):
    common = [
        "--dataset",
        "fake",
        "--data_dir",
        tmp_path / "data",
        "--num_train_epochs",
        1,
        "--report_to",
        "none",
        "--flow_log_steps",
        1,
    ]
    runs = {}
    for precision in ("no", "fp16"):
        out = tmp_path / precision
        result = run_cli(train_cmd(*common, "--output_dir", out), env=cli_env(ACCELERATE_MIXED_PRECISION=precision))
        assert result.returncode == 0, result.stderr
        runs[precision] = _first_flow(out)
    for layer, value in runs["no"].items():
        # fp16's loss scale starts at 65536: scaled gradients would be ~1e4x larger.
        assert 0.5 < runs["fp16"][layer] / value < 2.0, layer


def test_bf16_device_pipeline_run(tmp_path):
    out = tmp_path / "bf16"
    result = run_cli(
        train_cmd(
            "--dataset",
            "fake",
            "--data_dir",
            tmp_path / "data",
            "--num_train_epochs",
            2,
            "--report_to",
            "none",
            "--output_dir",
            out,
        ),
        env=cli_env(ACCELERATE_MIXED_PRECISION="bf16"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["device"].startswith("cuda") and summary["final_eval_acc"] > 0.5
