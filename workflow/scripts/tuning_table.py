"""Rule tuning_table: every variant's learning-rate grid in one table."""

from cnnablate.workflow_jobs import tuning_table

tuning_table(snakemake)
