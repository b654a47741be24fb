"""Rule train: one (variant, seed) through cnnablate.train (resumes from its checkpoint if one exists)."""

from cnnablate.workflow_jobs import train

train(snakemake)
