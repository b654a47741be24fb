# Per-variant learning-rate selection on the validation split: one job per variant sweeps the grid, so adding
# a variant tunes only that variant. The train rule reads the chosen rate from the variant's tuning file.

TUNE_JOB = job("tune", scope="variant", slot="training")
TUNING_TABLE_JOB = job("tuning_table", scope="study")


rule tune:
    input:
        data=f"{RESULTS}/data/dataset.npz",
    output:
        layout.tuning_file(RESULTS, "{variant}"),
    log:
        TUNE_JOB.log,
    benchmark:
        TUNE_JOB.benchmark
    conda:
        ENV
    threads: TUNE_JOB.threads
    resources:
        **TUNE_JOB.resources,
    params:
        study=STUDY.name,
        spec=variant_spec,
        recipe=job_param("train", config["train"]),
        tune=job_param("tune", config["tune"]),
        # outside the outputs: Snakemake deletes a failed job's outputs, finished grid points must survive
        resume=layout.tuning_resume(RESULTS, "{variant}"),
    script:
        "../scripts/tune.py"


rule tuning_table:
    input:
        tuning_results,
    output:
        report(
            f"{RESULTS}/tuning.csv",
            caption="../report/tuning.rst",
            category="Tables",
        ),
    log:
        TUNING_TABLE_JOB.log,
    benchmark:
        TUNING_TABLE_JOB.benchmark
    localrule: True
    conda:
        ENV
    script:
        "../scripts/tuning_table.py"
