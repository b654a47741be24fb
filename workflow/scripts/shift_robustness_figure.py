"""Rule shift_robustness_figure: the study's shift-robustness figure and table."""

from cnnablate.jobs import run

run("shift_robustness_figure", snakemake)
