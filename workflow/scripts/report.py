"""Rule report: results.csv, summary.csv, figures and the self-contained HTML page of the study."""

from cnnablate.workflow_jobs import report

report(snakemake)
