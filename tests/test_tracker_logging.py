"""Histograms, flow images, the model artifact, summary and training log reach real trackers (W&B offline,
TensorBoard, an MLflow file store), read back from their files; and --report_to parsing."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import save_file
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tracker_files import (
    mlflow_artifact_paths,
    mlflow_run,
    tensorboard_events,
    wandb_artifacts,
    wandb_steps,
    wandb_summary_keys,
    wandb_value_type,
)

from lab2 import config as tracker_choice
from lab2.config import parse_report_to
from lab2.errors import UserError
from lab2.explain.flow import FlowReporter
from lab2.models import SimpleCNN
from lab2.tracking.startup import MLFLOW_RUN_FILE, tracker_init_kwargs
from lab2.tracking.trackers import Tracking


def test_report_to_takes_lists_all_and_none():
    assert parse_report_to("wandb") == ["wandb"]
    assert parse_report_to(" tensorboard, wandb ,wandb") == ["wandb", "tensorboard"]
    assert parse_report_to("all") == ["wandb", "tensorboard", "mlflow"]  # all three are installed for the tests
    assert parse_report_to("none") == []
    with pytest.raises(UserError, match="unknown tracker 'comet'"):
        parse_report_to("wandb,comet")
    with pytest.raises(UserError, match="none alone"):
        parse_report_to("none,wandb")


def test_a_tracker_whose_package_is_missing_names_the_package(monkeypatch):
    # The real check (importlib's find_spec) against a module that is truly not installed.
    monkeypatch.setitem(tracker_choice.TRACKER_PACKAGES, "mlflow", ("lab2_no_such_module", "mlflow-skinny"))
    with pytest.raises(UserError, match="pip install mlflow-skinny"):
        parse_report_to("wandb,mlflow")
    assert parse_report_to("all") == ["wandb", "tensorboard"]


def test_every_tracker_gets_histograms_images_artifact_summary_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test: MLflow exports the URI it is given
    accelerator = Accelerator(
        cpu=True,
        log_with=parse_report_to("all"),
        project_config=ProjectConfiguration(project_dir=str(tmp_path), logging_dir=str(tmp_path / "tensorboard")),
    )
    init_kwargs, _ = tracker_init_kwargs("all", tmp_path, "unit-run", resume=False)
    notes = []
    tracking = Tracking(accelerator, printer=notes.append)
    tracking.start("lab2-test", {"learning_rate": 1e-3}, init_kwargs, run_folder=tmp_path)
    torch.manual_seed(0)
    model = SimpleCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    flow_notes = []
    reporter = FlowReporter(model, tracking, tmp_path / "flow.jsonl", printer=flow_notes.append)
    for step in (5, 10):
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
        reporter.before_step()
        optimizer.step()
        optimizer.zero_grad()
        reporter.after_step(step)  # histograms and flow scalars; images rendered on the worker
        tracking.log({"train/loss": 1.0 / step}, step=step)
        reporter.close(step)  # one set per step, as the loop logs them
    model_file, config_file = tmp_path / "model.safetensors", tmp_path / "config.json"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(model_file))
    config_file.write_text("{}")
    tracking.log_model("unit-run", [model_file, config_file], {"final_eval_acc": 0.25, "model": "simple_cnn"})
    tracking.log_summary({"final_eval_acc": 0.25, "params": 4_441_482, "device_count": 1, "device": "cpu"}, step=10)
    tracking.log_training_log(
        [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.2, "eval_loss": 2.1, "eval_acc": 0.25}], "Epoch | ...", step=10
    )
    tracking.finish()
    assert not [n for n in flow_notes if n.startswith("warning:")]  # no image failed to render
    assert notes == ["note: mlflow has no histograms; gradient and weight histograms go to wandb and tensorboard only."]

    # W&B offline run file
    assert wandb_steps(tmp_path, "gradients/conv1.weight") == [5, 10] and wandb_steps(
        tmp_path, "parameters/fc2.weight"
    ) == [5, 10]
    assert wandb_value_type(tmp_path, "gradients/conv1.weight") == "histogram"
    assert (
        wandb_steps(tmp_path, "gradients") == [5, 10]
        and wandb_value_type(tmp_path, "update_ratio") == "images/separated"
    )
    (artifact,) = [a for a in wandb_artifacts(tmp_path) if a.type == "model"]
    assert artifact.name == "unit-run" and {m.path for m in artifact.manifest.contents} == {
        "model.safetensors",
        "config.json",
    }
    assert json.loads(artifact.metadata) == {"final_eval_acc": 0.25, "model": "simple_cnn"}
    # The staged copies `wandb sync` uploads from live in the run folder, not in ~/.local/share/wandb.
    for entry in artifact.manifest.contents:
        staged = Path(entry.local_path)
        assert staged.is_relative_to(tmp_path / "wandb"), staged
        assert staged.read_bytes() == (tmp_path / entry.path).read_bytes()
    assert "WANDB_DATA_DIR" not in os.environ  # pointed at the run folder only while the files were staged
    assert {"final_eval_acc", "params"} <= wandb_summary_keys(tmp_path)
    assert any(a.type == "run_table" and "training_log" in a.name for a in wandb_artifacts(tmp_path))

    # TensorBoard event files: one run (the flags' HPARAMS in it, with its metrics), no `<timestamp>` second run
    assert len({p.parent for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")}) == 1
    events = tensorboard_events(tmp_path / "tensorboard")
    hparams = events.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert [h.name for h in experiment.hparam_infos] == ["learning_rate"]
    assert {"eval/accuracy", "eval/ece", "eval/final_accuracy"} <= {m.name.tag for m in experiment.metric_infos}
    assert [e.step for e in events.Histograms("gradients/conv1.weight")] == [5, 10]
    assert events.Histograms("parameters/fc2.weight")[0].histogram_value.num == 5_120
    assert [e.step for e in events.Images("gradients")] == [5, 10]
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10]

    # MLflow file store under the run folder
    client, run = mlflow_run(tmp_path / "mlruns")
    assert (tmp_path / MLFLOW_RUN_FILE).read_text().count(run.info.run_id) == 1
    assert run.data.metrics["device_count"] == 1 and run.data.params["learning_rate"] == "0.001"
    # Each number once: the summary's params/final_eval_acc are model/params and eval/final_accuracy already.
    assert not {"params", "final_eval_acc"} & set(run.data.metrics)
    # MLflow 3 opens the experiment on its runs, not on GenAI traces.
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [5, 10]
    artifacts = mlflow_artifact_paths(client, run.info.run_id)
    assert {"model/model.safetensors", "model/config.json", "training_log.txt"} <= artifacts
    assert sum(p.startswith("images/gradients+step+") and p.endswith(".png") for p in artifacts) == 2


def test_a_resumed_run_continues_its_mlflow_run_with_changed_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test: MLflow exports the URI it is given
    for attempt, epochs in enumerate((1, 2)):
        accelerator = Accelerator(cpu=True, log_with=["mlflow"])
        init_kwargs, _ = tracker_init_kwargs("mlflow", tmp_path, f"attempt-{attempt}", resume=attempt > 0)
        notes = []
        tracking = Tracking(accelerator, printer=notes.append)
        tracking.start("lab2-test", {"num_train_epochs": epochs, "seed": 42}, init_kwargs, run_folder=tmp_path)
        tracking.log({"eval/accuracy": 0.1 * epochs}, step=10 * epochs)
        tracking.finish()
        assert notes == []  # MLflow's refusal to change a parameter did not switch tracking off
    client, run = mlflow_run(tmp_path / "mlruns")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [10, 20]
    assert run.data.params["num_train_epochs"] == "1" and run.data.tags["resumed.num_train_epochs"] == "2"


def test_the_flags_parse_and_a_bad_tracker_is_a_user_error():
    from lab2.flags import parse_args

    cfg = parse_args(["--report_to", "wandb,tensorboard", "--log_histograms", "off"])
    assert cfg.report_to == "wandb,tensorboard" and cfg.log_histograms == "off"
    assert parse_args([]).log_histograms == "all"
    with pytest.raises(UserError, match="unknown tracker 'tensorbord'"):
        parse_args(["--report_to", "tensorbord"])


def test_a_second_run_in_one_process_gets_its_own_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    tracker_init_kwargs("mlflow", tmp_path / "first", "first", resume=False)
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("first/mlruns")  # what MLflow itself exports
    tracker_init_kwargs("mlflow", tmp_path / "second", "second", resume=False)
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("second/mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")  # the user's own server wins
    tracker_init_kwargs("mlflow", tmp_path / "third", "third", resume=False)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"


@pytest.mark.parametrize("content", ["{not json", '{"run": "abc"}', '["abc"]', '{"id": "../x"}'])
def test_a_damaged_mlflow_record_starts_a_new_mlflow_run_with_a_warning(tmp_path, monkeypatch, content):
    """Issue 16, section 3: a damaged mlflow_run.json crashed every --report_to mlflow resume."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    (tmp_path / MLFLOW_RUN_FILE).write_text(content)
    init_kwargs, notice = tracker_init_kwargs("mlflow", tmp_path, "resumed", resume=True)
    assert "run_id" not in init_kwargs["mlflow"]
    assert notice.count("\n") == 0 and "damaged" in notice and "new MLflow run" in notice
    accelerator = Accelerator(cpu=True, log_with=["mlflow"])
    tracking = Tracking(accelerator, printer=print)
    tracking.start("lab2-test", {"seed": 42}, init_kwargs, run_folder=tmp_path)
    tracking.log({"eval/accuracy": 0.5}, step=3)
    tracking.finish()
    client, run = mlflow_run(tmp_path / "mlruns")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [3]
    assert json.loads((tmp_path / MLFLOW_RUN_FILE).read_text())["id"] == run.info.run_id  # the record is whole again
