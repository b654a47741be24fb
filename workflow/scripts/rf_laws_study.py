"""Rule rf_laws_study: the receptive-field laws of the study beside the papers' statements, with figures."""

from cnnablate.jobs import run

run("rf_laws_study", snakemake)
