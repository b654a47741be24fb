# Cost and receptive fields of every run: params, MACs, theoretical and effective receptive fields, and the
# ERF's growth exponent along the run's depth (rf_laws.json, read by the study's receptive-field laws).


rule measure:
    input:
        metrics=f"{RUN}/metrics.json",
        model=f"{RUN}/model.pt",
        data=f"{RESULTS}/data/dataset.npz",
    output:
        measures=f"{RUN}/measures.json",
        erf_init=f"{RUN}/erf_init.npy",
        erf_trained=f"{RUN}/erf_trained.npy",
        figure=f"{RUN}/measures_erf.png",
        rf_laws=f"{RUN}/rf_laws.json",
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
