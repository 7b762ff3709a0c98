"""Experiment tracking through Accelerate's trackers, guarded: a tracker's failure never ends a run.

`Tracking` logs scalars with Accelerate's `log` and adds, per tracker, what Accelerate lacks:

- wandb: `wandb.Histogram`, `wandb.Image` (captioned with the snapshot's step), a `model` artifact,
  `run.summary`, `wandb.Table`, the interactive confusion matrix;
- tensorboard (`tracker.writer`, a SummaryWriter): raw histograms, images at the snapshot's own step,
  the flags in its HPARAMS table, the training log as text;
- mlflow (the fluent API on Accelerate's active run): images by key and step, files as artifacts,
  the summary as metrics.

The first failure of any tracker call is reported in one line and switches tracking off; training goes on
and the local files stay complete. Only the main process has trackers. wandb and mlflow are imported inside
the methods (here and in lab2.tracking.startup), so `--report_to none` never imports them.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lab2.explain.plots import figure_to_array
from lab2.state.run_folder import record_tracker_files
from lab2.tracking.startup import MLFLOW_RUN_FILE, offline_notice, start_wandb_offline

HISTOGRAM_TRACKERS = ("wandb", "tensorboard")
# The scalars TensorBoard's HPARAMS table shows beside the flags (their last values in the run).
HPARAM_METRICS = ("eval/accuracy", "eval/loss", "eval/ece", "train/accuracy", "train/loss_epoch", "eval/final_accuracy")
# Tells the MLflow 3 UI this is model training, so the experiment opens on its runs, not on GenAI "Traces".
MLFLOW_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Summary numbers MLflow already has as metrics (epoch, model/params, model/gflops_per_sample, eval/final_accuracy).
MLFLOW_SUMMARY_ALREADY_LOGGED = {"epochs", "params", "gflops_per_sample", "final_eval_acc"}


def artifact_name(run_name: str) -> str:
    """A W&B artifact name from a run name (letters, digits, '-', '_' and '.' only)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-.") or "model"


class Tracking:
    """Guards every tracker call: the first failure is reported once and tracking stops; training does not."""

    def __init__(self, accelerator, printer=print):
        self.accelerator = accelerator
        self.printer = printer
        self.active = bool(accelerator.log_with) and accelerator.is_main_process
        self._noted: set[str] = set()  # one-time notes already printed
        self.run_folder: Path | None = None  # where finish() lists the files the trackers wrote

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
        """Start the trackers; an online W&B start that fails or times out falls back to offline, in one line."""
        # init_trackers is collective-free, but only the main process has real trackers.
        self.run_folder = run_folder
        if not self.accelerator.log_with:
            return
        try:
            self.accelerator.init_trackers(project_name, config=None, init_kwargs=init_kwargs)
        except Exception as exc:
            self._fall_back(project_name, init_kwargs, exc)
        with self._guarded("storing the configuration") as trackers:
            for tracker in trackers.values():
                self._store_config(tracker, config)
        if run_folder is not None and "mlflow" in self.tracker_names:  # so a resumed run continues this MLflow run
            run_id = self.accelerator.get_tracker("mlflow", unwrap=True).info.run_id
            (Path(run_folder) / MLFLOW_RUN_FILE).write_text(json.dumps({"id": run_id}))

    def _fall_back(self, project_name: str, init_kwargs: dict, exc: Exception) -> None:
        """After init_trackers raised: it starts the trackers in order and stopped at the first that failed. That
        one is W&B offline in place of a failed online start (wandb.init raises once its init_timeout has passed:
        it has no offline fallback of its own), or forgotten, so that closing it later neither fails nor speaks;
        the trackers after it start here."""

        def started(tracker) -> bool:  # W&B's run, TensorBoard's writer: set by a start that worked
            try:
                return tracker.tracker is not None
            except AttributeError:
                return False

        def described(error: Exception) -> str:
            return f"{type(error).__name__}: {(str(error).strip() or 'no message').splitlines()[0][:160]}"

        failed = next((t for t in self.accelerator.trackers if not started(t)), None)
        wandb_kwargs, kept, failures = init_kwargs.get("wandb") or {}, [], []
        for tracker in self.accelerator.trackers:
            try:
                if tracker is failed and tracker.name == "wandb" and wandb_kwargs.get("mode") == "online":
                    try:
                        tracker = start_wandb_offline(project_name, wandb_kwargs)
                    except Exception as offline_exc:
                        failures.append(f"wandb: {described(exc)}; offline too: {described(offline_exc)}")
                        continue
                    server = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
                    reason = f"could not start online at {server} ({described(exc)})"
                    self.printer(offline_notice(reason, Path(wandb_kwargs["dir"])))
                elif tracker is failed:
                    failures.append(f"{tracker.name}: {described(exc)}")
                    continue
                elif not started(tracker):
                    tracker.start()
                kept.append(tracker)
            except Exception as error:
                failures.append(f"{tracker.name}: {described(error)}")
        self.accelerator.trackers = kept
        self.active = bool(kept) and self.accelerator.is_main_process
        if failures and self.accelerator.is_main_process:
            rest = "the other trackers and the local files" if kept else "local files only"
            self.printer(f"tracking: could not start ({'; '.join(failures)}); training goes on with {rest}.")

    @staticmethod
    def _store_config(tracker, config: dict) -> None:
        """The run's configuration as each tracker keeps it (Accelerate's store_init_configuration), except:

        - TensorBoard gets the hparams in its main run: Accelerate's `add_hparams` would write them to a second
          run (`<logdir>/<timestamp>`) with no metrics; the HPARAMS table names HPARAM_METRICS instead.
        - A resumed MLflow run already holds parameters and MLflow refuses to change one, so only new keys become
          parameters and changed values (say --num_train_epochs) become `resumed.<key>` tags. The MLflow
          experiment is tagged as model training.
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
                changed = {k: str(v) for k, v in config.items() if k in existing and existing[k] != str(v)}
                mlflow.set_tags({f"resumed.{k}": v for k, v in changed.items()})
                return
        tracker.store_init_configuration(config)

    def log(self, values: dict, step: int) -> None:
        with self._guarded("logging") as trackers:
            if trackers:
                self.accelerator.log(values, step=step)

    def log_figures(self, figures: dict, step: int) -> None:
        """Final matplotlib figures as images under their keys (MLflow: figures/<key>.png artifacts)."""
        if not figures:
            return
        with self._guarded("logging images") as trackers:
            arrays = {key: figure_to_array(fig) for key, fig in figures.items()} if trackers else {}
            if "wandb" in trackers:
                trackers["wandb"].log_images({k: [v] for k, v in arrays.items()}, step=step)
            if "tensorboard" in trackers:
                trackers["tensorboard"].log_images({k: v[None] for k, v in arrays.items()}, step, dataformats="NHWC")
            if "mlflow" in trackers:
                import mlflow

                for key, array in arrays.items():
                    mlflow.log_image(array, artifact_file=f"figures/{key}.png")

    def log_histograms(self, histograms: dict, step: int) -> None:
        """lab2.explain.flow.Histogram values (`gradients/<param>`, `parameters/<param>`) under their keys;
        trackers without histograms skip them, with one note."""
        if not histograms:
            return
        with self._guarded("logging histograms") as trackers:
            if "wandb" in trackers:
                import wandb

                values = {
                    k: wandb.Histogram(np_histogram=(h.counts, h.edges), num_bins=len(h.counts))
                    for k, h in histograms.items()
                }
                trackers["wandb"].log(values, step=step)
            if "tensorboard" in trackers:
                for key, h in histograms.items():
                    counts = (h.low, h.high, h.num, h.total, h.total_squares, h.edges[1:].tolist(), h.counts.tolist())
                    trackers["tensorboard"].writer.add_histogram_raw(key, *counts, global_step=step)
            for name in (n for n in trackers if n not in HISTOGRAM_TRACKERS and n not in self._noted):
                self._noted.add(name)
                self.printer(
                    f"note: {name} has no histograms; "
                    f"gradient and weight histograms go to {' and '.join(HISTOGRAM_TRACKERS)} only."
                )

    def prepare_flow_images(self, arrays: dict[str, np.ndarray], step: int) -> dict[str, dict]:
        """Per tracker, ready-to-send image objects for one snapshot's arrays; encoding happens here, on the
        figure worker's thread, off the training thread."""
        names, prepared = self.tracker_names, {}
        if "wandb" in names:
            import wandb

            # A one-image list, as the final figures go through Accelerate's log_images: one media type per key.
            prepared["wandb"] = {key: [wandb.Image(array, caption=f"step {step}")] for key, array in arrays.items()}
        if "tensorboard" in names:
            from torch.utils.tensorboard.summary import image

            prepared["tensorboard"] = {key: image(key, array, dataformats="HWC") for key, array in arrays.items()}
        if "mlflow" in names:
            prepared["mlflow"] = arrays  # mlflow.log_image encodes itself
        return prepared

    def log_flow_images(self, prepared: dict, snapshot_step: int, reached_step: int) -> None:
        """Send images made by `prepare_flow_images`, on the main thread. W&B drops steps lower than one already
        logged, so it gets the step the loop has reached (the snapshot's is in the caption); the others take the
        snapshot's own step."""
        with self._guarded("logging flow images") as trackers:
            if "wandb" in trackers and prepared.get("wandb"):
                trackers["wandb"].log(prepared["wandb"], step=reached_step)
            if "tensorboard" in trackers and prepared.get("tensorboard"):
                for summary in prepared["tensorboard"].values():
                    trackers["tensorboard"].writer.file_writer.add_summary(summary, snapshot_step)
                trackers["tensorboard"].writer.flush()
            if "mlflow" in trackers:
                import mlflow

                for key, array in prepared.get("mlflow", {}).items():
                    mlflow.log_image(array, key=key, step=snapshot_step)

    def log_model(self, run_name: str, files: list[Path], metadata: dict) -> None:
        """The final model (model.safetensors + config.json): a W&B artifact of type `model` named after the run;
        MLflow artifacts under `model/`."""
        with self._guarded("logging the model artifact") as trackers:
            if "wandb" in trackers:
                import wandb

                run = trackers["wandb"].run
                artifact = wandb.Artifact(artifact_name(run_name), type="model", metadata=metadata)
                # add_file copies each file into <WANDB_DATA_DIR>/artifacts/staging, where an offline run's `wandb
                # sync` later reads it. W&B's default is ~/.local/share/wandb, outside the run folder: a run folder
                # copied elsewhere would lose its model. Staged under the run's own wandb/ folder, it travels along.
                before = os.environ.get("WANDB_DATA_DIR")
                os.environ["WANDB_DATA_DIR"] = run.settings.wandb_dir
                try:
                    for path in files:
                        artifact.add_file(str(path))
                finally:
                    if before is None:
                        del os.environ["WANDB_DATA_DIR"]
                    else:
                        os.environ["WANDB_DATA_DIR"] = before
                run.log_artifact(artifact)
            if "mlflow" in trackers:
                import mlflow

                for path in files:
                    mlflow.log_artifact(str(path), artifact_path="model")

    def log_summary(self, summary: dict, step: int) -> None:
        """Run-level numbers: W&B's run summary (its runs table), MLflow metrics; TensorBoard has no summary."""
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # What the accuracies were measured on ("synthetic images ..." for --dataset fake) stays beside them.
        data = {"data": summary["data"]} if "data" in summary else {}
        with self._guarded("logging the summary") as trackers:
            if "wandb" in trackers:
                trackers["wandb"].run.summary.update({**numbers, **data})
            if "mlflow" in trackers:
                import mlflow

                mlflow.log_metrics(
                    {k: float(v) for k, v in numbers.items() if k not in MLFLOW_SUMMARY_ALREADY_LOGGED}, step=step
                )
                mlflow.set_tags(data)

    def log_training_log(self, metrics: list[dict], text: str, step: int) -> None:
        """The Table-1 training log (epoch, train loss/acc, val loss/acc): a wandb.Table, TensorBoard text
        (indented, so it shows in monospace), an MLflow text artifact."""
        columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
        rows = [[m["epoch"], m["train_loss"], m["train_acc"], m["eval_loss"], m["eval_acc"]] for m in metrics]
        with self._guarded("logging the training log") as trackers:
            if "wandb" in trackers:
                trackers["wandb"].log_table("training_log", columns=columns, data=rows, step=step)
            if "tensorboard" in trackers:
                trackers["tensorboard"].writer.add_text("training_log", "    " + text.replace("\n", "\n    "), step)
            if "mlflow" in trackers:
                import mlflow

                mlflow.log_text(text + "\n", "training_log.txt")

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
        with self._guarded("logging the run files") as trackers:
            if "mlflow" in trackers:  # W&B and TensorBoard keep their own copies
                import mlflow

                for path in (paths.summary, paths.metrics, paths.flops, paths.flow, paths.training_log, paths.report):
                    if path.is_file():
                        mlflow.log_artifact(str(path))

    def log_confusion_matrix(self, confusion: np.ndarray, class_names, step: int) -> None:
        """On W&B, also the interactive confusion matrix (rebuilt exactly from the counts)."""
        with self._guarded("logging the interactive confusion matrix") as trackers:
            if "wandb" in trackers:
                import wandb

                true_idx, pred_idx = np.nonzero(confusion)
                counts = confusion[true_idx, pred_idx]
                y_true, preds = np.repeat(true_idx, counts).tolist(), np.repeat(pred_idx, counts).tolist()
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
