# Worked example of an analysis: accuracy of every run under translated test images. A new analysis follows the
# same three steps (README, "Add an analysis rule"): this rule file (its report section declared at the top, a
# rule writing RUN/<name>.json of numbers, register_analysis), one module with the job, an `include:` line.

SHIFT = Section(
    "shift",
    title="Robustness to translated test images",
    text="Every test image shifted by a few pixels (zero fill, averaged over a shift to the right and one "
    "downwards): how much accuracy each variant keeps, and how many of its predictions stay unchanged.",
    columns=(
        Column("shift_acc_{pixels}px", "accuracy, shift {pixels} px", percent=True),
        Column(
            "shift_consistency_{pixels}px",
            "unchanged predictions, shift {pixels} px",
            percent=True,
        ),
        Column(
            "majority_class_fraction",
            "test images given the commonest class",
            percent=True,
        ),
        Column("acc_{pixels}px (%)", "accuracy, shift {pixels} px", unit="%"),
        Column(
            "consistency_{pixels}px (%)",
            "unchanged predictions, shift {pixels} px",
            unit="%",
        ),
    ),
    outputs={
        "figure": Output(
            "shift_robustness.png",
            "Test accuracy (left) and the share of unchanged predictions (right) when every test image is "
            "translated, per variant, mean over seeds, band = range over seeds. Runs that did not train or give "
            "one class to nearly every image are left out of the consistency.",
        ),
        "table": Output(
            "shift_robustness.csv",
            "Accuracy and consistency at each shift (%, mean over seeds); the note says which seeds were left "
            "out of the consistency, and why.",
        ),
    },
)
SHIFT_JOB = job("shift", slot="analysis")


rule shift_robustness:
    input:
        metrics=run_file(layout.METRICS),
        model=run_file(layout.MODEL),
        data=f"{RESULTS}/data/dataset.npz",
    output:
        analysis_file(SHIFT.name),
    log:
        SHIFT_JOB.log,
    benchmark:
        SHIFT_JOB.benchmark
    conda:
        ENV
    threads: SHIFT_JOB.threads
    resources:
        **SHIFT_JOB.resources,
    params:
        **SHIFT_JOB.params,
        shifts=config["analysis"]["shifts"],
    script:
        "../scripts/shift_robustness.py"


SHIFT_FIGURE_JOB = job("shift_robustness_figure", scope="study")


rule shift_robustness_figure:
    input:
        expand_runs(analysis_file(SHIFT.name)),
    output:
        **study_outputs(SHIFT),
    log:
        SHIFT_FIGURE_JOB.log,
    benchmark:
        SHIFT_FIGURE_JOB.benchmark
    localrule: True
    conda:
        ENV
    script:
        "../scripts/shift_robustness_figure.py"


register_analysis(SHIFT, study_outputs=rules.shift_robustness_figure.output)
