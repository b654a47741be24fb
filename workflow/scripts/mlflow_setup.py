"""Rule mlflow_setup: create the study's experiment and parent run once, before any training job."""

from cnnablate.jobs import run

run("mlflow_setup", snakemake)
