"""Study configuration: schema validation with defaults, and the expansion of ablations into variants.

The schema (``schemas/config.schema.yaml``, linked from ``workflow/schemas/``) is the single place that
lists the model axes. Ablation blocks are checked against the same per-axis schemas, so a new axis added
to the model schema is at once valid in ``base`` and in every ablation block.

A key added after studies have run declares ``neutral``: the value at which it changes nothing (what every run
before it did). The jobs' params leave such a key out at that value (:func:`job_param`) and the jobs fill it
back in (:func:`read_job_param`), so adding the key reruns nothing, and any other value reruns exactly the
jobs it changes. ``neutral`` is not the default: changing a default later still reruns what it changes.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SCHEMA_RESOURCE = "config.schema.yaml"


class ConfigError(ValueError):
    """A study configuration that does not satisfy the schema; the message names the key."""


def shorten(items: list[Any], limit: int = 20) -> str:
    """A list for an error message: all of it when short, else the first ``limit`` items and the count."""
    if len(items) <= limit:
        return str(items)
    return "[" + ", ".join(map(repr, items[:limit])) + f", ...] ({len(items)} in all)"


def canonical(value: Any) -> str:
    """A value as sorted JSON: what the workflow passes as ``params:``, so equal content in another key order
    never looks changed to Snakemake (which compares params as written, and would rerun the job)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@cache
def load_schema() -> dict[str, Any]:
    """The study schema, with the ablation block schema derived from the model schema."""
    text = resources.files("cnnablate.schemas").joinpath(SCHEMA_RESOURCE).read_text()
    schema = yaml.safe_load(text)
    model_axes = schema["$defs"]["model"]["properties"]
    schema["$defs"]["ablation_block"] = {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "description": "Model axes mapped to non-empty lists of values.",
        "properties": {
            axis: {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {key: value for key, value in axis_schema.items() if key != "default"},
                "description": f"Values of `{axis}`: {axis_schema.get('description', '')}",
            }
            for axis, axis_schema in model_axes.items()
        },
    }
    return schema


def model_axes() -> list[str]:
    """Names of the model axes, in schema order (the order variant ids use)."""
    return list(load_schema()["$defs"]["model"]["properties"])


def _section_properties(section: str) -> dict[str, Any]:
    """The schema of each key of a config section (``model`` is the schema of ``base`` and of every variant)."""
    schema = load_schema()
    if section == "model":
        return schema["$defs"]["model"]["properties"]
    return schema["properties"][section]["properties"]


def _neutral(section: str) -> dict[str, Any]:
    """The keys of a section that carry a ``neutral`` value, with that value."""
    return {key: s["neutral"] for key, s in _section_properties(section).items() if "neutral" in s}


def with_neutral(section: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` with every neutral key it lacks put back: a spec saved before a neutral axis existed (a run
    that adding the axis rightly did not retrain) builds the same model today."""
    return {**_neutral(section), **value}


def _without_neutral(section: str, value: Mapping[str, Any]) -> dict[str, Any]:
    neutral = _neutral(section)
    return {key: item for key, item in value.items() if key not in neutral or item != neutral[key]}


def job_param(section: str, value: Mapping[str, Any]) -> str:
    """A section's values as a job's params: canonical JSON without the keys at their ``neutral`` value.

    Snakemake reruns a job whose params changed; a key added with a neutral value therefore reruns nothing, while
    a key set to anything else (in the config or by a changed default) reruns exactly the jobs whose value moved.
    """
    return canonical(_without_neutral(section, value))


def read_job_param(text: str, section: str) -> dict[str, Any]:
    """A param :func:`job_param` encoded, decoded with the neutral keys it left out put back: the job sees every key.

    Returns a new dict: Snakemake hands a script a fresh params object on every access, so nothing written onto
    it would stay.
    """
    return with_neutral(section, json.loads(text))


# sections of a whole study config whose neutral keys study_param leaves out: the config key -> its schema section
STUDY_SECTIONS = {"base": "model", "train": "train", "tune": "tune"}


def study_param(config: Mapping[str, Any]) -> str:
    """The whole study config as one job param (report, MLflow sync), neutral keys left out as in :func:`job_param`:
    adding a neutral axis reruns not even the study-level jobs."""
    lean = {key: _without_neutral(section, config[key]) for key, section in STUDY_SECTIONS.items()}
    return canonical({**config, **lean})


def read_study_param(text: str) -> dict[str, Any]:
    """The config :func:`study_param` encoded, neutral keys put back."""
    config = json.loads(text)
    for key, section in STUDY_SECTIONS.items():
        config[key] = with_neutral(section, config[key])
    return config


def _with_defaults(validator_class: type) -> type:
    """A validator that fills ``default`` values in while it validates (the jsonschema FAQ recipe)."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _resolve_model_defaults(instance: dict[str, Any], schema: dict[str, Any]) -> None:
    """Fill the model defaults into ``base`` (a ``$ref``, which the properties hook does not expand)."""
    base = instance.get("base")
    if isinstance(base, dict):
        for axis, axis_schema in schema["$defs"]["model"]["properties"].items():
            base.setdefault(axis, copy.deepcopy(axis_schema["default"]))


def _key_sections() -> dict[str, list[str]]:
    """Every mapping of the config (dotted path, ``base`` for the model) with the keys it allows."""
    schema = load_schema()
    sections: dict[str, list[str]] = {"base": list(schema["$defs"]["model"]["properties"])}

    def walk(path: str, node: Mapping[str, Any]) -> None:
        sections[path] = list(node["properties"])
        for key, child in node["properties"].items():
            if "properties" in child:
                walk(f"{path}.{key}", child)

    for key, section in schema["properties"].items():
        if "properties" in section:
            walk(key, section)
    return sections


def closest_key(path: str, key: str, allowed: list[str]) -> str | None:
    """The valid key a misspelt or misplaced ``path.key`` most likely meant: the same name in another section
    (``train.lrs`` -> ``tune.lrs``), else a close spelling here (``train.batchsize`` -> ``train.batch_size``),
    else a close spelling elsewhere."""
    sections = _key_sections()
    elsewhere = [f"{name}.{key}" for name, keys in sections.items() if name != path and key in keys]
    if elsewhere:
        return elsewhere[0]
    here = difflib.get_close_matches(key, allowed, n=1)
    if here:
        return f"{path}.{here[0]}" if path != "<top level>" else here[0]
    others = {f"{name}.{k}": k for name, keys in sections.items() for k in keys}
    close = difflib.get_close_matches(key, list(others.values()), n=1, cutoff=0.8)
    return next((dotted for dotted, k in others.items() if close and k == close[0]), None)


def describe_error(error: Any) -> str:
    """One readable phrase: the key path, what is wrong, and what is allowed (once)."""
    path = ".".join(str(part) for part in error.absolute_path) or "<top level>"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        problems = []
        for unknown in sorted(set(error.instance) - set(allowed)):
            name = unknown if path == "<top level>" else f"{path}.{unknown}"
            suggestion = closest_key(path, unknown, allowed)
            hint = f"did you mean {suggestion}?" if suggestion else f"allowed keys: {', '.join(allowed)}"
            problems.append(f"{name}: unknown key; {hint}")
        return "; ".join(problems)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{missing if path == '<top level>' else f'{path}.{missing}'}: required, but missing"
    if error.validator == "enum":
        return f"{path}: {error.instance!r} is not allowed; allowed values: {', '.join(map(str, schema['enum']))}"
    allowed = f"; expected: {' '.join(schema['description'].split())}" if schema.get("description") else ""
    if error.validator == "not" and "multipleOf" in schema.get("not", {}):
        return f"{path}: {error.instance!r} is not allowed{allowed}"
    return f"{path}: {error.message}{allowed}"


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a study config against the schema and return a copy with defaults filled in.

    Raises ConfigError: one line listing every problem, each naming its key and the allowed values.
    """
    import jsonschema

    schema = load_schema()
    instance = copy.deepcopy(dict(config))
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("; ".join(describe_error(e) for e in errors))
    _resolve_model_defaults(instance, schema)
    if instance["data"]["dataset"] == "npz":
        if "path" not in instance["data"]:
            raise ConfigError("data.path: required when data.dataset is 'npz' (a .npz file with x_train, ...)")
        from cnnablate.data import DataError, check_npz_layout

        try:
            check_npz_layout(instance["data"]["path"])
        except DataError as error:
            raise ConfigError(str(error)) from error
    study = Study.from_config(instance)
    unknown = sorted(set(instance["analysis"]["interpret"]) - set(study.variants))
    if unknown:
        raise ConfigError(
            f"analysis.interpret: unknown variant id(s) {shorten(unknown)}; allowed: {shorten(list(study.variants))}"
        )
    return instance


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML study config and validate it."""
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the study config ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study config must be a mapping, got {type(raw).__name__}")
    return validate_config(raw)


def _format_value(value: Any) -> str:
    """Render an axis value for a variant id: lists as 'a-b-c', floats without trailing zeros."""
    if isinstance(value, list | tuple):
        return "x".join(_format_value(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def variant_id(spec: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """A readable, stable id: 'base', or the axes that differ from base as 'axis-value' joined by '_'."""
    diffs = [f"{axis}-{_format_value(spec[axis])}" for axis in model_axes() if spec[axis] != base[axis]]
    return "_".join(diffs) if diffs else "base"


@dataclass(frozen=True)
class Variant:
    """One model to train: its id, full spec, and the ablation blocks that name it."""

    id: str
    spec: dict[str, Any]
    ablations: tuple[str, ...]


@dataclass
class Study:
    """A validated config expanded into distinct variants (a variant equal to base is trained once)."""

    name: str
    config: dict[str, Any]
    variants: dict[str, Variant]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Study:
        base = config["base"]
        found: dict[str, Variant] = {"base": Variant("base", dict(base), ("base",))}
        for block_name, block in config.get("ablations", {}).items():
            for spec in _expand_block(base, block):
                vid = variant_id(spec, base)
                previous = found.get(vid)
                names = (*previous.ablations, block_name) if previous else (block_name,)
                found[vid] = Variant(vid, spec, names)
        return cls(config["study"], config, found)

    def ablation_variants(self, ablation: str) -> list[str]:
        """The variant ids one ablation compares, base first."""
        return [variant for block, variant in self.ablation_members() if block == ablation]

    def ablation_members(self) -> Iterator[tuple[str, str]]:
        """(ablation, variant id) pairs, base included in every ablation as its reference."""
        for block_name, block in self.config.get("ablations", {}).items():
            yield block_name, "base"
            for spec in _expand_block(self.config["base"], block):
                vid = variant_id(spec, self.config["base"])
                if vid != "base":
                    yield block_name, vid


def _expand_block(base: Mapping[str, Any], block: Mapping[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """The full product of a block's axes, each combination applied on top of base."""
    axes = list(block)
    for values in itertools.product(*(block[axis] for axis in axes)):
        spec = dict(base)
        spec.update(zip(axes, values, strict=True))
        yield spec


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (for MLflow params and result tables)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
