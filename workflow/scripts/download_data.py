"""Rule download_data: fetch a CIFAR archive once and verify its MD5."""

from cnnablate.jobs import run

run("download_data", snakemake)
