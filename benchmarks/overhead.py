"""Where a finished study's wall time went: training loops, measurements, each job's fixed cost, and the rest.

Reads the study's Snakemake benchmark files (wall seconds and peak memory of every job), the training jobs'
metrics.json (seconds inside training and evaluation epochs, and the job's own start-up timings), the analysis
jobs' logs ("job function took X s"), and the Snakemake log of the run that made them, for the study's wall time.

    python benchmarks/overhead.py results/demo [--cores 2] [--snakemake-log .snakemake/log/<run>.log]

The log must be the one of the run that ran every job of the study (a later `--report` call or a partial rerun
writes logs of its own): the script checks that each benchmark file under results/<study>/benchmarks was written
by a job of that log, and refuses otherwise.

fixed cost of a training job = its wall time - (training + evaluation epochs): interpreter and imports, data,
model, MLflow, checkpoints, files, exit. overhead = cores x wall - (training + measuring): the fixed costs of all
jobs, Snakemake's own scheduling, and job slots left idle when fewer jobs than cores were ready.
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
                "wall": float(benchmark["s"]),
                "work": work,
                "fixed": float(benchmark["s"]) - work,
                "start_to_first_step": timings.get("first_step"),
                "max_rss_mb": float(benchmark["max_rss"]),
                "cpu_seconds": float(benchmark["cpu_time"]),
            }
        )
    return pd.DataFrame(rows)


def breakdown(results: Path, cores: int, log: Path) -> dict[str, float | int]:
    check_log(log, results)
    walls = [float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]) for tsv in results.glob("benchmarks/**/*.tsv")]
    train = training_jobs(results)
    training = float(train["work"].sum())
    measuring = 0.0
    for log_file in results.glob("logs/**/*.log"):
        for match in FUNCTION_TIME.finditer(log_file.read_text()):
            if match.group(1) != "train":
                measuring += float(match.group(2))
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results/<study>")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--snakemake-log", type=Path, help="default: the newest log under .snakemake/log that ran it")
    parser.add_argument("--workdir", type=Path, default=Path.cwd(), help="Snakemake's working directory")
    args = parser.parse_args()
    log = args.snakemake_log or matching_log(args.workdir, args.results)
    print(f"log: {log}")
    numbers = breakdown(args.results, args.cores, log)
    width = max(map(len, numbers))
    for key, value in numbers.items():
        print(f"{key:<{width}}  {value:10.3f}" if isinstance(value, float) else f"{key:<{width}}  {value:10d}")


if __name__ == "__main__":
    main()
