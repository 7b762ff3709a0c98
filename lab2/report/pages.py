"""lab2's two HTML pages: a run's report.html (the training writes it at its end; `lab2-report RUN_DIR`), and
several runs side by side (`lab2-report RUN_A RUN_B ... --output compare.html`, what W&B's runs table and overlaid
charts show online). Everything comes from the run folders' files; images are inlined as data URIs, so a page is
one file that makes no request. Reading and checking the files is here, what a page says is in templates/ (the
filters num and pct print n/a for anything that is not a number).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup

from lab2.config import RECIPES, TrainConfig
from lab2.errors import UserError
from lab2.figures import CAPTIONS, RUN_FIGURES
from lab2.state.files import read_jsonl, write_text
from lab2.state.run_folder import REPORT_MARK, RunPaths, check_report_target, marked_kind

LAB2_CONFIG_KEYS = ("model", "num_train_epochs", "learning_rate")  # every lab2 config.json has them
CURVE_KEYS = ("epoch", "train_loss", "train_acc")  # an unfinished run's curves skip a record without them


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value, spec: str) -> str:  # 'n/a' for anything not a finite number (a damaged or older file)
    return format(value, spec) if _is_number(value) else "n/a"


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if _is_number(value) else "n/a"


def _shown(value) -> str:  # a flag's value as config.json spells it (strings bare)
    return value if isinstance(value, str) else json.dumps(value)


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("lab2.report"),
    autoescape=True,  # every value from a run's files is text, never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals["report_mark"] = Markup(REPORT_MARK)  # how check_report_target knows a page lab2 wrote
TEMPLATES.filters.update(num=_num, pct=_pct, shown=_shown)  # {{ value | num(".4f") }}, {{ value | pct }}


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

    @property
    def last(self) -> dict:
        """Each key's latest value over the epoch records (None is no value: an epoch without evaluation)."""
        return {key: value for m in self.metrics for key, value in m.items() if value is not None}

    @property
    def training_time(self) -> float:
        return sum(m["epoch_time_s"] for m in self.metrics if _is_number(m.get("epoch_time_s")))

    @property
    def ran(self) -> dict:
        """Where the run ran (device, world_size, precision) and its wall_time_s: summary.json's, or an unfinished
        run's last epoch record's (so far)."""
        return self.summary or (self.metrics[-1] if self.metrics else {})

    @property
    def wall_minutes(self) -> float | None:  # None for files from before lab2 recorded it
        seconds = self.ran.get("wall_time_s")
        return seconds / 60 if _is_number(seconds) else None


def read_run(folder: str | Path) -> Run:
    """A run's files, or a UserError when `folder` is not a lab2 run (finished, running or stopped)."""
    paths = RunPaths(folder)
    if not paths.root.is_dir():
        raise UserError(f"{paths.root} is not a folder; give the --output_dir of a lab2 run.")
    config = _read_object(paths.config, required=True)
    missing = [key for key in LAB2_CONFIG_KEYS if key not in config]
    if missing and marked_kind(paths.root) != "run":  # a folder lab2 marked gets what its files hold
        raise UserError(
            f"{paths.root} is not a lab2 run: its config.json has no {missing[0]!r} flag (another tool's file?); "
            "give the --output_dir of a lab2 training run."
        )
    label = str(config.get("run_name") or paths.root.name)
    return Run(paths.root, label, config, _read_object(paths.summary), read_jsonl(paths.metrics))


def flag_sources(config: dict) -> dict[str, str]:
    """Where each flag's value comes from: 'given' (it differs from its default and the recipe's value), 'recipe
    NAME', or 'default' (output_dir and run_name count as such: lab2 fills them in when not given)."""
    recipe, defaults = RECIPES.get(str(config.get("recipe")), {}), TrainConfig().to_dict()
    sources = {}
    for key, value in config.items():
        if key in recipe and value == recipe[key]:
            sources[key] = f"recipe {config['recipe']}"
        elif key in defaults and key not in ("output_dir", "run_name") and value != defaults[key]:
            sources[key] = "given"
        else:
            sources[key] = "default"
    order = {"given": 0, "default": 2}  # the flags given first, then the recipe's, then the defaults
    return dict(sorted(sources.items(), key=lambda item: order.get(item[1], 1)))


def _flops_rows(flops: dict) -> list[list] | None:
    """The FLOPs table's rows (name, type, output shape, params, FLOPs, share of the total; the template formats the
    numbers), or None when flops.json is not in lab2's layout (lab2.explain.flops.FlopsReport.to_dict)."""
    try:
        total = max(flops["forward_flops"], 1)
        return [
            [x["name"], x["type"], "x".join(map(str, x["output_shape"])), x["params"], x["flops"], x["flops"] / total]
            for x in flops["layers"]
        ]
    except (KeyError, TypeError, OverflowError):
        return None


def _figures(run: Run) -> list[dict]:
    """figures/*.png in the registry's order. Those come at a run's end: for an unfinished run, what its files
    hold so far is drawn instead (the curves from metrics.jsonl, the flow bars and heatmaps from flow.jsonl)."""
    paths, drawn = RunPaths(run.root), {}
    if not run.finished:
        from lab2.explain import flow, plots  # matplotlib and torch only for a page that draws

        drawable = [m for m in run.metrics if all(_is_number(m.get(key)) for key in CURVE_KEYS)]
        drawn = {"curves": plots.curves_figure(drawable)} if drawable else {}
        drawn.update(flow.history_figures(flow.read_flow_history(paths.flow)))
    figures = []
    for f in RUN_FIGURES:
        png = paths.figures / f"{f.name}.png"
        if f.name in drawn:
            figures.append(_image(f.name, drawn[f.name], f"{f.caption.split(' (')[0]} so far (unfinished run)"))
        elif png.exists():
            figures.append(_image(f.name, png.read_bytes(), f.caption))
    return figures


def build_report(run_dir: str | Path) -> str:
    """The report page for `run_dir` as an HTML string."""
    run = read_run(run_dir)
    flops = _read_object(RunPaths(run_dir).flops)
    return TEMPLATES.get_template("report.html.j2").render(
        run=run, sources=flag_sources(run.config), flops=flops, flops_rows=_flops_rows(flops), figures=_figures(run)
    )


def _given_name(config: dict) -> str | None:
    """The --run_name given, or None for lab2's default <model>-<date>-<time> (lab2.flags)."""
    name = str(config.get("run_name") or "")
    return None if re.fullmatch(re.escape(str(config.get("model"))) + r"-\d{8}-\d{6}", name) else name


def label_runs(runs: list[Run]) -> None:
    """Label each run by its --run_name if given, else by up to 3 flags given in some run whose values differ
    (`recipe=fast`; among the runs without a name, when there are two), else by its folder name. Runs whose
    labels are the same get their folder name, then their path."""
    unnamed = [run for run in runs if not _given_name(run.config)]
    pool = unnamed if len(unnamed) > 1 else runs
    keys = dict.fromkeys(key for run in pool for key, by in flag_sources(run.config).items() if by == "given")
    differing = [key for key in keys if len({_shown(run.config.get(key)) for run in pool}) > 1]
    for run in runs:
        flags = ", ".join(f"{key}={_shown(run.config.get(key))}" for key in differing[:3])
        run.label = _given_name(run.config) or flags or run.root.name
    for rename in (lambda run: run.root.name, lambda run: str(run.root)):
        labels = [run.label for run in runs]
        for run in runs:
            if labels.count(run.label) > 1:
                run.label = rename(run)


def config_difference_rows(runs: Sequence[Run]) -> list[list[str]]:
    """The flags whose values are not the same in every run (a flag one run lacks counts as different)."""
    keys = dict.fromkeys(key for run in runs for key in run.config)
    rows = [
        [f"--{key}", *(_shown(run.config[key]) if key in run.config else "(absent)" for run in runs)] for key in keys
    ]
    return [row for row in rows if len(set(row[1:])) > 1]


def _confusion(run: Run):
    """(class names, square count matrix) from summary.json, or None when it has none in lab2's layout."""
    matrix = run.summary.get("confusion_matrix")
    rows = matrix if isinstance(matrix, list) else []
    square = all(isinstance(r, list) and len(r) == len(rows) and all(isinstance(c, int) for c in r) for r in rows)
    if not rows or not square:
        return None
    names = list(run.summary.get("class_accuracy") or {})
    return (names if len(names) == len(matrix) else [str(i) for i in range(len(matrix))]), matrix


def build_comparison(run_dirs: Sequence[str | Path]) -> str:
    """The comparison page of `run_dirs` as an HTML string."""
    from lab2.explain import plots  # matplotlib only for a page that draws

    runs = [read_run(folder) for folder in run_dirs]
    label_runs(runs)
    groups: dict[tuple[str, ...], list] = {}  # one figure per set of classes: runs on other data get their own
    missing = []
    for run in runs:
        found = _confusion(run)
        if found is None:
            missing.append(run.label)
        else:
            groups.setdefault(tuple(found[0]), []).append((run.label, found[1]))
    curves = plots.comparison_curves_figure([(run.label, run.metrics) for run in runs])
    matrices = [plots.confusion_matrices_figure(found, names) for names, found in groups.items()]
    return TEMPLATES.get_template("compare.html.j2").render(
        runs=runs,
        curves=_image("comparison_curves", curves, CAPTIONS["comparison_curves"]),
        differences=config_difference_rows(runs),
        matrices=[_image("confusion_matrices", fig, CAPTIONS["confusion_matrices"]) for fig in matrices],
        missing=missing,
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report to `output` (default `run_dir/report.html`): a new file or a page lab2 wrote, nothing else."""
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
    for folder, path in zip(run_dirs, resolved, strict=True):
        if resolved.count(path) > 1:
            raise UserError(f"{folder} is given more than once; name each run to compare once.")
    check_report_target(target)  # a new page, or one lab2 wrote (REPORT_MARK): the one write policy
    return _write_page(target, build_comparison(run_dirs))


def _write_page(target: Path, page: str) -> Path:
    """Write `page` whole through lab2.state.files' atomic writer (a fresh temporary name, removed on any failure)."""
    try:
        return write_text(target, page)
    except OSError as exc:
        raise UserError(f"cannot write {target} ({exc.strerror}); free space or choose another --output.") from None
