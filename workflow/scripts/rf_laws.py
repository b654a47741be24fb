"""Rule rf_laws: one run's ERF growth exponent along its depth, at initialisation and trained."""

from cnnablate.workflow_jobs import rf_laws

rf_laws(snakemake)
