"""Rule measure: params, MACs, TRF and ERF (at initialisation and trained) of one run."""

from cnnablate.jobs import run

run("measure", snakemake)
