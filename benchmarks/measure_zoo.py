"""Check the counters against every torchvision classification model that publishes its cost.

For every classification builder in ``torchvision.models`` with weights, and every weights entry with a
distinct (input size, ``_ops``, ``num_params``): build the architecture with ``weights=None`` (nothing is
downloaded; the count does not depend on the values), measure it exactly as ``cnnablate measure`` does
(:func:`cnnablate.measure.measure_model`, on CPU) at the weights' crop size, and compare:

* parameters with ``meta["num_params"]``: must be equal;
* MACs with ``meta["_ops"]`` (GMACs, although torchvision's docs call them GFLOPS), which torchvision
  rounds to 3 decimals: must agree within 0.5%, or within that rounding for the smallest models.

The theoretical receptive field is computed too (as the CLI does), so every model is also checked to
get through the graph analysis. Prints a Markdown table and a summary line; ``--output`` also writes them
to a Markdown page (``docs/measure_zoo.md``). Exit status 1 if any model disagrees.

    OMP_NUM_THREADS=1 python benchmarks/measure_zoo.py [--models vit_b_16 swin_t ...] [--output docs/measure_zoo.md]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from cnnablate.measure import measure_model

MAC_TOLERANCE = 0.005  # relative
PUBLISHED_ROUNDING = 0.0005  # GMACs: _ops has 3 decimals


@dataclass(frozen=True)
class Entry:
    """One published cost: a model at one input size."""

    model: str
    weights: WeightsEnum
    size: int

    @property
    def params(self) -> int:
        return int(self.weights.meta["num_params"])

    @property
    def gmacs(self) -> float:
        return float(self.weights.meta["_ops"])


def entries(names: list[str] | None = None) -> list[Entry]:
    """Weights entries with a distinct published cost, cheapest first (so a run shows results early)."""
    found: dict[tuple[str, int, float, int], Entry] = {}
    for name in names or torchvision.models.list_models(module=torchvision.models):
        for weights in torchvision.models.get_model_weights(name):
            if "_ops" not in weights.meta or "num_params" not in weights.meta:
                continue
            entry = Entry(name, weights, int(weights.transforms.keywords["crop_size"]))
            found.setdefault((name, entry.size, entry.gmacs, entry.params), entry)
    return sorted(found.values(), key=lambda e: (e.gmacs, e.model))


# torchvision's googlenet builder deletes the auxiliary classifiers (used only in training) after loading
# weights unless aux_logits=True is asked for, so num_params excludes them; without weights they are built.
# (inception_v3's builder keeps its auxiliary classifier, as the default build does.)
WEIGHTS_BUILD_ARGUMENTS = {"googlenet": {"aux_logits": False}}


def build(entry: Entry) -> nn.Module:
    """The architecture of ``entry.weights``, randomly initialised, as torchvision builds it for those weights.

    torchvision's builders construct models whose size is fixed at construction (ViT's ``image_size``,
    MaxViT's ``input_size``) for the weights' ``meta["min_size"]``; without weights the default is built,
    so the same argument is passed here when the model's class takes it.
    """
    torch.manual_seed(0)
    arguments = WEIGHTS_BUILD_ARGUMENTS.get(entry.model, {})
    model = torchvision.models.get_model(entry.model, weights=None, **arguments)
    height, width = entry.weights.meta["min_size"]
    accepted = inspect.signature(type(model)).parameters
    sizes = {key: value for key, value in (("image_size", height), ("input_size", (height, width))) if key in accepted}
    if sizes:
        model = torchvision.models.get_model(entry.model, weights=None, **arguments, **sizes)
    return model


@dataclass(frozen=True)
class Row:
    entry: Entry
    params: int
    macs: int
    trf: dict
    seconds: float

    @property
    def params_exact(self) -> bool:
        return self.params == self.entry.params

    @property
    def macs_agree(self) -> bool:
        difference = abs(self.macs / 1e9 - self.entry.gmacs)
        return difference <= max(MAC_TOLERANCE * self.entry.gmacs, PUBLISHED_ROUNDING)

    def _difference(self, relative: float) -> str:
        if not self.macs_agree:
            return f"**{relative:+.3%}**"
        return f"{relative:+.3%}" if abs(relative) <= MAC_TOLERANCE else f"{relative:+.3%} (rounding of _ops)"

    def markdown(self) -> str:
        gmacs = self.macs / 1e9
        relative = (gmacs - self.entry.gmacs) / self.entry.gmacs
        trf = self.trf
        field = f"{trf['size'][0]} at {trf['module'] or trf['layer']}"
        if trf["global_after"]:
            field += f"; global after it ({trf['mixing'].split(' at ')[0]})"
        elif trf["undefined_after"]:
            field += "; undefined after it"
        cells = [
            self.entry.model,
            self.entry.weights.name,
            str(self.entry.size),
            f"{self.params:,}",
            "yes" if self.params_exact else f"**no** ({self.entry.params:,})",
            f"{gmacs:.4f}",
            f"{self.entry.gmacs:.3f}",
            self._difference(relative),
            field,
            f"{self.seconds:.1f}",
        ]
        return "| " + " | ".join(cells) + " |"


HEADER = (
    "| model | weights | input | params | = num_params | GMACs | _ops | difference | theoretical RF | s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def check(entry: Entry) -> Row:
    start = time.perf_counter()
    model = build(entry)
    result = measure_model(model, entry.size, device="cpu")
    return Row(entry, result["params"], result["macs"], result["trf"], time.perf_counter() - start)


def summary(rows: list[Row], seconds: float) -> str:
    models = len({row.entry.model for row in rows})
    return (
        f"{models} models ({len(rows)} weights entries with distinct costs) checked: "
        f"params exact {sum(r.params_exact for r in rows)}/{len(rows)}, "
        f"MACs within 0.5% {sum(r.macs_agree for r in rows)}/{len(rows)}, "
        f"wall time {seconds:.0f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="only these builders (default: all)")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    start = time.perf_counter()
    print(HEADER, flush=True)
    rows = []
    for entry in entries(args.models):
        rows.append(check(entry))
        print(rows[-1].markdown(), flush=True)
        gc.collect()
    line = summary(rows, time.perf_counter() - start)
    print(line)
    if args.output:
        threads = torch.get_num_threads()
        machine = f"{platform.machine()}, {threads} thread{'s' if threads != 1 else ''}"
        args.output.write_text(
            "# Counters against torchvision's published costs\n\n"
            "Written by `OMP_NUM_THREADS=1 python benchmarks/measure_zoo.py --output docs/measure_zoo.md` "
            f"(torch {torch.__version__}, torchvision {torchvision.__version__}, CPU: {machine}; on a busy\n"
            "2-core machine two threads per process ran several times slower than one).\n"
            "Every torchvision classification model whose weights publish `num_params` and `_ops`, each weights\n"
            "entry with a distinct cost, built with `weights=None` and measured as `cnnablate measure` does at\n"
            "the weights' crop size. Parameters must equal `num_params`; MACs (FLOPs / 2) must agree with `_ops`\n"
            "(GMACs, rounded by torchvision to 3 decimals) within 0.5%. The last columns give the theoretical\n"
            "receptive field at the last spatial map, whether global mixing (attention, a linear layer over\n"
            "positions) follows it, and the seconds this row took. Swin and MaxViT split the map into windows;\n"
            'their field has no (size, stride, padding) description past that split ("undefined after it").\n\n'
            f"**{line}**\n\n" + HEADER + "\n" + "\n".join(row.markdown() for row in rows) + "\n"
        )
    return 0 if all(r.params_exact and r.macs_agree for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
