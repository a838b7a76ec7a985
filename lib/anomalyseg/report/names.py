"""Display names and display order: what a table row, a legend entry or a panel title calls a model,
a metric or a benchmark, and in which order they come. Scores are named by the score table
(``scores.SCORE_TABLE``: ``scores.score_title``, ``SCORE_ORDER``, ``LEARNED_SCORES``), benchmarks by
``labels.BENCHMARKS`` (``results.DATASET_TITLES``); this module adds the models and metrics.

A *method* is a model (``erfnet``, ``eomt``, ``eomt_oe``...) or, for a learned score, a model with
that score (``eomt`` + ``anomaly_head``); post-hoc scores (``msp``, ``rba``...) are compared within
each method.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..results import DATASET_TITLES, MIOU_DATASET
from ..scores import LEARNED_SCORES, SCORE_ORDER, score_title

# Readable titles of model names and learned scores.
METHOD_TITLES = {
    "erfnet": "ERFNet",
    "eomt": "EoMT",
    "eomt_oe": "EoMT + OE",
    "eomt_oe_road": "EoMT + OE (road only)",
    "eomt_oe_road_persp": "EoMT + OE (road only, perspective)",
    "anomaly_head": "anomaly head",
    "anomaly_head_hybrid": "hybrid anomaly head",
}
METRIC_TITLES = {"auprc": "AuPRC", "fpr_at_95_tpr": "FPR95", "auroc": "AUROC", "miou": "mIoU"}
# Higher is better except for false positives; decides the bold cell of each LaTeX column.
HIGHER_IS_BETTER = {"auprc": True, "fpr_at_95_tpr": False, "auroc": True, "miou": True}


def model_title(model: str) -> str:
    """``erfnet`` -> ``ERFNet``; an unknown model keeps its name."""
    return METHOD_TITLES.get(model, model)


def dataset_title(dataset: str) -> str:
    """``RoadAnomaly21`` -> ``SMIYC RA-21``; ``cityscapes_val`` -> ``Cityscapes val``."""
    return "Cityscapes val" if dataset == MIOU_DATASET else DATASET_TITLES.get(dataset, dataset)


def is_learned(score: str) -> bool:
    return score in LEARNED_SCORES


def method_title(model: str, score: str | None = None) -> str:
    """``ERFNet``, ``EoMT + OE``; a learned score names its own method: ``EoMT + anomaly head``."""
    if score is not None and is_learned(score):
        return f"{model_title(model)} + {METHOD_TITLES[score]}"
    return model_title(model)


def label(model: str, score: str) -> str:
    """One line's legend entry: ``EoMT · MSP`` or ``EoMT + anomaly head``."""
    return (
        method_title(model, score)
        if is_learned(score)
        else f"{model_title(model)} · {score_title(score)}"
    )


def model_order(models: Sequence[str]) -> list[str]:
    """``models`` in report order: the known ones as ``METHOD_TITLES`` lists them, then the others
    alphabetically."""
    known = [m for m in METHOD_TITLES if m in set(models)]
    return known + sorted(set(models) - set(known))


def score_key(score: str):
    """Sort key of a score: the score table's order (``scores.SCORE_TABLE``: the course's, learned
    scores last), unknown scores after, by name."""
    return (SCORE_ORDER.index(score), score) if score in SCORE_ORDER else (len(SCORE_ORDER), score)
