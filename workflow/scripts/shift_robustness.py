"""Rule shift_robustness: accuracy and prediction stability of one run under translated test images."""

import json
from pathlib import Path

from cnnablate.logs import configure_logging
from cnnablate.runs import load_run
from cnnablate.shift import shift_robustness

configure_logging(snakemake.log[0])
run = load_run(Path(snakemake.input.metrics).parent, snakemake.input.data)
results = shift_robustness(run.model, run.test, snakemake.params.shifts)
Path(snakemake.output[0]).write_text(json.dumps(results, indent=2) + "\n")
