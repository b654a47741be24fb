"""Rule prepare_data: the study's dataset as one canonical npz (synthetic, npz or CIFAR)."""

from cnnablate.jobs import run

run("prepare_data", snakemake)
