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
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from lab2.plots import figure_to_array

WANDB_RUN_FILE = "wandb_run.json"  # keeps the run id, so a resumed run continues the same W&B run


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the W&B server opens within `timeout_s` (never hangs longer)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def choose_wandb_mode() -> tuple[str, str | None]:
    """(mode, reason): 'online', or 'offline' with the one-line reason to print."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return "offline" if mode == "dryrun" else mode, None
    if not _has_wandb_credentials():
        return "offline", "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    if not _wandb_reachable():
        return "offline", "the W&B server cannot be reached"
    return "online", None


def _wandb_init_kwargs(output_dir: Path, run_name: str, mode: str, resume: bool) -> dict:
    import wandb

    record = output_dir / WANDB_RUN_FILE
    run_id = json.loads(record.read_text())["id"] if resume and record.exists() else uuid.uuid4().hex[:8]
    record.write_text(json.dumps({"id": run_id}))
    return {
        "name": run_name,
        "id": run_id,
        "resume": "allow",
        "dir": str(output_dir),
        "mode": mode,
        # Never wait long for the network: offline mode needs none, and online start-up gets 60 s.
        "settings": wandb.Settings(init_timeout=60, silent=True),
    }


def log_with_for(report_to: str) -> str | None:
    """The Accelerator's `log_with` for --report_to."""
    return None if report_to == "none" else report_to


def tracker_init_kwargs(report_to: str, output_dir: Path, run_name: str, resume: bool) -> tuple[dict, str | None]:
    """(init_kwargs for init_trackers, notice line or None). Call on the main process after output_dir exists."""
    if report_to != "wandb":
        return {}, None
    mode, reason = choose_wandb_mode()
    notice = None
    if reason:
        notice = f"W&B: {reason}; logging offline to {output_dir / 'wandb'} (upload later with `wandb sync {output_dir / 'wandb'}/offline-run-*`)."
    return {"wandb": _wandb_init_kwargs(output_dir, run_name, mode, resume)}, notice


class Tracking:
    """Guards every tracker call: the first failure is reported once and tracking stops; training does not."""

    def __init__(self, accelerator, printer=print):
        self.accelerator = accelerator
        self.printer = printer
        self.active = bool(accelerator.log_with) and accelerator.is_main_process

    def _guard(self, action: str, call) -> None:
        if not self.active:
            return
        try:
            call()
        except Exception as exc:  # a tracker's failure must never end a training run
            self.active = False
            self.printer(f"tracking: {action} failed ({type(exc).__name__}: {exc}); tracking is off for the rest of the run, local files are still written.")

    def start(self, project_name: str, config: dict, init_kwargs: dict) -> None:
        # init_trackers is collective-free, but only the main process has real trackers.
        if not self.accelerator.log_with:
            return
        try:
            self.accelerator.init_trackers(project_name, config=config, init_kwargs=init_kwargs)
        except Exception as exc:
            self.active = False
            if self.accelerator.is_main_process:
                self.printer(f"tracking: could not start ({type(exc).__name__}: {exc}); training goes on with local files only.")

    def log(self, values: dict, step: int) -> None:
        self._guard("logging", lambda: self.accelerator.log(values, step=step))

    def log_figures(self, figures: dict, step: int) -> None:
        """Log matplotlib figures as images under their keys."""
        if not self.active or not figures:
            return
        arrays = {key: figure_to_array(fig) for key, fig in figures.items()}

        def send():
            for tracker in self.accelerator.trackers:
                if tracker.name == "wandb":
                    tracker.log_images({k: [v] for k, v in arrays.items()}, step=step)
                elif tracker.name == "tensorboard":
                    tracker.log_images({k: v[None] for k, v in arrays.items()}, step=step, dataformats="NHWC")

        self._guard("logging images", send)

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
