"""Command line: ``cnnablate measure TARGET`` for any torch model or a variant of a study config."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn


def load_target(target: str, config: Path | None, num_classes: int) -> tuple[nn.Module, str]:
    """``module:callable`` builds any model (torchvision.models:resnet50); otherwise a variant id of --config."""
    if ":" in target:
        module_name, _, attribute = target.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        return factory(), target
    if config is None:
        raise SystemExit(f"{target!r} is not module:callable; give --config STUDY.yaml to measure a variant id")
    from cnnablate.config import Study, load_config
    from cnnablate.models import build_model

    study = Study.from_config(load_config(config))
    if target not in study.variants:
        raise SystemExit(f"unknown variant {target!r}; variants of {config}: {', '.join(study.variants)}")
    return build_model(study.variants[target].spec, num_classes), target


def measure_command(args: argparse.Namespace) -> dict[str, Any]:
    from cnnablate.measure import measure_model

    model, name = load_target(args.target, args.config, args.num_classes)
    result = measure_model(model, args.input_size, erf=args.erf)
    result["target"] = name
    return result


def _print_human(result: dict[str, Any]) -> None:
    print(
        f"{result['target']}: {result['params']:,} parameters, {result['macs']:,} MACs "
        f"({result['flops']:,} FLOPs) at input {result['input_size']}"
    )
    trf = result.get("trf")
    if trf:
        print(
            f"theoretical receptive field at {trf['layer']}: size {trf['size']}, stride {trf['stride']}, "
            f"padding {trf['padding']}"
        )
    erf = result.get("erf")
    if erf:
        print(
            f"effective receptive field: std {erf['std']}, size {erf['erf_size']}, ERF/TRF "
            f"{erf['erf_trf_ratio']:.3f}, 95% radius {erf['radius95']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnablate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("measure", help="params, MACs/FLOPs, theoretical and effective receptive field")
    measure.add_argument("target", help="module:callable (e.g. torchvision.models:resnet50) or a variant id")
    measure.add_argument("--config", type=Path, help="study config whose variant TARGET names")
    measure.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side (default 224, or 32 for a study variant)",
    )
    measure.add_argument("--num-classes", type=int, default=10, help="classes of a study variant's head")
    measure.add_argument("--erf", action="store_true", help="also measure the ERF at initialisation (random inputs)")
    measure.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.input_size is None:
        args.input_size = 224 if ":" in args.target else 32
    result = measure_command(args)
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
