"""`lab2-report RUN_A RUN_B [...] --output compare.html`: several runs on one self-contained page.

What W&B's runs table and overlaid charts show online, offline and from the run
folders alone: the curves of every run overlaid (per epoch and per minute of
training), the final metrics as a table, only the flags that differ, and each
run's confusion matrix. A folder that is not a lab2 run (no config.json in
lab2's layout) is refused in one line; a run still training is shown as far as
it got and marked "not finished".
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab2.engine.report import STYLE, _num, _pct, _read_object, _table, write_page
from lab2.errors import UserError
from lab2.explain import plots
from lab2.state.run_folder import REPORT_MARK, check_report_target
from lab2.state.run_paths import RunPaths, read_jsonl

LAB2_CONFIG_KEYS = ("model", "num_train_epochs", "learning_rate")  # every lab2 config.json has them


@dataclass
class Run:
    root: Path
    label: str
    config: dict
    summary: dict  # {} until the run finishes: summary.json is written last
    metrics: list[dict]

    @property
    def finished(self) -> bool:
        return bool(self.summary)


def read_run(folder: str | Path) -> Run:
    """A run's files, or a UserError when `folder` is not a finished or running lab2 run."""
    paths = RunPaths(folder)
    if not paths.root.is_dir():
        raise UserError(f"{paths.root} is not a folder; give the --output_dir of a lab2 run.")
    config = _read_object(paths.config, required=True)
    missing = [key for key in LAB2_CONFIG_KEYS if key not in config]
    if missing:
        raise UserError(
            f"{paths.root} is not a lab2 run: its config.json has no {missing[0]!r} flag (another tool's file?); "
            "give the --output_dir of a lab2 training run."
        )
    label = str(config.get("run_name") or paths.root.name)
    return Run(paths.root, label, config, _read_object(paths.summary), read_jsonl(paths.metrics))


def _distinct_labels(runs: list[Run]) -> None:
    """Give runs that share a run_name (lab2's default is the same for all) their folder name, then their path."""
    for rename in (lambda run: run.root.name, lambda run: str(run.root)):
        labels = [run.label for run in runs]
        for run in runs:
            if labels.count(run.label) > 1:
                run.label = rename(run)


def _figure(fig, alt: str, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _last(run: Run, key: str):
    """The latest epoch record's value of `key` (None when no epoch has it yet)."""
    values = [m.get(key) for m in run.metrics if m.get(key) is not None]
    return values[-1] if values else None


def final_metrics_rows(runs: Sequence[Run]) -> list[list[str]]:
    """One row per measure, one column per run."""
    measures = (
        ("status", lambda r: "finished" if r.finished else "not finished (running or stopped)"),
        ("epochs", lambda r: f"{len(r.metrics)} of {r.config.get('num_train_epochs', '?')}"),
        ("final eval accuracy", lambda r: _pct(r.summary.get("final_eval_acc"))),
        ("best eval accuracy", lambda r: _pct(r.summary.get("best_eval_acc"))),
        ("final eval loss", lambda r: _num(r.summary.get("final_eval_loss"), ".4f")),
        ("last epoch's eval accuracy", lambda r: _pct(_last(r, "eval_acc"))),
        ("last epoch's train accuracy", lambda r: _pct(_last(r, "train_acc"))),
        ("last epoch's train loss", lambda r: _num(_last(r, "train_loss"), ".4f")),
        ("training time (s)", lambda r: _num(sum(m.get("epoch_time_s") or 0 for m in r.metrics), ".1f")),
        ("train images/s", lambda r: _num(r.summary.get("train_images_per_s"), ".0f")),
        ("parameters", lambda r: _num(r.summary.get("params"), ",")),
        ("GFLOPs / sample", lambda r: _num(r.summary.get("gflops_per_sample"), ".4f")),
        ("device", lambda r: f"{r.summary.get('device', 'n/a')} x{r.summary.get('world_size', '?')}"),
    )
    return [[name, *(value(run) for run in runs)] for name, value in measures]


def config_difference_rows(runs: Sequence[Run]) -> list[list[str]]:
    """The flags whose values are not the same in every run (a flag one run lacks counts as different)."""
    keys = list(dict.fromkeys(key for run in runs for key in run.config))
    absent = object()
    rows = []
    for key in keys:
        values = [run.config.get(key, absent) for run in runs]
        shown = ["(absent)" if v is absent else json.dumps(v) if not isinstance(v, str) else v for v in values]
        if len(set(shown)) > 1:
            rows.append([f"--{key}", *shown])
    return rows


def _confusion(run: Run):
    """(class names, square count matrix) from summary.json, or None when it has none in lab2's layout."""
    matrix = run.summary.get("confusion_matrix")
    if not (isinstance(matrix, list) and matrix and all(isinstance(row, list) for row in matrix)):
        return None
    if any(len(row) != len(matrix) or not all(isinstance(c, int) for c in row) for row in matrix):
        return None
    names = list(run.summary.get("class_accuracy") or {})
    return (names if len(names) == len(matrix) else [str(i) for i in range(len(matrix))]), matrix


def confusion_section(runs: Sequence[Run]) -> list[str]:
    """Side-by-side confusion matrices, one figure per set of classes (runs on other data sets get their own)."""
    groups: dict[tuple[str, ...], list[tuple[str, list]]] = {}
    missing = []
    for run in runs:
        found = _confusion(run)
        if found is None:
            missing.append(run.label)
        else:
            groups.setdefault(tuple(found[0]), []).append((run.label, found[1]))
    parts = ["<h2>Confusion matrices (test split, rows: true class)</h2>"]
    for class_names, matrices in groups.items():
        fig = plots.confusion_matrices_figure(matrices, class_names)
        parts.append(_figure(fig, "confusion_matrices", "Each run's confusion matrix, shaded by the true-class rate"))
    if missing:
        parts.append(
            f"<p>No confusion matrix yet (summary.json is written at the end): {html.escape(', '.join(missing))}.</p>"
        )
    return parts


def build_comparison(run_dirs: Sequence[str | Path]) -> str:
    """The comparison page of `run_dirs` as an HTML string."""
    runs = [read_run(folder) for folder in run_dirs]
    _distinct_labels(runs)
    labels = [run.label for run in runs]
    parts = [f"<h1>lab2: {len(runs)} runs side by side</h1>"]
    parts.append(
        _table(
            ["run", "folder", "model", "status"],
            [
                [run.label, str(run.root), run.config.get("model", "?"), "finished" if run.finished else "not finished"]
                for run in runs
            ],
            left=4,
        )
    )
    parts.append("<h2>Final metrics</h2>")
    parts.append(_table(["", *labels], final_metrics_rows(runs)))
    parts.append("<h2>Loss and accuracy</h2>")
    fig = plots.comparison_curves_figure([(run.label, run.metrics) for run in runs])
    parts.append(_figure(fig, "curves", "Per epoch (top) and against training time (bottom, the sum of epoch times)"))
    differences = config_difference_rows(runs)
    parts.append("<h2>Configuration differences</h2>")
    if differences:
        parts.append(_table(["flag", *labels], differences, left=len(labels) + 1))
    else:
        parts.append("<p>Every flag has the same value in every run.</p>")
    parts += confusion_section(runs)
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>{REPORT_MARK}"
        "<title>lab2 runs side by side</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_comparison(run_dirs: Sequence[str | Path], output: str | Path | None) -> Path:
    """Write the comparison page of `run_dirs` to `output` atomically and return its path."""
    if not output:
        raise UserError("comparing runs needs --output FILE.html (where to write the page); e.g. --output compare.html")
    target = Path(output)
    if target.suffix.lower() not in (".html", ".htm"):  # never a run's config.json, metrics.jsonl or weights
        raise UserError(f"--output {target} must be an .html file; e.g. --output compare.html")
    resolved = [Path(folder).resolve() for folder in run_dirs]
    repeated = next(
        (str(folder) for folder, path in zip(run_dirs, resolved, strict=True) if resolved.count(path) > 1), None
    )
    if repeated:
        raise UserError(f"{repeated} is given more than once; name each run to compare once.")
    check_report_target(target)  # a new page, or one lab2 wrote (REPORT_MARK): the one write policy
    return write_page(target, build_comparison(run_dirs))
