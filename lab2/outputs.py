"""Where a run's files live (`RunPaths`) and the small, atomic JSON/JSONL writers they use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


class RunPaths:
    """Every file a run writes, under one output folder (the layout in DESIGN.md)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    flops = property(lambda self: self.root / "flops.json")
    flow = property(lambda self: self.root / "flow.jsonl")
    figures = property(lambda self: self.root / "figures")
    model = property(lambda self: self.root / "model.safetensors")
    checkpoints = property(lambda self: self.root / "checkpoints")
    training_log = property(lambda self: self.root / "training_log.txt")
    report = property(lambda self: self.root / "report.html")
    tensorboard = property(lambda self: self.root / "tensorboard")
    wandb = property(lambda self: self.root / "wandb")

    def artefacts(self) -> list[Path]:
        """What a run writes: removed by --overwrite_output_dir (nothing else in the folder is touched)."""
        return [
            self.config, self.metrics, self.summary, self.flops, self.flow, self.figures, self.model,
            self.checkpoints, self.training_log, self.report, self.tensorboard, self.wandb,
            self.root / "wandb_run.json", self.root / "mlruns", self.root / "mlflow_run.json",
        ]


def write_json(path: str | Path, data) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def keep_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> list[dict]:
    """Rewrite a JSONL file with only the records `keep` accepts (used when resuming); return them."""
    records = [r for r in read_jsonl(path) if keep(r)]
    path = Path(path)
    if path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        tmp.replace(path)
    return records
