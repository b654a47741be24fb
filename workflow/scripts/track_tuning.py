"""Rule track_tuning: mirror one variant's learning-rate search into MLflow."""

from cnnablate.workflow_jobs import track_tuning

track_tuning(snakemake)
