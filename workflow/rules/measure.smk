# Cost and receptive fields of every run: params, MACs, theoretical and effective receptive fields, and the
# ERF's growth exponent along the run's depth (rf_laws.json, read by the study's receptive-field laws).

MEASURE_COLUMNS = (
    Column("params", "parameters"),
    Column("macs", "MACs per image"),
    Column("trf_size", "TRF", unit="px"),
    Column("erf_std_init", "ERF std at initialisation", unit="px"),
    Column("erf_std_trained", "ERF std trained", unit="px"),
    Column("erf_trf_ratio_trained", "ERF size / TRF size, trained"),
)
# measures.json is nested: its per-run table shows these results.csv columns, the ones labelled above
MEASURES = Section(
    "measures",
    title="Cost and receptive fields of every variant",
    text="Parameters and multiply-accumulates of one forward pass, the theoretical receptive field (TRF) at the "
    "last spatial map, and the effective receptive field (ERF, Luo et al. 2016: the input gradient of the "
    "centre output) at initialisation and after training.",
    columns=MEASURE_COLUMNS,
    per_run=tuple(column.name for column in MEASURE_COLUMNS),
)
MEASURE_JOB = job("measure", slot="analysis")


rule measure:
    input:
        metrics=run_file(layout.METRICS),
        model=run_file(layout.MODEL),
        data=f"{RESULTS}/data/dataset.npz",
    output:
        measures=run_file(layout.MEASURES),
        erf_init=run_file(layout.ERF_INIT),
        erf_trained=run_file(layout.ERF_TRAINED),
        figure=run_file(layout.ERF_FIGURE),
        rf_laws=analysis_file("rf_laws"),
    log:
        MEASURE_JOB.log,
    benchmark:
        MEASURE_JOB.benchmark
    conda:
        ENV
    threads: MEASURE_JOB.threads
    resources:
        **MEASURE_JOB.resources,
    params:
        **MEASURE_JOB.params,
        erf_images=config["analysis"]["erf_images"],
        erf_canvas=config["analysis"]["erf_canvas"],
    script:
        "../scripts/measure.py"


register_analysis(MEASURES)
