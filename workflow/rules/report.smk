# Gather every run: interpretation figures, tables, figures and the HTML report; then everything into MLflow.

SECTIONS["interpret"] = Section(
    "interpret",
    title="What the network learned",
    text="For base and the variants analysis.interpret names, first seed only.",
    run_figures={
        "filters.png": "first-layer filters as RGB images, each scaled to its own range.",
        "feature_maps.png": "one test image and the first channels of the feature map closing each stage.",
        "attributions.png": "test images with their saliency (|input gradient|) and Grad-CAM of the last "
        "spatial stage.",
    },
    per_run=(),
)
MLFLOW_SYNC_JOB = job("mlflow_sync", scope="study")
INTERPRET_JOB = job("interpret", slot="analysis")
REPORT_JOB = job("report", scope="study")


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
        MLFLOW_SYNC_JOB.log,
    benchmark:
        MLFLOW_SYNC_JOB.benchmark
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
        INTERPRET_JOB.log,
    benchmark:
        INTERPRET_JOB.benchmark
    conda:
        ENV
    threads: INTERPRET_JOB.threads
    resources:
        **INTERPRET_JOB.resources,
    params:
        **INTERPRET_JOB.params,
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
        REPORT_JOB.log,
    benchmark:
        REPORT_JOB.benchmark
    localrule: True
    conda:
        ENV
    params:
        analyses=lambda w: canonical(
            {name: a["study_outputs"] for name, a in ANALYSES.items()}
        ),
        sections=lambda w: canonical(
            {name: section.to_dict() for name, section in SECTIONS.items()}
        ),
        config=study_param(config),
    script:
        "../scripts/report.py"
