"""Before the trackers start: caches under an unwritable HOME, W&B's mode, each tracker's init kwargs.

- `redirect_unwritable_caches` runs before wandb or matplotlib is imported (so this module imports only the
  standard library at its top): under a read-only HOME, wandb's core process logs 17 INFO lines to stderr and
  matplotlib two more; their caches go to one temporary folder instead, said in one line.
- W&B goes online only with credentials; wandb's own settings bound the rest: `init_timeout`
  (--wandb_init_timeout_s), after which wandb.init raises and lab2.tracking.trackers starts it again with
  `start_wandb_offline`, and `dir`, the run folder. Offline runs go into `<output_dir>/wandb`, said in one line
  (`wandb sync` uploads them later). The run id is kept in the run folder so a resumed run continues it.
- MLflow gets a local file store under the run folder unless MLFLOW_TRACKING_URI names a server, and a resumed
  run continues the same MLflow run.
"""

from __future__ import annotations

import json
import netrc
import os
import tempfile
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlparse

from lab2.config import parse_report_to

WANDB_RUN_FILE = "wandb_run.json"  # keeps the run id, so a resumed run continues the same W&B run
MLFLOW_DIR = "mlruns"  # the local MLflow file store, inside the run folder
MLFLOW_RUN_FILE = "mlflow_run.json"  # the MLflow run id, for the same reason
_OWN_MLFLOW_URIS: set[str] = set()  # the file stores this process pointed MLflow at
DEFAULT_INIT_TIMEOUT_S = 10.0  # --wandb_init_timeout_s
# Variable -> the folder it replaces (relative to HOME) and its subfolder in the temporary one.
REDIRECTED = {
    "XDG_CACHE_HOME": (".cache", "cache"),  # wandb-core's logs (Go's os.UserCacheDir), and others'
    "WANDB_CACHE_DIR": (".cache/wandb", "wandb-cache"),
    "WANDB_CONFIG_DIR": (".config/wandb", "wandb-config"),
    "MPLCONFIGDIR": (".config/matplotlib", "matplotlib"),
}


def can_write(folder: Path) -> bool:
    """Whether `folder` could be written: it, or the nearest folder above it that exists, is writable."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK)


def redirect_unwritable_caches(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Point every cache variable whose folder cannot be written at a temporary folder; the note, or None.
    Variables the user set to a writable folder stay."""
    home = Path(env.get("HOME") or Path.home())
    unwritable = [
        name for name, (default, _) in REDIRECTED.items() if not can_write(Path(env.get(name) or home / default))
    ]
    if not unwritable:
        return None
    folder = Path(tempfile.mkdtemp(prefix="lab2-cache-"))
    for name in unwritable:
        env[name] = str(folder / REDIRECTED[name][1])
    return f"note: {home} cannot be written, so this run's caches (W&B, matplotlib) go to {folder}."


def _has_wandb_credentials() -> bool:
    """WANDB_API_KEY, or an entry for the W&B host in the netrc file `wandb login` writes (wandb's own lookup
    without wandb: `wandb.api.api_key` is deprecated in wandb 0.31, and `wandb.login` may prompt or write files)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def sanitize_wandb_environment() -> list[str]:
    """Remove the W&B variables that wandb.init refuses even offline (an empty or unknown WANDB_MODE, a malformed
    WANDB_BASE_URL), checked by wandb's own Settings; one note per removed non-empty value."""
    import wandb

    notes = []
    for variable, setting in (("WANDB_MODE", "mode"), ("WANDB_BASE_URL", "base_url")):
        value = os.environ.get(variable)
        if value is None:
            continue
        try:
            wandb.Settings(**{setting: value})
        except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, whose text is the reason
            del os.environ[variable]
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            why = next((line for line in lines if line.startswith("Input")), lines[0]).split(" [type=")[0]
            notes += [f"{variable} {value!r} is malformed ({why[:100]}); ignoring it"] if value.strip() else []
    return notes


def choose_wandb_mode() -> tuple[str, str | None]:
    """(mode, reason): 'online', or 'offline'/'disabled' with the one-line reason to print (None when asked for).

    A malformed WANDB_BASE_URL means offline: the run was meant for a server of the user's own, not for the
    public one. Whether an online server answers is left to wandb.init and its init_timeout."""
    notes = sanitize_wandb_environment()
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun"):
        return "offline" if mode == "dryrun" else mode, "; ".join(notes) or None
    if any(note.startswith("WANDB_BASE_URL") for note in notes):
        return "offline", "; ".join(notes)
    if not _has_wandb_credentials():
        return "offline", "; ".join([*notes, "no W&B credentials (WANDB_API_KEY or `wandb login`)"])
    return "online", "; ".join(notes) or None


def _recorded_run_id(record: Path) -> tuple[str | None, str | None]:
    """(run id, None) from a run record lab2 wrote (`{"id": ...}`), or (None, what is wrong with it)."""
    try:
        run_id = json.loads(record.read_text(encoding="utf-8"))["id"]
    except (OSError, ValueError) as exc:
        return None, "not JSON" if isinstance(exc, ValueError) else f"unreadable: {exc.strerror}"
    except (KeyError, TypeError, IndexError):
        return None, "no run 'id' in it"
    return (run_id, None) if isinstance(run_id, str) and run_id.isalnum() else (None, f"its id is {run_id!r}")


def _record_wandb_run(output_dir: Path, run_id: str) -> None:
    (output_dir / WANDB_RUN_FILE).write_text(json.dumps({"id": run_id}))


def _wandb_init_kwargs(output_dir: Path, run_name: str, mode: str, resume: bool, init_timeout_s: float) -> dict:
    import wandb

    record = output_dir / WANDB_RUN_FILE
    # A damaged record costs the link to the old W&B run (a new one starts), not the run.
    run_id = (resume and record.exists() and _recorded_run_id(record)[0]) or uuid.uuid4().hex[:8]
    _record_wandb_run(output_dir, run_id)
    return {
        "name": run_name,
        "id": run_id,
        "resume": "allow",
        "dir": str(output_dir),
        "mode": mode,
        # Online start-up is bounded by --wandb_init_timeout_s; past it Tracking.start falls back to offline.
        "settings": wandb.Settings(init_timeout=init_timeout_s, silent=True),
    }


def _mlflow_init_kwargs(output_dir: Path, run_name: str, resume: bool) -> tuple[dict, str | None]:
    """A local MLflow file store under the run folder (no server), unless MLFLOW_TRACKING_URI names one;
    with a warning line when a resume's mlflow_run.json is damaged (the run then starts a new MLflow run)."""
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not user_uri or user_uri in _OWN_MLFLOW_URIS:  # set_tracking_uri exports it: an earlier run's is not the user's
        # MLflow 3 keeps the file store only on request; it is what needs no server and no database packages.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (output_dir / MLFLOW_DIR).resolve().as_uri()
        _OWN_MLFLOW_URIS.add(uri)
        mlflow.set_tracking_uri(uri)
    record = output_dir / MLFLOW_RUN_FILE
    kwargs, warning = {"run_name": run_name}, None
    if resume and record.exists():  # continue the same MLflow run, as W&B does
        run_id, problem = _recorded_run_id(record)
        if run_id:
            kwargs["run_id"] = run_id
        else:
            warning = f"warning: MLflow: {record} is damaged ({problem}); this run logs into a new MLflow run."
    return kwargs, warning


def offline_notice(reason: str, output_dir: Path) -> str:
    """The one line saying W&B logs offline, why, where, and how to upload it later."""
    return (
        f"W&B: {reason}; logging offline to {output_dir / 'wandb'} "
        f"(upload later with `wandb sync {output_dir / 'wandb'}/offline-run-*`)."
    )


def tracker_init_kwargs(
    report_to: str, output_dir: Path, run_name: str, resume: bool, init_timeout_s: float = DEFAULT_INIT_TIMEOUT_S
) -> tuple[dict, str | None]:
    """(init_kwargs for init_trackers, notice lines or None). Call on the main process after output_dir exists."""
    trackers = parse_report_to(report_to)
    kwargs, notices = {}, []
    if "mlflow" in trackers:
        kwargs["mlflow"], warning = _mlflow_init_kwargs(output_dir, run_name, resume)
        notices += [warning] if warning else []
    if "wandb" in trackers:
        mode, reason = choose_wandb_mode()
        if reason:
            notices.append(offline_notice(reason, output_dir) if mode == "offline" else f"W&B: {reason}.")
        kwargs["wandb"] = _wandb_init_kwargs(output_dir, run_name, mode, resume, init_timeout_s)
    return kwargs, "\n".join(notices) or None


def start_wandb_offline(project_name: str, wandb_kwargs: dict):
    """Start W&B offline with the kwargs of an online start that failed; returns the started Accelerate tracker."""
    from accelerate.tracking import WandBTracker

    # A new run id: wandb keeps the failed online one registered ("run ID is in use").
    run_id = uuid.uuid4().hex[:8]
    _record_wandb_run(Path(wandb_kwargs["dir"]), run_id)
    tracker = WandBTracker(project_name, **{**wandb_kwargs, "mode": "offline", "id": run_id})
    tracker.start()
    return tracker
