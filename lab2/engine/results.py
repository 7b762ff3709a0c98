"""A run's results: the per-epoch record, and at the end the weights, figures, Table-1 log, summary and report.

The loop (lab2.engine.loop) hands over its Run record (lab2.engine.setup.Run) and numbers already summed over
processes; everything here writes on the main process only, except the weights export, which gathers on every
process.
"""

from __future__ import annotations

import json

import torch

from lab2.engine.evaluation import EvalResult
from lab2.errors import UserError
from lab2.explain import gradcam, plots
from lab2.explain.flow import history_figures
from lab2.figures import SNAPSHOT_FIGURES
from lab2.flags import resume_advice
from lab2.report.pages import write_report
from lab2.state.checkpoint import export_model, latest_good_checkpoint
from lab2.state.files import append_jsonl, read_jsonl, write_json, write_text

# Dense peak FLOP/s by device-name fragment and precision, for model FLOPs utilisation (MFU) on CUDA.
HOPPER = {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}
PEAK_FLOPS = {"H200": HOPPER, "H100": HOPPER, "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}}


def data_label(cfg) -> str:
    """What the accuracies were measured on, for summary.json and the trackers' summary."""
    if cfg.dataset == "fake":
        return "synthetic images (--dataset fake): the accuracies say nothing about CIFAR-10"
    return cfg.dataset_name or f"CIFAR-10 from {cfg.data_dir}"


def synthetic_note(cfg) -> str:
    """Appended to every console line that reports an accuracy on synthetic data."""
    return " | synthetic data, not CIFAR-10" if cfg.dataset == "fake" else ""


def peak_flops(device: torch.device, precision: str) -> float | None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((peaks.get(precision) for fragment, peaks in PEAK_FLOPS.items() if fragment in name), None)


def training_log_table(metrics: list[dict]) -> str:
    """The Table-1 training log: epoch, train loss, train acc, val loss, val acc ('-' for an epoch without)."""
    lines = [f"{'Epoch':>5} | {'Train Loss':>10} | {'Train Acc':>9} | {'Val Loss':>8} | {'Val Acc':>7}"]
    lines.append(f"{'-' * 5}-+-{'-' * 10}-+-{'-' * 9}-+-{'-' * 8}-+-{'-' * 7}")
    for m in metrics:
        evaluated = m["eval_acc"] is not None  # --eval_strategy no
        val = f"{m['eval_loss']:>8.4f} | {100 * m['eval_acc']:>6.2f}%" if evaluated else f"{'-':>8} | {'-':>7}"
        lines.append(f"{m['epoch']:>5} | {m['train_loss']:>10.4f} | {100 * m['train_acc']:>8.2f}% | {val}")
    return "\n".join(lines)


def calibrated_logits(cfg) -> str:
    """Which logits eval/ece and the reliability diagram judge: with --tta, the flip-averaged ones."""
    return "flip-averaged logits (--tta)" if cfg.tta else "plain logits"


def end_epoch(run, epoch: int, totals: tuple[float, float, float], trained_now: float, epoch_time: float, result):
    """Append the epoch's record to metrics.jsonl, log it, print one line.

    `totals`: (loss sum, correct, seen) over all processes, the part before a mid-epoch resume included;
    `trained_now`: the images trained in `epoch_time`, i.e. since the resume (the speed counts only those).
    `result` is None for an epoch without evaluation (--eval_strategy no): its eval fields are null."""
    loss_sum, correct, seen = totals
    step = run.progress.global_step
    record = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "eval_loss": result.loss if result else None,
        "eval_acc": result.accuracy if result else None,
        "eval_ece": result.ece if result else None,
        "lr": run.scheduler.get_last_lr()[0],
        "epoch_time_s": epoch_time,
        "train_images_per_s": trained_now / max(epoch_time, 1e-9),
        "global_step": step,
        "wall_time_s": run.progress.wall_time(),  # so far: a stopped run's report shows it
        **where_it_ran(run),
    }
    if not run.accelerator.is_main_process:
        return
    append_jsonl(run.paths.metrics, record)
    values = {"train/loss_epoch": record["train_loss"], "train/accuracy": record["train_acc"], "epoch": epoch + 1}
    values["perf/train_images_per_s"] = record["train_images_per_s"]
    evaluated = "no eval | "
    if result is not None:
        values.update({"eval/loss": result.loss, "eval/accuracy": result.accuracy})
        if result.ece is not None:
            values["eval/ece"] = result.ece
        evaluated = f"eval loss {result.loss:.4f} acc {100 * result.accuracy:.2f}% | "
    if run.flops.training_flops:
        achieved = record["train_images_per_s"] * run.flops.training_flops
        values["perf/train_tflops"] = achieved / 1e12
        peak = peak_flops(run.accelerator.device, run.precision)
        if peak:
            values["perf/mfu"] = achieved / peak
    run.tracking.log(values, step=step)
    run.accelerator.print(
        f"epoch {epoch + 1}/{run.cfg.num_train_epochs}: "
        f"train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:.2f}% | {evaluated}"
        f"{record['train_images_per_s']:.0f} img/s | {epoch_time:.1f} s" + synthetic_note(run.cfg)
    )


def finish(run, result: EvalResult) -> None:
    """Final files: weights, figures, Table-1 log, then summary.json (it marks the run finished) and the report."""
    acc, cfg, paths, step = run.accelerator, run.cfg, run.paths, run.progress.global_step
    metadata = {
        "model": cfg.model,
        "num_classes": run.splits.num_classes,
        "class_names": json.dumps(list(run.splits.class_names)),
        "eval_acc": repr(result.accuracy),
        "config": json.dumps(cfg.to_dict()),
        "format": "pt",
    }
    export_model(acc, run.model, paths.model, metadata)
    if not acc.is_main_process:
        return
    metrics = read_jsonl(paths.metrics)
    if run.flow is not None:  # the last snapshots' images, before this thread draws figures of its own
        run.flow.close(step)
    figures = final_figures(run, result, metrics)
    for name, fig in figures.items():
        plots.save_figure(fig, paths.figures / f"{name}.png")
    # The flow bars went to the trackers at every snapshot; the files keep the last ones.
    run.tracking.log_figures({k: v for k, v in figures.items() if k not in SNAPSHOT_FIGURES}, step=step)
    run.tracking.log_confusion_matrix(result.confusion, run.splits.class_names, step=step)
    table = training_log_table(metrics)
    if cfg.dataset == "fake":
        table = "Training log on synthetic images (--dataset fake), not CIFAR-10:\n" + table
    write_text(paths.training_log, table + "\n")
    acc.print(table)
    summary = run_summary(run, result, metrics)
    run.tracking.log({"eval/final_accuracy": result.accuracy}, step=step)
    mark_finished(paths, summary)
    acc.print(
        f"done: final eval accuracy {100 * result.accuracy:.2f}% on {result.num_samples} "
        f"{'synthetic ' if cfg.dataset == 'fake' else ''}images "
        f"(best {100 * summary['best_eval_acc']:.2f}%); files in {paths.root}" + synthetic_note(cfg)
    )
    # Where to look, and the commands a newcomer runs next.
    acc.print(f"  report:      {paths.report} (open it in a browser)")
    acc.print(f"  evaluate:    lab2-eval --model_path {paths.root}")
    acc.print(f"  predict:     lab2-predict --model_path {paths.root} IMAGE.png")
    if paths.tensorboard.is_dir():
        acc.print(f"  TensorBoard: tensorboard --logdir {paths.tensorboard} --samples_per_plugin images=0")
    run.tracking.print_open_commands()
    # Model artifact, run summary, Table-1 table, and (MLflow) the run's files, report included.
    run.tracking.log_results(cfg.run_name, paths, summary, metrics, table, step=step)


def mark_finished(paths, summary: dict) -> None:
    """summary.json marks the run finished, and report.html is drawn from it; a report that cannot be written (a full
    disk) takes summary.json away again, so a run without its report never counts as finished."""
    write_json(paths.summary, summary)
    try:
        write_report(paths.root)
    except BaseException:
        paths.summary.unlink(missing_ok=True)
        raise


def final_figures(run, result: EvalResult, metrics: list[dict]) -> dict:
    """The figures/ of a run; no gradcam for a model Grad-CAM cannot explain (one line says so, the rest are drawn)."""
    samples, classes = result.samples, run.splits.class_names
    figures = plots.evaluation_figures(result.confusion, result.per_class_accuracy, samples, classes)
    if result.calibration is not None:
        figures["calibration"] = plots.reliability_figure(result.calibration, calibrated_logits(run.cfg))
    if metrics:
        figures["curves"] = plots.curves_figure(metrics)
    figures.update(history_figures(run.flow.history if run.flow is not None else []))
    if samples is not None and len(samples.images) and samples.inputs is not None:
        # The plain module: Captum's hooks and autograd.grad need neither DDP's wrapper nor a compiled graph.
        plain = run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
        try:
            figures["gradcam"] = gradcam.gradcam_figure(plain, samples, classes)
        except UserError as reason:
            run.accelerator.print(f"note: no gradcam figure: {reason}")
    return figures


def run_summary(run, result: EvalResult, metrics: list[dict]) -> dict:
    """summary.json: final and best accuracy, cost, speed and where it ran."""
    time_s = sum(m["epoch_time_s"] for m in metrics)
    images_per_s = sum(m["train_images_per_s"] * m["epoch_time_s"] for m in metrics) / time_s if time_s else 0.0
    training_flops = run.flops.training_flops or 0
    peak = peak_flops(run.accelerator.device, run.precision)
    return {
        "data": data_label(run.cfg),
        "final_eval_acc": result.accuracy,
        "best_eval_acc": max([m["eval_acc"] for m in metrics if m["eval_acc"] is not None], default=result.accuracy),
        "final_eval_loss": result.loss,
        "final_eval_ece": result.ece,
        "ece_of": calibrated_logits(run.cfg),
        "num_eval_samples": result.num_samples,
        "class_accuracy": result.class_accuracy(run.splits.class_names),
        "confusion_matrix": result.confusion.tolist(),  # rows: true class, columns: predicted
        "gflops_per_sample": run.flops.gflops_per_sample,
        "training_gflops_per_sample": training_flops / 1e9,
        "params": run.flops.params,
        "epochs": run.progress.epoch,
        "global_step": run.progress.global_step,
        "train_time_s": time_s,
        "wall_time_s": run.progress.wall_time(),
        "train_images_per_s": images_per_s,
        "train_tflops": images_per_s * training_flops / 1e12,
        "mfu": images_per_s * training_flops / peak if peak and training_flops else None,
        **where_it_ran(run),
        "data_pipeline": run.cfg.data_pipeline,
    }


def where_it_ran(run) -> dict:
    """The device, process count, CPU threads per process and precision: in summary.json and every epoch record."""
    device = run.accelerator.device
    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "world_size": run.accelerator.num_processes,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,  # per process
        "precision": run.precision,
    }


# --------------------------------------------------------------------------- endings before the end


def report_interrupted(accelerator, paths, stop, global_step: int, epoch: int) -> None:
    """Say when the `stop` (a StopRequest) came, where the run stopped and saved itself, and how to resume."""
    latest = latest_good_checkpoint(paths.checkpoints)
    came = "" if stop.received_after_step is None else f", received after step {stop.received_after_step}"
    by = stop.signal_name or "a signal to another process"  # the processes agree to stop together
    accelerator.print(
        f"stopped by {by} at step {global_step} (epoch {epoch + 1}{came}); "
        f"checkpoint saved to {latest or '?'}. " + resume_advice(paths.root)
    )


def report_diverged(accelerator, paths, step: int, epoch: int, learning_rate: float) -> None:
    """Say at which step the loss went NaN/inf and which checkpoint is the last good one."""
    latest = latest_good_checkpoint(paths.checkpoints)
    where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was saved before it"
    accelerator.print(
        f"error: the loss became NaN/inf at step {step} (epoch {epoch + 1}); training stopped and {where}. "
        f"Lower --learning_rate (now {learning_rate:g}) or check the data."
    )
