"""Any rule's job, by name: the ``@workflow_job`` function its ``params.job`` names ("module:function")."""

from cnnablate.workflow_jobs import run_named_job

run_named_job(snakemake)
