# Receptive-field laws (Luo et al. 2016, RepLKNet 2022): per run, the ERF's growth exponent along the
# network's depth (RUN/rf_laws.json, written by the measure job, which has the numbers at hand); per study,
# every law measured beside the paper's statement (cnnablate.rf_laws). "What made depth trainable" is drawn only
# for a study with a depth block (an ablation block over blocks_per_stage).

RF_LAWS = Section(
    "rf_laws",
    title="Receptive-field laws",
    text="Each law of the effective receptive field as its paper states it, measured here with its 95% "
    "interval, and the computed verdict; per variant, how the ERF grows along the network's depth.",
    columns=(
        Column("law", "law"),
        Column("paper", "source"),
        Column("statement", "the paper states"),
        Column("measured", "measured here"),
        Column("verdict", "verdict"),
        Column("notes", "why it differs, or a note"),
        Column(
            "value", hidden=True
        ),  # the laws' numbers, already written out in "measured here"
        Column("low", hidden=True),
        Column("high", hidden=True),
        Column("alpha_init", "ERF growth exponent along depth, at initialisation"),
        Column("alpha_trained", "ERF growth exponent along depth, trained"),
        Column("erf_growth", "ERF std trained / at initialisation"),
        Column("blocks_per_stage", "blocks per stage"),
        Column("test_acc", "test accuracy", percent=True),
        Column("erf_std_init", "ERF std at initialisation", unit="px"),
        Column("erf_std_trained", "ERF std trained", unit="px"),
        Column("growth", "ERF std trained / at initialisation"),
        Column("trained_runs", "runs that trained"),
        Column("erf_runs", "runs with an ERF"),
        Column("trf_size", "TRF", unit="px"),
        Column("erf_std", "ERF std", unit="px"),
        Column("erf_trf_ratio", "ERF size / TRF size"),
        Column("kernel_size", "kernel size"),
        Column("lr", "learning rate"),
    ),
    outputs={
        "laws": Output(
            "rf_laws.csv",
            "Each receptive-field law beside its paper's statement, what was measured here with its 95% "
            "interval, and the computed verdict; every law that differs says why in one sentence.",
        ),
        "measurements": Output(
            "rf_laws_measurements.csv",
            "Every point behind the laws: ERF std and ERF/TRF of convolution stacks by depth, plain against "
            "residual networks at equal depth, and area ratios by depthwise kernel size, at initialisation.",
        ),
        "trainability": Output(
            "depth_trainability.csv",
            "Test accuracy by depth, residual and normalisation (mean over seeds, 95% interval) and ERF std "
            "before and after training per variant, with the ratio's interval.",
        ),
        "depth_figure": Output(
            "rf_laws_depth.png",
            "Luo et al.'s depth law on stacks of 3x3 convolutions (uniform weights, random weights, random "
            "weights with ReLUs): ERF std against depth with the fitted exponent, ERF/TRF against depth beside "
            "the 1/sqrt(n) reference, and plain against residual networks at equal depth, all at initialisation.",
        ),
        "kernel_figure": Output(
            "rf_laws_kernel_size.png",
            "RepLKNet's high-contribution area ratios and the ERF std against the depthwise kernel size at a "
            "fixed depth, at initialisation, measured on one common frame.",
        ),
        "trainability_figure": Output(
            "depth_trainability.png",
            "What made depth trainable: test accuracy against blocks per stage for plain and residual networks "
            "with and without normalisation (left; 95% interval cut to 0-100%), and every variant's ERF std at "
            "initialisation and after training (right).",
        ),
    },
)
DEPTH_BLOCK = any(
    "blocks_per_stage" in axes for axes in config.get("ablations", {}).values()
)
RF_LAWS_JOB = job("rf_laws_study", scope="study")


rule rf_laws_study:
    input:
        metrics=expand_runs(run_file(layout.METRICS)),
        measures=expand_runs(run_file(layout.MEASURES)),
    output:
        **study_outputs(
            RF_LAWS,
            "laws",
            "measurements",
            "trainability",
            "depth_figure",
            "kernel_figure",
            *(["trainability_figure"] if DEPTH_BLOCK else []),
        ),
    log:
        RF_LAWS_JOB.log,
    benchmark:
        RF_LAWS_JOB.benchmark
    conda:
        ENV
    threads: 1
    params:
        base=job_param("model", config["base"]),
        data=canonical(config["data"]),
    script:
        "../scripts/rf_laws_study.py"


register_analysis(RF_LAWS, study_outputs=rules.rf_laws_study.output)
