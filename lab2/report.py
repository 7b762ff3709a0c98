"""`lab2-report RUN_DIR`: one self-contained HTML page per run, readable offline and printable to PDF.

Everything comes from the run folder's files (config.json, metrics.jsonl,
summary.json, flops.json, figures/*.png); images are inlined as base64 data
URIs, so the page is a single file with no external requests.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path

from lab2.errors import UserError, exit_with_user_error
from lab2.outputs import RunPaths, read_jsonl

# Figures in reading order, with their captions; missing ones are skipped.
FIGURES = (
    ("curves", "Loss and accuracy per epoch (train vs eval)"),
    ("confusion_matrix", "Confusion matrix on the test split (rows: true class)"),
    ("class_accuracy", "Accuracy per class"),
    ("predictions", "Sample test predictions: most confident mistakes and correct ones"),
    ("gradients", "Gradient flow: mean and max |grad| per layer (last snapshot)"),
    ("weights", "Weight magnitudes: mean and max |W| per layer (last snapshot)"),
    ("update_ratio", "Update flow: ||dW|| / ||W|| per layer (last snapshot)"),
    ("heatmap_grad_mean", "Mean |grad| over training (layers x steps)"),
    ("heatmap_weight_mean", "Mean |W| over training (layers x steps)"),
    ("heatmap_update_ratio", "Update ratio over training (layers x steps)"),
)

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.kpi { display: flex; gap: 2em; flex-wrap: wrap; } .kpi div { background: #f6f8fa; padding: 0.6em 1em; border-radius: 6px; }
.kpi b { display: block; font-size: 1.4em; }
figure { margin: 1em 0; page-break-inside: avoid; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
@media print { body { margin: 0; max-width: none; } h2 { page-break-after: avoid; } }
"""


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(str(h))}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{html.escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "n/a"


def build_report(run_dir: str | Path) -> str:
    """The report page for `run_dir` as an HTML string."""
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise UserError(f"{paths.root} is not a lab2 run folder (no config.json); give the --output_dir of a run.")
    config = json.loads(paths.config.read_text())
    summary = json.loads(paths.summary.read_text()) if paths.summary.exists() else {}
    flops = json.loads(paths.flops.read_text()) if paths.flops.exists() else None
    metrics = read_jsonl(paths.metrics)
    parts = [f"<h1>lab2 run: {html.escape(config.get('run_name', paths.root.name))}</h1>"]
    parts.append(f"<p>model <b>{html.escape(config['model'])}</b>, {len(metrics)} epoch(s), folder <code>{html.escape(str(paths.root))}</code></p>")
    if not summary:
        parts.append("<p><b>This run has not finished</b> (no summary.json): the page shows what it wrote so far.</p>")
    kpis = [
        ("final eval accuracy", _pct(summary.get("final_eval_acc"))),
        ("best eval accuracy", _pct(summary.get("best_eval_acc"))),
        ("GFLOPs / sample", f"{summary['gflops_per_sample']:.4f}" if "gflops_per_sample" in summary else "n/a"),
        ("parameters", f"{summary['params']:,}" if "params" in summary else "n/a"),
        ("train images/s", f"{summary['train_images_per_s']:.0f}" if "train_images_per_s" in summary else "n/a"),
        ("device", f"{summary.get('device', 'n/a')} x{summary.get('world_size', '?')}, {summary.get('precision', '?')}"),
    ]
    parts.append("<div class='kpi'>" + "".join(f"<div>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in kpis) + "</div>")
    parts.append("<h2>Training log</h2>")
    parts.append(
        _table(
            ["Epoch", "Train Loss", "Train Acc", "Val Loss", "Val Acc", "Time (s)", "Images/s"],
            [[m["epoch"], f"{m['train_loss']:.4f}", _pct(m["train_acc"]), f"{m['eval_loss']:.4f}" if m["eval_loss"] is not None else "n/a", _pct(m["eval_acc"]),
              f"{m['epoch_time_s']:.1f}", f"{m['train_images_per_s']:.0f}"] for m in metrics],
        )
    )
    if summary.get("class_accuracy"):
        parts.append("<h2>Accuracy per class</h2>")
        parts.append(_table(["class", "accuracy"], [[k, _pct(v)] for k, v in summary["class_accuracy"].items()]))
    if flops:
        parts.append("<h2>FLOPs per layer</h2>")
        parts.append(f"<p>{html.escape(flops['convention'])}. Total forward: {flops['forward_flops']:,} FLOPs "
                     f"({flops['gflops_per_sample']:.4f} GFLOPs); parameters: {flops['params']:,}.</p>")
        total = max(flops["forward_flops"], 1)
        parts.append(
            _table(
                ["layer", "type", "output shape", "params", "FLOPs", "% FLOPs"],
                [[l["name"], l["type"], "x".join(map(str, l["output_shape"])), f"{l['params']:,}", f"{l['flops']:,}", f"{100 * l['flops'] / total:.2f}%"]
                 for l in flops["layers"]],
                left=3,
            )
        )
    parts.append("<h2>Figures</h2>")
    for name, caption in FIGURES:
        png = paths.figures / f"{name}.png"
        if png.exists():
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{name}' src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Configuration</h2>")
    parts.append(_table(["flag", "value"], [[f"--{k}", v] for k, v in config.items()]))
    body = "\n".join(parts)
    return f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>lab2 report</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` atomically and return its path."""
    paths = RunPaths(run_dir)
    page = build_report(run_dir)
    tmp = paths.report.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(paths.report)
    return paths.report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lab2-report", description="Write RUN_DIR/report.html, a self-contained page for one run.")
    parser.add_argument("run_dir", help="a run's --output_dir")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.run_dir))
    except UserError as error:
        exit_with_user_error(error, "lab2-report")


if __name__ == "__main__":
    main()
