"""Rule mlflow_sync: attach every run's analysis results to its MLflow run (idempotent)."""

import json
from pathlib import Path

from cnnablate.logs import configure_logging
from cnnablate.tracking import read_setup, sync_analyses

configure_logging(snakemake.log[0])
runs = []
for metrics_path in snakemake.input.metrics:
    metrics = json.loads(Path(metrics_path).read_text())
    runs.append((f"{metrics['study']}/{metrics['variant']}/seed{metrics['seed']}", Path(metrics_path).parent))
synced = sync_analyses(read_setup(snakemake.input.tracking), runs, snakemake.params.analyses)
Path(snakemake.output[0]).write_text(json.dumps(synced, indent=2) + "\n")
