"""Rule track: mirror one finished training run into MLflow from its files."""

from cnnablate.workflow_jobs import track

track(snakemake)
