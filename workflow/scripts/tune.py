"""Rule tune: sweep the learning-rate grid for one variant on the validation split (never the test split)."""

from cnnablate.workflow_jobs import tune

tune(snakemake)
