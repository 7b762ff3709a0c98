"""Issue 10 end to end: one real training run logging to W&B (offline), TensorBoard and MLflow at once.

10 optimizer steps on the mini slice, a flow snapshot every 3 steps (3, 6, 9 and
the last, 10): every tracker's files are read back.
"""

import json
import stat
import subprocess
from pathlib import Path

import launch
import pytest
from conftest import BIN, REPO, built_once, cli_env, train_cmd
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
    def build(root):
        out = root / "run"
        args = train_cmd(
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
        # As a terminal shows it: stdout and stderr in one stream, the progress bar drawn.
        env = cli_env(PATH=f"{BIN}:{cli_env()['PATH']}")
        env.pop("TQDM_DISABLE")
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        with launch.started(args, cwd=REPO, env=env, **pipes) as process:
            output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output
        (root / "output.txt").write_text(output)
        (note,) = [line for line in output.splitlines() if "mlflow has no histograms" in line]  # the one-time note
        assert "it/s]" in output and note.startswith("note: mlflow"), repr(note)  # a line of its own, not the bar's
        flow = [json.loads(line) for line in (out / "flow.jsonl").read_text().splitlines()]
        assert [record["step"] for record in flow] == SNAPSHOTS
        assert all(list(record["layers"]) == LAB_BARS for record in flow)  # the lab's 10 bars, in model order

    return built_once(tmp_path_factory, "dashboard_run", build) / "run"


def test_every_output_file_has_the_same_permissions(run_dir):
    """model.safetensors used to be 0600 (safetensors' own default) beside 0644 outputs."""
    mode = stat.S_IMODE((run_dir / "summary.json").stat().st_mode)
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "report.html", "figures/calibration.png"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == mode, name


def test_calibration_is_in_every_record_the_summary_and_the_report(run_dir):
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= record["eval_ece"] <= 1 and summary["final_eval_ece"] == record["eval_ece"]
    assert summary["ece_of"] == "plain logits"
    assert f"{summary['final_eval_ece']:.4f} (plain logits)" in (run_dir / "report.html").read_text()


def test_wandb_run_holds_histograms_images_artifact_and_summary(run_dir):
    for key in HISTOGRAM_KEYS:
        assert wandb_steps(run_dir, key) == SNAPSHOTS, key  # logged at the snapshot steps, synchronously
    assert wandb_value_type(run_dir, "gradients/conv1.weight") == "histogram"
    assert wandb_steps(run_dir, "eval/ece") == [10] and wandb_steps(run_dir, "calibration") == [10]
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
        **{k: summary[k] for k in ("final_eval_acc", "best_eval_acc", "gflops_per_sample", "params", "data")},
    }
    for entry in model.manifest.contents:  # staged in the run folder: `wandb sync` of the folder finds them
        assert Path(entry.local_path).is_relative_to(run_dir / "wandb"), entry.local_path
    assert SUMMARY_KEYS <= wandb_summary_keys(run_dir)
    assert any(a.type == "run_table" and a.name.endswith("training_log") for a in wandb_artifacts(run_dir))


def test_tensorboard_holds_scalars_images_and_histograms(run_dir):
    # One run: the HPARAMS go into the main run instead of a second `<timestamp>` run without metrics.
    assert len({p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}) == 1
    events = tensorboard_events(run_dir / "tensorboard")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))
    for key in HISTOGRAM_KEYS:
        assert [e.step for e in events.Histograms(key)] == SNAPSHOTS, key
    assert [e.step for e in events.Images("gradients")] == SNAPSHOTS  # TensorBoard takes each snapshot's own step
    assert {"confusion_matrix", "curves", "heatmap_grad_mean", "calibration"} <= set(events.Tags()["images"])
    assert {"train/loss", "eval/accuracy", "eval/ece", "flow/grad_mean/conv1", "flow/update_ratio/bn4"} <= set(
        events.Tags()["scalars"]
    )


def test_mlflow_store_holds_metrics_and_artifacts(run_dir):
    client, run = mlflow_run(run_dir / "mlruns")
    assert run.info.run_name == "dash-e2e" and run.data.params["flow_log_steps"] == "3"
    metrics = set(run.data.metrics)
    # Each number once: the summary's final_eval_acc, params and gflops_per_sample are these metrics already.
    assert {"eval/final_accuracy", "model/params", "model/gflops_per_sample", "train_time_s", "eval/ece"} <= metrics
    assert {"eval/accuracy", "train/loss", "epoch"} <= metrics and not {"params", "epochs", "final_eval_acc"} & metrics
    # MLflow 3's UI opens an experiment on GenAI traces; the printed page opens it on its runs.
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning"
    assert (
        f"mlflow ui --backend-store-uri {run_dir.resolve() / 'mlruns'}" in (run_dir.parent / "output.txt").read_text()
    )
    assert f"then open {page}\n" in (run_dir.parent / "output.txt").read_text()
    artifacts = mlflow_artifact_paths(client, run.info.run_id)
    assert {
        "model/model.safetensors",
        "model/config.json",
        "figures/confusion_matrix.png",
        "figures/curves.png",
        "figures/calibration.png",
        "training_log.txt",
        "summary.json",
        "report.html",
    } <= artifacts
    assert sum(p.startswith("images/gradients+step+") and p.endswith(".png") for p in artifacts) == len(SNAPSHOTS)
