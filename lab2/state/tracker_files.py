"""The files W&B and MLflow write for lab2's runs inside a run folder, found by name (--overwrite_output_dir's list).

Each tracker keeps one folder per run (`wandb/offline-run-*/`, `mlruns/<experiment>/<run id>/`). A user may put
files of their own into those folders, so a tracker's run folder is never removed whole: only the names the
tracker writes there are lab2's (lab2.state.run_folder removes them, then the folders left empty).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from lab2.config import TrainConfig

# W&B: wandb/<run folder>/ and the run's files inside it (offline or synced), by wandb 0.2x's names.
WANDB_TOP = re.compile(r"^(debug(-internal|-core)?\.log|latest-run)$")
WANDB_RUN_DIR = re.compile(r"^(offline-)?run-\d{8}_\d{6}-\w+$")
WANDB_RUN_FILE = re.compile(
    r"^(run-\w+\.wandb(\.synced)?"
    r"|files/(output\.log|requirements\.txt|config\.yaml|wandb-metadata\.json|wandb-summary\.json|diff\.patch"
    r"|conda-environment\.yaml)"
    r"|files/media/.+_\d+_[0-9a-f]{20}(\.\w+)+"  # logged media: <key>_<step>_<hash>.png, .table.json
    r"|logs/debug(-internal|-core)?\.log)$"
)

# MLflow's local file store: mlruns/<experiment id>/meta.yaml and mlruns/<experiment id>/<run id>/.
MLFLOW_EXPERIMENT_DIR = re.compile(r"^\d+$")
MLFLOW_RUN_DIR = re.compile(r"^[0-9a-f]{32}$")
MLFLOW_TAG = re.compile(r"^tags/mlflow\.[\w.]+$")
MLFLOW_IMAGE = re.compile(
    r"^artifacts/images/[\w./-]+\+step\+\d+\+timestamp\+\d+\+[0-9a-f-]{36}(\+compressed\.webp|\.png)$"
)
MLFLOW_METRIC_LINE = re.compile(r"^\d+ \S+ -?\d+$")  # "<timestamp ms> <value> <step>", one line per logged value
PARAMS = {f"params/{field.name}" for field in dataclasses.fields(TrainConfig)}


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]


def wandb_files(wandb: Path) -> list[Path]:
    """W&B's files under `<run>/wandb`: its logs and links at the top and, in each run folder, its own names."""
    if not wandb.is_dir():
        return []
    found = [p for p in wandb.iterdir() if WANDB_TOP.match(p.name)]
    for run in (p for p in wandb.iterdir() if p.is_dir() and not p.is_symlink() and WANDB_RUN_DIR.match(p.name)):
        found += [p for p in _files(run) if WANDB_RUN_FILE.match(p.relative_to(run).as_posix())]
    return found


def _is_metric_record(path: Path) -> bool:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and all(MLFLOW_METRIC_LINE.match(line) for line in lines)


def _is_lab2_artifact(artifact: str, names: set[str]) -> bool:
    """lab2 logs the run folder's files at the artifacts' top, the model under model/, figures under figures/."""
    folder, _, name = artifact.rpartition("/")
    return folder in ("", "model", "figures") and name in names


def mlflow_files(mlruns: Path, artifact_names: set[str]) -> list[Path]:
    """MLflow's files for lab2's runs under `<run>/mlruns`: each experiment's and run's meta.yaml, the run's
    mlflow.* tags, the flags as params, metric records (known by their content) and the artifacts lab2 logs
    (`artifact_names`: the run folder's own file names, figures/, model/ and the flow images)."""
    if not mlruns.is_dir():
        return []
    found = []
    for experiment in (p for p in mlruns.iterdir() if p.is_dir() and MLFLOW_EXPERIMENT_DIR.match(p.name)):
        found.append(experiment / "meta.yaml")
        for run in (p for p in experiment.iterdir() if p.is_dir() and MLFLOW_RUN_DIR.match(p.name)):
            for path in _files(run):
                name = path.relative_to(run).as_posix()
                artifact = name.removeprefix("artifacts/")
                if (
                    name in ("meta.yaml", *PARAMS)
                    or MLFLOW_TAG.match(name)
                    or MLFLOW_IMAGE.match(name)
                    or (name.startswith("artifacts/") and _is_lab2_artifact(artifact, artifact_names))
                    or (name.startswith("metrics/") and _is_metric_record(path))
                ):
                    found.append(path)
    return [p for p in found if p.exists()]
