# cnnablate: an ablation study of convolutional networks, from config to report.
# Run `snakemake --cores all` (config/config.yaml) or `snakemake --cores all --configfile config/demo.yaml`.
from snakemake.utils import min_version

min_version("9.0")


# Load the default config only when no --configfile is given: Snakemake would otherwise merge both files.
if not config:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


rule all:
    default_target: True
    input:
        all_targets,


include: "workflow/rules/data.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/shift_robustness.smk"
include: "workflow/rules/rf_laws.smk"
include: "workflow/rules/report.smk"
