# MLflow experiment set up once; one training job per (variant, seed), at the variant's tuned learning rate.

MLFLOW_SETUP_JOB = job("mlflow_setup", scope="study")
TRAIN_JOB = job("train", slot="training")


rule mlflow_setup:
    output:
        f"{RESULTS}/mlflow.json",
    log:
        MLFLOW_SETUP_JOB.log,
    benchmark:
        MLFLOW_SETUP_JOB.benchmark
    localrule: True
    conda:
        ENV
    params:
        study=STUDY.name,
        tracking_uri=config["mlflow"]["tracking_uri"],
        artifact_root="results/mlflow-artifacts",
    script:
        "../scripts/mlflow_setup.py"


rule train:
    input:
        unpack(tuning_input),
        data=f"{RESULTS}/data/dataset.npz",
    output:
        metrics=run_file(layout.METRICS),
        history=run_file(layout.HISTORY),
        model=run_file(layout.MODEL),
        predictions=run_file(layout.PREDICTIONS),
    log:
        TRAIN_JOB.log,
    benchmark:
        TRAIN_JOB.benchmark
    conda:
        ENV
    # the recipe's threads are only the default: Snakemake's --set-threads and --cores decide torch's threads
    threads: TRAIN_JOB.threads
    resources:
        **TRAIN_JOB.resources,
    params:
        study=STUDY.name,
        spec=variant_spec,
        recipe=job_param("train", config["train"]),
        # outside the outputs: Snakemake deletes a failed job's outputs, the checkpoint must survive
        checkpoint=layout.checkpoint(RESULTS, "{variant}", "{seed}"),
    script:
        "../scripts/train.py"
