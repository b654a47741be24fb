"""Rule train: one (variant, seed) through cnnablate.train (resumes from its checkpoint if one exists)."""

from cnnablate.jobs import run

run("train", snakemake)
