# Worked example of an analysis rule: accuracy of every run under translated test images.
# A new analysis follows the same three steps: a rule writing RUN/<name>.json (flat numbers),
# register_analysis(<name>, study_outputs), and an `include:` line in the Snakefile.


rule shift_robustness:
    input:
        metrics=run_file(layout.METRICS),
        model=run_file(layout.MODEL),
        data=f"{RESULTS}/data/dataset.npz",
    output:
        analysis_file("shift"),
    log:
        f"{LOGS}/shift/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/shift/{{variant}}/seed{{seed}}.tsv"
    conda:
        ENV
    # a GPU slot shared with training (train.jobs_per_gpu) when the host has one, else train.threads CPU threads
    threads: config["train"]["threads"]
    resources:
        gpu=1,
    params:
        jobs_per_gpu=config["train"]["jobs_per_gpu"],
        shifts=config["analysis"]["shifts"],
    script:
        "../scripts/shift_robustness.py"


rule shift_robustness_figure:
    input:
        expand_runs(analysis_file("shift")),
    output:
        figure=report(
            f"{RESULTS}/figures/shift_robustness.png",
            caption="../report/shift_robustness.rst",
            category="Analyses",
            subcategory="Shift robustness",
        ),
        table=report(
            f"{RESULTS}/tables/shift_robustness.csv",
            caption="../report/shift_robustness.rst",
            category="Analyses",
            subcategory="Shift robustness",
        ),
    log:
        f"{LOGS}/shift_robustness_figure.log",
    benchmark:
        f"{BENCHMARKS}/shift_robustness_figure.tsv"
    localrule: True
    conda:
        ENV
    script:
        "../scripts/shift_robustness_figure.py"


register_analysis("shift", study_outputs=rules.shift_robustness_figure.output)
