"""The project's own layers against the textbook and torch ones they replace, side by side in one process.

- ``LocallyConnected2d`` against its textbook definition (``F.unfold``, then an einsum over positions), on the
  ``arch-local`` variant;
- the group and instance norms that normalise a contiguous copy of a channels_last CPU tensor against
  ``nn.GroupNorm`` / ``nn.InstanceNorm2d`` on those tensors, on ``norm-group``, ``norm-instance`` and
  ``norm-layer``;
- the head's ``GlobalAvgPool2d`` against ``nn.AdaptiveAvgPool2d(1)`` (every spatial network has it; it matters
  most for ``pool-none``, whose last stage keeps the full map). The other variants also carry the new head.

Each variant is built once; its training step (forward, loss, backward, in the config's precision and memory
format, at its batch size) is timed with the project's layers and with the replaced ones on the same weights,
alternating so that drifts of the machine hit both alike. The table reports medians and their ratio.

    python benchmarks/layers.py --config config/demo.yaml [--repeats 7] [--steps 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnablate.config import Study, load_config
from cnnablate.devices import choose_device
from cnnablate.models import GlobalAvgPool2d, GroupNorm, InstanceNorm2d, LocallyConnected2d, build_model


class UnfoldLocallyConnected2d(LocallyConnected2d):
    """The textbook locally connected layer: every window unfolded, one einsum over positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        out = torch.einsum("bkl,lok->bol", patches, self.weight)
        return out.reshape(x.shape[0], self.out_channels, *self.out_size) + self.bias


def with_torch_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each of the project's layers swapped for the one it replaces, same weights."""
    replaced = copy.deepcopy(model)
    for module in replaced.modules():
        if isinstance(module, LocallyConnected2d):
            module.__class__ = UnfoldLocallyConnected2d
        elif isinstance(module, GroupNorm):
            module.__class__ = nn.GroupNorm
        elif isinstance(module, InstanceNorm2d):
            module.__class__ = nn.InstanceNorm2d
        elif isinstance(module, GlobalAvgPool2d):
            module.__class__ = nn.AdaptiveAvgPool2d
    return replaced


def step_timer(
    model: nn.Module, batch: torch.Tensor, labels: torch.Tensor, autocast: torch.dtype | None
) -> Callable[[int], float]:
    """Seconds per training step (forward, loss, backward) over ``steps`` steps."""
    device_type = batch.device.type

    def timed(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = F.cross_entropy(model(batch), labels)
            loss.backward()
        if device_type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("config/demo.yaml"))
    variants = ["arch-local", "norm-group", "norm-instance", "norm-layer", "pool-none", "base"]
    parser.add_argument("--variants", nargs="+", default=variants)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    config = load_config(args.config)
    recipe = config["train"]
    torch.set_num_threads(recipe["threads"])
    choice = choose_device(recipe["precision"], recipe["channels_last"])
    memory_format = torch.channels_last if choice.channels_last else torch.contiguous_format
    study = Study.from_config(config)
    print(
        f"device {choice.description}, autocast {choice.autocast_dtype}, {memory_format}, "
        f"batch {recipe['batch_size']}, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats} x {args.steps} steps"
    )
    print("| variant | torch / textbook layers (ms/step) | project layers (ms/step) | speed-up |")
    print("|---|---:|---:|---:|")
    for variant in args.variants:
        torch.manual_seed(0)
        ours = build_model(study.variants[variant].spec, 10).to(choice.device, memory_format=memory_format)
        theirs = with_torch_layers(ours)
        batch = torch.randn(recipe["batch_size"], 3, 32, 32, device=choice.device).to(memory_format=memory_format)
        labels = torch.randint(0, 10, (recipe["batch_size"],), device=choice.device)
        with torch.no_grad():  # the same function, or the comparison means nothing
            torch.testing.assert_close(theirs(batch), ours(batch), rtol=1e-4, atol=1e-4)
        timers = {
            name: step_timer(model, batch, labels, choice.autocast_dtype)
            for name, model in (("theirs", theirs), ("ours", ours))
        }
        for timer in timers.values():
            timer(2)  # warm-up: kernels chosen, buffers allocated
        samples: dict[str, list[float]] = {name: [] for name in timers}
        for _ in range(args.repeats):
            for name, timer in timers.items():
                samples[name].append(timer(args.steps))
        theirs_ms, ours_ms = (1000 * statistics.median(samples[name]) for name in ("theirs", "ours"))
        print(f"| {variant} | {theirs_ms:.1f} | {ours_ms:.1f} | {theirs_ms / ours_ms:.2f}x |")


if __name__ == "__main__":
    main()
