"""Where a finished study's wall time went: training loops, measurements, and everything else.

Reads the study's Snakemake benchmark files (wall seconds of every job), the training jobs' metrics.json
(seconds inside training and evaluation epochs) and the analysis jobs' logs ("job function took X s"), and
the Snakemake log of the run for the study's wall time.

    python benchmarks/overhead.py results/demo [--cores 2] [--snakemake-log .snakemake/log/<run>.log]

overhead = cores x wall - (training + measuring): process start-up, imports, data loading, MLflow, writing
files, Snakemake's own scheduling, and job slots left idle when fewer jobs than cores were ready.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

import pandas as pd

TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
FUNCTION_TIME = re.compile(r"(\w+) job function took ([\d.]+) s")


def study_wall_seconds(log: Path) -> float:
    """First to last job timestamp of a Snakemake run log."""
    stamps = [
        datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        for m in map(TIMESTAMP.match, log.read_text().splitlines())
        if m
    ]
    return (stamps[-1] - stamps[0]).total_seconds()


def latest_snakemake_log(workdir: Path) -> Path:
    """The newest Snakemake log that ran jobs (a --report call writes a log too)."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    return next(log for log in reversed(logs) if "Finished jobid" in log.read_text())


def breakdown(results: Path, cores: int, log: Path) -> dict[str, float]:
    jobs = []
    for tsv in results.glob("benchmarks/**/*.tsv"):
        rule = tsv.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        jobs.append({"rule": rule, "wall": float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])})
    frame = pd.DataFrame(jobs)
    training = 0.0
    for metrics_path in results.glob("runs/*/seed*/metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        training += metrics["train_seconds"] + metrics.get("eval_seconds", 0.0)
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
        "jobs": len(frame),
        "sum_job_wall_seconds": float(frame["wall"].sum()),
        "training_seconds": training,
        "measuring_seconds": measuring,
        "overhead_inside_jobs_seconds": float(frame["wall"].sum()) - training - measuring,
        "idle_slot_seconds": slot_seconds - float(frame["wall"].sum()),
        "overhead_fraction": 1 - (training + measuring) / slot_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results/<study>")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--snakemake-log", type=Path, help="default: the newest log under .snakemake/log")
    args = parser.parse_args()
    log = args.snakemake_log or latest_snakemake_log(Path.cwd())
    numbers = breakdown(args.results, args.cores, log)
    width = max(map(len, numbers))
    for key, value in numbers.items():
        print(f"{key:<{width}}  {value:10.3f}" if isinstance(value, float) else f"{key:<{width}}  {value:10d}")


if __name__ == "__main__":
    main()
