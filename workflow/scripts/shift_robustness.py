"""Rule shift_robustness: accuracy and prediction stability of one run under translated test images."""

from cnnablate.workflow_jobs import shift_robustness

shift_robustness(snakemake)
