"""Histograms, flow images, the model artifact, summary and training log reach real trackers (W&B offline,
TensorBoard, an MLflow file store), read back from their files; and --report_to parsing."""

import json
import os
from pathlib import Path

import numpy as np
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
from lab2.state.run_folder import RunPaths
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
    monkeypatch.setenv("WANDB_DATA_DIR", "")  # restored after the test: lab2 points it at the run folder
    # A fresh HOME: W&B staged two of three artifacts in ~/.local/share/wandb (issue 22).
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CACHE_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
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
    paths = RunPaths(tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(paths.model))
    paths.config.write_text('{"model": "simple_cnn"}')
    summary = {"final_eval_acc": 0.25, "best_eval_acc": 0.3, "gflops_per_sample": 0.5, "params": 4_441_482}
    summary |= {"device_count": 1, "device": "cpu", "data": "CIFAR-10"}
    metrics = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.2, "eval_loss": 2.1, "eval_acc": 0.25}]
    tracking.log_results("unit-run", paths, summary, metrics, "Epoch | ...", step=10)
    tracking.log_confusion_matrix(np.eye(3, dtype=int) * 4, ["cat", "dog", "ship"], step=10)
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
    assert json.loads(artifact.metadata) == {
        "model": "simple_cnn",
        **{k: summary[k] for k in ("final_eval_acc", "best_eval_acc", "gflops_per_sample", "params", "data")},
    }
    # The staged copies `wandb sync` uploads from live in the run folder, not in ~/.local/share/wandb.
    for entry in artifact.manifest.contents:
        staged = Path(entry.local_path)
        assert staged.is_relative_to(tmp_path / "wandb"), staged
        assert staged.read_bytes() == (tmp_path / entry.path).read_bytes()
    assert {"final_eval_acc", "params"} <= wandb_summary_keys(tmp_path)
    assert any(a.type == "run_table" and "training_log" in a.name for a in wandb_artifacts(tmp_path))
    staged = [Path(e.local_path) for a in wandb_artifacts(tmp_path) for e in a.manifest.contents if e.local_path]
    staged += [Path(a.manifest.manifest_file_path) for a in wandb_artifacts(tmp_path) if a.manifest.manifest_file_path]
    assert len(wandb_artifacts(tmp_path)) == 3  # the model, the training log's table, the confusion matrix
    assert staged and all(path.is_relative_to(tmp_path / "wandb") for path in staged), staged
    # Nothing of the run outside the run folder; only W&B's own processes' debug logs (wandb-core, the system
    # monitor) go to ~/.cache/wandb/logs, whatever W&B's folders are set to.
    assert [p for p in home.rglob("*") if p.is_file() and p.parent != home / ".cache/wandb/logs"] == []

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
    # The experiment's runs page: MLflow 3's UI opens on GenAI traces without ?workflowType=machine_learning.
    assert tracking.open_commands == [
        f"  MLflow:      MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {tmp_path.resolve() / 'mlruns'}",
        f"               then open http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs"
        "?workflowType=machine_learning",
    ]
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


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-uri"])
def test_a_users_mlflow_file_store_is_honoured(tmp_path, monkeypatch, as_uri):
    """Issue 23, item 6: MLFLOW_TRACKING_URI naming a folder or a file: URI logged nothing (MLflow 3 refuses a file
    store unless MLFLOW_ALLOW_FILE_STORE is set), with its message cut mid-sentence."""
    store = tmp_path / "my store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri() if as_uri else str(store))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    init_kwargs, _ = tracker_init_kwargs("mlflow", tmp_path / "run", "mine", resume=False)
    messages = []
    tracking = Tracking(Accelerator(cpu=True, log_with=["mlflow"]), printer=messages.append)
    tracking.start("lab2-test", {"seed": 1}, init_kwargs)
    tracking.log({"eval/accuracy": 0.5}, step=2)
    tracking.finish()
    assert messages == [] and not (tmp_path / "run" / "mlruns").exists()
    client, run = mlflow_run(store)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [2]
    assert f"--backend-store-uri '{store}'" in tracking.open_commands[0]


def test_an_mlflow_server_on_a_closed_port_is_one_whole_line_within_seconds(tmp_path, monkeypatch):
    """Issue 23, item 7: MLflow's 7 retries with backoff held start-up for 246 s (measured), then said so in a
    message cut at 160 characters."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    init_kwargs, _ = tracker_init_kwargs("mlflow", tmp_path, "closed", resume=False)
    messages = []
    tracking = Tracking(Accelerator(cpu=True, log_with=["mlflow"]), printer=messages.append)
    began = time.monotonic()
    tracking.start("lab2-test", {}, init_kwargs)
    assert time.monotonic() - began < 30
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # bounded for the start only
    (message,) = messages
    assert message.startswith("tracking: could not start (mlflow: ") and f"127.0.0.1:{port}" in message
    assert message.endswith("training goes on with local files only.") and "Connection refused" in message
    tracking.finish()


def test_wandb_project_names_the_project_unless_project_name_is_given(tmp_path, monkeypatch):
    """Issue 23, item 7: Accelerate passes --project_name to wandb.init, which overrode WANDB_PROJECT."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", "")
    monkeypatch.setenv("WANDB_PROJECT", "from-the-environment")
    for project, expected in (("lab2", "from-the-environment"), ("chosen", "chosen")):  # lab2: the flag's default
        init_kwargs, _ = tracker_init_kwargs("wandb", tmp_path, project, resume=False)
        tracking = Tracking(Accelerator(cpu=True, log_with=["wandb"]), printer=print)
        tracking.start(project, {}, init_kwargs)
        assert tracking.accelerator.get_tracker("wandb", unwrap=True).project == expected
        tracking.finish()
