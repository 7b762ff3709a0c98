"""FLOPs and parameters per layer, counted with forward hooks; `lab2-flops --model simple_cnn` prints the table.

**2 FLOPs per multiply-add** (torch.utils.flop_counter's convention; fvcore, thop and ptflops count MACs, half these
numbers), Conv2d and Linear layers only, as in the course lab's 0.1612 GFLOPs: a conv 2 x (Cin / groups) x Cout x Kh x
Kw x Hout x Wout, a linear 2 x in x out (x tokens).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class LayerFlops:
    name: str
    type: str
    output_shape: list[int]
    params: int
    flops: int


@dataclass
class FlopsReport:
    """Per-layer and total FLOPs for one sample."""

    layers: list[LayerFlops]
    params: int
    forward_flops: int
    training_flops: int | None  # forward + backward, measured by FlopCounterMode
    input_shape: list[int]
    convention: str = "2 FLOPs per multiply-add; Conv2d and Linear layers only; per sample"

    @property
    def gflops_per_sample(self) -> float:
        return self.forward_flops / 1e9

    def to_dict(self) -> dict:  # flops.json
        return {**asdict(self), "gflops_per_sample": self.gflops_per_sample}

    def short(self) -> str:
        """One line: the totals of `table`."""
        return (
            f"model: {self.params:,} parameters, {self.gflops_per_sample:.4f} GFLOPs per sample forward "
            "(the per-layer table: flops.json, or lab2-flops)"
        )

    def table(self) -> str:
        """The per-layer table `lab2-flops` prints: a row per layer, the total, then the GFLOPs per sample."""
        row = "{:<16}{:<10}{:<20}{:>12,}{:>16,}{:>8.2f}%".format
        header = f"{'layer':<16}{'type':<10}{'output shape':<20}{'params':>12}{'FLOPs':>16}{'% FLOPs':>9}"
        rule, total = "-" * len(header), max(self.forward_flops, 1)
        lines = [header, rule]
        for x in self.layers:
            shape = "x".join(map(str, x.output_shape))
            lines.append(row(x.name, x.type, shape, x.params, x.flops, 100.0 * x.flops / total))
        lines += [rule, row("total", "", "", self.params, self.forward_flops, 100.0)]
        lines.append(f"forward: {self.gflops_per_sample:.4f} GFLOPs per sample ({self.convention})")
        if self.training_flops:
            lines.append(
                f"training (forward + backward): {self.training_flops / 1e9:.4f} GFLOPs per sample "
                f"({self.training_flops / self.forward_flops:.2f}x forward)"
            )
        return "\n".join(lines)


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode inside the block (BatchNorm statistics untouched), the model's own mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, input_shape=(1, 3, 32, 32), with_training: bool = True) -> FlopsReport:
    """FLOPs per sample of a forward pass on zeros of `input_shape`; with `with_training`, forward + backward
    measured by torch.utils.flop_counter rather than assumed 3x."""
    layers: list[LayerFlops] = []
    names = {module: name for name, module in model.named_modules()}
    batch = input_shape[0]

    def hook(module, inputs, output):
        params = sum(p.numel() for p in module.parameters(recurse=False))
        # Each output value is a dot product with the weights of its own output channel (Cin / groups x Kh x Kw for
        # a conv, `in` for a Linear), so batch, positions and tokens all multiply the work through output.numel().
        flops = 2 * module.weight[0].numel() * output.numel() // batch
        layers.append(LayerFlops(names[module], type(module).__name__, list(output.shape[1:]), params, flops))

    with ExitStack() as hooks, evaluating(model), torch.no_grad():  # the hooks are removed on leaving
        for layer in (m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))):
            hooks.enter_context(layer.register_forward_hook(hook))
        model(torch.zeros(input_shape, device=next(model.parameters()).device))
    training = measured_flops(model, input_shape, backward=True) // batch if with_training else None
    params = sum(p.numel() for p in model.parameters())
    return FlopsReport(layers, params, sum(layer.flops for layer in layers), training, [1, *input_shape[1:]])


def measured_flops(model: nn.Module, input_shape=(1, 3, 32, 32), backward: bool = False) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with evaluating(model), counter:
            out = model(torch.zeros(input_shape, device=next(model.parameters()).device))
            if backward:
                out.sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
