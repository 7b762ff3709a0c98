"""Experiment tracking through Accelerate's trackers; the only module that imports wandb.

Two promises:

- W&B never blocks or crashes a run. Without credentials (or without a route
  to the W&B server) the run goes offline into `<output_dir>/wandb` and says so
  in one line; `wandb sync` uploads it later.
- A tracker that fails (at start or mid-run) is reported once and switched off;
  training goes on and the local files stay complete.
"""

from __future__ import annotations

import json
import netrc
import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from lab2 import tracker_media
from lab2.plots import figure_to_array
from lab2.tracker_choice import parse_report_to

WANDB_RUN_FILE = "wandb_run.json"  # keeps the run id, so a resumed run continues the same W&B run
MLFLOW_DIR = "mlruns"  # the local MLflow file store, inside the run folder
MLFLOW_RUN_FILE = "mlflow_run.json"  # the MLflow run id, for the same reason
_OWN_MLFLOW_URIS: set[str] = set()  # the file stores this process pointed MLflow at


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "shared", "run")  # what wandb itself accepts
DEFAULT_INIT_TIMEOUT_S = 10.0  # --wandb_init_timeout_s


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(_base_url()).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _malformed_base_url() -> str | None:
    """Why WANDB_BASE_URL is unusable (wandb's own validation, which otherwise fails inside wandb.init), or None."""
    if not os.environ.get("WANDB_BASE_URL"):
        return None
    import wandb

    url = os.environ["WANDB_BASE_URL"]
    try:
        wandb.Settings(base_url=url)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not 0 < (parsed.port or 443) < 65536:
            raise ValueError("not an http(s) address")
    except Exception as exc:  # pydantic's ValidationError, urlparse's ValueError for a bad port
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        why = next((line for line in lines if line.startswith("Input")), lines[0]).split(" [type=")[0]
        return f"WANDB_BASE_URL {url!r} is malformed ({why[:100]})"
    return None


def _wandb_answers(timeout_s: float) -> bool:
    """Whether the W&B server gives any HTTP answer within `timeout_s` (a server that accepts and never answers does not)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(_base_url().rstrip("/") + "/healthz", timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP error status is still an answer
    except (OSError, ValueError):  # refused, timed out, DNS, TLS, a malformed address
        return False


def sanitize_wandb_environment() -> list[str]:
    """Remove W&B variables wandb would crash on (an empty or unknown WANDB_MODE, a malformed WANDB_BASE_URL).

    Returns what was removed and why; call before choose_wandb_mode, on every process.
    """
    notes = []
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode.strip().lower() not in WANDB_MODES:
        del os.environ["WANDB_MODE"]
        if mode.strip():
            notes.append(f"WANDB_MODE {mode!r} is not one of {', '.join(WANDB_MODES)}; ignoring it")
    problem = _malformed_base_url()
    if problem:
        del os.environ["WANDB_BASE_URL"]  # wandb validates it even offline
        notes.append(problem)
    return notes


def choose_wandb_mode(probe_timeout_s: float = 3.0) -> tuple[str, str | None]:
    """(mode, reason): 'online', or 'offline'/'disabled' with the one-line reason to print (None when asked for)."""
    notes = sanitize_wandb_environment()
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun"):
        return "offline" if mode == "dryrun" else mode, "; ".join(notes) or None
    if any("WANDB_BASE_URL" in note for note in notes):
        return "offline", "; ".join(notes)
    if not _has_wandb_credentials():
        return "offline", "; ".join([*notes, "no W&B credentials (WANDB_API_KEY or `wandb login`)"])
    if not _wandb_answers(probe_timeout_s):
        return "offline", "; ".join([*notes, f"the W&B server {_base_url()} cannot be reached (no answer within {probe_timeout_s:g} s)"])
    return "online", "; ".join(notes) or None


def _wandb_init_kwargs(output_dir: Path, run_name: str, mode: str, resume: bool, init_timeout_s: float) -> dict:
    import wandb

    record = output_dir / WANDB_RUN_FILE
    run_id = None
    if resume and record.exists():
        try:
            run_id = json.loads(record.read_text())["id"]
        except (OSError, ValueError, KeyError, TypeError):
            run_id = None  # a damaged record: a new W&B run rather than a crash
    run_id = run_id if isinstance(run_id, str) and run_id.isalnum() else uuid.uuid4().hex[:8]
    record.write_text(json.dumps({"id": run_id}))
    return {
        "name": run_name,
        "id": run_id,
        "resume": "allow",
        "dir": str(output_dir),
        "mode": mode,
        # Online start-up is bounded by --wandb_init_timeout_s; past it Tracking.start falls back to offline.
        "settings": wandb.Settings(init_timeout=init_timeout_s, silent=True),
    }


def log_with_for(report_to: str) -> list[str] | None:
    """The Accelerator's `log_with` for --report_to (a name, a comma list, all or none)."""
    return parse_report_to(report_to) or None


def _mlflow_init_kwargs(output_dir: Path, run_name: str, resume: bool) -> dict:
    """A local MLflow file store under the run folder (no server), unless MLFLOW_TRACKING_URI names one."""
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not user_uri or user_uri in _OWN_MLFLOW_URIS:  # set_tracking_uri exports the variable: an earlier run's is not the user's
        # MLflow 3 keeps the file store only on request; it is what needs no server and no database packages.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (output_dir / MLFLOW_DIR).resolve().as_uri()
        _OWN_MLFLOW_URIS.add(uri)
        mlflow.set_tracking_uri(uri)
    record = output_dir / MLFLOW_RUN_FILE
    kwargs = {"run_name": run_name}
    if resume and record.exists():  # continue the same MLflow run, as W&B does
        kwargs["run_id"] = json.loads(record.read_text())["id"]
    return kwargs


def offline_notice(reason: str, output_dir: Path) -> str:
    return f"W&B: {reason}; logging offline to {output_dir / 'wandb'} (upload later with `wandb sync {output_dir / 'wandb'}/offline-run-*`)."


def tracker_init_kwargs(report_to: str, output_dir: Path, run_name: str, resume: bool,
                        init_timeout_s: float = DEFAULT_INIT_TIMEOUT_S) -> tuple[dict, str | None]:
    """(init_kwargs for init_trackers, notice line or None). Call on the main process after output_dir exists.

    The whole W&B start-up is bounded: the server must answer an HTTP request within
    min(3 s, init_timeout_s), and wandb.init gets init_timeout_s; a server that
    accepts connections and never answers costs at most that, then the run is offline.
    """
    trackers = parse_report_to(report_to)
    kwargs, notice = {}, None
    if "mlflow" in trackers:
        kwargs["mlflow"] = _mlflow_init_kwargs(output_dir, run_name, resume)
    if "wandb" not in trackers:
        return kwargs, None
    mode, reason = choose_wandb_mode(min(3.0, init_timeout_s))
    if reason:
        notice = offline_notice(reason, output_dir) if mode == "offline" else f"W&B: {reason}."
    kwargs["wandb"] = _wandb_init_kwargs(output_dir, run_name, mode, resume, init_timeout_s)
    return kwargs, notice


class Tracking:
    """Guards every tracker call: the first failure is reported once and tracking stops; training does not."""

    def __init__(self, accelerator, printer=print):
        self.accelerator = accelerator
        self.printer = printer
        self.active = bool(accelerator.log_with) and accelerator.is_main_process
        self._noted: set[str] = set()  # one-time notes already printed

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
            self.printer(f"tracking: {action} failed ({type(exc).__name__}: {exc}); tracking is off for the rest of the run, local files are still written.")

    def start(self, project_name: str, config: dict, init_kwargs: dict, run_folder: Path | None = None) -> None:
        """Start the trackers; an online W&B start that fails or times out falls back to offline, in one line."""
        # init_trackers is collective-free, but only the main process has real trackers.
        if not self.accelerator.log_with:
            return
        try:
            self.accelerator.init_trackers(project_name, config=None, init_kwargs=init_kwargs)
        except Exception as exc:
            self._fall_back(project_name, init_kwargs, exc)
        if not self.active:
            return
        # Stored per tracker: a resumed MLflow run refuses changed parameter values, which would stop every tracker.
        self._each_tracker("storing the configuration", lambda tracker: tracker_media.store_config(tracker, config))
        if run_folder is not None and "mlflow" in self.tracker_names:  # so a resumed run continues this MLflow run
            run_id = self.accelerator.get_tracker("mlflow", unwrap=True).info.run_id
            (Path(run_folder) / MLFLOW_RUN_FILE).write_text(json.dumps({"id": run_id}))

    def _fall_back(self, project_name: str, init_kwargs: dict, exc: Exception) -> None:
        """After a failed start: keep the trackers that started, and W&B offline in place of a failed online start."""
        failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no message'}"
        self._drop_unstarted_trackers()
        wandb_kwargs = init_kwargs.get("wandb")
        if self.accelerator.is_main_process and wandb_kwargs and wandb_kwargs.get("mode") == "online":
            try:
                self._start_wandb_offline(project_name, wandb_kwargs)
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

    def _start_wandb_offline(self, project_name: str, wandb_kwargs: dict) -> None:
        from accelerate.tracking import WandBTracker

        # A new run id: wandb keeps the failed online one registered ("run ID is in use").
        run_id = uuid.uuid4().hex[:8]
        (Path(wandb_kwargs["dir"]) / WANDB_RUN_FILE).write_text(json.dumps({"id": run_id}))
        tracker = WandBTracker(project_name, **{**wandb_kwargs, "mode": "offline", "id": run_id})
        tracker.start()
        self.accelerator.trackers.append(tracker)

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
        self._each_tracker("logging images", lambda tracker: tracker_media.send_figures(tracker, arrays, step))

    def log_histograms(self, histograms: dict, step: int) -> None:
        """Log lab2.flow.Histogram values (`gradients/<param>`, `parameters/<param>`); trackers without histograms skip them, with one note."""
        if not self.active or not histograms:
            return

        def send(tracker):
            if not tracker_media.send_histograms(tracker, histograms, step):
                self._note_once(f"histograms-{tracker.name}", f"note: {tracker.name} has no histograms; gradient and weight histograms go to {' and '.join(tracker_media.HISTOGRAM_TRACKERS)} only.")

        self._each_tracker("logging histograms", send)

    def prepare_flow_images(self, arrays: dict, step: int) -> dict:
        """Encode one snapshot's flow images for each tracker; thread-safe, meant for the figure worker's thread."""
        return tracker_media.prepare_flow_images(self.tracker_names, arrays, step)

    def log_flow_images(self, prepared: dict, snapshot_step: int, reached_step: int) -> None:
        """Send images made by `prepare_flow_images` (on the main thread: W&B steps must not go backwards)."""
        if self.active:
            self._each_tracker("logging flow images", lambda tracker: tracker_media.send_flow_images(tracker, prepared, snapshot_step, reached_step))

    def log_model(self, run_name: str, files: list[Path], metadata: dict) -> None:
        """The final model (model.safetensors + config.json) as a W&B artifact of type `model` and MLflow artifacts."""
        if self.active:
            self._each_tracker("logging the model artifact", lambda tracker: tracker_media.send_model(tracker, run_name, files, metadata))

    def log_summary(self, summary: dict, step: int) -> None:
        """The run's summary numbers (W&B run summary, MLflow metrics)."""
        if self.active:
            self._each_tracker("logging the summary", lambda tracker: tracker_media.send_summary(tracker, summary, step))

    def log_training_log(self, metrics: list[dict], text: str, step: int) -> None:
        """The Table-1 training log (epoch, train loss/acc, val loss/acc) as a table or text."""
        columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
        rows = [[m["epoch"], m["train_loss"], m["train_acc"], m["eval_loss"], m["eval_acc"]] for m in metrics]
        if self.active:
            self._each_tracker("logging the training log", lambda tracker: tracker_media.send_training_log(tracker, columns, rows, text, step))

    def log_results(self, run_name: str, paths, summary: dict, metrics: list[dict], training_log: str, step: int) -> None:
        """Everything a finished run gives the trackers besides figures: the model artifact (model.safetensors +
        config.json, with final/best accuracy, GFLOPs, params and model name), the summary, the Table-1 log,
        and (MLflow) the run's other files. `paths` is the run's lab2.outputs.RunPaths."""
        metadata = {
            "model": json.loads(paths.config.read_text())["model"],
            **{key: summary[key] for key in ("final_eval_acc", "best_eval_acc", "gflops_per_sample", "params")},
        }
        self.log_model(run_name, [paths.model, paths.config], metadata)
        self.log_summary(summary, step)
        self.log_training_log(metrics, training_log, step)
        self.log_run_files([paths.summary, paths.metrics, paths.flops, paths.flow, paths.training_log, paths.report])

    def log_run_files(self, files: list[Path]) -> None:
        """The run folder's other files, for trackers that keep files (MLflow)."""
        if self.active:
            self._each_tracker("logging the run files", lambda tracker: tracker_media.send_run_files(tracker, files))

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
        """Close the trackers and the process group (Accelerate's end_training); never raises."""
        try:
            self.accelerator.end_training()
        except Exception as exc:
            if self.accelerator.is_main_process:
                self.printer(f"tracking: closing the tracker failed ({type(exc).__name__}: {exc}).")
