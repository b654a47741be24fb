"""Rule report: results.csv, summary.csv, figures and the self-contained HTML page of the study."""

from cnnablate.config import Study
from cnnablate.logs import configure_logging
from cnnablate.report import build_report

configure_logging(snakemake.log[0])
build_report(
    study=Study.from_config(dict(snakemake.params.config)),
    results_dir=snakemake.params.results,
    figures_dir=snakemake.output.figures,
    html_path=snakemake.output.html,
    analyses=dict(snakemake.params.analyses),
    results_csv=snakemake.output.results,
    summary_csv=snakemake.output.summary,
    interpret_dirs=list(snakemake.input.interpret),
)
