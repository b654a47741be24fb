# Cost and receptive fields of every run: params, MACs, theoretical and effective receptive fields.


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
    log:
        f"{LOGS}/measure/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/measure/{{variant}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    params:
        erf_images=config["analysis"]["erf_images"],
        erf_canvas=config["analysis"]["erf_canvas"],
    script:
        "../scripts/measure.py"


register_analysis("measures")
