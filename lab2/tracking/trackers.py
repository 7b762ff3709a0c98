"""Experiment tracking through Accelerate's trackers, guarded: a tracker call's first failure is one line and
switches tracking off, never ends a run (the local files stay complete). Scalars go through Accelerate's `log`, what
it lacks (histograms, images, the model, the summary, the Table-1 log) to each tracker its own way. Only the main
process has trackers; wandb and mlflow are imported where used, so `--report_to none` never imports them."""

from __future__ import annotations

import json
import os
import re
import shlex
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker
from tqdm.auto import tqdm

from lab2.explain.plots import figure_to_array
from lab2.state.run_folder import record_tracker_files
from lab2.tracking import startup

# The scalars TensorBoard's HPARAMS table shows beside the flags (their last values in the run).
HPARAM_METRICS = ("eval/accuracy", "eval/loss", "eval/ece", "train/accuracy", "train/loss_epoch", "eval/final_accuracy")
# Summary numbers MLflow already has as metrics (epoch, model/params, model/gflops_per_sample, eval/final_accuracy).
MLFLOW_ALREADY_LOGGED = {"epochs", "params", "gflops_per_sample", "final_eval_acc"}
# MLflow 3's UI opens an experiment on GenAI "Traces" whatever its `mlflow.experimentKind` tag says (3.17 and 3.18);
# this page of it shows the runs.
MLFLOW_RUNS_PAGE = "#/experiments/{}/runs?workflowType=machine_learning"


def described(error: Exception) -> str:
    """The error's type and its first sentence, whole."""
    text = (str(error).strip() or "no message").splitlines()[0]
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return f"{type(error).__name__}: {sentence}"


class Tracking:
    """Guards every tracker call. `printer` is tqdm.write by default: a note gets a line under the progress bar."""

    def __init__(self, accelerator, printer=tqdm.write):
        self.accelerator, self.printer = accelerator, printer
        self.active = bool(accelerator.log_with) and accelerator.is_main_process
        self._noted: set[str] = set()  # one-time notes already printed
        self.run_folder: Path | None = None  # where finish() lists the files the trackers wrote
        self.open_commands: list[str] = []  # how to look at the run, printed after `done:`

    @property
    def tracker_names(self) -> list[str]:
        return [tracker.name for tracker in self.accelerator.trackers] if self.active else []

    @contextmanager
    def _guarded(self, action: str):
        """Yields {name: tracker} ({} once tracking is off); an exception inside switches tracking off, in one line."""
        try:
            yield {tracker.name: tracker for tracker in self.accelerator.trackers} if self.active else {}
        except Exception as exc:  # a tracker's failure must never end a training run
            self.active = False
            self.printer(
                f"tracking: {action} failed ({type(exc).__name__}: {exc}); "
                "tracking is off for the rest of the run, local files are still written."
            )

    def start(self, project_name: str, config: dict, init_kwargs: dict, run_folder: Path | None = None) -> None:
        """Start the trackers one by one (Accelerate's init_trackers stops at the first that fails), each with the
        run's configuration; a tracker that cannot start is named in one line and the others go on."""
        self.run_folder = run_folder
        if not self.active:
            return
        kept, failures = [], []
        with startup.bounded_mlflow_start():
            for wanted in self.accelerator.log_with:
                name = wanted.name if isinstance(wanted, GeneralTracker) else str(wanted)
                try:
                    kept.append(self._start_one(wanted, name, project_name, init_kwargs.get(name, {}), config))
                except Exception as exc:
                    failures.append(f"{name}: {described(exc)}")
        self.accelerator.trackers = kept
        self.active = bool(kept)
        if failures:
            rest = "the other trackers and the local files" if kept else "local files only"
            self.printer(f"tracking: could not start ({'; '.join(failures)}); training goes on with {rest}.")

    def _start_one(self, wanted, name: str, project_name: str, kwargs: dict, config: dict):
        if isinstance(wanted, GeneralTracker):  # a tracker object the caller made
            tracker = wanted
        else:
            make = LOGGER_TYPE_TO_CLASS[name]
            where = (self.accelerator.logging_dir,) if make.requires_logging_directory else ()
            tracker = make(startup.wandb_project(project_name) if name == "wandb" else project_name, *where, **kwargs)
        try:
            tracker.start()
        except Exception as exc:
            # wandb.init raises once its init_timeout has passed, with no offline fallback of its own.
            if name != "wandb" or kwargs.get("mode") != "online":
                raise
            online_error, run_dir = described(exc), Path(kwargs["dir"])
            # A new run id: wandb keeps the failed online one registered ("run ID is in use").
            run_id = startup.record_run(run_dir / startup.WANDB_RUN_FILE)
            tracker = LOGGER_TYPE_TO_CLASS["wandb"](tracker.run_name, **{**kwargs, "mode": "offline", "id": run_id})
            try:
                tracker.start()
            except Exception as offline:
                raise RuntimeError(f"{online_error}; offline too: {described(offline)}") from offline
            server = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
            self.printer(startup.offline_notice(f"could not start online at {server} ({online_error})", run_dir))
        self._store_config(tracker, config)
        return tracker

    def _store_config(self, tracker, config: dict) -> None:
        """The run's configuration as each tracker keeps it (Accelerate's store_init_configuration), except:
        TensorBoard's hparams go to its main run, naming HPARAM_METRICS (Accelerate's `add_hparams` writes a second
        run, `<logdir>/<timestamp>`, with no metrics); MLflow refuses to change a resumed run's parameter, so only
        new keys become parameters and changed values (say --num_train_epochs) `resumed.<key>` tags."""
        if tracker.name == "tensorboard":
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(config, dict.fromkeys(HPARAM_METRICS, 0.0)):
                tracker.writer.file_writer.add_summary(summary)
            tracker.writer.flush()
        elif tracker.name == "mlflow":
            import mlflow

            info = mlflow.active_run().info
            if self.run_folder is not None:  # so a resumed run continues this MLflow run
                startup.record_run(Path(self.run_folder) / startup.MLFLOW_RUN_FILE, info.run_id)
            self.open_commands = mlflow_open_commands(mlflow.get_tracking_uri(), info.experiment_id)
            old = mlflow.get_run(info.run_id).data.params
            tracker.store_init_configuration({k: v for k, v in config.items() if k not in old})
            mlflow.set_tags({f"resumed.{k}": str(v) for k, v in config.items() if k in old and old[k] != str(v)})
        else:
            tracker.store_init_configuration(config)

    def print_open_commands(self) -> None:
        for line in self.open_commands:
            self.printer(line)

    def log(self, values: dict, step: int) -> None:
        with self._guarded("logging") as trackers:
            if trackers:
                self.accelerator.log(values, step=step)

    def log_figures(self, figures: dict, step: int) -> None:
        """Final matplotlib figures as images under their keys (MLflow: figures/<key>.png artifacts)."""
        if figures and self.active:
            arrays = {key: figure_to_array(fig) for key, fig in figures.items()}
            self.log_flow_images(self.prepare_flow_images(arrays, step, final=True), step, step)

    def log_histograms(self, histograms: dict, step: int) -> None:
        """lab2.explain.flow.Histogram values under their keys (`gradients/<param>`, `parameters/<param>`)."""
        if not histograms:
            return
        with self._guarded("logging histograms") as trackers:
            if "wandb" in trackers:
                from wandb import Histogram

                values = {
                    k: Histogram(np_histogram=(h.counts, h.edges), num_bins=len(h.counts))
                    for k, h in histograms.items()
                }
                trackers["wandb"].log(values, step=step)
            if "tensorboard" in trackers:
                for key, h in histograms.items():
                    counts = (h.low, h.high, h.num, h.total, h.total_squares, h.edges[1:].tolist(), h.counts.tolist())
                    trackers["tensorboard"].writer.add_histogram_raw(key, *counts, global_step=step)
            for name in trackers.keys() - {"wandb", "tensorboard"} - self._noted:
                self._noted.add(name)
                self.printer(
                    f"note: {name} has no histograms; gradient and weight histograms go to wandb and tensorboard only."
                )

    def prepare_flow_images(self, arrays: dict[str, np.ndarray], step: int, final: bool = False) -> dict[str, dict]:
        """Per tracker, ready-to-send images, encoded here: on the figure worker's thread, off the training one."""
        names, prepared = self.tracker_names, {}
        if "wandb" in names:
            import wandb

            prepared["wandb"] = {key: [wandb.Image(array, caption=f"step {step}")] for key, array in arrays.items()}
        if "tensorboard" in names:
            from torch.utils.tensorboard.summary import image

            prepared["tensorboard"] = {key: image(key, array, dataformats="HWC") for key, array in arrays.items()}
        if "mlflow" in names:  # mlflow.log_image encodes itself
            prepared["mlflow"] = [
                {"image": array, **({"artifact_file": f"figures/{key}.png"} if final else {"key": key, "step": step})}
                for key, array in arrays.items()
            ]
        return prepared

    def log_flow_images(self, prepared: dict, snapshot_step: int, reached_step: int) -> None:
        """Send what `prepare_flow_images` made, on the main thread. W&B drops steps lower than one already logged,
        so it gets the step the loop has reached (the snapshot's is in the caption)."""
        with self._guarded("logging images") as trackers:
            if "wandb" in trackers and prepared.get("wandb"):
                trackers["wandb"].log(prepared["wandb"], step=reached_step)
            if "tensorboard" in trackers and prepared.get("tensorboard"):
                for summary in prepared["tensorboard"].values():
                    trackers["tensorboard"].writer.file_writer.add_summary(summary, snapshot_step)
                trackers["tensorboard"].writer.flush()
            if "mlflow" in trackers:
                import mlflow

                for image in prepared.get("mlflow", []):
                    mlflow.log_image(**image)

    def log_results(self, run_name: str, paths, summary: dict, metrics: list[dict], training_log: str, step: int):
        """What a finished run gives the trackers besides figures (`paths`: its RunPaths): the model (a W&B `model`
        artifact named after the run, MLflow `model/` artifacts), the summary, the Table-1 log and, to MLflow, the
        run's other files (W&B and TensorBoard keep their own copies)."""
        metadata = {key: summary[key] for key in ("final_eval_acc", "best_eval_acc", "gflops_per_sample", "params")}
        metadata |= {"model": json.loads(paths.config.read_text())["model"], "data": summary.get("data", "")}
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        data = {"data": summary["data"]} if "data" in summary else {}  # what the accuracies were measured on
        columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
        rows = [[m["epoch"], m["train_loss"], m["train_acc"], m["eval_loss"], m["eval_acc"]] for m in metrics]
        with self._guarded("logging the results") as trackers:
            if "wandb" in trackers:
                import wandb

                # An artifact name has letters, digits, '-', '_' and '.' only.
                name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-.") or "model"
                artifact = wandb.Artifact(name, type="model", metadata=metadata)
                for path in (paths.model, paths.config):
                    artifact.add_file(str(path))
                trackers["wandb"].run.log_artifact(artifact)
                trackers["wandb"].run.summary.update({**numbers, **data})
                trackers["wandb"].log_table("training_log", columns=columns, data=rows, step=step)
            if "tensorboard" in trackers:  # indented, so it shows in monospace
                trackers["tensorboard"].writer.add_text(
                    "training_log", "    " + training_log.replace("\n", "\n    "), step
                )
            if "mlflow" in trackers:
                import mlflow

                for path in (paths.model, paths.config):
                    mlflow.log_artifact(str(path), artifact_path="model")
                mlflow.log_metrics(
                    {k: float(v) for k, v in numbers.items() if k not in MLFLOW_ALREADY_LOGGED}, step=step
                )
                mlflow.set_tags(data)
                mlflow.log_text(training_log + "\n", "training_log.txt")
                for path in (paths.summary, paths.metrics, paths.flops, paths.flow, paths.report):
                    if path.is_file():
                        mlflow.log_artifact(str(path))

    def log_confusion_matrix(self, confusion: np.ndarray, class_names, step: int) -> None:
        """On W&B, also the interactive confusion matrix (rebuilt exactly from the counts)."""
        with self._guarded("logging the interactive confusion matrix") as trackers:
            if "wandb" in trackers:
                import wandb

                cells = np.repeat(np.arange(confusion.size), confusion.ravel())  # one (true, predicted) per image
                y_true, preds = (a.tolist() for a in np.divmod(cells, confusion.shape[1]))
                plot = wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=list(class_names))
                trackers["wandb"].log({"confusion_matrix_interactive": plot}, step=step)

    def finish(self) -> None:
        """Close the trackers and the process group (Accelerate's end_training), then list the files the trackers
        wrote in the run folder's marker, so --overwrite_output_dir knows them; never raises."""
        try:
            self.accelerator.end_training()
        except Exception as exc:
            if self.accelerator.is_main_process:
                self.printer(f"tracking: closing the tracker failed ({type(exc).__name__}: {exc}).")
        try:
            if self.run_folder is not None and self.accelerator.is_main_process:
                record_tracker_files(self.run_folder)
        except OSError as exc:  # a full disk: the files stay, --overwrite_output_dir then leaves them too
            self.printer(f"tracking: listing the trackers' files in {self.run_folder} failed ({exc.strerror}).")


def mlflow_open_commands(uri: str, experiment_id: str) -> list[str]:
    """The lines that open the run's experiment on its runs: a server's page, or `mlflow ui` on the store."""
    page = MLFLOW_RUNS_PAGE.format(experiment_id)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return [f"  MLflow:      {uri.rstrip('/')}/{page}"]
    store = unquote(parsed.path) if parsed.scheme == "file" else uri
    allow = "MLFLOW_ALLOW_FILE_STORE=true " if parsed.scheme in ("", "file") else ""
    return [
        f"  MLflow:      {allow}mlflow ui --backend-store-uri {shlex.quote(store)}",
        f"               then open http://127.0.0.1:5000/{page}",
    ]
