"""Rule interpret: filters, feature maps, saliency and Grad-CAM of one trained run."""

from cnnablate.jobs import run

run("interpret", snakemake)
