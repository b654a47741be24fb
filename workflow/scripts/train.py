"""Rule train: one (variant, seed) through cnnablate.train (resumes from its checkpoint if one exists)."""

from cnnablate.config import restore_job_params
from cnnablate.workflow_jobs import train

restore_job_params(snakemake.params, spec="model", recipe="train")
train(snakemake)
