"""Rule tuning_table: every variant's learning-rate grid in one table."""

from cnnablate.jobs import run

run("tuning_table", snakemake)
