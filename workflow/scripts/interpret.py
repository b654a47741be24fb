"""Rule interpret: filters, feature maps, saliency and Grad-CAM of one trained run."""

from pathlib import Path

from cnnablate.interpret import interpret_run
from cnnablate.logs import configure_logging
from cnnablate.runs import load_run

configure_logging(snakemake.log[0])
interpret_run(load_run(Path(snakemake.input.metrics).parent, snakemake.input.data), snakemake.output[0])
