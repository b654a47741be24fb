"""Rule rf_laws: one run's ERF growth exponent along its depth, at initialisation and trained."""

from cnnablate.jobs import run

run("rf_laws", snakemake)
