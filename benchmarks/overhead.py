"""Where a finished study's wall time went: training loops, measurements, each job's fixed cost, and the rest.

Reads the study's Snakemake benchmark files (wall seconds and peak memory of every job), the training jobs'
metrics.json (seconds inside training and evaluation epochs, the device, and the job's own start-up timings
``overhead_seconds``), the other jobs' logs ("job function took X s"; the analysis jobs also log their device
and "analysis timings {device, data, work}"), and the Snakemake log of the run that made them, for the study's
wall time. With --smi, a CSV of nvidia-smi samples taken during the run (timestamp, utilization.gpu, ...).

    python benchmarks/overhead.py results/demo [--cores 2] [--snakemake-log .snakemake/log/<run>.log]
        [--gpus N] [--smi samples.csv] [--json numbers.json]

The log must be the one of the run that ran every job of the study (a later `--report` call or a partial rerun
writes logs of its own): the script checks that each benchmark file under results/<study>/benchmarks was written
by a job of that log, and refuses otherwise.

fixed cost of a training job = its wall time - (training + evaluation epochs): interpreter and imports, data,
model, MLflow, checkpoints, files, exit; its parts are the medians of ``overhead_seconds`` (whatever keys the
jobs wrote). Fixed cost of an analysis job = its wall time - its work. overhead = cores x wall - (training +
measuring): the fixed costs of all jobs, Snakemake's own scheduling, and job slots left idle when fewer jobs than
cores were ready.

GPU busy fraction = GPU-seconds of work / (wall x GPUs), where the work on a GPU is the training and evaluation
epochs of training jobs whose metrics.json names a CUDA device, the "work" of analysis jobs that ran on one, and
the whole job function of tuning jobs when training ran on CUDA (tuning logs no finer split: an upper bound).
GPUs: --gpus, else the CUDA devices the jobs name. nvidia-smi's mean utilisation (--smi) is the hardware's view
of the same question: the share of time a kernel was running, whatever its size.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from datetime import datetime
from pathlib import Path

import pandas as pd

TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
FUNCTION_TIME = re.compile(r"(\w+) job function took ([\d.]+) s")
ANALYSIS_DEVICE = re.compile(r"analysis on (\S+)")
ANALYSIS_TIMINGS = re.compile(r"analysis timings (\{.*\})")
CUDA_DEVICE = re.compile(r"cuda:\d+")
BENCHMARK_LINE = re.compile(r"^\s+benchmark: (\S+)$", re.MULTILINE)
WORKDIR_LINE = re.compile(r"^\s+Working directory: (.+)$", re.MULTILINE)


class WrongLog(SystemExit):
    """The Snakemake log does not belong to the run that made the study's results."""


def study_wall_seconds(log: Path) -> float:
    """First to last job timestamp of a Snakemake run log."""
    stamps = [
        datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        for m in map(TIMESTAMP.match, log.read_text().splitlines())
        if m
    ]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else 0.0


def benchmarks_of_log(log: Path) -> set[Path]:
    """Absolute paths of the benchmark files the log's jobs wrote."""
    text = log.read_text()
    workdir = WORKDIR_LINE.search(text)
    base = Path(workdir.group(1).strip()) if workdir else log.parents[2]
    return {(base / path).resolve() for path in BENCHMARK_LINE.findall(text)}


def check_log(log: Path, results: Path) -> None:
    """Refuse a log whose run did not run every job of the study (its wall time would describe another run)."""
    study_benchmarks = {path.resolve() for path in results.glob("benchmarks/**/*.tsv")}
    missing = sorted(study_benchmarks - benchmarks_of_log(log))
    if missing:
        shown = ", ".join(str(path.relative_to(results.resolve())) for path in missing[:5])
        raise WrongLog(
            f"{log} is not the log of the run that made {results}: {len(missing)} of its {len(study_benchmarks)} "
            f"jobs were run elsewhere ({shown}{', ...' if len(missing) > 5 else ''}). Pass the right log with "
            "--snakemake-log, or rerun the study from scratch."
        )


def matching_log(workdir: Path, results: Path) -> Path:
    """The newest Snakemake log under ``workdir`` whose run made all of the study's results."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        try:
            check_log(log, results)
        except WrongLog:
            continue
        return log
    raise WrongLog(f"no Snakemake log under {workdir / '.snakemake/log'} ran every job of {results}")


def training_jobs(results: Path) -> pd.DataFrame:
    """One row per training job: wall (Snakemake benchmark), epochs' seconds, start-up timings, peak memory."""
    rows = []
    for metrics_path in sorted(results.glob("runs/*/seed*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        variant, seed = metrics_path.parent.parent.name, metrics_path.parent.name
        benchmark = pd.read_csv(results / "benchmarks" / "train" / variant / f"{seed}.tsv", sep="\t").iloc[0]
        work = metrics["train_seconds"] + metrics.get("eval_seconds", 0.0)
        timings = metrics.get("overhead_seconds", {})
        rows.append(
            {
                "job": f"{variant}/{seed}",
                "device": metrics.get("device", "cpu"),
                "wall": float(benchmark["s"]),
                "work": work,
                "fixed": float(benchmark["s"]) - work,
                "start_to_first_step": timings.get("first_step"),
                "max_rss_mb": float(benchmark["max_rss"]),
                "cpu_seconds": float(benchmark["cpu_time"]),
                **{f"fixed_{key}": value for key, value in timings.items()},
            }
        )
    return pd.DataFrame(rows)


def analysis_jobs(results: Path) -> pd.DataFrame:
    """One row per analysis job (a log with "analysis timings"): rule folder, device, wall, and its timings."""
    rows = []
    for log_file in sorted(results.glob("logs/**/*.log")):
        text = log_file.read_text()
        timings, device = ANALYSIS_TIMINGS.search(text), ANALYSIS_DEVICE.search(text)
        if not timings:
            continue
        relative = log_file.relative_to(results / "logs").with_suffix(".tsv")
        benchmark = pd.read_csv(results / "benchmarks" / relative, sep="\t").iloc[0]
        rows.append(
            {
                **json.loads(timings.group(1)),
                "rule": relative.parts[0],
                "device": device.group(1) if device else "cpu",
                "wall": float(benchmark["s"]),
            }
        )
    return pd.DataFrame(rows, columns=["rule", "device", "wall", "cuda_init", "data", "work"])


def smi_utilization(samples: Path) -> float:
    """Mean GPU utilisation (0-1) of ``nvidia-smi --query-gpu=timestamp,utilization.gpu,... --format=csv,noheader``
    samples, over all GPUs and samples."""
    values = [float(line.split(",")[1].strip().rstrip(" %")) for line in samples.read_text().splitlines() if line]
    return statistics.fmean(values) / 100 if values else float("nan")


def _median(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(statistics.median(values)) if len(values) else None


def gpu_numbers(
    train: pd.DataFrame, analyses: pd.DataFrame, tuning_seconds: float, wall: float, gpus: int | None
) -> dict[str, float | int | None]:
    """GPU-seconds of work (training, analyses, tuning) over wall x GPUs; None where no job ran on a GPU."""
    on_gpu = {
        "train": train[train["device"].str.startswith("cuda")],
        "analyses": analyses[analyses["device"].str.startswith("cuda")],
    }
    devices = {d for frame in on_gpu.values() for text in frame["device"] for d in CUDA_DEVICE.findall(text)}
    gpus = len(devices) if gpus is None else gpus
    work = {
        "training": float(on_gpu["train"]["work"].sum()),
        "analysis": float(on_gpu["analyses"]["work"].sum()),
        "tuning": tuning_seconds if len(on_gpu["train"]) else 0.0,
    }
    total = sum(work.values())
    return {
        "gpus": gpus,
        **{f"gpu_{kind}_work_seconds": seconds for kind, seconds in work.items()},
        "gpu_busy_fraction": total / (wall * gpus) if gpus and wall else None,
    }


def fixed_cost_parts(train: pd.DataFrame, analyses: pd.DataFrame) -> dict[str, float | None]:
    """Medians of each part of a job's fixed cost: the training jobs' own timings (whatever keys they wrote), and
    per analysis rule its wall minus work, its CUDA start and its data; the rest of an analysis job's wall is
    interpreter, imports and exit (and, for measure, the receptive-field fit after its device work)."""
    parts: dict[str, float | None] = {
        f"train_job_{column}_median": _median(train[column]) for column in train if column.startswith("fixed_")
    }
    for rule, jobs in analyses.groupby("rule"):
        fixed = jobs["wall"] - jobs["work"]
        parts[f"{rule}_job_fixed_seconds_median"] = _median(fixed)
        parts[f"{rule}_job_cuda_init_median"] = _median(jobs["cuda_init"])
        parts[f"{rule}_job_data_median"] = _median(jobs["data"])
        parts[f"{rule}_job_imports_and_exit_median"] = _median(fixed - jobs["cuda_init"] - jobs["data"])
        parts[f"{rule}_job_work_median"] = _median(jobs["work"])
    return parts


def breakdown(
    results: Path, cores: int, log: Path, gpus: int | None = None, smi: Path | None = None
) -> dict[str, float | int | None]:
    check_log(log, results)
    walls = [float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]) for tsv in results.glob("benchmarks/**/*.tsv")]
    train = training_jobs(results)
    analyses = analysis_jobs(results)
    training = float(train["work"].sum())
    measuring = tuning = 0.0
    for log_file in results.glob("logs/**/*.log"):
        for match in FUNCTION_TIME.finditer(log_file.read_text()):
            if match.group(1) != "train":
                measuring += float(match.group(2))
            if match.group(1) == "tune":
                tuning += float(match.group(2))
    wall = study_wall_seconds(log)
    slot_seconds = cores * wall
    return {
        "wall_seconds": wall,
        "job_slot_seconds": slot_seconds,
        "jobs": len(walls),
        "sum_job_wall_seconds": sum(walls),
        "training_seconds": training,
        "measuring_seconds": measuring,
        "overhead_inside_jobs_seconds": sum(walls) - training - measuring,
        "idle_slot_seconds": slot_seconds - sum(walls),
        "overhead_fraction": 1 - (training + measuring) / slot_seconds if slot_seconds else float("nan"),
        "training_jobs": len(train),
        "train_job_fixed_seconds_median": statistics.median(train["fixed"]),
        "train_job_fixed_seconds_mean": float(train["fixed"].mean()),
        "train_job_start_to_first_step_median": statistics.median(train["start_to_first_step"].dropna()),
        "train_job_max_rss_mb_median": statistics.median(train["max_rss_mb"]),
        "train_job_max_rss_mb_min": float(train["max_rss_mb"].min()),
        "analysis_jobs": len(analyses),
        **gpu_numbers(train, analyses, tuning, wall, gpus),
        "smi_utilization_mean": smi_utilization(smi) if smi else None,
        **fixed_cost_parts(train, analyses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results/<study>")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--snakemake-log", type=Path, help="default: the newest log under .snakemake/log that ran it")
    parser.add_argument("--workdir", type=Path, default=Path.cwd(), help="Snakemake's working directory")
    parser.add_argument("--gpus", type=int, help="GPUs the study had (default: the CUDA devices its jobs name)")
    parser.add_argument("--smi", type=Path, help="nvidia-smi samples taken during the run (CSV, no header)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    log = args.snakemake_log or matching_log(args.workdir, args.results)
    print(f"log: {log}")
    numbers = breakdown(args.results, args.cores, log, args.gpus, args.smi)
    width = max(map(len, numbers))
    for key, value in numbers.items():
        shown = "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown:>10}")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
