"""Rule tune: sweep the learning-rate grid for one variant on the validation split (never the test split)."""

from cnnablate.config import restore_job_params
from cnnablate.workflow_jobs import tune

restore_job_params(snakemake.params, spec="model", recipe="train", tune="tune")
tune(snakemake)
