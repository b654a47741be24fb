# One rule downloads (and verifies) an archive; one rule prepares the study's canonical dataset file.


rule download_data:
    output:
        config["data"]["root"] + "/{archive}.tar.gz",
    wildcard_constraints:
        archive="cifar-10-python|cifar-100-python",
    params:
        dataset=lambda w: "cifar10" if w.archive == "cifar-10-python" else "cifar100",
        root=config["data"]["root"],
    log:
        "resources/logs/download_{archive}.log",
    benchmark:
        "resources/benchmarks/download_{archive}.tsv"
    localrule: True
    retries: 2
    conda:
        ENV
    script:
        "../scripts/download_data.py"


def dataset_archive(wildcards):
    """The raw archive a dataset needs (none for synthetic and npz data)."""
    from cnnablate.data import archive_path

    dataset = config["data"]["dataset"]
    if dataset in ("cifar10", "cifar100"):
        return str(archive_path(dataset, config["data"]["root"]))
    return []


rule prepare_data:
    input:
        archive=dataset_archive,
    output:
        f"{RESULTS}/data/dataset.npz",
    params:
        data=config["data"],
    log:
        f"{LOGS}/prepare_data.log",
    benchmark:
        f"{BENCHMARKS}/prepare_data.tsv"
    conda:
        ENV
    script:
        "../scripts/prepare_data.py"
