"""Rule mlflow_sync: attach every run's analysis results to its MLflow run (idempotent)."""

from cnnablate.jobs import run

run("mlflow_sync", snakemake)
