"""Rule rf_laws_study: the receptive-field laws of the study beside the papers' statements, with figures."""

from cnnablate.workflow_jobs import rf_laws_study

rf_laws_study(snakemake)
