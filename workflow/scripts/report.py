"""Rule report: results.csv, summary.csv, figures and the self-contained HTML page of the study."""

from cnnablate.jobs import run

run("report", snakemake)
