"""Rule mlflow_setup: create the study's experiment and its parent run (RUNNING until mlflow_sync), once."""

from cnnablate.workflow_jobs import mlflow_setup

mlflow_setup(snakemake)
