"""Rule shift_robustness: accuracy and prediction stability of one run under translated test images."""

from cnnablate.jobs import run

run("shift_robustness", snakemake)
