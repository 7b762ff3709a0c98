"""Gradient, weight and update flow per layer, and the health checks on them.

For each weight tensor (biases and norm weights, the 1-D parameters, are left
out) a snapshot holds:

- grad_mean / grad_max: mean and max of |grad|, read after backward and before
  the optimizer step. The caller unscales first (`accelerator.unscale_gradients()`),
  so fp16 runs show the true gradients, not the loss-scaled ones;
- weight_mean / weight_max: mean and max of |W| before the step (the seed's
  "weight update flow" plots showed these);
- update_ratio: ||W_after - W_before|| / ||W_before|| of that step, the real
  update flow.

Statistics are computed on the device and copied to the host once per snapshot,
so a snapshot costs one sync, every `--flow_log_steps` steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lab2.outputs import read_jsonl

STATISTICS = ("grad_mean", "grad_max", "weight_mean", "weight_max", "update_ratio")

# Health thresholds: a layer outside them for HEALTH_PATIENCE consecutive snapshots gets one warning.
VANISHING_GRAD = 1e-7
EXPLODING_GRAD = 1e3
UPDATE_RATIO_RANGE = (1e-5, 1e-1)
HEALTH_PATIENCE = 2


@dataclass
class FlowSnapshot:
    step: int
    layers: list[str]
    grad_mean: list[float]
    grad_max: list[float]
    weight_mean: list[float]
    weight_max: list[float]
    update_ratio: list[float]

    def to_record(self) -> dict:
        """The flow.jsonl record: {"step": s, "layers": {layer: {statistic: value}}}."""
        per_layer = {name: {stat: getattr(self, stat)[i] for stat in STATISTICS} for i, name in enumerate(self.layers)}
        return {"step": self.step, "layers": per_layer}


def tracked_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weight tensors worth watching: every parameter with 2 or more dimensions."""
    return [(name, p) for name, p in model.named_parameters() if p.ndim > 1 and p.requires_grad]


class FlowCollector:
    """Collects FlowSnapshots from a model: call `before_step()` then, after optimizer.step(), `after_step(step)`."""

    def __init__(self, model: nn.Module):
        self.parameters = tracked_parameters(model)
        self.layer_names = [name.removesuffix(".weight") for name, _ in self.parameters]
        self.history: list[FlowSnapshot] = []
        self._pending: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        """Read |grad| and |W| and keep a copy of W; gradients must already be unscaled."""
        rows, copies = [], []
        for _, p in self.parameters:
            grad = p.grad.detach().float().abs() if p.grad is not None else torch.zeros(1, device=p.device)
            weight = p.detach().float().abs()
            rows.append(torch.stack([grad.mean(), grad.amax(), weight.mean(), weight.amax()]))
            copies.append(p.detach().clone())
        self._pending = (torch.stack(rows), copies)

    @torch.no_grad()
    def after_step(self, step: int) -> FlowSnapshot:
        """Finish the snapshot begun by `before_step` with the update ratio of the step just taken."""
        if self._pending is None:
            raise RuntimeError("FlowCollector.after_step() called without before_step()")
        stats, copies = self._pending
        self._pending = None
        ratios = torch.stack(
            [(p.detach().float() - old.float()).norm() / old.float().norm().clamp_min(1e-12) for (_, p), old in zip(self.parameters, copies)]
        )
        table = torch.cat([stats, ratios[:, None]], dim=1).cpu().tolist()  # the one host sync of the snapshot
        columns = list(zip(*table)) if table else [[] for _ in STATISTICS]
        snapshot = FlowSnapshot(step, list(self.layer_names), *[list(col) for col in columns])
        self.history.append(snapshot)
        return snapshot

    def matrix(self, statistic: str) -> torch.Tensor:
        """(layers, snapshots) values of one statistic over the whole history, for heatmaps."""
        return torch.tensor([getattr(s, statistic) for s in self.history]).T


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
                    messages.append(f"flow warning at step {snapshot.step}: layer {layer}: {detail} for {self.streaks[key]} snapshots in a row")
        return messages


def read_flow_history(path: str | Path) -> list[FlowSnapshot]:
    """Snapshots back from flow.jsonl (a resumed run's heatmaps cover its whole history)."""
    snapshots = []
    for record in read_jsonl(path):
        names = list(record["layers"])
        values = {stat: [record["layers"][n][stat] for n in names] for stat in STATISTICS}
        snapshots.append(FlowSnapshot(record["step"], names, **values))
    return snapshots
