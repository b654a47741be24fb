"""Rule prepare_data: the study's dataset as one canonical npz (synthetic, npz or CIFAR)."""

import logging

from cnnablate.data import prepare_dataset
from cnnablate.logs import configure_logging

configure_logging(snakemake.log[0])
dataset = prepare_dataset(dict(snakemake.params.data))
dataset.save(snakemake.output[0])
logging.getLogger("cnnablate.data").info(
    "%d train and %d test images of shape %s, %d classes -> %s",
    len(dataset.y_train),
    len(dataset.y_test),
    dataset.x_train.shape[1:],
    dataset.num_classes,
    snakemake.output[0],
)
