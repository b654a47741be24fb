"""Rule interpret: filters, feature maps, saliency and Grad-CAM of one trained run."""

from cnnablate.workflow_jobs import interpret

interpret(snakemake)
