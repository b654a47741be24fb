"""The demo grid on real images: one table row per variant, and how many variants reach 90% test accuracy.

The synthetic dataset is made to reward what a CNN does well; this check asks whether the training recipe
(tuned learning rate, stopping rule) also holds on real images nobody tuned it on. It builds a dataset from
images bundled in the wheels of scikit-learn and scikit-image (nothing is downloaded), writes it as an npz,
derives a study config from config/demo.yaml (same recipe, tuning and grid; ``data: {dataset: npz}``), runs
the project's Snakefile up to every run's metrics.json, and prints per variant: test accuracy, tuned learning
rate, validation accuracy at tuning and at the end of training, steps, stop reason and outcome.

Datasets (32x32, grey copied into three channels; 25% of the images held out as the test split, stratified by
class and seeded by ``--data-seed``):

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8, grey levels 0-16), upscaled bilinearly (PyTorch,
  ``align_corners=False``) to 32x32, 16 scaled to 255; 10 classes, the check's main dataset.
- ``textures``: scikit-image's brick, grass and gravel photos (512x512 grey) cut into 768 non-overlapping
  32x32 tiles; 3 classes. Kept aside: a second, different kind of real image (texture, not shape) to see
  whether what holds on digits generalises.

    python benchmarks/real_data.py --workdir work/real-digits [--dataset digits] [--cores 2] [--seeds 0]
        [--variants pooling normalization] [--max-steps 300] [--train-size 500] [--config config/demo.yaml]

The workdir receives data/<dataset>.npz, config.yaml, results/ (Snakemake runs there), snakemake.log, and the
table as real_<dataset>.md and real_<dataset>.csv. Rerunning in the same workdir reuses finished runs.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnablate import layout
from cnnablate.config import ConfigError, Study, validate_config
from cnnablate.data import ArrayDataset, split_validation

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
IMAGE_SIZE = 32
TEST_FRACTION = 0.25
THRESHOLD = 0.9
TEXTURES = ("brick", "grass", "gravel")
# field -> header of the table's columns. Fields the training job writes only in newer versions (outcome,
# attempts, retried, tuning_val_acc) are printed where present, '-' where absent.
TABLE = {
    "variant": "variant",
    "seed": "seed",
    "test_acc": "test acc",
    "lr": "lr (tuned)",
    "tuning_val_acc": "val acc at tuning",
    "final_val_acc": "val acc final",
    "steps": "steps",
    "stop_reason": "stop",
    "outcome": "outcome",
    "attempts": "attempts",
    "retried": "retried",
}


def digits_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits, bilinearly upscaled to 32x32 RGB uint8 (grey level 16 -> 255)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images[:, None].astype(np.float32))  # N x 1 x 8 x 8, levels 0..16
    large = F.interpolate(grey, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    pixels = np.clip(np.rint(large.numpy()[:, 0] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _rgb(pixels), digits.target.astype(np.int64), [str(name) for name in digits.target_names]


def texture_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-image's brick, grass and gravel photos cut into non-overlapping 32x32 RGB tiles, one class each."""
    from skimage import data as bundled  # these three ship in the wheel: no download

    tiles, labels = [], []
    for label, name in enumerate(TEXTURES):
        photo = getattr(bundled, name)()
        rows, cols = photo.shape[0] // IMAGE_SIZE, photo.shape[1] // IMAGE_SIZE
        cut = photo[: rows * IMAGE_SIZE, : cols * IMAGE_SIZE].reshape(rows, IMAGE_SIZE, cols, IMAGE_SIZE)
        tiles.append(cut.swapaxes(1, 2).reshape(rows * cols, IMAGE_SIZE, IMAGE_SIZE))
        labels.append(np.full(rows * cols, label, dtype=np.int64))
    return _rgb(np.concatenate(tiles)), np.concatenate(labels), list(TEXTURES)


def _rgb(grey: np.ndarray) -> np.ndarray:
    """N x H x W grey -> N x H x W x 3, the channel count the project's CIFAR-shaped models expect."""
    return np.repeat(grey[..., None], 3, axis=3)


DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "digits": digits_images,
    "textures": texture_images,
}


def build_dataset(name: str, seed: int = 0) -> ArrayDataset:
    """The named dataset with a stratified, seeded test split of ``TEST_FRACTION`` of its images.

    The held-out part is carved the way the workflow carves its validation split (``split_validation``), then
    used as the test split; the workflow later carves its validation split from what is left.
    """
    images, labels, classes = DATASETS[name]()
    held_out = split_validation(ArrayDataset(images, labels, None, None, classes), TEST_FRACTION, seed)
    return ArrayDataset(held_out.x_train, held_out.y_train, held_out.x_val, held_out.y_val, classes)


def write_dataset(name: str, path: Path, seed: int = 0) -> ArrayDataset:
    """Write the dataset as a bring-your-own npz, leaving an identical file untouched.

    Snakemake reruns a study whose inputs are newer than its outputs: rewriting the same arrays would retrain
    every finished run of a reused workdir.
    """
    dataset = build_dataset(name, seed)
    arrays = {"x_train": dataset.x_train, "y_train": dataset.y_train, "x_test": dataset.x_test}
    arrays |= {"y_test": dataset.y_test, "classes": np.array(dataset.classes)}
    if path.exists():
        with np.load(path, allow_pickle=False) as old:
            if set(old.files) == set(arrays) and all(np.array_equal(old[k], v) for k, v in arrays.items()):
                return dataset
    dataset.save(path)
    return dataset


def study_config(
    base_config: Mapping[str, Any],
    data_path: Path,
    study: str,
    seeds: list[int],
    blocks: list[str] | None = None,
    max_steps: int | None = None,
    train_size: int | None = None,
) -> dict[str, Any]:
    """``base_config`` (the demo's) reading the npz: same recipe, tuning and grid unless an option cuts it.

    ``blocks`` keeps only those ablation blocks (base always runs); interpretation targets that the cut drops
    are dropped too. Raises ConfigError naming the option and what is allowed.
    """
    config = copy.deepcopy(dict(base_config))
    config["study"] = study
    config["data"] = {"dataset": "npz", "path": str(data_path.resolve())}
    if train_size is not None:
        config["data"]["train_size"] = train_size
    config["seeds"] = seeds
    if max_steps is not None:
        config["train"] = {**config.get("train", {}), "max_steps": max_steps}
    if blocks is not None:
        ablations = config.get("ablations", {})
        unknown = sorted(set(blocks) - set(ablations))
        if unknown:
            raise ConfigError(f"--variants: unknown ablation block(s) {unknown}; allowed: {sorted(ablations)}")
        config["ablations"] = {name: block for name, block in ablations.items() if name in blocks}
    analysis = config.setdefault("analysis", {})
    interpret = analysis.get("interpret", [])
    variants = Study.from_config(validate_config({**config, "analysis": {**analysis, "interpret": []}})).variants
    analysis["interpret"] = [variant for variant in interpret if variant in variants]
    validate_config(config)
    return config


def run_targets(study: Study) -> list[str]:
    """The metrics.json of every (variant, seed): training and its tuning, none of the analyses or the report."""
    results = layout.results_dir(study.name)
    return [
        str(layout.run_file(layout.run_dir(results, variant, seed), layout.METRICS))
        for variant in study.variants
        for seed in study.config["seeds"]
    ]


def run_study(workdir: Path, configfile: Path, targets: list[str], cores: str) -> int:
    """Run the project's Snakefile in ``workdir`` up to ``targets``; its output goes to workdir/snakemake.log.

    ``--keep-going``: a variant whose job fails still leaves the others' rows; the table marks the missing one.
    """
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile", str(configfile)]
    command += ["--cores", cores, "--rerun-incomplete", "--keep-going", *targets]
    with open(workdir / "snakemake.log", "w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def tuning_val_acc(metrics: Mapping[str, Any], tuning: Mapping[str, Any] | None) -> float | None:
    """Validation accuracy of the chosen learning rate's short tuning run, as the job reports it or as the
    variant's tuning file records it (for jobs that do not report it)."""
    if metrics.get("tuning_val_acc") is not None:
        return metrics["tuning_val_acc"]
    if tuning is None:
        return None
    chosen = [point["val_acc"] for point in tuning["grid"] if point["lr"] == tuning["chosen_lr"]]
    return chosen[0] if chosen else None


def read_rows(workdir: Path, study: Study) -> list[dict[str, Any]]:
    """One row per (variant, seed), read from its metrics.json and its variant's tuning file; a run without
    metrics (its job failed) keeps its row with only its name and ``outcome`` 'no metrics'."""
    results = workdir / layout.results_dir(study.name)
    rows = []
    for variant in study.variants:
        tuning_path = Path(layout.tuning_file(results, variant))
        tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else None
        for seed in study.config["seeds"]:
            metrics_path = layout.run_file(layout.run_dir(results, variant, seed), layout.METRICS)
            if not metrics_path.exists():
                rows.append({"variant": variant, "seed": seed, "outcome": "no metrics"})
                continue
            metrics = json.loads(metrics_path.read_text())
            rows.append(
                {
                    **{field: metrics.get(field) for field in TABLE},
                    "variant": variant,
                    "seed": seed,
                    "tuning_val_acc": tuning_val_acc(metrics, tuning),
                    "final_val_acc": metrics.get("val_acc"),
                    # the learning rates tried, in order: "0.3 -> 0.1" when the run was retried
                    "attempts": " -> ".join(f"{a['lr']:g}" for a in metrics.get("attempts") or []) or None,
                }
            )
    return rows


def reaching(rows: Iterable[Mapping[str, Any]], threshold: float = THRESHOLD) -> tuple[int, int]:
    """(variants whose mean test accuracy over seeds is >= threshold, variants). A run without a test accuracy
    (it diverged, or its job failed) counts as not reaching it: "did not train" is never averaged as a number."""
    accuracies: dict[str, list[float | None]] = {}
    for row in rows:
        accuracies.setdefault(row["variant"], []).append(row.get("test_acc"))
    reached = sum(
        all(value is not None for value in values) and float(np.mean(values)) >= threshold
        for values in accuracies.values()
    )
    return reached, len(accuracies)


def _cell(field: str, value: Any) -> str:
    """A table cell: accuracies in percent, '-' for a field the run lacks."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if field.endswith("acc"):
        return f"{100 * value:.1f}%"
    if field == "lr":
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """One line per run, in the study's variant order."""
    lines = ["| " + " | ".join(TABLE.values()) + " |", "|" + "---|" * len(TABLE)]
    lines += ["| " + " | ".join(_cell(field, row.get(field)) for field in TABLE) + " |" for row in rows]
    return "\n".join(lines)


def summary_line(rows: list[Mapping[str, Any]], seeds: list[int], threshold: float = THRESHOLD) -> str:
    """'N/M variants >= 90% test accuracy', saying over which seeds."""
    reached, total = reaching(rows, threshold)
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over {len(seeds)} seeds"
    return f"{reached}/{total} variants >= {100 * threshold:g}% test accuracy ({over})"


def write_table(rows: list[Mapping[str, Any]], markdown: str, path_stem: Path) -> None:
    """The table as markdown (what was printed) and as CSV (raw numbers: accuracies as fractions)."""
    path_stem.with_suffix(".md").write_text(markdown + "\n")
    with open(path_stem.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TABLE), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the data, config and results go")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    parser.add_argument("--config", type=Path, default=ROOT / "config/demo.yaml", help="recipe, tuning and grid")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="*", metavar="BLOCK", help="run only these ablation blocks (and base)")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument("--train-size", type=int, help="use this many training images (stratified; default all)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the test split")
    parser.add_argument("--cores", default="all", help="Snakemake --cores")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="test accuracy counted as reached")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_path = workdir / "data" / f"{args.dataset}.npz"
    dataset = write_dataset(args.dataset, data_path, args.data_seed)
    base_config = yaml.safe_load(args.config.read_text())
    try:
        config = study_config(
            base_config,
            data_path,
            f"real-{args.dataset}",
            args.seeds,
            args.variants,
            args.max_steps,
            args.train_size,
        )
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    study = Study.from_config(validate_config(config))
    targets = run_targets(study)
    print(
        f"{args.dataset}: {len(dataset.y_train)} training (validation carved from them) and {len(dataset.y_test)} "
        f"test images, {dataset.num_classes} classes; {len(targets)} runs of {args.config.name}'s recipe; "
        f"Snakemake log: {workdir / 'snakemake.log'}",
        flush=True,
    )
    returncode = run_study(workdir, configfile, targets, args.cores)
    rows = read_rows(workdir, study)
    table = markdown_table(rows)
    summary = summary_line(rows, args.seeds, args.threshold)
    print(table)
    print(summary)
    write_table(rows, f"{table}\n\n{summary}", workdir / f"real_{args.dataset}")
    if returncode != 0:
        print(f"snakemake failed ({returncode}): see {workdir / 'snakemake.log'}", file=sys.stderr)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
