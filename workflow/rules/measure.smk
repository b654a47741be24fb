# Cost and receptive fields of every run: params, MACs, theoretical and effective receptive fields, and the
# ERF's growth exponent along the run's depth (rf_laws.json, read by the study's receptive-field laws).


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
        f"{LOGS}/measure/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/measure/{{variant}}/seed{{seed}}.tsv"
    conda:
        ENV
    # a GPU slot shared with training (train.jobs_per_gpu) when the host has one, else train.threads CPU threads
    threads: config["train"]["threads"]
    resources:
        gpu=1,
    params:
        jobs_per_gpu=config["train"]["jobs_per_gpu"],
        erf_images=config["analysis"]["erf_images"],
        erf_canvas=config["analysis"]["erf_canvas"],
    script:
        "../scripts/measure.py"


register_analysis("measures")
