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

from lab2.plots import figure_to_array

WANDB_RUN_FILE = "wandb_run.json"  # keeps the run id, so a resumed run continues the same W&B run


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


def offline_notice(reason: str, output_dir: Path) -> str:
    return f"W&B: {reason}; logging offline to {output_dir / 'wandb'} (upload later with `wandb sync {output_dir / 'wandb'}/offline-run-*`)."


def log_with_for(report_to: str) -> str | None:
    """The Accelerator's `log_with` for --report_to."""
    return None if report_to == "none" else report_to


def tracker_init_kwargs(report_to: str, output_dir: Path, run_name: str, resume: bool,
                        init_timeout_s: float = DEFAULT_INIT_TIMEOUT_S) -> tuple[dict, str | None]:
    """(init_kwargs for init_trackers, notice line or None). Call on the main process after output_dir exists.

    The whole W&B start-up is bounded: the server must answer an HTTP request within
    min(3 s, init_timeout_s), and wandb.init gets init_timeout_s; a server that
    accepts connections and never answers costs at most that, then the run is offline.
    """
    if report_to != "wandb":
        return {}, None
    mode, reason = choose_wandb_mode(min(3.0, init_timeout_s))
    notice = None
    if reason:
        notice = offline_notice(reason, output_dir) if mode == "offline" else f"W&B: {reason}."
    return {"wandb": _wandb_init_kwargs(output_dir, run_name, mode, resume, init_timeout_s)}, notice


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
        """Start the trackers; an online W&B start that fails or times out falls back to offline, in one line."""
        # init_trackers is collective-free, but only the main process has real trackers.
        if not self.accelerator.log_with:
            return
        try:
            self.accelerator.init_trackers(project_name, config=config, init_kwargs=init_kwargs)
            return
        except Exception as exc:
            failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no message'}"
        self._drop_unstarted_trackers()
        wandb_kwargs = init_kwargs.get("wandb")
        if self.accelerator.is_main_process and wandb_kwargs and wandb_kwargs.get("mode") == "online":
            try:
                self._start_wandb_offline(project_name, config, wandb_kwargs)
                self.printer(offline_notice(f"could not start online ({failure})", Path(wandb_kwargs["dir"])))
                return
            except Exception as exc:
                failure = f"{failure}; offline too: {type(exc).__name__}: {str(exc).strip()[:120]}"
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

    def _start_wandb_offline(self, project_name: str, config: dict, wandb_kwargs: dict) -> None:
        from accelerate.tracking import WandBTracker

        # A new run id: wandb keeps the failed online one registered ("run ID is in use").
        run_id = uuid.uuid4().hex[:8]
        (Path(wandb_kwargs["dir"]) / WANDB_RUN_FILE).write_text(json.dumps({"id": run_id}))
        tracker = WandBTracker(project_name, **{**wandb_kwargs, "mode": "offline", "id": run_id})
        tracker.start()
        tracker.store_init_configuration(config)
        self.accelerator.trackers.append(tracker)

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
