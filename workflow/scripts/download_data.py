"""Rule download_data: fetch a CIFAR archive once and verify its MD5."""

from cnnablate.workflow_jobs import download_data

download_data(snakemake)
