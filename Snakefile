# cnnablate: an ablation study of convolutional networks, from config to report.
# Run `snakemake --cores all` (config/config.yaml) or `snakemake --cores all --configfile config/demo.yaml`.
from snakemake.utils import min_version

min_version("9.0")


if not config:  # only when no --configfile is given: Snakemake would otherwise merge both files

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


rule all:
    input:
        all_targets,
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/shift_robustness.smk"
include: "workflow/rules/report.smk"
