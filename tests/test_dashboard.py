"""Issue 10 end to end: one real training run logging to W&B (offline), TensorBoard and MLflow at once.

10 optimizer steps on the mini slice, a flow snapshot every 3 steps (3, 6, 9 and
the last, 10): every tracker's files are read back.
"""

import json

import pytest
from conftest import run_cli, train_cmd
from tracker_files import (
    mlflow_artifact_paths,
    mlflow_run,
    tensorboard_events,
    wandb_artifacts,
    wandb_steps,
    wandb_summary_keys,
    wandb_value_type,
)

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {"final_eval_acc", "best_eval_acc", "gflops_per_sample", "params", "train_time_s", "train_images_per_s"}
SNAPSHOTS = [3, 6, 9, 10]
LAB_BARS = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "fc1", "fc2"]
# Histograms of every parameter by default, as wandb.watch(log="all"): weights, biases and BatchNorm.
HISTOGRAM_KEYS = ("gradients/conv1.weight", "parameters/fc2.weight", "gradients/bn1.weight", "parameters/conv3.bias")


@pytest.fixture(scope="module")
def run_dir(mini_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboard") / "run"
    result = run_cli(
        train_cmd(
            "--data_dir",
            mini_dir,
            "--max_train_samples",
            320,
            "--per_device_train_batch_size",
            32,
            "--max_eval_samples",
            128,
            "--num_train_epochs",
            1,
            "--flow_log_steps",
            3,
            "--report_to",
            "all",
            "--output_dir",
            out,
            "--run_name",
            "dash-e2e",
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("mlflow has no histograms") == 1  # the one-time note
    flow = [json.loads(line) for line in (out / "flow.jsonl").read_text().splitlines()]
    assert [record["step"] for record in flow] == SNAPSHOTS
    assert all(list(record["layers"]) == LAB_BARS for record in flow)  # the lab's 10 bars, in model order
    return out


def test_wandb_run_holds_histograms_images_artifact_and_summary(run_dir):
    for key in HISTOGRAM_KEYS:
        assert wandb_steps(run_dir, key) == SNAPSHOTS, key  # logged at the snapshot steps, synchronously
    assert wandb_value_type(run_dir, "gradients/conv1.weight") == "histogram"
    image_steps = wandb_steps(run_dir, "gradients")
    assert len(image_steps) >= 2 and image_steps == sorted(set(image_steps)) and image_steps[-1] == 10
    assert wandb_steps(run_dir, "weights") == image_steps and wandb_steps(run_dir, "update_ratio") == image_steps
    (model,) = [a for a in wandb_artifacts(run_dir) if a.type == "model"]
    assert model.name == "dash-e2e" and {m.path for m in model.manifest.contents} == {
        "model.safetensors",
        "config.json",
    }
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads(model.metadata) == {
        "model": "simple_cnn",
        **{k: summary[k] for k in ("final_eval_acc", "best_eval_acc", "gflops_per_sample", "params")},
    }
    assert SUMMARY_KEYS <= wandb_summary_keys(run_dir)
    assert any(a.type == "run_table" and a.name.endswith("training_log") for a in wandb_artifacts(run_dir))


def test_tensorboard_holds_scalars_images_and_histograms(run_dir):
    events = tensorboard_events(run_dir / "tensorboard")
    for key in HISTOGRAM_KEYS:
        assert [e.step for e in events.Histograms(key)] == SNAPSHOTS, key
    assert [e.step for e in events.Images("gradients")] == SNAPSHOTS  # TensorBoard takes each snapshot's own step
    assert {"confusion_matrix", "curves", "heatmap_grad_mean"} <= set(events.Tags()["images"])
    assert {"train/loss", "eval/accuracy", "flow/grad_mean/conv1", "flow/update_ratio/bn4"} <= set(
        events.Tags()["scalars"]
    )


def test_mlflow_store_holds_metrics_and_artifacts(run_dir):
    client, run = mlflow_run(run_dir / "mlruns")
    assert run.info.run_name == "dash-e2e" and run.data.params["flow_log_steps"] == "3"
    assert SUMMARY_KEYS <= set(run.data.metrics) and {"eval/accuracy", "train/loss"} <= set(run.data.metrics)
    artifacts = mlflow_artifact_paths(client, run.info.run_id)
    assert {
        "model/model.safetensors",
        "model/config.json",
        "figures/confusion_matrix.png",
        "figures/curves.png",
        "training_log.txt",
        "summary.json",
        "report.html",
    } <= artifacts
    assert sum(p.startswith("images/gradients+step+") and p.endswith(".png") for p in artifacts) == len(SNAPSHOTS)
