"""What the network learned: first-layer filters, feature maps, saliency and Grad-CAM (through Captum)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch import nn

from cnnablate.filters import first_conv_weight
from cnnablate.heatmaps import DPI
from cnnablate.models import stage_outputs
from cnnablate.runs import LoadedRun


def displayable(image: torch.Tensor) -> np.ndarray:
    """A C x H x W uint8 image as something imshow takes: RGB from the first three channels, else grey."""
    pixels = image.permute(1, 2, 0).cpu().numpy()
    return pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., 0]


def pick_examples(labels: torch.Tensor, count: int) -> list[int]:
    """The first test image of each of ``count`` different classes."""
    chosen: dict[int, int] = {}
    for index, label in enumerate(labels.tolist()):
        chosen.setdefault(label, index)
        if len(chosen) == count:
            break
    return list(chosen.values())


def _show_image(ax: plt.Axes, image: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def filters_figure(model: nn.Module, title: str, path: Path) -> bool:
    """First-layer filters as an RGB grid (each filter scaled to its own range); False if there are none."""
    weights = first_conv_weight(model)
    if weights is None:
        return False
    count = weights.shape[0]
    columns = min(16, count)
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.7, rows * 0.7 + 0.6), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < count:
            kernel = weights[index][:3].transpose(1, 2, 0) if weights.shape[1] >= 3 else weights[index][0]
            span = kernel.max() - kernel.min()
            ax.imshow((kernel - kernel.min()) / (span if span > 0 else 1), interpolation="nearest")
    fig.suptitle(f"First-layer filters: {title}", fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def feature_maps_figure(run: LoadedRun, image_index: int, title: str, path: Path, channels: int = 8) -> bool:
    """The first channels of the feature map closing each stage, for one test image."""
    stages = stage_outputs(run.model)
    if not stages:
        return False
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
        for name, module in stages
    ]
    with torch.no_grad():
        run.model(run.test.normalize(run.test.images[image_index : image_index + 1]))
    for hook in hooks:
        hook.remove()
    fig, axes = plt.subplots(
        len(stages), channels + 1, figsize=((channels + 1) * 1.1, len(stages) * 1.2 + 0.6), squeeze=False
    )
    picture = displayable(run.test.images[image_index])
    for row, (name, _) in enumerate(stages):
        maps = captured[name][0].float().cpu().numpy()
        _show_image(axes[row, 0], picture, "input" if row == 0 else "")
        for column in range(channels):
            ax = axes[row, column + 1]
            ax.set_axis_off()
            if column < maps.shape[0]:
                ax.imshow(maps[column], cmap="viridis")
                ax.set_title(f"stage {row + 1} ch {column}" if column == 0 else f"ch {column}", fontsize=7)
    fig.suptitle(f"Feature maps of one test image: {title}", fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def attributions_figure(run: LoadedRun, indices: list[int], title: str, path: Path) -> None:
    """Saliency (|input gradient|) and Grad-CAM (last spatial stage, ReLU'd) for a few test images."""
    model = run.model.eval()
    images = run.test.normalize(run.test.images[indices]).requires_grad_(True)
    targets = run.test.labels[indices]
    with torch.no_grad():
        predicted = model(images).argmax(1)
    saliency = Saliency(model).attribute(images, target=targets, abs=True).amax(dim=1)
    stages = stage_outputs(model)
    gradcam = None
    if stages:
        cam = LayerGradCam(model, stages[-1][1]).attribute(images, target=targets, relu_attributions=True)
        gradcam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    rows = 3 if gradcam is not None else 2
    fig, axes = plt.subplots(rows, len(indices), figsize=(len(indices) * 1.8, rows * 1.9 + 0.5), squeeze=False)
    classes = run.arrays.classes
    for column, index in enumerate(indices):
        picture = displayable(run.test.images[index])
        label = f"{classes[targets[column]]}\n(pred. {classes[predicted[column]]})"
        _show_image(axes[0, column], picture, label)
        axes[1, column].imshow(saliency[column].detach().cpu().numpy(), cmap="hot")
        axes[1, column].set_axis_off()
        axes[1, column].set_title("saliency", fontsize=8)
        if gradcam is not None:
            axes[2, column].imshow(picture)
            axes[2, column].imshow(gradcam[column].detach().cpu().numpy(), cmap="jet", alpha=0.5)
            axes[2, column].set_axis_off()
            axes[2, column].set_title("Grad-CAM", fontsize=8)
    fig.suptitle(f"Saliency and Grad-CAM: {title}", fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def interpret_run(run: LoadedRun, output_dir: str | Path, examples: int = 4) -> list[str]:
    """Write filters.png, feature_maps.png and attributions.png (whichever apply) into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    title = f"{run.metrics['variant']} (seed {run.metrics['seed']})"
    written = []
    if filters_figure(run.model, title, output_dir / "filters.png"):
        written.append("filters.png")
    indices = pick_examples(run.test.labels, examples)
    if feature_maps_figure(run, indices[0], title, output_dir / "feature_maps.png"):
        written.append("feature_maps.png")
    attributions_figure(run, indices, title, output_dir / "attributions.png")
    written.append("attributions.png")
    return written
