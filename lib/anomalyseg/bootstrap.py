"""Frame bootstrap: confidence intervals of pooled metrics and a paired test between two methods.

The benchmarks are small (RoadAnomaly21 has 10 frames), so a difference of a few points between
two methods can be noise. A bootstrap resample draws the data set's frames with replacement (as
many as it has) and pools their pixels, as the metric does; the 2.5th and 97.5th percentiles of
the metric over the resamples bound a 95% interval (percentile bootstrap, Efron & Tibshirani 1993).
The paired test draws the same frames for both methods and asks whether the 95% interval of the
difference excludes 0 (its two-sided p-value: twice the smaller tail of the differences at 0).

It runs on the per-frame histograms the evaluation stores (``frame_stats``): a resample's pooled
counts are a weighted sum of the frames' counts, so 1000 resamples cost a few matrix products and
1000 passes over the bins, not 1000 sorts of the pixels. Where a data set has at most
``frame_stats.MAX_BINS`` distinct scores, the bins are the scores and the intervals are those of
the exact metric; otherwise each bin holds 1/4096 of either class's pixels, and the stored row's
exact value is the point estimate. The seed is fixed (``SEED``) so that a table is reproducible.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from . import components as _components
from .metrics import cumulative_metrics_rows
from .results import DATASET_ORDER, DATASET_TITLES

SEED = 0
N_BOOT = 1000
LEVEL = 0.95
LOWER_IS_BETTER = {"fpr_at_95_tpr"}
METRIC_TITLES = {
    "auprc": "AuPRC",
    "fpr_at_95_tpr": "FPR95",
    "auroc": "AUROC",
    "siou_gt": "sIoU gt",
    "ppv": "PPV",
    "f1_mean": "mean F1",
}


def multiplicities(n_frames: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``[n_boot, n_frames]`` int64: how often each frame is drawn in each resample (rows sum to
    ``n_frames``), from
    ``np.random.default_rng(seed).integers(0, n_frames, (n_boot, n_frames))``."""
    if n_frames < 1 or n_boot < 1:
        raise ValueError(
            f"a bootstrap needs at least one frame and one resample, got {n_frames} frames, "
            f"{n_boot} resamples."
        )
    draws = np.random.default_rng(seed).integers(0, n_frames, (n_boot, n_frames))
    rows = np.repeat(np.arange(n_boot), n_frames)
    return np.bincount(rows * n_frames + draws.ravel(), minlength=n_boot * n_frames).reshape(
        n_boot, n_frames
    )


# The per-frame arrays of the stored statistics (``frame_stats.FrameStatsAccumulator.frame_stats``).
PER_FRAME = (
    "stems",
    "pos",
    "neg",
    "size_pixels",
    "size_detected",
    "size_components",
    "siou_sum",
    "n_gt",
    "ppv_sum",
    "n_pred",
    "tp",
    "fn",
    "fp",
)
PIXEL_METRICS = ("auprc", "fpr_at_95_tpr", "auroc")
COMPONENT_METRICS = ("siou_gt", "ppv", "f1_mean")


def canonical(stats: dict) -> dict:
    """The statistics with their frames in stem order, so that a resample draws the same frames
    whatever order an evaluation stored them in (and two methods' draws pair up)."""
    order = np.argsort(np.asarray(stats["stems"]).astype(str), kind="stable")
    return {k: (np.asarray(v)[order] if k in PER_FRAME else v) for k, v in stats.items()}


def pixel_metrics(
    stats: dict, weights: np.ndarray, convention: str = "course", chunk: int = 64
) -> dict[str, np.ndarray]:
    """``auprc``, ``fpr_at_95_tpr`` and ``auroc`` ``[B]`` of the frames pooled with ``weights``
    ``[B, F]`` (frame multiplicities), from the stored histograms ``stats["pos"]``,
    ``stats["neg"]`` ``[F, D]``: ``counts_metrics`` of each resample's pooled counts, ``chunk``
    resamples per array pass (``metrics.cumulative_metrics_rows``).

    A resample's cumulative counts are the weighted sum of the frames' cumulative counts (one
    matrix product, exact: integer weights times integer counts), and its AUROC trapezoid sum
    ``sum_i neg_i (tps_i + tps_i-1)`` is the quadratic form ``w M w`` of the frames' pairwise sums
    ``M[f, g] = sum_i neg_f,i (2 tps_g,i - pos_g,i)`` (int64, exact)."""
    pos, neg = np.asarray(stats["pos"], np.int64), np.asarray(stats["neg"], np.int64)
    filled = (pos.sum(0) + neg.sum(0)) > 0  # a bin no frame fills is empty in every resample
    pos, neg = pos[:, filled][:, ::-1], neg[:, filled][:, ::-1]  # highest score first
    tps, fps = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    pairs = neg @ (2 * tps - pos).T  # [F, F]
    tps, fps = tps.astype(np.float64), fps.astype(np.float64)
    weights = np.asarray(weights)
    out = {k: np.empty(len(weights)) for k in PIXEL_METRICS}

    def run(start: int) -> None:
        w = weights[start : start + chunk]
        wf, wi = w.astype(np.float64), w.astype(np.int64)
        m = cumulative_metrics_rows(
            wf @ tps, wf @ fps, convention, trapezoids=np.einsum("bf,fg,bg->b", wi, pairs, wi)
        )
        for k in out:
            out[k][start : start + len(w)] = m[k]

    # One BLAS thread per chunk: with F <= a few dozen frames BLAS's own threads only wait on each
    # other, one is 4x faster than einsum. The chunks go to a thread per core (numpy releases the
    # GIL in its array passes). The sums are exact integers in float64 whatever the order and each
    # chunk writes its own rows, so the result is the same bit for bit.
    starts = range(0, len(weights), chunk)
    with threadpool_limits(limits=1, user_api="blas"):
        with ThreadPoolExecutor(min(len(starts), os.cpu_count() or 1)) as pool:
            list(pool.map(run, starts))
    return out


def component_samples(stats: dict, weights: np.ndarray) -> dict[str, np.ndarray]:
    """``siou_gt``, ``ppv``, ``f1_mean`` ``[B]`` of resampled frames (stored component counts)."""
    counts = {k: stats[k] for k in ("siou_sum", "n_gt", "ppv_sum", "n_pred", "tp", "fn", "fp")}
    rows = _components.aggregate_rows(counts, weights)
    return {k: rows[k] for k in COMPONENT_METRICS}


def size_recall(stats: dict, weights: np.ndarray) -> np.ndarray:
    """Recall per component area bin ``[B, bins]`` of resampled frames (NaN where a bin is
    empty)."""
    w = np.asarray(weights, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ stats["size_detected"]) / (w @ stats["size_pixels"])


def available(stats: dict) -> tuple[str, ...]:
    """The metrics these statistics can resample: the pixel metrics, and the component metrics
    where the data set is a SMIYC track."""
    return PIXEL_METRICS + (COMPONENT_METRICS if "tp" in stats else ())


def samples(
    stats: dict,
    weights: np.ndarray,
    metrics: Sequence[str] = PIXEL_METRICS,
    convention: str = "course",
) -> dict[str, np.ndarray]:
    """Each of ``metrics`` ``[B]`` over the resamples ``weights`` ``[B, F]`` (frames in the order
    the statistics hold them: pass ``canonical(stats)`` for the stem order)."""
    unknown = [m for m in metrics if m not in available(stats)]
    if unknown:
        raise ValueError(
            f"no bootstrap for {unknown}: these statistics give {list(available(stats))} "
            "(component metrics only on RoadAnomaly21 / RoadObstacle21)."
        )
    out = {}
    if any(m in PIXEL_METRICS for m in metrics):
        out.update(pixel_metrics(stats, weights, convention))
    if any(m in COMPONENT_METRICS for m in metrics):
        out.update(component_samples(stats, weights))
    return {m: out[m] for m in metrics}


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap ``values`` (NaN resamples left out; NaN if none is left)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(
    stats: dict,
    metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
    convention: str = "course",
) -> dict[str, tuple[float, float]]:
    """``{metric: (lo, hi)}``: the ``level`` percentile interval of each metric over ``n_boot``
    resamples of the stored frames (``results.load_frame_stats``), as fractions. The resamples
    are ``multiplicities(F, n_boot, seed)`` over the frames in stem order."""
    st = canonical(stats)
    s = samples(st, multiplicities(len(st["stems"]), n_boot, seed), metrics, convention)
    return {m: interval(s[m], level) for m in metrics}


def _check_same_frames(a: dict, b: dict) -> None:
    sa, sb = [str(x) for x in a["stems"]], [str(x) for x in b["stems"]]
    if sorted(sa) != sorted(sb):
        only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
        raise ValueError(
            "a paired bootstrap needs both methods evaluated on the same frames; frames only in "
            f"the first: {only_a[:5]}{'...' if len(only_a) > 5 else ''}, only in the second: "
            f"{only_b[:5]}{'...' if len(only_b) > 5 else ''}. Re-evaluate both with the same "
            "benchmark folder and protocol."
        )


def paired_test(
    a: np.ndarray, b: np.ndarray, diff: float, level: float = LEVEL
) -> dict[str, float]:
    """The paired test from both methods' metric on the same resamples ``[B]``: ``diff`` (given, on
    all frames), ``lo``, ``hi`` (the ``level`` interval of a - b), ``p_value`` (two-sided,
    ``min(1, 2 min(P(d <= 0), P(d >= 0)))``) and ``significant`` (1.0 when the interval excludes
    0)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    lo, hi = interval(d, level)
    d = d[np.isfinite(d)]
    p = float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))) if d.size else float("nan")
    return dict(
        diff=float(diff),
        lo=lo,
        hi=hi,
        p_value=p,
        significant=float(not (lo <= 0 <= hi)) if np.isfinite(lo) else float("nan"),
    )


def paired_bootstrap(
    stats_a: dict,
    stats_b: dict,
    metric: str = "auprc",
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
    convention: str = "course",
) -> dict[str, float]:
    """Paired bootstrap of ``metric(a) - metric(b)``: both methods' frames resampled together
    (the same draws, frames matched by stem). Returns ``paired_test``'s dict, ``diff`` on all frames
    (from the statistics: exact where the bins are the scores)."""
    _check_same_frames(stats_a, stats_b)
    a, b = canonical(stats_a), canonical(stats_b)
    F = len(a["stems"])
    w = np.vstack([np.ones((1, F), np.int64), multiplicities(F, n_boot, seed)])
    sa, sb = (
        samples(a, w, [metric], convention)[metric],
        samples(b, w, [metric], convention)[metric],
    )
    return paired_test(sa[1:], sb[1:], sa[0] - sb[0], level)


# ---------------------------------------------------------------------------- tables for the report
def _fmt(x: float, lo: float | None = None, hi: float | None = None, digits: int = 1) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    s = f"{100 * x:.{digits}f}"
    return (
        s
        if lo is None or not np.isfinite(lo)
        else f"{s} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"
    )


# A row without statistics borrows those of a row with the same evaluation and the same values.
_SAME = ("model", "checkpoint", "dataset", "score", "fpr_convention", "auprc", "fpr_at_95_tpr")


def stored_stats(
    rows: pd.DataFrame, results_path: str | Path, store: pd.DataFrame | None = None
) -> dict[int, dict]:
    """The stored frame statistics of each row (in stem order), by row position.

    A row without them (a temperature sweep's T = 1 row repeats an evaluation's figures but stores
    no statistics, and is the latest) takes those of the latest row of ``store`` that has them and
    agrees on model, checkpoint, data set, score, FPR95 convention and both metric values."""
    from .results import load_frame_stats  # noqa: PLC0415 (kept next to its only use)

    out = {}
    for i, (_, row) in enumerate(rows.iterrows()):
        st = load_frame_stats(results_path, row)
        twin = _twin(row, store) if st is None and store is not None else None
        if twin is not None:
            st = load_frame_stats(results_path, twin)
        if st is not None:
            out[i] = canonical(st)
    return out


def interval_table(
    rows: pd.DataFrame,
    results_path: str | Path,
    metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
    convention: str = "course",
    digits: int = 1,
    store: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (model, score), one column per (dataset, metric): ``74.4 [68.1, 80.2]`` in
    percent, the row's stored exact value and its ``level`` bootstrap interval. In each column the
    best method with stored statistics (highest AuPRC, sIoU, PPV, F1; lowest FPR95) is marked
    ``(best)``, and every method
    whose paired difference to it is not significant at that level ``(~)``: within the noise of the
    frames, a tie with the best. Unmarked methods are significantly worse.

    ``rows``: one result row per (model, score, dataset), e.g.
    ``report.selection.anomaly_rows(df)``; rows
    without stored frame statistics (nor a twin in ``store``, see ``stored_stats``) show their value
    alone, and so do metrics a data set has no statistics for. Intervals and tests use ``n_boot``
    resamples drawn with ``seed``, shared by every
    method of a data set (so the paired tests reuse them)."""
    if not len(rows):
        return pd.DataFrame()
    rows = rows.reset_index(drop=True)
    stats = stored_stats(rows, results_path, store)
    cells: dict[tuple, dict] = {}
    for dataset, group in rows.groupby("dataset", sort=False):
        boot: dict[int, dict] = {}
        for i in group.index:
            st = stats.get(i)
            if st is None:
                continue
            F = len(st["stems"])
            wanted = [m for m in metrics if m in available(st)]
            if wanted:
                boot[i] = samples(st, multiplicities(F, n_boot, seed), wanted, convention)
        for metric in metrics:
            if metric not in group or group[metric].isna().all():
                continue
            vals = group[metric].astype(float)
            tested = vals[[i for i in group.index if metric in boot.get(i, {})]].dropna()
            best = (
                (tested.idxmin() if metric in LOWER_IS_BETTER else tested.idxmax())
                if len(tested)
                else None
            )
            for i, r in group.iterrows():
                b = boot.get(i, {}).get(metric)
                lo, hi = interval(b, level) if b is not None else (None, None)
                mark = ""
                if b is not None and i == best:
                    mark = " (best)"
                elif (
                    b is not None
                    and metric in boot.get(best, {})
                    and list(stats[i]["stems"]) == list(stats[best]["stems"])
                ):
                    t = paired_test(boot[best][metric], b, vals[best] - vals[i], level)
                    mark = " (~)" if t["significant"] == 0.0 else ""
                cells.setdefault((r["model"], r["score"]), {})[(dataset, metric)] = (
                    _fmt(r[metric], lo, hi, digits) + mark
                )
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "score"])
    order = [
        (d, m)
        for d in list(DATASET_ORDER) + sorted(set(rows["dataset"]) - set(DATASET_ORDER))
        for m in metrics
        if (d, m) in table.columns
    ]
    table = table[order]
    table.columns = [f"{DATASET_TITLES.get(d, d)} {METRIC_TITLES[m]}" for d, m in order]
    return table.fillna("–")


def component_table(rows: pd.DataFrame, results_path: str | Path, **kw) -> pd.DataFrame:
    """SMIYC's component metrics (sIoU gt, PPV, mean F1, %) with intervals and marks as in
    ``interval_table``, for the rows on RoadAnomaly21 and RoadObstacle21 that have them."""
    if not len(rows) or "siou_gt" not in rows:
        return pd.DataFrame()
    rows = rows[rows["dataset"].isin(list(_components.SMIYC_TRACKS))].copy()
    store = kw.pop("store", None)
    if store is not None and len(
        rows
    ):  # a sweep's T = 1 row has no component metrics: take its twin's
        fill = {i: _twin(r, store) for i, r in rows.iterrows() if pd.isna(r["siou_gt"])}
        for i, twin in fill.items():
            if twin is not None:
                rows.loc[i, list(COMPONENT_METRICS)] = twin[list(COMPONENT_METRICS)].to_numpy(float)
    rows = rows[rows["siou_gt"].notna()]
    return (
        interval_table(rows, results_path, metrics=COMPONENT_METRICS, store=store, **kw)
        if len(rows)
        else pd.DataFrame()
    )


def _twin(row: pd.Series, store: pd.DataFrame) -> pd.Series | None:
    """The latest row of ``store`` with frame statistics and the same evaluation and values as
    ``row``."""
    if store is None or "frame_stats" not in store or not len(store):
        return None
    same = store[store["frame_stats"].notna() & (store["frame_stats"].astype(str) != "")]
    for k in _SAME:
        if k in row and k in same:
            same = same[same[k] == row[k]] if pd.notna(row[k]) else same[same[k].isna()]
    return same.iloc[-1] if len(same) else None


def size_table(
    rows: pd.DataFrame,
    results_path: str | Path,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
    digits: int = 1,
    store: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Recall (%) at each row's pooled 95%-TPR threshold per ground-truth component area bin, with
    its bootstrap interval and the number of components (``n=``): index (model, score, dataset), one
    column per area bin (pixels at the evaluation resolution). The pooled recall is 95% by
    construction; a bin well below it holds the anomalies the method misses."""
    out = {}
    rows = rows.reset_index(drop=True)
    stats = stored_stats(rows, results_path, store)
    for i, r in rows.iterrows():
        if i not in stats:
            continue
        st = stats[i]
        titles = _components.size_bin_titles(tuple(st["size_edges"]))
        boot = size_recall(st, multiplicities(len(st["stems"]), n_boot, seed))
        det, pix, comp = (
            st["size_detected"].sum(0),
            st["size_pixels"].sum(0),
            st["size_components"].sum(0),
        )
        cells = {}
        for b, title in enumerate(titles):
            if not pix[b]:
                cells[title] = "– (n=0)"
                continue
            lo, hi = interval(boot[:, b], level)
            cells[title] = f"{_fmt(det[b] / pix[b], lo, hi, digits)} (n={int(comp[b])})"
        out[(r["model"], r["score"], DATASET_TITLES.get(r["dataset"], r["dataset"]))] = cells
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "score", "dataset"])
    return table
