"""Rule measure: params, MACs, TRF and ERF (at initialisation and trained) of one run."""

from cnnablate.workflow_jobs import measure

measure(snakemake)
