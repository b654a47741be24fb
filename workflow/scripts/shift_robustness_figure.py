"""Rule shift_robustness_figure: the study's shift-robustness figure and table."""

from cnnablate.workflow_jobs import shift_robustness_figure

shift_robustness_figure(snakemake)
