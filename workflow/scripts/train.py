"""Rule train: one (variant, seed) through cnnablate.train (resumes from its checkpoint if one exists)."""

from pathlib import Path

from cnnablate.logs import configure_logging
from cnnablate.train import TrainJob, train

configure_logging(snakemake.log[0])
train(
    TrainJob(
        study=snakemake.params.study,
        variant=snakemake.wildcards.variant,
        seed=int(snakemake.wildcards.seed),
        spec=dict(snakemake.params.spec),
        recipe=dict(snakemake.params.recipe),
        dataset=Path(snakemake.input.data),
        run_dir=Path(snakemake.output.metrics).parent,
        checkpoint=Path(snakemake.params.checkpoint),
        tracking_setup=Path(snakemake.input.tracking),
        ablations=list(snakemake.params.ablations),
    )
)
