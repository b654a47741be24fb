"""Rule measure: params, MACs, TRF and ERF (at initialisation and trained) of one run."""

from cnnablate.logs import configure_logging
from cnnablate.run_measures import measure_run

configure_logging(snakemake.log[0])
measure_run(
    run_dir=snakemake.input.metrics.rsplit("/", 1)[0],
    dataset=snakemake.input.data,
    outputs=dict(snakemake.output),
    erf_images=snakemake.params.erf_images,
    erf_canvas=snakemake.params.erf_canvas,
)
