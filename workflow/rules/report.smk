# Gather every run: interpretation figures, tables, figures and the HTML report; then everything into MLflow.


rule mlflow_sync:
    input:
        tracking=f"{RESULTS}/mlflow.json",
        metrics=expand_runs(run_file(layout.METRICS)),
        tracked=tracked_runs,
        analyses=analysis_outputs,
        results=f"{RESULTS}/results.csv",
        summary=f"{RESULTS}/summary.csv",
        html=f"{REPORTS}/index.html",
    output:
        f"{RESULTS}/mlflow_sync.json",
    log:
        f"{LOGS}/mlflow_sync.log",
    benchmark:
        f"{BENCHMARKS}/mlflow_sync.tsv"
    localrule: True
    conda:
        ENV
    params:
        analyses=lambda w: canonical(list(ANALYSES)),
        ablations=ablation_tags,
        config=study_param(config),
    script:
        "../scripts/mlflow_sync.py"


rule interpret:
    input:
        metrics=run_file(layout.METRICS),
        model=run_file(layout.MODEL),
        data=f"{RESULTS}/data/dataset.npz",
    output:
        directory(f"{RUN}/interpret"),
    log:
        f"{LOGS}/interpret/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/interpret/{{variant}}/seed{{seed}}.tsv"
    conda:
        ENV
    # a GPU slot shared with training (train.jobs_per_gpu) when the host has one, else train.threads CPU threads
    threads: config["train"]["threads"]
    resources:
        gpu=1,
    params:
        jobs_per_gpu=config["train"]["jobs_per_gpu"],
    script:
        "../scripts/interpret.py"


rule report:
    input:
        metrics=expand_runs(run_file(layout.METRICS)),
        histories=expand_runs(run_file(layout.HISTORY)),
        predictions=expand_runs(run_file(layout.PREDICTIONS)),
        data=f"{RESULTS}/data/dataset.npz",
        measures=expand_runs(run_file(layout.MEASURES)),
        erf=expand_runs(run_file(layout.ERF_TRAINED))
        + expand_runs(run_file(layout.ERF_INIT)),
        analyses=analysis_outputs,
        tuning=tuning_results,
        interpret=interpret_targets,
    output:
        results=report(
            f"{RESULTS}/results.csv",
            caption="../report/results.rst",
            category="Tables",
        ),
        summary=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        figures=report(
            directory(f"{RESULTS}/figures/report"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
        html=report(
            f"{REPORTS}/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv"
    localrule: True
    conda:
        ENV
    params:
        analyses=lambda w: canonical(
            {name: a["study_outputs"] for name, a in ANALYSES.items()}
        ),
        config=study_param(config),
    script:
        "../scripts/report.py"
