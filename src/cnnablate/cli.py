"""Command line: ``cnnablate measure TARGET`` for any torch model or a variant of a study config."""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn


class TargetError(Exception):
    """A TARGET that cannot be measured; the message names the problem and what to try."""


def _a(value: object) -> str:
    """``an int``, ``a str``: the type of ``value`` with its article."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _import(module_name: str) -> ModuleType:
    """The module, or a TargetError telling a misspelt module from one whose own imports fail."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name != error.name and not module_name.startswith(f"{error.name}."):
            raise TargetError(
                f"importing module {module_name!r} failed: it needs {error.name!r}, which is not installed"
            ) from error
        raise TargetError(
            f"no module named {module_name!r}; check the spelling and that it is installed in this Python "
            f"environment ({sys.executable})"
        ) from error


def _factory(module: ModuleType, module_name: str, attribute: str) -> Callable[[], Any]:
    """The callable ``module_name:attribute``, checked to be callable without arguments before it runs."""
    if not hasattr(module, attribute):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attribute, names, n=3)
        hint = (
            f"did you mean {' or '.join(f'{module_name}:{n}' for n in close)}?"
            if close
            else (f"python -c 'import {module_name}; print(dir({module_name}))' lists what it has")
        )
        raise TargetError(f"module {module_name!r} has no attribute {attribute!r}; {hint}")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise TargetError(
            f"{module_name}:{attribute} is not callable ({_a(factory)}); name a model class or a function that "
            "builds the model"
        )
    try:
        inspect.signature(factory).bind()
    except TypeError as error:
        raise TargetError(
            f"{module_name}:{attribute} cannot be called without arguments ({error}); point TARGET at a "
            "function that builds the model with no arguments, e.g. one in your own module"
        ) from error
    except ValueError:  # no signature to inspect (some builtins): calling it will tell
        pass
    return factory


def load_target(target: str, config: Path | None, num_classes: int) -> tuple[nn.Module, str]:
    """``module:callable`` builds any model (torchvision.models:resnet50); otherwise a variant id of --config."""
    if ":" in target:
        module_name, _, attribute = target.partition(":")
        model = _factory(_import(module_name), module_name, attribute)()
        if not isinstance(model, nn.Module):
            raise TargetError(f"{target} returned {_a(model)}, not a torch.nn.Module")
        return model, target
    if config is None:
        raise TargetError(f"{target!r} is not module:callable; give --config STUDY.yaml to measure a variant id")
    from cnnablate.config import Study, load_config
    from cnnablate.models import build_model

    study = Study.from_config(load_config(config))
    if target not in study.variants:
        raise TargetError(f"unknown variant {target!r}; variants of {config}: {', '.join(study.variants)}")
    return build_model(study.variants[target].spec, num_classes), target


def measure_command(args: argparse.Namespace) -> dict[str, Any]:
    from cnnablate.measure import InputSizeError, measure_model

    model, name = load_target(args.target, args.config, args.num_classes)
    try:
        result = measure_model(model, args.input_size, erf=args.erf)
    except InputSizeError as error:
        raise TargetError(
            f"{name} does not accept --input-size {args.input_size}: {error}; try the size it was built for "
            "(224 for most torchvision models)"
        ) from error
    except NotImplementedError as error:
        raise TargetError(f"no receptive-field rule for an op of {name}: {error}") from error
    result["target"] = name
    return result


def _print_human(result: dict[str, Any]) -> None:
    print(
        f"{result['target']}: {result['params']:,} parameters, {result['macs']:,} MACs "
        f"({result['flops']:,} FLOPs) at input {result['input_size']}"
    )
    trf = result["trf"]
    if trf is None:
        print("theoretical receptive field: none, the model has no spatial feature map")
    else:
        where = trf["module"] or trf["layer"]
        print(
            f"theoretical receptive field at {where}: size {trf['size']}, stride {trf['stride']}, "
            f"padding {trf['padding']}"
        )
        if trf["global_context"]:
            print(f"  {where} also sees a pooled summary of the whole map (global context, not in the size)")
        if trf["global_after"]:
            print(
                f"  global after {trf['global_after']}: {trf['mixing']} mixes all positions, so every later "
                "unit sees the whole input"
            )
        elif trf["undefined_after"]:
            print(f"  undefined after {where}: {trf['undefined_after']}")
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
    try:
        result = measure_command(args)
    except TargetError as error:
        print(f"cnnablate: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
