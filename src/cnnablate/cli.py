"""cnnablate: measure any torch model or a study's variant; plan a study's cost before it runs.

Terms: TRF (theoretical receptive field) is the input window one output unit can see, from the layers'
kernels, strides and dilations. ERF (effective receptive field, Luo et al. 2016) is where the output really
looks: the gradient of the centre output unit with respect to the input, averaged over images; "95% radius"
is the half-width of the smallest centred square holding 95% of that gradient mass, and ERF/TRF compares the
ERF's size with the TRF's.

examples:
  cnnablate measure torchvision.models:resnet18                   # any module:callable, input 224
  cnnablate measure torchvision.models:vit_b_16 --json
  cnnablate measure pool-avg --config config/config.yaml --erf    # a variant of a study, with its ERF
  cnnablate plan --configfile config/config.yaml --gpus 4         # jobs, FLOPs, time and disk of a study
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import os
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


def _is_torchvision_model(name: str) -> bool:
    """Whether torchvision has a model builder of this name (``resnet18``), so the error can suggest it."""
    try:
        from torchvision import models
    except ImportError:
        return False
    return name in models.list_models()


def load_target(target: str, config: Path | None, num_classes: int) -> tuple[nn.Module, str]:
    """``module:callable`` builds any model (torchvision.models:resnet50); otherwise a variant id of --config."""
    if ":" in target:
        module_name, _, attribute = target.partition(":")
        model = _factory(_import(module_name), module_name, attribute)()
        if not isinstance(model, nn.Module):
            raise TargetError(f"{target} returned {_a(model)}, not a torch.nn.Module")
        return model, target
    if config is None:
        hint = f"; did you mean torchvision.models:{target}?" if _is_torchvision_model(target) else ""
        raise TargetError(f"{target!r} is not module:callable; give --config STUDY.yaml to measure a variant id{hint}")
    from cnnablate.config import ConfigError, Study, load_config
    from cnnablate.models import build_model

    try:
        study = Study.from_config(load_config(config))
    except ConfigError as error:
        raise TargetError(str(error)) from error
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
            f"effective receptive field: std {_rounded(erf['std'])}, size {_rounded(erf['erf_size'])}, ERF/TRF "
            f"{erf['erf_trf_ratio']:.3f}, 95% radius {erf['radius95']}"
        )


def _rounded(value: Any) -> Any:
    """Numbers to 2 decimals for reading (lists element by element); --json keeps full precision."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def plan_command(args: argparse.Namespace) -> None:
    from cnnablate.config import ConfigError
    from cnnablate.data import DataError
    from cnnablate.plan import format_plan, make_plan

    try:
        plan = make_plan(args.configfile, args.snakefile)
    except (ConfigError, DataError, RuntimeError) as error:
        raise TargetError(str(error)) from error
    print(format_plan(plan, args.cores, args.gpus))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cnnablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser(
        "measure",
        help="params, MACs/FLOPs, theoretical and effective receptive field",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    measure.add_argument("target", help="module:callable (e.g. torchvision.models:resnet50) or a variant id")
    measure.add_argument("--config", type=Path, help="study config whose variant TARGET names")
    measure.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side (default 224, or 32 for a study variant)",
    )
    measure.add_argument("--num-classes", type=int, default=10, help="classes of a study variant's head")
    measure.add_argument(
        "--erf", action="store_true", help="also measure the ERF (and its 95%% radius) at initialisation, random inputs"
    )
    measure.add_argument("--json", action="store_true", help="print JSON (full precision)")
    plan = commands.add_parser(
        "plan",
        help="a study's jobs per rule, training FLOPs, estimated time and disk, before it runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("--configfile", type=Path, default=Path("config/config.yaml"), help="the study config")
    plan.add_argument("--snakefile", type=Path, default=Path("Snakefile"), help="the workflow (default ./Snakefile)")
    plan.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU jobs at a time (default: all)")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs, one job each (default 1)")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            plan_command(args)
            return 0
        if args.input_size is None:
            args.input_size = 224 if ":" in args.target else 32
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
