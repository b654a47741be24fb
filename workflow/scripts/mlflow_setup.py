"""Rule mlflow_setup: create the study's experiment and parent run once, before any training job."""

from cnnablate.logs import configure_logging
from cnnablate.tracking import setup_study

configure_logging(snakemake.log[0])
setup_study(snakemake.params.study, snakemake.params.tracking_uri, snakemake.output[0], snakemake.params.artifact_root)
