"""Gradient, weight and update flow per layer: the snapshots, their health checks, and where they go.

For each layer's weight tensor, in the model's order (SimpleCNN's 10 bars: conv1, bn1, ..., bn4, fc1, fc2; BatchNorm
scales included, biases left out), a snapshot holds:
- grad_mean / grad_max of |grad| after backward, before the optimizer step; the caller unscales first
  (`accelerator.unscale_gradients()`), so fp16 runs show the true gradients, not the loss-scaled ones;
- weight_mean / weight_max of |W| before the step (the seed's "weight update flow" plots);
- update_ratio: ||W_after - W_before|| / ||W_before|| of that step, the real update flow.
With `--log_histograms all` (the default; as wandb.watch(log="all")) or `weights` (the flow's tensors), it also holds
histograms of each parameter's gradient and value, keyed as wandb.watch keys them: `gradients/<param>`,
`parameters/<param>`. All is computed on the device and copied to the host at once: one sync per snapshot.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lab2.config import HISTOGRAM_CHOICES
from lab2.explain.plots import UPDATE_RATIO_RANGE, figure_to_array, flow_figures, flow_heatmap_figure
from lab2.state.files import append_jsonl, read_jsonl

STATISTICS = ("grad_mean", "grad_max", "weight_mean", "weight_max", "update_ratio")

# Health thresholds: a layer outside them for HEALTH_PATIENCE consecutive snapshots gets one warning.
VANISHING_GRAD = 1e-7
EXPLODING_GRAD = 1e3
HEALTH_PATIENCE = 2
HISTOGRAM_BINS = 64  # as wandb.watch
MAX_PENDING = 8  # image sets rendering or waiting; beyond this a snapshot's images are skipped, not queued


@dataclass
class FlowSnapshot:
    step: int
    layers: list[str]
    grad_mean: list[float]
    grad_max: list[float]
    weight_mean: list[float]
    weight_max: list[float]
    update_ratio: list[float]
    # "gradients/<param>" and "parameters/<param>" -> Histogram; not part of flow.jsonl.
    histograms: dict[str, Histogram] = field(default_factory=dict, compare=False, repr=False)

    def to_record(self) -> dict:
        """The flow.jsonl record: {"step": s, "layers": {layer: {statistic: value}}}."""
        per_layer = {name: {stat: getattr(self, stat)[i] for stat in STATISTICS} for i, name in enumerate(self.layers)}
        return {"step": self.step, "layers": per_layer}


@dataclass
class Histogram:
    """Counts of one tensor's values in equal bins from `low` to `high` (its min and max); `num`, `total` and
    `total_squares` (count, sum and sum of squares of the values) are what TensorBoard's raw histograms also want."""

    counts: np.ndarray  # (bins,) float64
    low: float
    high: float
    num: int
    total: float
    total_squares: float

    @property
    def edges(self) -> np.ndarray:
        """(bins + 1,) bin edges, as numpy.histogram returns them."""
        return np.linspace(self.low, self.high, len(self.counts) + 1)


def _histogram_row(tensor: torch.Tensor, bins: int) -> torch.Tensor:
    """[counts (bins), min, max, sum, sum of squares] of a float tensor, on its device and without a sync: histc
    needs its range as Python numbers (a sync per tensor), so the values are mapped onto 0..1 with the device-side
    min and max and counted over that fixed range."""
    flat = tensor.flatten()
    low, high = flat.min(), flat.max()
    unit = (flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    counts = torch.histc(unit, bins=bins, min=0.0, max=1.0)
    return torch.cat([counts, torch.stack([low, high, flat.sum(), flat.square().sum()])])


def _grad(p: nn.Parameter) -> torch.Tensor:
    return p.grad.detach().float() if p.grad is not None else torch.zeros(1, device=p.device)


def flow_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Each layer's weight tensor (conv, BatchNorm scale, linear), in the model's order: the flow's bars."""
    return [
        (name, p) for name, p in model.named_parameters() if name.rpartition(".")[2] == "weight" and p.requires_grad
    ]


def histogram_parameters(model: nn.Module, which: str) -> list[tuple[str, nn.Parameter]]:
    """The tensors whose histograms a snapshot holds: `all` (every trainable parameter), `weights` or `off`."""
    if which not in HISTOGRAM_CHOICES:
        raise ValueError(f"histograms must be one of {', '.join(HISTOGRAM_CHOICES)}, not {which!r}")
    if which == "off":
        return []
    if which == "weights":
        return flow_parameters(model)
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


class FlowCollector:
    """Collects FlowSnapshots from a model: call `before_step()` then, after optimizer.step(), `after_step(step)`."""

    def __init__(self, model: nn.Module, histograms: str = "all", bins: int = HISTOGRAM_BINS):
        self.parameters = flow_parameters(model)
        self.layer_names = [name.removesuffix(".weight") for name, _ in self.parameters]
        self.histogram_parameters = histogram_parameters(model, histograms)
        self.bins = bins
        self.history: list[FlowSnapshot] = []  # a resumed run sets it from flow.jsonl, for the heatmaps
        self._pending: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor] | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        """Read |grad| and |W| (and their histograms) and keep a copy of W; gradients must already be unscaled."""
        rows, copies = [], []
        for _, p in self.parameters:
            grad, weight = _grad(p).abs(), p.detach().float().abs()
            rows.append(torch.stack([grad.mean(), grad.amax(), weight.mean(), weight.amax()]))
            copies.append(p.detach().clone())
        histograms = [
            _histogram_row(t, self.bins) for _, p in self.histogram_parameters for t in (_grad(p), p.detach().float())
        ]
        stats = torch.stack(rows)
        self._pending = (stats, copies, torch.stack(histograms) if histograms else stats.new_empty(0, self.bins + 4))

    @torch.no_grad()
    def after_step(self, step: int) -> FlowSnapshot:
        """Finish the snapshot begun by `before_step` with the update ratio of the step just taken."""
        if self._pending is None:
            raise RuntimeError("FlowCollector.after_step() called without before_step()")
        stats, copies, histogram_rows = self._pending
        self._pending = None
        ratios = torch.stack(
            [
                (p.detach().float() - old.float()).norm() / old.float().norm().clamp_min(1e-12)
                for (_, p), old in zip(self.parameters, copies, strict=True)
            ]
        )
        table = torch.cat([stats, ratios[:, None]], dim=1)
        # The one host copy of the snapshot. float32 on the device (MPS has no float64): counts stay exact up to 2**24
        # per bin.
        host = torch.cat([table.flatten(), histogram_rows.flatten()]).cpu().double().numpy()
        rows = host[: table.numel()].reshape(table.shape).tolist()
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in STATISTICS]
        snapshot = FlowSnapshot(step, list(self.layer_names), *[list(col) for col in columns])
        snapshot.histograms = self._unpack_histograms(host[table.numel() :].reshape(histogram_rows.shape))
        self.history.append(snapshot)
        return snapshot

    def _unpack_histograms(self, rows: np.ndarray) -> dict[str, Histogram]:
        """Host rows (gradient, weight per parameter; counts then min, max, sum, sum of squares) -> keyed Histograms."""
        histograms = {}
        for i, (name, _) in enumerate(self.histogram_parameters):
            for j, prefix in enumerate(("gradients", "parameters")):
                row = rows[2 * i + j]
                counts, (low, high, total, squares) = row[: self.bins], row[self.bins :]
                if not np.isfinite(row).all():  # a diverging step (NaN/inf): no histogram, the loss check reports it
                    continue
                num = int(counts.sum())  # every value falls in a bin (the range is the tensor's own min..max)
                histograms[f"{prefix}/{name}"] = Histogram(
                    counts, float(low), float(high), num, float(total), float(squares)
                )
        return histograms

    def matrix(self, statistic: str) -> torch.Tensor:
        """(layers, snapshots) values of one statistic over the whole history, for heatmaps; rows are the last
        snapshot's layers. A layer a snapshot lacks is NaN (blank): a run resumed from a flow.jsonl written
        before the BatchNorm layers were tracked has 6 layers in its early snapshots, 10 later."""
        if not self.history:
            return torch.empty(len(self.layer_names), 0)
        return history_matrix(self.history, statistic)


class FlowHealth:
    """Turns snapshots into one-time warnings for vanishing/exploding gradients and odd update ratios."""

    def __init__(self, patience: int = HEALTH_PATIENCE):
        self.patience = patience
        self.streaks: dict[tuple[str, str], int] = {}
        self.warned: set[tuple[str, str]] = set()

    def _conditions(self, snapshot: FlowSnapshot, i: int) -> dict[str, str]:
        grad, ratio = snapshot.grad_mean[i], snapshot.update_ratio[i]
        low, high = UPDATE_RATIO_RANGE
        return {
            "vanishing_gradient": f"mean |grad| {grad:.2e} < {VANISHING_GRAD:g}" if grad < VANISHING_GRAD else "",
            "exploding_gradient": f"mean |grad| {grad:.2e} > {EXPLODING_GRAD:g}" if grad > EXPLODING_GRAD else "",
            "update_ratio": f"update ratio {ratio:.2e} outside {low:g}..{high:g}" if not low <= ratio <= high else "",
        }

    def check(self, snapshot: FlowSnapshot) -> list[str]:
        """Warnings newly due after this snapshot (each layer and condition warns once)."""
        messages = []
        for i, layer in enumerate(snapshot.layers):
            for condition, detail in self._conditions(snapshot, i).items():
                key = (layer, condition)
                self.streaks[key] = self.streaks.get(key, 0) + 1 if detail else 0
                if self.streaks[key] >= self.patience and key not in self.warned:
                    self.warned.add(key)
                    messages.append(
                        f"flow warning at step {snapshot.step}: layer {layer}: {detail} "
                        f"for {self.streaks[key]} snapshots in a row"
                    )
        return messages


class FlowReporter(FlowCollector):
    """A FlowCollector that writes each snapshot to flow.jsonl and the trackers, warns, and logs its images.
    The loop calls, on the main process:

        reporter.before_step()       # at a snapshot step, after unscaling, before optimizer.step()
        reporter.after_step(step)    # right after optimizer.step()
        reporter.poll(step)          # every step: logs at most one finished set of images, never waits
        reporter.close(step)         # at the end: waits for the images still rendering and logs them

    A figure costs ~100 ms and a GPU step can be under 1 ms, so one background thread renders the images (object
    API on Agg, no pyplot state; one thread keeps step order). They are logged at the step the loop has reached (W&B
    drops a step lower than one it has seen), their snapshot's step in the caption; TensorBoard and MLflow get the
    snapshot's own step. One set per poll keeps each on its own W&B step; only those left at `close` share one.
    """

    def __init__(self, model: nn.Module, tracking, flow_file: str | Path, histograms: str = "all", printer=print):
        super().__init__(model, histograms=histograms)
        self.health = FlowHealth()
        self.tracking, self.flow_file, self.printer = tracking, flow_file, printer
        self.rendering: deque[tuple[int, Future]] = deque()  # (snapshot step, its images to come), oldest first
        self.skipped = 0  # snapshots whose images were dropped because rendering fell behind
        self._pool: ThreadPoolExecutor | None = None  # started at the first snapshot, once the trackers exist

    def after_step(self, step: int) -> FlowSnapshot:
        """Finish the snapshot, write it, log its scalars and histograms, warn, and hand it to the renderer."""
        snapshot = super().after_step(step)
        append_jsonl(self.flow_file, snapshot.to_record())
        values = {
            f"flow/{stat}/{layer}": getattr(snapshot, stat)[i]
            for stat in STATISTICS
            for i, layer in enumerate(snapshot.layers)
        }
        self.tracking.log(values, step=step)
        self.tracking.log_histograms(snapshot.histograms, step=step)
        for message in self.health.check(snapshot):
            self.printer(message)
            self.tracking.log({"flow/warning": message}, step=step)
        # Images are only worth rendering for a tracker; the final figures on disk are drawn at the end anyway.
        if self.tracking.tracker_names:
            self._submit(snapshot)
        return snapshot

    def _submit(self, snapshot: FlowSnapshot) -> None:
        """Hand the snapshot to the rendering thread, or skip its images when MAX_PENDING sets are in flight."""
        if len(self.rendering) >= MAX_PENDING:  # never wait for the renderer
            self.skipped += 1
            if self.skipped == 1:
                self.printer(
                    f"note: flow images of step {snapshot.step} skipped: rendering is slower than --flow_log_steps; "
                    "raise it for images at every snapshot."
                )
            return
        self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab2-figures")
        self.rendering.append((snapshot.step, self._pool.submit(self._render, snapshot)))

    def _render(self, snapshot: FlowSnapshot) -> dict:
        """On the worker thread: figures -> RGB arrays -> each tracker's encoded images."""
        arrays = {name: figure_to_array(fig) for name, fig in flow_figures(snapshot).items()}
        return self.tracking.prepare_flow_images(arrays, snapshot.step)

    def poll(self, reached_step: int) -> None:
        """Log at most one finished set of images at `reached_step`; never waits (call every step)."""
        if self.rendering and self.rendering[0][1].done():
            self._log(*self.rendering.popleft(), reached_step)

    def close(self, reached_step: int) -> None:
        """Wait for the images still rendering, log them at `reached_step`, and stop the thread."""
        while self.rendering:
            self._log(*self.rendering.popleft(), reached_step)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _log(self, step: int, images: Future, reached_step: int) -> None:
        try:
            rendered = images.result()
        except Exception as exc:  # a figure that fails to render must not end training
            self.printer(
                f"warning: rendering the flow figures of step {step} failed ({type(exc).__name__}: {exc}); "
                "training goes on."
            )
        else:
            self.tracking.log_flow_images(rendered, step, reached_step)


def read_flow_history(path: str | Path) -> list[FlowSnapshot]:
    """Snapshots back from flow.jsonl (a resumed run's heatmaps cover its whole history)."""
    snapshots = []
    for record in read_jsonl(path):
        names = list(record["layers"])
        values = {stat: [record["layers"][n][stat] for n in names] for stat in STATISTICS}
        snapshots.append(FlowSnapshot(record["step"], names, **values))
    return snapshots


def history_matrix(history: list[FlowSnapshot], statistic: str) -> torch.Tensor:
    """(layers, snapshots) values of one statistic; rows are the last snapshot's layers (see FlowCollector.matrix)."""
    columns = [dict(zip(s.layers, getattr(s, statistic), strict=True)) for s in history]
    return torch.tensor([[column.get(layer, float("nan")) for column in columns] for layer in history[-1].layers])


def history_figures(history: list[FlowSnapshot]) -> dict:
    """The last snapshot's bars and the heatmaps over `history` ({} for none): at a run's end, and in lab2-report
    for a stopped run, from its flow.jsonl."""
    if not history:
        return {}
    figures, steps = flow_figures(history[-1]), [s.step for s in history]
    for stat in ("grad_mean", "weight_mean", "update_ratio"):
        values = history_matrix(history, stat).numpy()
        figures[f"heatmap_{stat}"] = flow_heatmap_figure(history[-1].layers, steps, values, stat)
    return figures
