"""Grad-CAM, Captum's LayerGradCam on the model's last Conv2d: each channel of its output weighted by the mean
gradient of the class score, summed, positive part kept; a coarse map (8x8 for SimpleCNN) upsampled to the image and
scaled to 0..1 per image (the overlay shows where, not how strongly). Nothing here reads files or trackers.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from lab2.errors import UserError
from lab2.explain import plots
from lab2.explain.flops import evaluating

OVERLAY_ALPHA = 0.5  # the opacity of the hottest pixel; a cold one leaves the image as it is
OVERLAY_CMAP = "jet"  # the colour map Grad-CAM figures conventionally use: red = most important


def last_conv_layer(model: nn.Module, example: torch.Tensor) -> nn.Conv2d:
    """The Conv2d that runs last in `model`'s forward pass on `example` (B, C, H, W): found with hooks, because
    `model.modules()` is in the order the attributes were assigned, not the order the layers run."""
    ran: list[nn.Conv2d] = []
    with ExitStack() as hooks, torch.no_grad():  # the hooks are removed on leaving, whatever happens
        for conv in (module for module in model.modules() if isinstance(module, nn.Conv2d)):
            hooks.enter_context(conv.register_forward_hook(lambda module, _inputs, _output: ran.append(module)))
        model(example)
    if not ran:
        raise UserError(
            f"{type(model).__name__} runs no Conv2d layer, so Grad-CAM has no spatial feature map to explain; "
            "--explain and the gradcam figure need a convolutional model."
        )
    return ran[-1]


def gradcam_heatmaps(model: nn.Module, inputs: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """(B, H, W) maps in 0..1 of normalised `inputs` (B, C, H, W), one target class each; in eval mode and float32,
    and no .grad changes (Captum uses torch.autograd.grad)."""
    from captum.attr import LayerAttribution, LayerGradCam

    device = next(model.parameters()).device
    inputs = inputs.detach().float().to(device)
    with evaluating(model), torch.enable_grad():
        layer = last_conv_layer(model, inputs[:1])
        coarse = LayerGradCam(model, layer).attribute(inputs, target=[int(t) for t in targets], relu_attributions=True)
        maps = LayerAttribution.interpolate(coarse.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].float().cpu().numpy()
    peaks = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    # A map with no positive evidence stays all zero instead of dividing by zero.
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)


def overlay(ax, heatmap: np.ndarray) -> None:
    """Draw `heatmap` (H, W, 0..1) over the image already shown in `ax`, as opaque as it is hot: one opacity for
    every pixel tinted the whole image blue and hid the object."""
    height, width = heatmap.shape
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # the pixel grid of the image underneath
    ax.imshow(
        heatmap, cmap=OVERLAY_CMAP, alpha=OVERLAY_ALPHA * heatmap, vmin=0, vmax=1, interpolation="bilinear",
        extent=extent,
    )  # fmt: skip


def gradcam_figure(model: nn.Module, samples, class_names: Sequence[str]) -> Figure:
    """The predictions grid of `samples` (PredictionSamples with `inputs`, the normalised images), each image
    overlaid with the map of its predicted class."""
    heatmaps = gradcam_heatmaps(model, samples.inputs, samples.predictions)
    fig = plots.predictions_figure(
        samples.images, samples.predictions, samples.labels, samples.confidences, class_names
    )
    for ax, heatmap in zip(fig.axes, heatmaps, strict=False):  # the grid's first len(heatmaps) axes hold the images
        overlay(ax, heatmap)
    fig.suptitle(
        f"Grad-CAM on the predicted class (red: what raised its score; {plots.RIGHT} right, {plots.WRONG} wrong)"
    )
    return fig


def explain_image_figure(
    image: np.ndarray, heatmap: np.ndarray, top_classes: Sequence[str], top_probabilities: Sequence[float], title: str
) -> Figure:
    """One uint8 (H, W, 3) image with its overlay, beside a bar chart of its top-k classes."""
    fig = Figure(figsize=(7, 3), layout="constrained")
    image_ax, bars_ax = fig.subplots(1, 2, width_ratios=(1, 1.4))
    image_ax.imshow(image, interpolation="nearest")
    overlay(image_ax, heatmap)
    image_ax.axis("off")
    top_classes = plots.plain(top_classes)  # names from the data, as plain text
    image_ax.set_title(f"Grad-CAM: {top_classes[0]}", fontsize=9)
    rows = np.arange(len(top_classes))
    bars = bars_ax.barh(rows, 100 * np.asarray(top_probabilities, dtype=float), color="tab:blue")
    bars_ax.bar_label(bars, fmt="%.1f%%", fontsize=8)
    bars_ax.set_yticks(rows, list(top_classes))
    bars_ax.invert_yaxis()  # the most likely class on top
    bars_ax.set(xlim=(0, 115), xlabel="probability (%)")
    bars_ax.set_title(f"top-{len(top_classes)} classes", fontsize=9)
    fig.suptitle(*plots.plain([title]), fontsize=9)
    return fig
