"""Rule mlflow_sync: analyses into every run's MLflow entry; config, tables, report and means into the parent run."""

from cnnablate.workflow_jobs import mlflow_sync

mlflow_sync(snakemake)
