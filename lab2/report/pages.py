"""lab2's two HTML pages, rendered from the jinja2 templates in templates/ and written atomically.

- `lab2-report RUN_DIR`: RUN_DIR/report.html, one run (the training writes it at its end);
- `lab2-report RUN_A RUN_B [...] --output compare.html`: several runs side by side, what W&B's runs table and
  overlaid charts show online: the curves overlaid, the final metrics, the flags that differ, each confusion matrix.

Everything comes from the run folders' files (config.json, metrics.jsonl, summary.json, flops.json,
figures/*.png). Images are inlined as base64 data URIs, so a page is one file that makes no request, readable
offline and printable to PDF. Reading and checking the files is here; what a page says, and how it is laid
out, is in the templates (the filters num and pct print n/a for anything that is not a number).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup

from lab2.errors import UserError
from lab2.figures import CAPTIONS, RUN_FIGURES
from lab2.state.files import read_jsonl, write_text
from lab2.state.run_folder import REPORT_MARK, RunPaths, check_report_target

LAB2_CONFIG_KEYS = ("model", "num_train_epochs", "learning_rate")  # every lab2 config.json has them
CURVE_KEYS = ("epoch", "train_loss", "train_acc")  # an unfinished run's curves skip a record without them


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value, spec: str) -> str:
    """`value` formatted with `spec`, or 'n/a' when it is not a finite number (a damaged or older file)."""
    return format(value, spec) if _is_number(value) else "n/a"


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if _is_number(value) else "n/a"


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("lab2.report"),
    autoescape=True,  # every value from a run's files is text, never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals["report_mark"] = Markup(REPORT_MARK)  # how check_report_target knows a page lab2 wrote
TEMPLATES.filters.update(num=_num, pct=_pct)  # {{ value | num(".4f") }}, {{ value | pct }}


def _read_object(path: Path, required: bool = False) -> dict:
    """A run-folder JSON file that must hold an object: {} when absent (unless required), UserError when damaged."""
    if not path.exists():
        if required:
            raise UserError(f"{path.parent} is not a lab2 run folder (no {path.name}); give the --output_dir of a run.")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} is damaged ({type(exc).__name__}: {str(exc)[:100]}); restore it or re-run the training."
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged: it holds a JSON {type(data).__name__}, lab2 writes an object.")
    return data


def _image(name: str, picture, caption: str) -> dict:
    """A figure for the templates' `figure` macro; `picture` is PNG bytes or a matplotlib Figure."""
    if not isinstance(picture, bytes):
        buffer = io.BytesIO()
        picture.savefig(buffer, format="png", dpi=100)
        picture = buffer.getvalue()
    return {"name": name, "data": base64.b64encode(picture).decode("ascii"), "caption": caption}


# ------------------------------------------------------------------------------------------------ one run


def _flops_rows(flops: dict) -> list[list] | None:
    """The FLOPs table's rows, or None when flops.json does not have lab2's layout."""
    layers = flops.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        return None
    if not _is_number(flops.get("forward_flops")):
        return None
    total = max(flops["forward_flops"], 1)
    rows = []
    for layer in layers:
        shape, count = layer.get("output_shape"), layer.get("flops")
        rows.append(
            [
                layer.get("name", "?"),
                layer.get("type", "?"),
                "x".join(map(str, shape)) if isinstance(shape, list) else "?",
                _num(layer.get("params"), ","),
                _num(count, ","),
                _num(100 * count / total if _is_number(count) else None, ".2f") + "%",
            ]
        )
    return rows


def build_report(run_dir: str | Path) -> str:
    """The report page for `run_dir` as an HTML string."""
    paths = RunPaths(run_dir)
    if not paths.root.is_dir():
        raise UserError(f"{paths.root} is not a folder; give the --output_dir of a run.")
    config = _read_object(paths.config, required=True)
    summary, flops, metrics = _read_object(paths.summary), _read_object(paths.flops), read_jsonl(paths.metrics)
    figures = [
        _image(f.name, png.read_bytes(), f.caption)
        for f in RUN_FIGURES
        if (png := paths.figures / f"{f.name}.png").exists()
    ]
    drawable = [m for m in metrics if all(_is_number(m.get(key)) for key in CURVE_KEYS)]
    if not summary and drawable:  # the final figures come at the end: draw the curves so far from metrics.jsonl
        from lab2.explain.plots import curves_figure  # matplotlib only for a page that draws

        curves = curves_figure(drawable)
        figures.insert(0, _image("curves", curves, "Loss and accuracy per epoch so far (unfinished run)"))
    class_accuracy = summary.get("class_accuracy")
    return TEMPLATES.get_template("report.html.j2").render(
        run_name=config.get("run_name", paths.root.name),
        model=config["model"] if isinstance(config.get("model"), str) else "unknown",
        folder=paths.root,
        synthetic=config.get("dataset") == "fake",
        config=config,
        summary=summary,
        metrics=metrics,
        class_accuracy=class_accuracy if isinstance(class_accuracy, dict) else {},
        flops=flops,
        flops_rows=_flops_rows(flops),
        figures=figures,
    )


# ------------------------------------------------------------------------------------------- several runs


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


def build_comparison(run_dirs: Sequence[str | Path]) -> str:
    """The comparison page of `run_dirs` as an HTML string."""
    from lab2.explain import plots  # matplotlib only for a page that draws

    runs = [read_run(folder) for folder in run_dirs]
    _distinct_labels(runs)
    groups: dict[tuple[str, ...], list] = {}  # one figure per set of classes: runs on other data get their own
    missing = []
    for run in runs:
        found = _confusion(run)
        if found is None:
            missing.append(run.label)
        else:
            groups.setdefault(tuple(found[0]), []).append((run.label, found[1]))
    curves = plots.comparison_curves_figure([(run.label, run.metrics) for run in runs])
    return TEMPLATES.get_template("compare.html.j2").render(
        overview=[
            [run.label, run.root, run.config.get("model", "?"), "finished" if run.finished else "not finished"]
            for run in runs
        ],
        labels=[run.label for run in runs],
        metrics_rows=final_metrics_rows(runs),
        curves=_image("comparison_curves", curves, CAPTIONS["comparison_curves"]),
        differences=config_difference_rows(runs),
        matrices=[
            _image(
                "confusion_matrices", plots.confusion_matrices_figure(matrices, names), CAPTIONS["confusion_matrices"]
            )
            for names, matrices in groups.items()
        ],
        missing=missing,
    )


# ---------------------------------------------------------------------------------------------- writing


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report atomically to `output` (default `run_dir/report.html`) and return its path.

    It writes a new file or replaces a page lab2 wrote (lab2.state.run_folder's write policy), nothing else.
    """
    if not Path(run_dir).is_dir():  # before the target's checks, which would blame an --output never given
        raise UserError(f"{run_dir} is not a folder; give the --output_dir of a run.")
    target = Path(output) if output else RunPaths(run_dir).report
    check_report_target(target)
    return _write_page(target, build_report(run_dir))


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
    return _write_page(target, build_comparison(run_dirs))


def _write_page(target: Path, page: str) -> Path:
    """Write `page` whole through lab2.state.files' atomic writer (a fresh temporary name, removed on any failure)."""
    try:
        return write_text(target, page)
    except OSError as exc:
        raise UserError(f"cannot write {target} ({exc.strerror}); free space or choose another --output.") from None
