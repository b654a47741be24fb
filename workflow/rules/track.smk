# MLflow mirrors finished work: one run per training job and one per learning-rate search, logged from their
# files on the machine that runs Snakemake, so that no training job waits for MLflow.

TRACK_JOB = job("track")
TRACK_TUNING_JOB = job("track_tuning", scope="variant")


rule track:
    input:
        tracking=f"{RESULTS}/mlflow.json",
        metrics=run_file(layout.METRICS),
        history=run_file(layout.HISTORY),
        model=run_file(layout.MODEL),
        predictions=run_file(layout.PREDICTIONS),
    output:
        run_file(layout.TRACKED),
    log:
        TRACK_JOB.log,
    benchmark:
        TRACK_JOB.benchmark
    localrule: True
    conda:
        ENV
    script:
        "../scripts/track.py"


rule track_tuning:
    input:
        tracking=f"{RESULTS}/mlflow.json",
        tuning=layout.tuning_file(RESULTS, "{variant}"),
    output:
        layout.tuning_tracked(RESULTS, "{variant}"),
    log:
        TRACK_TUNING_JOB.log,
    benchmark:
        TRACK_TUNING_JOB.benchmark
    localrule: True
    conda:
        ENV
    script:
        "../scripts/track_tuning.py"
