"""Rule prepare_data: the study's dataset as one canonical npz (synthetic, npz or CIFAR)."""

from cnnablate.workflow_jobs import prepare_data

prepare_data(snakemake)
