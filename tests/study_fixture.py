"""A finished demo-sized study written straight to disk, file by file as the workflow writes it.

The files are those the jobs write: metrics.json with lr, steps, outcome, trained, val_acc, attempts...;
history.csv with step, val_acc, elapsed_seconds; results/<study>/tuning/<variant>.json.
The numbers are made up but deterministic: a per-seed offset shared by every variant (the same data order),
one variant that does not train (a constant predictor at chance), one whose ERF/TRF ratio grows with depth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cnnablate import layout
from cnnablate.analysis_figures import shift_robustness_outputs
from cnnablate.config import Study, validate_config

DEMO_CONFIG = {
    "study": "fixture",
    "data": {"dataset": "synthetic"},
    "train": {"max_steps": 256, "batch_size": 64, "lr": 0.1},  # 8 epochs of STEPS_PER_EPOCH
    "seeds": [0, 1, 2],
    "base": {"arch": "conv", "widths": [16, 32, 64], "blocks_per_stage": 2, "fc_hidden": [512, 256]},
    "ablations": {
        "fc_vs_conv": {"arch": ["fc", "local", "conv"]},
        "pooling": {"pool": ["max", "avg", "stride", "none"]},
        "normalization": {"norm": ["none", "batch", "layer", "group", "instance"]},
        "dilation": {"dilation": [1, 2, 4]},
        "kernel_size": {"kernel_size": [3, 5, 7]},
    },
    "analysis": {"erf_images": 4, "shifts": [0, 2, 4]},
}
# Mean validation/test accuracy per variant; norm-none stays at chance (10 classes).
ACCURACY = {
    "base": 0.80,
    "arch-fc": 0.52,
    "arch-local": 0.66,
    "pool-avg": 0.785,
    "pool-stride": 0.74,
    "pool-none": 0.70,
    "norm-none": 0.10,
    "norm-layer": 0.79,
    "norm-group": 0.801,
    "norm-instance": 0.77,
    "dilation-2": 0.795,
    "dilation-4": 0.76,
    "kernel_size-5": 0.81,
    "kernel_size-7": 0.805,
}
SEED_OFFSET = {0: -0.012, 1: 0.004, 2: 0.010, 3: -0.003}  # shared by every variant: pairing cancels it
LRS = [0.01, 0.03, 0.1, 0.3, 1.0]
STEPS_PER_EPOCH = 32
TEST_IMAGES = 500
TEST_LABELS = np.arange(TEST_IMAGES) % 10
DIFFICULTY = np.random.default_rng(7).permutation(TEST_IMAGES)  # the images every model finds hardest come last


@dataclass
class FixtureStudy:
    """A study on disk and the paths its report rule declares as inputs."""

    study: Study
    root: Path
    metrics: list[str] = field(default_factory=list)
    tuning: list[str] = field(default_factory=list)
    interpret: list[str] = field(default_factory=list)
    analyses: dict[str, list[str]] = field(default_factory=dict)
    test_labels: str = ""

    @property
    def results(self) -> str:
        return str(self.root / layout.results_dir(self.study.name))

    def build_report(self, out: Path) -> dict:
        """The report rule's job on this study's declared inputs, writing its outputs under ``out``."""
        from cnnablate.report import build_report

        return build_report(
            self.study,
            metrics=self.metrics,
            tuning=self.tuning,
            interpret=self.interpret,
            analyses=self.analyses,
            results_csv=out / "results.csv",
            summary_csv=out / "summary.csv",
            figures_dir=out / "figures",
            html_path=out / "index.html",
            test_labels=self.test_labels,
        )


def _predictions(accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """A run's predicted class per test image, right on round(accuracy x N) images: the easiest by the shared
    difficulty, give or take a run's own jitter (models err together on hard images, which pairing uses)."""
    rank = np.argsort(np.argsort(DIFFICULTY + rng.normal(0, 40, TEST_IMAGES)))
    correct = rank < round(accuracy * TEST_IMAGES)
    return np.where(correct, TEST_LABELS, (TEST_LABELS + 1) % 10).astype(np.uint8)


def _gaussian_map(size: int, std: float) -> np.ndarray:
    grid = np.arange(size) - (size - 1) / 2
    return np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * std**2))


def _erf_summary(std: float, trf: int) -> dict:
    """An ERF entry of measures.json for a square Gaussian map of this std."""
    return {
        "std": [std, std],
        "std_mean": std,
        "erf_size": [2.5 * std] * 2,
        "erf_trf_ratio": 2.5 * std / trf,
        "radius95": 2 * std,
    }


def _measures(spec: dict, accuracy: float, seed: int) -> dict:
    if spec["arch"] == "fc":
        return {
            "params": 1_700_000,
            "macs": 1_700_000,
            "flops": 3_400_000,
            "trf": None,
            "erf": None,
            "erf_init": None,
            "erf_by_depth": [],
            "edge_match_init": None,
            "edge_match_trained": None,
        }
    k, d = spec["kernel_size"], spec["dilation"]
    layers = 6
    trf = 1 + layers * d * (k - 1) * (1 if spec["pool"] == "none" else 2)
    std_init = np.sqrt(layers * d * d * (k * k - 1) / 12) * (1.3 if spec["pool"] != "none" else 1.0)
    std_trained = std_init * (1.1 + 0.2 * accuracy) + 0.05 * seed
    rows = []
    for depth in range(1, layers + 1):
        trf_depth = 1 + depth * d * (k - 1)
        ratio = 0.9 / np.sqrt(depth) if spec["kernel_size"] != 7 else 0.3 + 0.05 * depth  # k=7: grows with depth
        rows.append(
            {
                "depth": depth,
                "layer": f"features.{depth}",
                "trf_size": trf_depth,
                "erf_std_trained": ratio * trf_depth / 4,
                "erf_trf_ratio_trained": ratio + 0.01 * seed,
                "erf_std_init": ratio * trf_depth / 5,
                "erf_trf_ratio_init": 0.9 * ratio,
            }
        )
    macs = int(12.0e6 * k * k / 9 * (3 if spec["pool"] == "none" else 1))  # local: conv's geometry, conv's MACs
    return {
        "params": 100_000 * k * k // 9 * (40 if spec["arch"] == "local" else 1),
        "macs": macs,
        "flops": 2 * macs,
        "trf": {"size": [trf, trf], "stride": [4, 4]},
        "erf": _erf_summary(std_trained, trf),
        "erf_init": _erf_summary(std_init, trf),
        "erf_growth": std_trained / std_init,
        "erf_by_depth": rows,
        "edge_match_init": 0.4,
        "edge_match_trained": 0.4 + 0.3 * accuracy,
    }


def _history(final: float, seed: int, diverged: bool) -> pd.DataFrame:
    epochs = np.arange(1, 9)
    accuracy = 0.1 + (final - 0.1) * (1 - np.exp(-epochs / (2.0 + 0.3 * seed)))
    frame = pd.DataFrame(
        {"epoch": epochs, "step": epochs * STEPS_PER_EPOCH, "train_loss": 2.3 * (1 - accuracy), "train_acc": accuracy}
    )
    frame["train_acc"] += 0.02
    frame["val_loss"], frame["val_acc"] = 2.3 * (1 - accuracy), accuracy
    frame["lr"] = 0.1
    frame["segment_seconds"] = 1.5 + 0.1 * seed
    frame["images_per_second"] = 2000.0
    frame["eval_seconds"] = 0.1
    frame["elapsed_seconds"] = frame["segment_seconds"].cumsum()
    if diverged:
        frame.loc[frame.index[3:], ["train_loss", "val_loss"]] = np.nan
    return frame


def _tuning(variant: str, accuracy: float, chosen: float) -> dict:
    grid = []
    for lr in LRS:
        distance = abs(np.log10(lr) - np.log10(chosen))
        diverged = lr >= 1.0 and variant != "norm-none"
        value = None if diverged else max(0.1, accuracy - 0.12 * distance)
        grid.append(
            {
                "lr": lr,
                "val_acc": value,
                "val_loss": None if value is None else 2.3 * (1 - value),
                "val_curve": [] if value is None else [0.1, value],
                "diverged": diverged,
                "trained": not diverged and variant != "norm-none",
                "steps": 64,
                "stop_reason": "diverged" if diverged else "cap",
                "extended": False,
            }
        )
    trained = variant != "norm-none"
    return {
        "study": "fixture",
        "variant": variant,
        "metric": "val_acc",
        "chosen_lr": chosen,
        "trained": trained,
        "chance": 0.1,
        "grid": grid,
        "rule": "highest final validation accuracy; did not train: training loss above 90% of ln C at every rate",
    }


def write_study(root: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> FixtureStudy:
    """Every file the report rule reads, for the demo's variants; returns the study and the declared inputs."""
    config = validate_config(
        {
            **DEMO_CONFIG,
            "seeds": list(seeds),
            "tune": {"enabled": True, "lrs": LRS, "max_steps": 64, "train_subset": 0.5},
            "analysis": {**DEMO_CONFIG["analysis"], "speed_fraction": 0.9},
        }
    )
    study = Study.from_config(config)
    fixture = FixtureStudy(study, root)
    results = fixture.results
    labels = root / results / "data" / "dataset.npz"
    labels.parent.mkdir(parents=True, exist_ok=True)
    np.savez(labels, y_test=TEST_LABELS)
    fixture.test_labels = str(labels)
    for index, (variant_id, variant) in enumerate(study.variants.items()):
        mean = ACCURACY[variant_id]
        dead = variant_id == "norm-none"
        chosen = [0.03, 0.1, 0.3][index % 3]
        path = root / layout.tuning_file(results, variant_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tuning = _tuning(variant_id, mean, chosen)
        path.write_text(json.dumps(tuning))
        fixture.tuning.append(str(path))
        tuned = next(point["val_acc"] for point in tuning["grid"] if point["lr"] == chosen)
        for seed in seeds:
            run = root / layout.run_dir(results, variant_id, seed)
            run.mkdir(parents=True, exist_ok=True)
            noise = np.random.default_rng(100 * index + seed).normal(0, 0.003)  # the variant's own seed-to-seed noise
            accuracy = round((mean if dead else mean + SEED_OFFSET[seed] + noise) * TEST_IMAGES) / TEST_IMAGES
            diverged = variant_id == "pool-none" and seed == 2
            metrics = {
                "study": study.name,
                "variant": variant_id,
                "seed": seed,
                "spec": variant.spec,
                "test_acc": None if diverged else accuracy,
                "test_loss": None if diverged else 2.3 * (1 - accuracy),
                "params": None,
                "epochs_completed": 8,
                "diverged": diverged,
                "train_seconds": 12.0 + seed,
                "images_per_second": 2000.0,
                "num_classes": 10,
                "test_images": TEST_IMAGES,
                "git_commit": "0123abc",
                "versions": {"torch": "2.13.0"},
            }
            outcome = "diverged" if diverged else "did_not_train" if dead else "converged"
            final_val = None if diverged else accuracy
            metrics.update(
                {
                    "lr": chosen,
                    "lr_source": "tuned",
                    "val_acc": final_val,
                    "val_loss": None if diverged else 2.3 * (1 - accuracy),
                    "best_val_acc": accuracy,
                    "tuning_val_acc": tuned,
                    "train_loss": None if diverged else 2.3 * (1 - accuracy),
                    "train_acc": None if diverged else accuracy + 0.02,
                    "best_train_loss": 2.3 if dead else 2.3 * (1 - accuracy),
                    "chance_loss": float(np.log(10)),
                    "steps": 8 * STEPS_PER_EPOCH,
                    "max_steps": 8 * STEPS_PER_EPOCH,
                    "stop_reason": "diverged" if diverged else "plateau",
                    "outcome": outcome,
                    "trained": outcome == "converged",
                    "converged": outcome == "converged",
                    "attempts": [
                        {"lr": chosen, "val_acc": final_val, "steps": 8 * STEPS_PER_EPOCH, "outcome": outcome}
                    ],
                    "retried": False,
                    "chance": 0.1,
                    "validation_images": 200,
                }
            )
            measures = _measures(variant.spec, accuracy, seed)
            metrics["params"] = measures["params"]
            (run / layout.METRICS).write_text(json.dumps(metrics))
            predicted = (
                np.zeros(0, np.uint8) if diverged else _predictions(accuracy, np.random.default_rng([index, seed]))
            )
            np.save(run / layout.PREDICTIONS, predicted)
            (run / layout.MEASURES).write_text(json.dumps(measures))
            _history(accuracy, seed, diverged).to_csv(run / layout.HISTORY, index=False)
            spatial = variant.spec["arch"] != "fc"
            init = _gaussian_map(33, measures["erf_init"]["std_mean"]) if spatial else np.zeros((1, 1))
            trained = _gaussian_map(33, measures["erf"]["std_mean"]) if spatial else np.zeros((1, 1))
            np.save(run / layout.ERF_INIT, init)
            np.save(run / layout.ERF_TRAINED, trained)
            shift = {}
            for pixels in config["analysis"]["shifts"]:
                shift[f"shift_acc_{pixels}px"] = None if diverged else (0.1 if dead else accuracy - 0.01 * pixels)
                shift[f"shift_consistency_{pixels}px"] = (
                    None if diverged else (1.0 if dead else 1 - 0.02 * pixels * (3 if variant_id == "arch-fc" else 1))
                )
            if not diverged:
                shift["majority_class_fraction"] = 1.0 if dead else 0.12
            layout.analysis_file(run, "shift").write_text(json.dumps(shift))
            fixture.metrics.append(str(run / layout.METRICS))
    figure, table = root / results / "figures/shift_robustness.png", root / results / "tables/shift_robustness.csv"
    figure.parent.mkdir(parents=True, exist_ok=True)
    table.parent.mkdir(parents=True, exist_ok=True)
    shift_robustness_outputs(
        [str(layout.analysis_file(Path(p).parent, "shift")) for p in fixture.metrics], figure, table
    )
    fixture.analyses = {"measures": [], "shift": [str(figure), str(table)]}
    interpret = root / layout.run_dir(results, "base", seeds[0]) / layout.INTERPRET
    interpret.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.eye(4))
    fig.savefig(interpret / "filters.png")
    plt.close(fig)
    fixture.interpret = [str(interpret)]
    return fixture
