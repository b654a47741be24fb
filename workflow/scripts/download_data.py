"""Rule download_data: fetch a CIFAR archive once and verify its MD5."""

from cnnablate.data import download_cifar
from cnnablate.logs import configure_logging

configure_logging(snakemake.log[0])
download_cifar(snakemake.params.dataset, snakemake.params.root)
