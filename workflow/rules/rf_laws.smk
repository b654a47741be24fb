# Receptive-field laws (Luo et al. 2016, RepLKNet 2022): per run, the ERF's growth exponent along the
# network's depth (RUN/rf_laws.json, written by the measure job, which has the numbers at hand); per study,
# every law measured beside the paper's statement (cnnablate.rf_laws). "What made depth trainable" is drawn only
# for a study with a depth block (an ablation block over blocks_per_stage).

DEPTH_BLOCK = any(
    "blocks_per_stage" in axes for axes in config.get("ablations", {}).values()
)
TRAINABILITY_FIGURE = f"{RESULTS}/figures/depth_trainability.png"
TRAINABILITY_OUTPUTS = (
    {
        "trainability_figure": report(
            TRAINABILITY_FIGURE,
            caption="../report/depth_trainability.rst",
            category="Analyses",
            subcategory="Receptive-field laws",
        )
    }
    if DEPTH_BLOCK
    else {}
)


rule rf_laws_study:
    input:
        metrics=expand_runs(run_file(layout.METRICS)),
        measures=expand_runs(run_file(layout.MEASURES)),
    output:
        **TRAINABILITY_OUTPUTS,
        laws=report(
            f"{RESULTS}/tables/rf_laws.csv",
            caption="../report/rf_laws.rst",
            category="Analyses",
            subcategory="Receptive-field laws",
        ),
        measurements=report(
            f"{RESULTS}/tables/rf_laws_measurements.csv",
            caption="../report/rf_laws.rst",
            category="Analyses",
            subcategory="Receptive-field laws",
        ),
        trainability=report(
            f"{RESULTS}/tables/depth_trainability.csv",
            caption="../report/depth_trainability.rst",
            category="Analyses",
            subcategory="Receptive-field laws",
        ),
        depth_figure=report(
            f"{RESULTS}/figures/rf_laws_depth.png",
            caption="../report/rf_laws.rst",
            category="Analyses",
            subcategory="Receptive-field laws",
        ),
        kernel_figure=report(
            f"{RESULTS}/figures/rf_laws_kernel_size.png",
            caption="../report/rf_laws_kernel_size.rst",
            category="Analyses",
            subcategory="Receptive-field laws",
        ),
    log:
        f"{LOGS}/rf_laws_study.log",
    benchmark:
        f"{BENCHMARKS}/rf_laws_study.tsv"
    conda:
        ENV
    threads: 1
    params:
        base=job_param("model", config["base"]),
        data=canonical(config["data"]),
    script:
        "../scripts/rf_laws_study.py"


register_analysis("rf_laws", study_outputs=rules.rf_laws_study.output)
