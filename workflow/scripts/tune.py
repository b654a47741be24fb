"""Rule tune: sweep the learning-rate grid for one variant on the validation split (never the test split)."""

from cnnablate.jobs import run

run("tune", snakemake)
