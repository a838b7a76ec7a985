"""The store's rows a table or figure shows: the latest row of each (model, dataset, score) under
one protocol and temperature, in report order. Reads the results store's DataFrame
(``anomalyseg.results.read_results``); runs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..protocol import get_protocol
from ..results import COLUMNS, DATASET_ORDER, MIOU_DATASET, latest, protocol_rows
from .names import is_learned, model_order, score_key


def check_store_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` itself when it is the results store's DataFrame; else a TypeError / ValueError saying
    so."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            "The report reads the results store as a DataFrame (anomalyseg.results.read_results), "
            f"got {type(df).__name__}."
        )
    lacking = [
        c
        for c in (
            "model",
            "dataset",
            "score",
            "temperature",
            "temperature_on",
            "auprc",
            "fpr_at_95_tpr",
            "miou",
        )
        if c not in df
    ]
    if lacking:
        raise ValueError(
            f"This table is not the results store: it lacks the columns {lacking} (expected "
            f"{COLUMNS})."
        )
    return df


def select_models(df: pd.DataFrame, models: Sequence[str] | None) -> pd.DataFrame:
    """Rows of ``models`` only (``None``: all); an unknown name is an error listing the stored
    ones."""
    check_store_frame(df)
    if models is None:
        return df
    models = [models] if isinstance(models, str) else list(models)
    stored = sorted(set(df["model"].dropna()))
    unknown = [m for m in models if m not in stored]
    if unknown:
        raise ValueError(
            f"report_models names {unknown}, which have no rows in the store; stored models: "
            f"{stored or 'none yet'}."
        )
    return df[df["model"].isin(models)]


def anomaly_rows(
    df: pd.DataFrame,
    temperature: float = 1.0,
    fpr_convention: str = "course",
    protocol: str | None = "course",
) -> pd.DataFrame:
    """Latest benchmark row per (model, dataset, score) at ``temperature`` (learned scores have
    none) evaluated under ``protocol`` (``anomalyseg.protocol``), in model, score and benchmark
    order."""
    check_store_frame(df)
    if protocol is not None:
        df = protocol_rows(df, protocol)
        fpr_convention = get_protocol(protocol).fpr_convention
    rows = df[df["dataset"].isin(DATASET_ORDER) & (df["score"] != "miou")]
    if "fpr_convention" in rows:
        rows = rows[rows["fpr_convention"].isna() | (rows["fpr_convention"] == fpr_convention)]
    rows = rows[
        rows["temperature"].isna() | np.isclose(rows["temperature"].astype(float), temperature)
    ]
    rows = latest(rows, keys=("model", "dataset", "score"))
    return sort_rows(rows, ["model", "score", "dataset"])


def sort_rows(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows in report order: known models first (``names.METHOD_TITLES``), scores as the course
    lists them, benchmarks in course order."""
    if not len(rows):
        return rows
    models = {m: i for i, m in enumerate(model_order(rows["model"].unique()))}
    rank = {
        "model": models.get,
        "score": score_key,
        "dataset": lambda d: (DATASET_ORDER + (d,)).index(d),
    }
    keys = [rows[c].map(rank[c]) if c in rank else rows[c] for c in by]
    order = sorted(range(len(rows)), key=lambda i: tuple(k.iloc[i] for k in keys))
    return rows.iloc[order].reset_index(drop=True)


def miou_rows(
    df: pd.DataFrame, temperature: float = 1.0, protocol: str | None = "course"
) -> pd.DataFrame:
    """Latest Cityscapes-val mIoU row per model at class temperature ``temperature`` under
    ``protocol``."""
    check_store_frame(df)
    df = protocol_rows(df, protocol)
    rows = df[(df["score"] == "miou") & (df["dataset"] == MIOU_DATASET)]
    rows = rows[np.isclose(rows["temperature"].astype(float), temperature)]
    return latest(rows, keys=("model",))


def temperature_sweeps(
    df: pd.DataFrame,
    temperature_on: str = "pixel",
    fpr_convention: str = "course",
    protocol: str | None = "course",
) -> pd.DataFrame:
    """Latest benchmark rows of every (model, dataset, score) swept over at least two temperatures
    with ``temperature_on`` (``"pixel"`` or ``"class"``) under ``protocol``, sorted by
    temperature."""
    if temperature_on not in ("pixel", "class"):
        raise ValueError(f"temperature_on is 'pixel' or 'class', got {temperature_on!r}.")
    check_store_frame(df)
    df = protocol_rows(df, protocol)
    rows = df[
        df["dataset"].isin(DATASET_ORDER)
        & (df["temperature_on"] == temperature_on)
        & df["temperature"].notna()
    ]
    if "fpr_convention" in rows:
        rows = rows[rows["fpr_convention"].isna() | (rows["fpr_convention"] == fpr_convention)]
    rows = latest(rows, keys=("model", "dataset", "score", "temperature"))
    if not len(rows):
        return rows
    n = rows.groupby(["model", "dataset", "score"])["temperature"].transform("nunique")
    return sort_rows(rows[n >= 2], ["model", "score", "dataset", "temperature"])


def stored_map_runs(df: pd.DataFrame, results_path: str | Path) -> list[tuple[str, str, str]]:
    """``(dataset, run_id, model)`` of every run whose score maps of ``dataset`` are stored beside
    the store (``<results dir>/maps/<run_id>/<dataset>/``, written by ``evaluate_anomaly``), in the
    store's (time) order."""
    check_store_frame(df)
    maps = Path(results_path).parent / "maps"
    if "run_id" not in df or not len(df) or not maps.is_dir():
        return []
    found = df[["dataset", "run_id", "model"]].drop_duplicates().itertuples(index=False)
    return [(d, r, m) for d, r, m in found if (maps / str(r) / str(d)).is_dir()]


def map_runs(df: pd.DataFrame, results_path: str | Path, dataset: str) -> dict[str, list[str]]:
    """``{model: [run_id, ...]}``: each model's runs that stored maps of ``dataset``, latest
    first."""
    out: dict[str, list[str]] = {}
    for d, run, model in stored_map_runs(df, results_path):
        if d == dataset:
            out.setdefault(model, []).insert(0, run)  # the store is in time order
    return {m: out[m] for m in model_order(out)}


def best_scores(df: pd.DataFrame) -> dict[str, list[str]]:
    """``{model: [score, ...]}``: each model's post-hoc score with the highest mean AuPRC over the
    benchmarks (T = 1), then its learned scores; what the qualitative grid shows by default."""
    rows = anomaly_rows(df)
    out = {}
    for model in model_order(rows["model"].unique()):
        mine = rows[rows["model"] == model]
        mean = mine[~mine["score"].map(is_learned)].groupby("score", sort=False)["auprc"].mean()
        out[model] = ([mean.idxmax()] if mean.notna().any() else []) + list(
            dict.fromkeys(s for s in mine["score"] if is_learned(s))
        )
    return out
