"""Gradient, weight and update flow per layer: the snapshots, their health checks, and where they go.

Per layer weight tensor, in model order (SimpleCNN's 10 bars conv1, bn1, ..., fc2; BatchNorm scales in, biases
out): mean/max |grad| after backward (the caller unscales first, so fp16 shows true gradients), mean/max |W| before
the step, update_ratio ||W_after - W_before|| / ||W_before|| of the step, and weight_change ||W_after - W_0|| /
||W_0||, comparable across layers whatever their scale (|W| is ~1 for BatchNorm, ~0.01 for conv weights). W_0 is
copied when the collector is built, before a resume loads its checkpoint: the seed's weights in a resumed run too.
Histograms (`--log_histograms`) are keyed as wandb.watch keys them. One device-to-host copy per snapshot.
"""

from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lab2.explain.plots import UPDATE_RATIO_RANGE, figure_to_array, flow_figures, flow_heatmaps
from lab2.state.files import append_jsonl, read_jsonl

STATISTICS = ("grad_mean", "grad_max", "weight_mean", "weight_max", "update_ratio", "weight_change")

VANISHING_GRAD, EXPLODING_GRAD = 1e-7, 1e3  # outside them for HEALTH_PATIENCE snapshots in a row: one warning
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
    weight_change: list[float]  # NaN per layer in a flow.jsonl written without it
    # "gradients/<param>" and "parameters/<param>" -> Histogram; not part of flow.jsonl.
    histograms: dict[str, Histogram] = field(default_factory=dict, compare=False, repr=False)

    def per_layer(self, statistic: str) -> list[tuple[str, float]]:
        return list(zip(self.layers, getattr(self, statistic), strict=True))

    def to_record(self) -> dict:  # flow.jsonl's line
        per_layer = {name: {stat: getattr(self, stat)[i] for stat in STATISTICS} for i, name in enumerate(self.layers)}
        return {"step": self.step, "layers": per_layer}


@dataclass
class Histogram:
    """One tensor's values in equal bins over its min..max; count, sum and sum of squares for TensorBoard."""

    counts: np.ndarray  # (bins,) float64
    low: float
    high: float
    total: float
    total_squares: float

    @property
    def num(self) -> int:  # every value falls in a bin: the range is the tensor's own min..max
        return int(self.counts.sum())

    @property
    def edges(self) -> np.ndarray:  # as numpy.histogram returns them
        return np.linspace(self.low, self.high, len(self.counts) + 1)


def _histogram_row(tensor: torch.Tensor, bins: int) -> torch.Tensor:
    """[counts, min, max, sum, sum of squares] without a sync: histc wants its range as Python numbers (a sync per
    tensor), so the values are mapped onto 0..1 with the device-side min and max first."""
    flat = tensor.flatten()
    low, high = flat.min(), flat.max()
    unit = (flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    counts = torch.histc(unit, bins=bins, min=0.0, max=1.0)
    return torch.cat([counts, torch.stack([low, high, flat.sum(), flat.square().sum()])])


def _grad(p: nn.Parameter) -> torch.Tensor:
    return p.grad.detach().float() if p.grad is not None else torch.zeros(1, device=p.device)


def _relative_distance(p: nn.Parameter, reference: torch.Tensor) -> torch.Tensor:
    return (p.detach().float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12)


def flow_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Each layer's weight tensor (conv, BatchNorm scale, linear), in the model's order: the flow's bars."""
    return [(n, p) for n, p in model.named_parameters() if n.rpartition(".")[2] == "weight" and p.requires_grad]


class FlowCollector:
    """`before_step()`, then after optimizer.step() `after_step(step)`: one FlowSnapshot."""

    def __init__(self, model: nn.Module, histograms: str = "all"):
        self.parameters = flow_parameters(model)
        self.layer_names = [name.removesuffix(".weight") for name, _ in self.parameters]
        # By --log_histograms (its choices checked there): the flow's weights, none, or every trainable parameter.
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad and histograms != "off"]
        self.histogram_parameters = self.parameters if histograms == "weights" else trainable
        self.bins = HISTOGRAM_BINS
        self.start = [p.detach().clone() for _, p in self.parameters]  # W_0, for weight_change
        self.history: list[FlowSnapshot] = []  # a resumed run sets it from flow.jsonl, for the heatmaps
        self._pending: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor] | None = None

    @torch.no_grad()
    def before_step(self) -> None:
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
        stats, copies, histogram_rows = self._pending
        self._pending = None
        moved = [
            torch.stack([_relative_distance(p, old), _relative_distance(p, start)])
            for (_, p), old, start in zip(self.parameters, copies, self.start, strict=True)
        ]
        table = torch.cat([stats, torch.stack(moved)], dim=1)
        # The one host copy of the snapshot. float32 on the device (MPS has no float64): counts stay exact up to 2**24
        # per bin.
        host = torch.cat([table.flatten(), histogram_rows.flatten()]).cpu().double().numpy()
        columns = host[: table.numel()].reshape(table.shape).T.tolist()  # one list per statistic, in STATISTICS order
        snapshot = FlowSnapshot(step, list(self.layer_names), *columns)
        keys = [f"{kind}/{name}" for name, _ in self.histogram_parameters for kind in ("gradients", "parameters")]
        snapshot.histograms = {  # a diverging step (NaN/inf) gets no histogram: the loss check reports it
            key: Histogram(row[: self.bins], *map(float, row[self.bins :]))
            for key, row in zip(keys, host[table.numel() :].reshape(histogram_rows.shape), strict=True)
            if np.isfinite(row).all()
        }
        self.history.append(snapshot)
        return snapshot


class FlowHealth:
    """One-time warnings for vanishing/exploding gradients and odd update ratios."""

    def __init__(self, patience: int = HEALTH_PATIENCE):
        self.patience = patience
        self.streaks: dict[tuple[str, str], int] = {}
        self.warned: set[tuple[str, str]] = set()

    def check(self, snapshot: FlowSnapshot) -> list[str]:
        messages, (low, high) = [], UPDATE_RATIO_RANGE
        for layer, grad, ratio in zip(snapshot.layers, snapshot.grad_mean, snapshot.update_ratio, strict=True):
            details = {  # condition -> what is wrong now, "" when nothing
                "vanishing_gradient": f"mean |grad| {grad:.2e} < {VANISHING_GRAD:g}" if grad < VANISHING_GRAD else "",
                "exploding_gradient": f"mean |grad| {grad:.2e} > {EXPLODING_GRAD:g}" if grad > EXPLODING_GRAD else "",
                "update_ratio": "" if low <= ratio <= high else f"update ratio {ratio:.2e} outside {low:g}..{high:g}",
            }
            for condition, detail in details.items():
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
    """A FlowCollector that writes each snapshot to flow.jsonl and the trackers, warns, and logs its images; the
    loop also calls `poll(step)` every step and `close(step)` at the end.

    A figure costs ~100 ms and a GPU step can be under 1 ms, so one thread renders the images (one keeps step
    order). They are logged at the step the loop has reached (W&B drops a step lower than one it has seen), their
    own step in the caption; TensorBoard and MLflow get the snapshot's step. One set per poll: each its own W&B step.
    """

    def __init__(self, model: nn.Module, tracking, flow_file: str | Path, histograms: str = "all", printer=print):
        super().__init__(model, histograms=histograms)
        self.health = FlowHealth()
        self.tracking, self.flow_file, self.printer = tracking, flow_file, printer
        self.rendering: deque[tuple[int, Future]] = deque()  # (snapshot step, its images to come), oldest first
        self.skipped = 0  # snapshots whose images were dropped because rendering fell behind
        self._pool: ThreadPoolExecutor | None = None  # started at the first snapshot, once the trackers exist

    def after_step(self, step: int) -> FlowSnapshot:
        snapshot = super().after_step(step)
        append_jsonl(self.flow_file, snapshot.to_record())
        values = {f"flow/{stat}/{layer}": value for stat in STATISTICS for layer, value in snapshot.per_layer(stat)}
        self.tracking.log(values, step=step)
        self.tracking.log_histograms(snapshot.histograms, step=step)
        for message in self.health.check(snapshot):
            self.printer(message)
            self.tracking.log({"flow/warning": message}, step=step)
        # Images are only worth rendering for a tracker; the final figures on disk are drawn at the end anyway.
        if self.tracking.tracker_names and len(self.rendering) < MAX_PENDING:
            self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab2-figures")
            self.rendering.append((snapshot.step, self._pool.submit(self._render, snapshot)))
        elif self.tracking.tracker_names:  # never wait for the renderer: skip
            self.skipped += 1
            if self.skipped == 1:
                self.printer(
                    f"note: flow images of step {snapshot.step} skipped: rendering is slower than --flow_log_steps; "
                    "raise it for images at every snapshot."
                )
        return snapshot

    def _render(self, snapshot: FlowSnapshot) -> dict:
        arrays = {name: figure_to_array(fig) for name, fig in flow_figures(snapshot).items()}
        return self.tracking.prepare_flow_images(arrays, snapshot.step)

    def poll(self, reached_step: int) -> None:
        if self.rendering and self.rendering[0][1].done():
            self._log(*self.rendering.popleft(), reached_step)

    def close(self, reached_step: int) -> None:
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
    """flow.jsonl's snapshots: a resumed run's heatmaps cover its whole history. A record not in lab2's form (a
    null or text statistic, no layers) is skipped with a warning, as resuming drops one without a step."""
    records, snapshots = read_jsonl(path), []
    for record in records:
        try:
            if not (layers := record["layers"]):
                continue
            values = {stat: [float(layers[n].get(stat, "nan")) for n in layers] for stat in STATISTICS}
            snapshots.append(FlowSnapshot(int(record["step"]), list(layers), **values))
        except (LookupError, TypeError, ValueError, AttributeError, OverflowError):
            pass
    if len(snapshots) < len(records):
        skipped = len(records) - len(snapshots)
        print(f"warning: {path}: skipped {skipped} record(s) that are not flow snapshots lab2 wrote.", file=sys.stderr)
    return snapshots


def history_matrix(history: list[FlowSnapshot], statistic: str) -> torch.Tensor:
    """(layers, snapshots) of one statistic, rows the last snapshot's layers; NaN where a snapshot lacks the layer
    (a flow.jsonl written before BatchNorm was tracked has 6 layers in its early snapshots, 10 later)."""
    columns = [dict(s.per_layer(statistic)) for s in history]
    return torch.tensor([[column.get(layer, float("nan")) for column in columns] for layer in history[-1].layers])


def history_figures(history: list[FlowSnapshot]) -> dict:
    """The last snapshot's bars and the heatmaps over `history` ({} for none): at a run's end, and in lab2-report
    for a stopped run, from its flow.jsonl."""
    if not history:
        return {}
    steps = [s.step for s in history]
    heatmaps = flow_heatmaps(history[-1].layers, steps, lambda stat: history_matrix(history, stat).numpy())
    return {**flow_figures(history[-1]), **heatmaps}
