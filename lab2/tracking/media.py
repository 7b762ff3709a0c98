"""What each tracker gets beyond scalars: histograms, flow images, the model artifact, the summary and tables.

lab2.tracking.trackers's `Tracking` calls these on the main process, guarded; this module
(with lab2.tracking.trackers and lab2.tracking.startup) is the only one that imports wandb or mlflow.
Each function takes one of Accelerate's trackers and dispatches on its `name`:

- wandb: `wandb.Histogram`, `wandb.Image` (captioned with the snapshot's step),
  a `model` artifact, `run.summary`, `wandb.Table`;
- tensorboard (`tracker.writer`, a SummaryWriter): raw histograms, images at
  the snapshot's own step, the training log as text;
- mlflow (the fluent API on Accelerate's active run): images by key and step,
  files as artifacts, the summary as metrics.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HISTOGRAM_TRACKERS = ("wandb", "tensorboard")
# The scalars TensorBoard's HPARAMS table shows beside the flags (their last values in the run).
HPARAM_METRICS = ("eval/accuracy", "eval/loss", "eval/ece", "train/accuracy", "train/loss_epoch", "eval/final_accuracy")
# Tells the MLflow 3 UI this is model training, so the experiment opens on its runs, not on GenAI "Traces".
MLFLOW_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Summary numbers MLflow already has as metrics under another name: logged once, under that name.
MLFLOW_SUMMARY_ALREADY_LOGGED = {
    "epochs": "epoch",
    "params": "model/params",
    "gflops_per_sample": "model/gflops_per_sample",
    "final_eval_acc": "eval/final_accuracy",
}


def artifact_name(run_name: str) -> str:
    """A W&B artifact name from a run name (letters, digits, '-', '_' and '.' only)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-.") or "model"


def store_config(tracker, config: dict) -> None:
    """The run's configuration as each tracker keeps it (Accelerate's store_init_configuration).

    A resumed MLflow run already holds parameters and MLflow refuses to change one, so there
    only new keys become parameters and changed values (say --num_train_epochs) become
    `resumed.<key>` tags. The MLflow experiment is tagged as model training.

    TensorBoard gets the hparams in its main run: Accelerate's `add_hparams` would write them to a second run
    (`<logdir>/<timestamp>`) with no metrics. Here the HPARAMS table names HPARAM_METRICS, which TensorBoard
    reads from the main run's scalars.
    """
    if tracker.name == "tensorboard":
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(config, dict.fromkeys(HPARAM_METRICS, 0.0)):
            tracker.writer.file_writer.add_summary(summary)
        tracker.writer.flush()
        return
    if tracker.name == "mlflow":
        import mlflow

        experiment_id = mlflow.active_run().info.experiment_id
        key, kind = MLFLOW_EXPERIMENT_KIND
        try:
            if key not in mlflow.get_experiment(experiment_id).tags:  # a kind the user chose stays
                mlflow.MlflowClient().set_experiment_tag(experiment_id, key, kind)
        except Exception:  # noqa: BLE001 - only which page the UI opens on: a server that refuses it stops nothing
            pass

        existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
        if existing:
            mlflow.log_params({k: v for k, v in config.items() if k not in existing})
            mlflow.set_tags(
                {f"resumed.{k}": str(v) for k, v in config.items() if k in existing and existing[k] != str(v)}
            )
            return
    tracker.store_init_configuration(config)


def send_histograms(tracker, histograms: dict, step: int) -> bool:
    """Log lab2.explain.flow.Histogram values under their keys; False for a tracker without histograms."""
    if tracker.name == "wandb":
        import wandb

        tracker.log(
            {
                key: wandb.Histogram(np_histogram=(h.counts, h.edges), num_bins=len(h.counts))
                for key, h in histograms.items()
            },
            step=step,
        )
    elif tracker.name == "tensorboard":
        for key, h in histograms.items():
            tracker.writer.add_histogram_raw(
                key,
                h.low,
                h.high,
                h.num,
                h.total,
                h.total_squares,
                h.edges[1:].tolist(),
                h.counts.tolist(),
                global_step=step,
            )
    else:
        return False
    return True


def prepare_flow_images(tracker_names: list[str], arrays: dict[str, np.ndarray], step: int) -> dict[str, dict]:
    """Per tracker, ready-to-send image objects for one snapshot's arrays; encoding happens here, off the training
    thread."""
    prepared = {}
    for name in tracker_names:
        if name == "wandb":
            import wandb

            # A one-image list, as the final figures go through Accelerate's log_images: one media type per key.
            prepared[name] = {key: [wandb.Image(array, caption=f"step {step}")] for key, array in arrays.items()}
        elif name == "tensorboard":
            from torch.utils.tensorboard.summary import image

            prepared[name] = {key: image(key, array, dataformats="HWC") for key, array in arrays.items()}
        elif name == "mlflow":
            prepared[name] = arrays  # mlflow.log_image encodes itself
    return prepared


def send_flow_images(tracker, prepared: dict, snapshot_step: int, reached_step: int) -> None:
    """Send one snapshot's prepared images. W&B drops steps lower than one already logged, so it gets the
    step the loop has reached (the snapshot's step is in the caption); the others take the snapshot's own step."""
    payload = prepared.get(tracker.name)
    if not payload:
        return
    if tracker.name == "wandb":
        tracker.log(payload, step=reached_step)
    elif tracker.name == "tensorboard":
        for summary in payload.values():
            tracker.writer.file_writer.add_summary(summary, snapshot_step)
        tracker.writer.flush()
    elif tracker.name == "mlflow":
        import mlflow

        for key, array in payload.items():
            mlflow.log_image(array, key=key, step=snapshot_step)


def send_figures(tracker, arrays: dict[str, np.ndarray], step: int) -> None:
    """Final figures (RGB arrays) under their names."""
    if tracker.name == "wandb":
        tracker.log_images({k: [v] for k, v in arrays.items()}, step=step)
    elif tracker.name == "tensorboard":
        tracker.log_images({k: v[None] for k, v in arrays.items()}, step=step, dataformats="NHWC")
    elif tracker.name == "mlflow":
        import mlflow

        for key, array in arrays.items():
            mlflow.log_image(array, artifact_file=f"figures/{key}.png")


@contextmanager
def _wandb_data_dir(folder: str):
    """Point W&B's data dir (WANDB_DATA_DIR, read when a file is added to an artifact) at `folder`, then restore it."""
    before = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = folder
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = before


def send_model(tracker, run_name: str, files: list[Path], metadata: dict) -> None:
    """The final model as an artifact: W&B type `model` named after the run; MLflow files under `model/`."""
    if tracker.name == "wandb":
        import wandb

        artifact = wandb.Artifact(artifact_name(run_name), type="model", metadata=metadata)
        # add_file copies each file into <data dir>/artifacts/staging, where an offline run's `wandb sync` later
        # reads it. W&B's default data dir is ~/.local/share/wandb, outside the run folder: a run folder copied
        # elsewhere would lose its model. Staged under the run's own wandb/ folder, the model travels with it.
        with _wandb_data_dir(tracker.run.settings.wandb_dir):
            for path in files:
                artifact.add_file(str(path))
        tracker.run.log_artifact(artifact)
    elif tracker.name == "mlflow":
        import mlflow

        for path in files:
            mlflow.log_artifact(str(path), artifact_path="model")


def send_summary(tracker, summary: dict, step: int) -> None:
    """Run-level numbers: W&B's run summary (its runs table), MLflow metrics; TensorBoard has no summary."""
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    # What the accuracies were measured on ("synthetic images ..." for --dataset fake) stays beside them.
    data = {"data": summary["data"]} if "data" in summary else {}
    if tracker.name == "wandb":
        tracker.run.summary.update({**numbers, **data})
    elif tracker.name == "mlflow":
        import mlflow

        once = {k: float(v) for k, v in numbers.items() if k not in MLFLOW_SUMMARY_ALREADY_LOGGED}
        mlflow.log_metrics(once, step=step)
        mlflow.set_tags(data)


def send_training_log(tracker, columns: list[str], rows: list[list], text: str, step: int) -> None:
    """The Table-1 training log: a wandb.Table, TensorBoard text, an MLflow text artifact."""
    if tracker.name == "wandb":
        tracker.log_table("training_log", columns=columns, data=rows, step=step)
    elif tracker.name == "tensorboard":
        tracker.writer.add_text(
            "training_log", "    " + text.replace("\n", "\n    "), global_step=step
        )  # indented: monospace
    elif tracker.name == "mlflow":
        import mlflow

        mlflow.log_text(text + "\n", "training_log.txt")


def send_run_files(tracker, files: list[Path]) -> None:
    """Every other file of the run folder as MLflow artifacts (W&B and TensorBoard keep their own copies)."""
    if tracker.name == "mlflow":
        import mlflow

        for path in files:
            if path.is_file():
                mlflow.log_artifact(str(path))
