# One rule downloads (and verifies) an archive; one rule prepares the study's canonical dataset file.

PREPARE_DATA_JOB = job("prepare_data", scope="study")


rule download_data:
    output:
        os.path.join(config["data"]["root"], "{archive}.tar.gz"),
    log:
        "resources/logs/download_{archive}.log",
    benchmark:
        "resources/benchmarks/download_{archive}.tsv"
    wildcard_constraints:
        archive="cifar-10-python|cifar-100-python",
    retries: 2
    localrule: True
    conda:
        ENV
    params:
        dataset=lambda w: "cifar10" if w.archive == "cifar-10-python" else "cifar100",
        root=lambda w, output: os.path.dirname(output[0]),
    script:
        "../scripts/download_data.py"


rule prepare_data:
    input:
        archive=dataset_archive,
    output:
        f"{RESULTS}/data/dataset.npz",
    log:
        PREPARE_DATA_JOB.log,
    benchmark:
        PREPARE_DATA_JOB.benchmark
    conda:
        ENV
    params:
        data=canonical(config["data"]),
    script:
        "../scripts/prepare_data.py"
