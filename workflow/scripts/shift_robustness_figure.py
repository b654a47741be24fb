"""Rule shift_robustness_figure: the study's shift-robustness figure and table."""

from cnnablate.analysis_figures import shift_robustness_outputs
from cnnablate.logs import configure_logging

configure_logging(snakemake.log[0])
shift_robustness_outputs(snakemake.input, snakemake.output.figure, snakemake.output.table)
