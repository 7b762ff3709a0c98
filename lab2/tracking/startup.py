"""Before the trackers start: the caches, W&B's mode, each tracker's init kwargs and the variables they read.

Only the standard library is imported at the top: `redirect_unwritable_caches` must run before wandb or
matplotlib is imported. What the run itself points a variable at (MLflow's store, W&B's staging folder) is
remembered, so a second run in the same process (lab2.train twice) does not take it for the user's choice.
"""

from __future__ import annotations

import json
import netrc
import os
import pwd
import tempfile
import uuid
from collections.abc import MutableMapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from lab2.config import TrainConfig, parse_report_to

WANDB_RUN_FILE = "wandb_run.json"  # the run ids, so a resumed run continues the same W&B / MLflow run
MLFLOW_RUN_FILE = "mlflow_run.json"
MLFLOW_DIR = "mlruns"  # the MLflow file store lab2 makes, inside the run folder
# MLflow retries a refused connection 7 times with backoff (246 s measured on a closed port) and gives a silent
# server 120 s a request: its start-up gets these instead, unless the user set them.
MLFLOW_START_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Variable -> the folder it replaces (relative to HOME) and its subfolder in the temporary one.
REDIRECTED = {
    "XDG_CACHE_HOME": (".cache", "cache"),  # wandb-core's logs (Go's os.UserCacheDir), and others'
    "WANDB_CACHE_DIR": (".cache/wandb", "wandb-cache"),
    "WANDB_CONFIG_DIR": (".config/wandb", "wandb-config"),
    "MPLCONFIGDIR": (".config/matplotlib", "matplotlib"),
}
_OWN_VALUES: set[str] = set()  # what this process set: an earlier run's value is not the user's


def _run_default(variable: str, value: str) -> str:
    """The user's value of `variable`, or else `value`, set there for the run."""
    current = os.environ.get(variable, "").strip()
    if current and current not in _OWN_VALUES:
        return current
    _OWN_VALUES.add(value)
    os.environ[variable] = value
    return value


def can_write(folder: Path) -> bool:
    """Whether `folder`, or the nearest folder above it that exists, is writable."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK)


def redirect_unwritable_caches(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Point every cache variable whose folder cannot be written at one temporary folder; the note, or None.

    wandb-core writes its logs to stderr (17 INFO lines) when Go finds no cache folder: under a read-only HOME,
    and when HOME is unset, which gets the account's home folder, as Python's own Path.home() finds it."""
    if not env.get("HOME"):
        env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    home = Path(env["HOME"])
    unwritable = [name for name, (path, _) in REDIRECTED.items() if not can_write(Path(env.get(name) or home / path))]
    if not unwritable:
        return None
    folder = Path(tempfile.mkdtemp(prefix="lab2-cache-"))
    for name in unwritable:
        env[name] = str(folder / REDIRECTED[name][1])
    return f"note: {home} cannot be written, so this run's caches (W&B, matplotlib) go to {folder}."


def _has_wandb_credentials() -> bool:
    """WANDB_API_KEY, or the netrc entry `wandb login` writes (wandb.login may prompt or write files)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_wandb_mode() -> tuple[str, str | None]:
    """(mode, the reason to print or None). An empty or unknown WANDB_MODE and a malformed WANDB_BASE_URL, which
    wandb.init refuses even offline, are removed and named (wandb's own Settings judge them); a malformed URL means
    offline, as the run was meant for a server of the user's own. Whether a server answers is init_timeout's job."""
    import wandb
    from pydantic import ValidationError  # what wandb.Settings raises

    notes, offline = [], False
    for variable, setting in (("WANDB_MODE", "mode"), ("WANDB_BASE_URL", "base_url")):
        value = os.environ.get(variable)
        try:
            if value is not None:
                wandb.Settings(**{setting: value})
        except ValidationError as exc:
            del os.environ[variable]
            if value.strip():
                offline |= setting == "base_url"
                notes.append(f"{variable} {value!r} is malformed ({exc.errors()[0]['msg'][:100]}); ignoring it")
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun"):
        return "offline" if mode == "dryrun" else mode, "; ".join(notes) or None
    if not _has_wandb_credentials():
        offline = True
        notes.append("no W&B credentials (WANDB_API_KEY or `wandb login`)")
    return "offline" if offline else "online", "; ".join(notes) or None


def recorded_run_id(record: Path) -> str | None:
    """The run id in a record lab2 wrote (`{"id": ...}`); None when it is missing or damaged."""
    try:
        run_id = json.loads(record.read_text(encoding="utf-8"))["id"]
    except (OSError, ValueError, LookupError, TypeError):
        return None
    return run_id if isinstance(run_id, str) and run_id.isalnum() else None


def record_run(record: Path, run_id: str | None = None) -> str:
    """Write the run id (a new one when None) to `record`; returns it."""
    run_id = run_id or uuid.uuid4().hex[:8]
    record.write_text(json.dumps({"id": run_id}))
    return run_id


def wandb_project(project_name: str) -> str:
    """WANDB_PROJECT names the project when --project_name is left at its default (Accelerate passes the
    project to wandb.init, which would otherwise override the variable); --project_name wins."""
    return (project_name == TrainConfig.project_name and os.environ.get("WANDB_PROJECT", "").strip()) or project_name


@contextmanager
def bounded_mlflow_start():
    """MLFLOW_START_LIMITS while the trackers start (MLflow reads them at every request)."""
    added = {name: value for name, value in MLFLOW_START_LIMITS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def offline_notice(reason: str, output_dir: Path) -> str:
    wandb_dir = output_dir / "wandb"
    return f"W&B: {reason}; logging offline to {wandb_dir} (upload later with `wandb sync {wandb_dir}/offline-run-*`)."


def tracker_init_kwargs(
    report_to: str,
    output_dir: Path,
    run_name: str,
    resume: bool,
    init_timeout_s: float = TrainConfig.wandb_init_timeout_s,
) -> tuple[dict, str | None]:
    """(init_kwargs for Tracking.start, notice lines or None). Call on the main process after output_dir exists.

    MLflow logs to the user's MLFLOW_TRACKING_URI (a server, a database, a folder or file: URI), else to a file
    store in the run folder. A resume continues the W&B and MLflow runs recorded in the run folder; a damaged
    record costs the link to the old run (a new one starts, MLflow's with a warning), not the run."""
    trackers = parse_report_to(report_to)
    kwargs, notices = {}, []
    if "mlflow" in trackers:
        import mlflow

        uri = _run_default("MLFLOW_TRACKING_URI", (output_dir / MLFLOW_DIR).resolve().as_uri())
        if urlparse(uri).scheme in ("", "file"):
            # MLflow 3 keeps a file store only on request; it is the store that needs no server and no database.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        record = output_dir / MLFLOW_RUN_FILE
        run_id = recorded_run_id(record) if resume else None
        kwargs["mlflow"] = {"run_name": run_name, **({"run_id": run_id} if run_id else {})}
        if resume and record.exists() and not run_id:
            notices.append(f"warning: MLflow: {record} is damaged; this run logs into a new MLflow run.")
    if "wandb" in trackers:
        import wandb

        mode, reason = choose_wandb_mode()
        if reason:
            notices.append(offline_notice(reason, output_dir) if mode == "offline" else f"W&B: {reason}.")
        record = output_dir / WANDB_RUN_FILE
        run_id = record_run(record, recorded_run_id(record) if resume else None)
        # wandb stages artifact files and manifests (the model, tables, the confusion matrix) for `wandb sync` under
        # WANDB_DATA_DIR, ~/.local/share/wandb by default: owner-only, and lost to a copied run folder.
        _run_default("WANDB_DATA_DIR", str(output_dir / "wandb"))
        settings = wandb.Settings(init_timeout=init_timeout_s, silent=True)  # past it, Tracking.start goes offline
        kwargs["wandb"] = dict(name=run_name, id=run_id, resume="allow", dir=str(output_dir), mode=mode)
        kwargs["wandb"]["settings"] = settings
    return kwargs, "\n".join(notices) or None
