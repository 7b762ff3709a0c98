"""Experiment tracking through Accelerate's trackers, guarded: a tracker's failure never ends a run.

Two promises:

- W&B never blocks or crashes a run. Without credentials (or without a route
  to the W&B server) the run goes offline into `<output_dir>/wandb` and says so
  in one line; `wandb sync` uploads it later (lab2.tracking.startup chooses the
  mode and builds the init kwargs; an online start that fails falls back here).
- A tracker that fails (at start or mid-run) is reported once and switched off;
  training goes on and the local files stay complete.

wandb and mlflow are imported only here, in lab2.tracking.startup and in
lab2.tracking.media, always inside functions, so `--report_to none` runs never
import them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lab2.explain.plots import figure_to_array
from lab2.state.run_folder import record_tracker_files
from lab2.tracking import media
from lab2.tracking.startup import MLFLOW_RUN_FILE, offline_notice, start_wandb_offline


class Tracking:
    """Guards every tracker call: the first failure is reported once and tracking stops; training does not."""

    def __init__(self, accelerator, printer=print):
        self.accelerator = accelerator
        self.printer = printer
        self.active = bool(accelerator.log_with) and accelerator.is_main_process
        self._noted: set[str] = set()  # one-time notes already printed
        self.run_folder: Path | None = None  # where finish() lists the files the trackers wrote

    def _note_once(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.printer(message)

    @property
    def tracker_names(self) -> list[str]:
        return [tracker.name for tracker in self.accelerator.trackers] if self.active else []

    def _guard(self, action: str, call) -> None:
        if not self.active:
            return
        try:
            call()
        except Exception as exc:  # a tracker's failure must never end a training run
            self.active = False
            self.printer(
                f"tracking: {action} failed ({type(exc).__name__}: {exc}); "
                "tracking is off for the rest of the run, local files are still written."
            )

    def start(self, project_name: str, config: dict, init_kwargs: dict, run_folder: Path | None = None) -> None:
        """Start the trackers; an online W&B start that fails or times out falls back to offline, in one line."""
        # init_trackers is collective-free, but only the main process has real trackers.
        self.run_folder = run_folder
        if not self.accelerator.log_with:
            return
        try:
            self.accelerator.init_trackers(project_name, config=None, init_kwargs=init_kwargs)
        except Exception as exc:
            self._fall_back(project_name, init_kwargs, exc)
        if not self.active:
            return
        # Stored per tracker: a resumed MLflow run refuses changed parameter values, which would stop every tracker.
        self._each_tracker("storing the configuration", lambda tracker: media.store_config(tracker, config))
        if run_folder is not None and "mlflow" in self.tracker_names:  # so a resumed run continues this MLflow run
            run_id = self.accelerator.get_tracker("mlflow", unwrap=True).info.run_id
            (Path(run_folder) / MLFLOW_RUN_FILE).write_text(json.dumps({"id": run_id}))

    def _fall_back(self, project_name: str, init_kwargs: dict, exc: Exception) -> None:
        """After a failed start: keep the trackers that started, and W&B offline in place of a failed online start."""
        failure = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no message'}"
        )
        self._drop_unstarted_trackers()
        wandb_kwargs = init_kwargs.get("wandb")
        if self.accelerator.is_main_process and wandb_kwargs and wandb_kwargs.get("mode") == "online":
            try:
                self.accelerator.trackers.append(start_wandb_offline(project_name, wandb_kwargs))
                self.printer(offline_notice(f"could not start online ({failure})", Path(wandb_kwargs["dir"])))
                return
            except Exception as offline_exc:
                failure = f"{failure}; offline too: {type(offline_exc).__name__}: {str(offline_exc).strip()[:120]}"
        self.active = bool(self.accelerator.trackers) and self.accelerator.is_main_process
        if self.accelerator.is_main_process:
            self.printer(f"tracking: could not start ({failure}); training goes on with local files only.")

    def _drop_unstarted_trackers(self) -> None:
        """Forget trackers whose start failed, so closing them later neither fails nor speaks."""

        def started(tracker) -> bool:
            try:
                return tracker.tracker is not None  # W&B's run, TensorBoard's writer: set by a start that worked
            except AttributeError:
                return False

        self.accelerator.trackers = [t for t in self.accelerator.trackers if started(t)]

    def log(self, values: dict, step: int) -> None:
        self._guard("logging", lambda: self.accelerator.log(values, step=step))

    def _each_tracker(self, action: str, send) -> None:
        """Call `send(tracker)` for every tracker, guarded."""
        self._guard(action, lambda: [send(tracker) for tracker in self.accelerator.trackers])

    def log_figures(self, figures: dict, step: int) -> None:
        """Log matplotlib figures as images under their keys (MLflow: as figures/<key>.png artifacts)."""
        if not self.active or not figures:
            return
        arrays = {key: figure_to_array(fig) for key, fig in figures.items()}
        self._each_tracker("logging images", lambda tracker: media.send_figures(tracker, arrays, step))

    def log_histograms(self, histograms: dict, step: int) -> None:
        """Log lab2.explain.flow.Histogram values (`gradients/<param>`, `parameters/<param>`);
        trackers without histograms skip them, with one note."""
        if not self.active or not histograms:
            return

        def send(tracker):
            if not media.send_histograms(tracker, histograms, step):
                self._note_once(
                    f"histograms-{tracker.name}",
                    f"note: {tracker.name} has no histograms; "
                    f"gradient and weight histograms go to {' and '.join(media.HISTOGRAM_TRACKERS)} only.",
                )

        self._each_tracker("logging histograms", send)

    def prepare_flow_images(self, arrays: dict, step: int) -> dict:
        """Encode one snapshot's flow images for each tracker; thread-safe, meant for the figure worker's thread."""
        return media.prepare_flow_images(self.tracker_names, arrays, step)

    def log_flow_images(self, prepared: dict, snapshot_step: int, reached_step: int) -> None:
        """Send images made by `prepare_flow_images` (on the main thread: W&B steps must not go backwards)."""
        if self.active:
            self._each_tracker(
                "logging flow images",
                lambda tracker: media.send_flow_images(tracker, prepared, snapshot_step, reached_step),
            )

    def log_model(self, run_name: str, files: list[Path], metadata: dict) -> None:
        """The final model (model.safetensors + config.json) as a W&B artifact of type `model` and MLflow artifacts."""
        if self.active:
            self._each_tracker(
                "logging the model artifact", lambda tracker: media.send_model(tracker, run_name, files, metadata)
            )

    def log_summary(self, summary: dict, step: int) -> None:
        """The run's summary numbers (W&B run summary, MLflow metrics)."""
        if self.active:
            self._each_tracker("logging the summary", lambda tracker: media.send_summary(tracker, summary, step))

    def log_training_log(self, metrics: list[dict], text: str, step: int) -> None:
        """The Table-1 training log (epoch, train loss/acc, val loss/acc) as a table or text."""
        columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
        rows = [[m["epoch"], m["train_loss"], m["train_acc"], m["eval_loss"], m["eval_acc"]] for m in metrics]
        if self.active:
            self._each_tracker(
                "logging the training log", lambda tracker: media.send_training_log(tracker, columns, rows, text, step)
            )

    def log_results(
        self, run_name: str, paths, summary: dict, metrics: list[dict], training_log: str, step: int
    ) -> None:
        """Everything a finished run gives the trackers besides figures: the model artifact (model.safetensors +
        config.json, with final/best accuracy, GFLOPs, params and model name), the summary, the Table-1 log,
        and (MLflow) the run's other files. `paths` is the run's lab2.state.run_folder.RunPaths."""
        metadata = {
            "model": json.loads(paths.config.read_text())["model"],
            **{key: summary[key] for key in ("final_eval_acc", "best_eval_acc", "gflops_per_sample", "params")},
            "data": summary.get("data", ""),  # says "synthetic" beside the accuracies of a --dataset fake run
        }
        self.log_model(run_name, [paths.model, paths.config], metadata)
        self.log_summary(summary, step)
        self.log_training_log(metrics, training_log, step)
        self.log_run_files([paths.summary, paths.metrics, paths.flops, paths.flow, paths.training_log, paths.report])

    def log_run_files(self, files: list[Path]) -> None:
        """The run folder's other files, for trackers that keep files (MLflow)."""
        if self.active:
            self._each_tracker("logging the run files", lambda tracker: media.send_run_files(tracker, files))

    def log_confusion_matrix(self, confusion: np.ndarray, class_names, step: int) -> None:
        """On W&B, also the interactive confusion matrix (rebuilt exactly from the counts)."""

        def send():
            for tracker in self.accelerator.trackers:
                if tracker.name != "wandb":
                    continue
                import wandb

                true_idx, pred_idx = np.nonzero(confusion)
                counts = confusion[true_idx, pred_idx]
                y_true, preds = np.repeat(true_idx, counts).tolist(), np.repeat(pred_idx, counts).tolist()
                plot = wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=list(class_names))
                tracker.log({"confusion_matrix_interactive": plot}, step=step)

        self._guard("logging the interactive confusion matrix", send)

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
