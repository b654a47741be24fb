"""The words of the results: how a run ended, which endings count as trained, how each reads, and the thresholds
and gaps that decide them.

One place, so that metrics.json, the tables, the figures and the report's prose cannot drift apart; stdlib only,
so that a training job imports it without pandas, scipy or torch.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How a final run ended (metrics.json ``outcome``); the values are the strings metrics.json holds."""

    CONVERGED = "converged"  # stopped because no stopping signal improved any more
    NOT_CONVERGED = "not_converged"  # stopped by the step cap while still improving: its accuracy is a lower bound
    DID_NOT_TRAIN = "did_not_train"  # its final model is below ``trained_accuracy``: a state, never ranked
    DIVERGED = "diverged"  # its training loss became non-finite

    @property
    def words(self) -> str:
        """The outcome as the report and the figures write it."""
        return WORDS[self]


WORDS = {
    Outcome.CONVERGED: "converged",
    Outcome.NOT_CONVERGED: "not converged within the budget",
    Outcome.DID_NOT_TRAIN: "did not train",
    Outcome.DIVERGED: "diverged",
}
TRAINED_OUTCOMES = frozenset({Outcome.CONVERGED, Outcome.NOT_CONVERGED})  # the runs whose accuracies are compared

TRAINED_LOSS_FRACTION = 0.9  # a tuning run optimised when its training loss fell below this fraction of ln C
# a final run trained when its final model classifies the whole training split at least this share of the way
# from chance to 100% (0.25: 32.5% on 10 classes); one low segment of a noisy run cannot fake it
TRAINED_MARGIN = 0.25
RETRY_GAP = 0.05  # validation accuracy a final run may lose against its tuning run before it is retried


def accuracy_past_chance(chance: float, share: float) -> float:
    """The accuracy ``share`` of the way from chance (1/C) to 100%: a margin over guessing that does not shrink
    with the number of images and means the same for any number of classes."""
    return chance + share * (1.0 - chance)


def trained_accuracy(chance: float) -> float:
    """The training accuracy a final model must reach to have trained: TRAINED_MARGIN of the way from chance to
    100%."""
    return accuracy_past_chance(chance, TRAINED_MARGIN)
