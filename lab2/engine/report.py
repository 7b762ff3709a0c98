"""`lab2-report RUN_DIR`: one self-contained HTML page per run, readable offline and printable to PDF.

Everything comes from the run folder's files (config.json, metrics.jsonl,
summary.json, flops.json, figures/*.png); images are inlined as base64 data
URIs, so the page is a single file with no external requests.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from lab2.errors import UserError
from lab2.figures import RUN_FIGURES
from lab2.state.run_folder import REPORT_MARK, check_report_target
from lab2.state.run_paths import RunPaths, read_jsonl, temporary_beside

STYLE = (
    "\n"
    "body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }\n"
    "h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }\n"
    "table { border-collapse: collapse; font-size: 0.9em; } "
    "td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }\n"
    "th { background: #f3f3f3; } td.l, th.l { text-align: left; }\n"
    ".warn { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.6em 1em; border-radius: 6px; }\n"
    ".kpi { display: flex; gap: 2em; flex-wrap: wrap; } "
    ".kpi div { background: #f6f8fa; padding: 0.6em 1em; border-radius: 6px; }\n"
    ".kpi b { display: block; font-size: 1.4em; }\n"
    "figure { margin: 1em 0; page-break-inside: avoid; } figure img { max-width: 100%; border: 1px solid #eee; }\n"
    "figcaption { color: #555; font-size: 0.9em; }\n"
    "@media print { body { margin: 0; max-width: none; } h2 { page-break-after: avoid; } }\n"
)


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(str(h))}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f"<td class='{'l' if i < left else ''}'>{html.escape(str(c))}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if _is_number(value) else "n/a"


def _num(value, spec: str) -> str:
    """`value` formatted with `spec`, or 'n/a' when it is not a finite number (a damaged or older file)."""
    return format(value, spec) if _is_number(value) else "n/a"


def _of(what) -> str:
    """' (of <what>)' for a string from summary.json, else nothing."""
    return f" ({what})" if isinstance(what, str) and what else ""


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


def _flops_section(flops: dict) -> list[str]:
    """The FLOPs table, or a note when flops.json does not have lab2's layout."""
    layers = flops.get("layers")
    if (
        not isinstance(layers, list)
        or not all(isinstance(layer, dict) for layer in layers)
        or not _is_number(flops.get("forward_flops"))
    ):
        return ["<h2>FLOPs per layer</h2>", "<p>flops.json is not in lab2's layout; the table is left out.</p>"]
    total = max(flops["forward_flops"], 1)

    def shape(layer: dict) -> str:
        return "x".join(map(str, layer["output_shape"])) if isinstance(layer.get("output_shape"), list) else "?"

    return [
        "<h2>FLOPs per layer</h2>",
        f"<p>{html.escape(str(flops.get('convention', '')))}. Total forward: {_num(flops['forward_flops'], ',')} FLOPs "
        f"({_num(flops.get('gflops_per_sample'), '.4f')} GFLOPs); parameters: {_num(flops.get('params'), ',')}.</p>",
        _table(
            ["layer", "type", "output shape", "params", "FLOPs", "% FLOPs"],
            [
                [
                    layer.get("name", "?"),
                    layer.get("type", "?"),
                    shape(layer),
                    _num(layer.get("params"), ","),
                    _num(layer.get("flops"), ","),
                    _num(100 * layer["flops"] / total if _is_number(layer.get("flops")) else None, ".2f") + "%",
                ]
                for layer in layers
            ],
            left=3,
        ),
    ]


def _figure(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _curves_png(metrics: list[dict]) -> bytes:
    from lab2.explain.plots import curves_figure

    buffer = io.BytesIO()
    curves_figure(metrics).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def build_report(run_dir: str | Path) -> str:
    """The report page for `run_dir` as an HTML string."""
    paths = RunPaths(run_dir)
    if not paths.root.is_dir():
        raise UserError(f"{paths.root} is not a folder; give the --output_dir of a run.")
    config = _read_object(paths.config, required=True)
    summary = _read_object(paths.summary)
    flops = _read_object(paths.flops)
    metrics = read_jsonl(paths.metrics)
    model = config.get("model") if isinstance(config.get("model"), str) else "unknown"
    parts = [f"<h1>lab2 run: {html.escape(str(config.get('run_name', paths.root.name)))}</h1>"]
    parts.append(
        f"<p>model <b>{html.escape(model)}</b>, {len(metrics)} epoch(s), "
        f"folder <code>{html.escape(str(paths.root))}</code></p>"
    )
    if not summary:
        parts.append(
            "<p class='warn'><b>Unfinished run</b> (no summary.json: still training, stopped or failed): the page "
            "shows what it wrote so far; continue it with --resume_from_checkpoint latest.</p>"
        )
    synthetic = config.get("dataset") == "fake"
    if synthetic:
        parts.append(
            "<p class='warn'><b>Synthetic data</b> (--dataset fake): every accuracy on this page was measured on "
            "generated images and says nothing about CIFAR-10.</p>"
        )
    on_what = " (synthetic data)" if synthetic else ""
    if summary:
        kpis = [
            ("final eval accuracy" + on_what, _pct(summary.get("final_eval_acc"))),
            ("best eval accuracy" + on_what, _pct(summary.get("best_eval_acc"))),
            ("ECE, 15 bins", _num(summary.get("final_eval_ece"), ".4f") + _of(summary.get("ece_of"))),
            ("GFLOPs / sample", _num(summary.get("gflops_per_sample"), ".4f")),
            ("parameters", _num(summary.get("params"), ",")),
            ("train images/s", _num(summary.get("train_images_per_s"), ".0f")),
            (
                "device",
                f"{summary.get('device', 'n/a')} x{summary.get('world_size', '?')}, {summary.get('precision', '?')}",
            ),
        ]
    else:  # what metrics.jsonl knows so far; where it ran is in summary.json only
        last = metrics[-1] if metrics else {}
        kpis = [
            ("epochs done", f"{len(metrics)} of {config.get('num_train_epochs', '?')}"),
            ("last eval accuracy" + on_what, _pct(last.get("eval_acc"))),
            ("train images/s (last epoch)", _num(last.get("train_images_per_s"), ".0f")),
        ]
    parts.append(
        "<div class='kpi'>" + "".join(f"<div>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in kpis) + "</div>"
    )
    parts.append("<h2>Training log</h2>")
    parts.append(
        _table(
            ["Epoch", "Train Loss", "Train Acc", "Val Loss", "Val Acc", "Val ECE", "Time (s)", "Images/s"],
            [
                [
                    m.get("epoch", "?"),
                    _num(m.get("train_loss"), ".4f"),
                    _pct(m.get("train_acc")),
                    _num(m.get("eval_loss"), ".4f"),
                    _pct(m.get("eval_acc")),
                    _num(m.get("eval_ece"), ".4f"),
                    _num(m.get("epoch_time_s"), ".1f"),
                    _num(m.get("train_images_per_s"), ".0f"),
                ]
                for m in metrics
            ],
        )
    )
    class_accuracy = summary.get("class_accuracy")
    if isinstance(class_accuracy, dict) and class_accuracy:
        parts.append("<h2>Accuracy per class</h2>")
        parts.append(_table(["class", "accuracy"], [[k, _pct(v)] for k, v in class_accuracy.items()]))
    if flops:
        parts += _flops_section(flops)
    parts.append("<h2>Figures</h2>")
    curve_keys = ("epoch", "train_loss", "train_acc", "eval_loss", "eval_acc")  # a key a torn record lacks: None
    drawable = [
        {k: m.get(k) if _is_number(m.get(k)) else None for k in curve_keys}
        for m in metrics
        if all(_is_number(m.get(k)) for k in curve_keys[:3])
    ]
    if not summary and drawable:  # the final figures come at the end: draw the curves so far from metrics.jsonl
        parts.append(_figure("curves", _curves_png(drawable), "Loss and accuracy per epoch so far (unfinished run)"))
    for figure in RUN_FIGURES:
        png = paths.figures / f"{figure.name}.png"
        if png.exists():
            parts.append(_figure(figure.name, png.read_bytes(), figure.caption))
    parts.append("<h2>Configuration</h2>")
    parts.append(_table(["flag", "value"], [[f"--{k}", v] for k, v in config.items()]))
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>{REPORT_MARK}<title>lab2 report</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report atomically to `output` (default `run_dir/report.html`) and return its path.

    It writes a new file or replaces a page lab2 wrote (lab2.state.run_folder's write policy), nothing else.
    """
    target = Path(output) if output else RunPaths(run_dir).report
    check_report_target(target)
    return write_page(target, build_report(run_dir))


def write_page(target: Path, page: str) -> Path:
    """Write `page` to `target` through a temporary file and a rename: a reader never sees half a page.

    The temporary file gets a fresh name, so it can never be a file of the user's, and it is removed on any
    failure, Ctrl-C included.
    """
    tmp = None
    try:
        tmp = temporary_beside(target)  # a unique name: --output may point into a folder that is not lab2's
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {target} ({exc.strerror}); free space or choose another --output.") from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return target
