"""Chance level of the anomaly benchmarks: what AuPRC a score must beat to mean anything.

A score that ranks pixels at random has an AuPRC equal to the share of anomaly pixels among the
valid ones (``anomaly_fraction``), so an AuPRC is only readable next to that number: 3% is good on
FS Lost & Found (about 0.2% anomaly pixels) and worthless on a benchmark with 3% anomaly pixels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from .data.benchmarks import AnomalyBenchmark, anomaly_fraction
from .results import DATASET_ORDER, DATASET_TITLES, latest


def chance_table(results: pd.DataFrame, benchmarks: Mapping[str, AnomalyBenchmark],
                 scores: Sequence[str] | None = None, temperature: float = 1.0) -> pd.DataFrame:
    """AuPRC of each score next to each benchmark's anomaly pixel fraction, in percent.

    ``results``: anomaly rows of one model (``evaluate_anomaly``'s output, or the store filtered to
    one model); the latest row of each score at ``temperature`` is used. One row per benchmark of
    ``benchmarks`` (course order) with columns ``anomaly pixels`` (the AuPRC of a random score), one
    per score, ``best score``, and ``best / chance``: how many times the chance level the best score
    reaches (1 = no better than guessing, below 1 = ranks anomalies *below* normal pixels).
    """
    rows = results[results["dataset"].isin(list(benchmarks))]
    temps = pd.to_numeric(rows["temperature"], errors="coerce")
    rows = latest(rows[(temps == temperature) | temps.isna()])
    if rows["model"].nunique() > 1:
        raise ValueError(
            f"chance_table compares one model with chance; the rows hold models {sorted(rows['model'].unique())}. "
            "Filter them first, e.g. rows[rows.model == 'erfnet']."
        )
    scores = list(scores) if scores is not None else list(dict.fromkeys(rows["score"]))
    names = [d for d in DATASET_ORDER if d in benchmarks] + [d for d in benchmarks if d not in DATASET_ORDER]
    out = []
    for name in names:
        chance = anomaly_fraction(benchmarks[name])
        found = rows[rows["dataset"] == name]
        auprc = {s: float(found.loc[found["score"] == s, "auprc"].iloc[-1]) for s in scores if (found["score"] == s).any()}
        best = max(auprc, key=auprc.get) if auprc else None
        out.append({
            "benchmark": DATASET_TITLES.get(name, name),
            "anomaly pixels": round(100 * chance, 2),
            **{s: round(100 * auprc[s], 2) if s in auprc else float("nan") for s in scores},
            "best score": best or "–",
            "best / chance": round(auprc[best] / chance, 1) if best and chance > 0 else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(out).set_index("benchmark")
