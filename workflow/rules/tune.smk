# Per-variant learning-rate selection on the validation split: one job per variant sweeps the grid, so adding
# a variant tunes only that variant. The train rule reads the chosen rate from the variant's tuning file.


rule tune:
    input:
        data=f"{RESULTS}/data/dataset.npz",
    output:
        layout.tuning_file(RESULTS, "{variant}"),
    log:
        f"{LOGS}/tune/{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/tune/{{variant}}.tsv"
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
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
        f"{LOGS}/tuning_table.log",
    benchmark:
        f"{BENCHMARKS}/tuning_table.tsv"
    localrule: True
    conda:
        ENV
    script:
        "../scripts/tuning_table.py"
