"""Hook-based FLOPs and parameter counter with a per-layer table.

Convention: **2 FLOPs per multiply-add** (torch.utils.flop_counter's), not MACs
(fvcore, thop and ptflops count MACs: half these numbers). Only Conv2d and
Linear layers are counted; normalisation, activations and pooling are ignored,
as in the course lab's 0.1612 GFLOPs figure.

- Conv: 2 x (Cin / groups) x Cout x Kh x Kw x Hout x Wout
- Linear: 2 x in x out x (tokens, if the input has extra dimensions)

Run `python -m lab2.cli.flops --model simple_cnn` (or `lab2-flops`) for the table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

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
    """Per-layer and total FLOPs for one sample; `convention` says how they were counted."""

    layers: list[LayerFlops]
    params: int
    forward_flops: int
    training_flops: int | None = None  # forward + backward, measured by FlopCounterMode
    input_shape: list[int] = field(default_factory=lambda: [1, 3, 32, 32])
    convention: str = "2 FLOPs per multiply-add; Conv2d and Linear layers only; per sample"

    @property
    def gflops_per_sample(self) -> float:
        return self.forward_flops / 1e9

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gflops_per_sample"] = self.gflops_per_sample
        return data

    def table(self) -> str:
        """The per-layer table as aligned text, with totals."""
        header = f"{'layer':<16}{'type':<10}{'output shape':<20}{'params':>12}{'FLOPs':>16}{'% FLOPs':>9}"
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            share = 100.0 * layer.flops / self.forward_flops if self.forward_flops else 0.0
            shape = "x".join(str(d) for d in layer.output_shape)
            lines.append(
                f"{layer.name:<16}{layer.type:<10}{shape:<20}{layer.params:>12,}{layer.flops:>16,}{share:>8.2f}%"
            )
        lines.append("-" * len(header))
        lines.append(f"{'total':<46}{self.params:>12,}{self.forward_flops:>16,}{100.0:>8.2f}%")
        lines.append(f"forward: {self.gflops_per_sample:.4f} GFLOPs per sample ({self.convention})")
        if self.training_flops:
            ratio = self.training_flops / self.forward_flops
            lines.append(
                f"training (forward + backward): {self.training_flops / 1e9:.4f} GFLOPs per sample "
                f"({ratio:.2f}x forward)"
            )
        return "\n".join(lines)


def _layer_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        out_h, out_w = output.shape[-2:]
        kernel = module.kernel_size[0] * module.kernel_size[1]
        per_position = 2 * (module.in_channels // module.groups) * module.out_channels * kernel
        return per_position * out_h * out_w * output.shape[0]
    # Linear: every leading dimension (batch and tokens) multiplies the work.
    rows = math.prod(inputs[0].shape[:-1])
    return 2 * module.in_features * module.out_features * rows


def count_flops(model: nn.Module, input_shape=(1, 3, 32, 32), with_training: bool = True) -> FlopsReport:
    """Count FLOPs of one forward pass of `model` on zeros of `input_shape` (batch 1 = per sample).

    The model is run in eval mode under no_grad (its mode is restored); hooks are
    removed even if the forward pass fails. With `with_training`, the forward +
    backward count is measured with torch.utils.flop_counter rather than assumed 3x.
    """
    layers: list[LayerFlops] = []
    handles = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module, inputs, output):
        layers.append(
            LayerFlops(
                name=names[module],
                type=type(module).__name__,
                output_shape=list(output.shape[1:]),
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                flops=_layer_flops(module, inputs, output),
            )
        )

    device = next(model.parameters()).device
    was_training = model.training
    try:
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    batch = input_shape[0]
    for layer in layers:
        layer.flops //= batch
    report = FlopsReport(
        layers=layers,
        params=sum(p.numel() for p in model.parameters()),
        forward_flops=sum(layer.flops for layer in layers),
        input_shape=[1, *input_shape[1:]],
    )
    if with_training:
        report.training_flops = measured_flops(model, input_shape, backward=True) // batch
    return report


def measured_flops(model: nn.Module, input_shape=(1, 3, 32, 32), backward: bool = False) -> int:
    """Total FLOPs torch.utils.flop_counter.FlopCounterMode sees for forward (and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm statistics stay untouched
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(torch.zeros(input_shape, device=device))
            if backward:
                out.sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return counter.get_total_flops()
