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

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import components as _components
from .metrics import counts_metrics

SEED = 0
N_BOOT = 1000
LEVEL = 0.95
LOWER_IS_BETTER = {"fpr_at_95_tpr"}


def multiplicities(n_frames: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``[n_boot, n_frames]`` int64: how often each frame is drawn in each resample (rows sum to
    ``n_frames``), from ``np.random.default_rng(seed).integers(0, n_frames, (n_boot, n_frames))``."""
    if n_frames < 1 or n_boot < 1:
        raise ValueError(f"a bootstrap needs at least one frame and one resample, got {n_frames} frames, {n_boot} resamples.")
    draws = np.random.default_rng(seed).integers(0, n_frames, (n_boot, n_frames))
    rows = np.repeat(np.arange(n_boot), n_frames)
    return np.bincount(rows * n_frames + draws.ravel(), minlength=n_boot * n_frames).reshape(n_boot, n_frames)


def pixel_metrics(stats: dict, weights: np.ndarray, convention: str = "course", chunk: int = 128) -> dict[str, np.ndarray]:
    """``auprc``, ``fpr_at_95_tpr`` and ``auroc`` ``[B]`` of the frames pooled with ``weights``
    ``[B, F]`` (frame multiplicities), from the stored histograms ``stats["pos"]``, ``stats["neg"]`` ``[F, D]``."""
    pos, neg = np.asarray(stats["pos"], np.float64), np.asarray(stats["neg"], np.float64)
    weights = np.asarray(weights, np.float64)
    out = {k: np.empty(len(weights)) for k in ("auprc", "fpr_at_95_tpr", "auroc")}
    for start in range(0, len(weights), chunk):
        w = weights[start : start + chunk]
        P, N = (w @ pos).round().astype(np.int64), (w @ neg).round().astype(np.int64)  # exact integers in float64
        for j in range(len(w)):
            m = counts_metrics(P[j], N[j], convention)
            for k in out:
                out[k][start + j] = m[k]
    return out


def component_samples(stats: dict, weights: np.ndarray) -> dict[str, np.ndarray]:
    """``siou_gt``, ``ppv``, ``f1_mean`` ``[B]`` of resampled frames (stored component counts)."""
    keys = ("siou_sum", "n_gt", "ppv_sum", "n_pred", "tp", "fn", "fp")
    counts = {k: stats[k] for k in keys}
    rows = [_components.aggregate(counts, w) for w in np.asarray(weights)]
    return {k: np.array([r[k] for r in rows]) for k in ("siou_gt", "ppv", "f1_mean")}


def samples(stats: dict, weights: np.ndarray, convention: str = "course") -> dict[str, np.ndarray]:
    """Every metric the stored statistics allow, per resample: pixel metrics, component metrics
    (RoadAnomaly21 / RoadObstacle21) and recall per size bin (``size_recall`` ``[B, bins]``)."""
    out = pixel_metrics(stats, weights, convention)
    if "tp" in stats:
        out.update(component_samples(stats, weights))
    out["size_recall"] = size_recall(stats, weights)
    return out


def size_recall(stats: dict, weights: np.ndarray) -> np.ndarray:
    """Recall per component area bin ``[B, bins]`` of resampled frames (NaN where a bin is empty)."""
    w = np.asarray(weights, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ stats["size_detected"]) / (w @ stats["size_pixels"])


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap ``values`` (NaN resamples left out; NaN if none is left)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(stats: dict, metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"), n_boot: int = N_BOOT,
                 seed: int = SEED, level: float = LEVEL, convention: str = "course") -> dict[str, tuple[float, float]]:
    """``{metric: (lo, hi)}``: the ``level`` percentile interval of each metric over ``n_boot``
    resamples of the stored frames (``results.load_frame_stats``), as fractions."""
    s = samples(stats, multiplicities(len(stats["stems"]), n_boot, seed), convention)
    unknown = [m for m in metrics if m not in s]
    if unknown:
        raise ValueError(f"no bootstrap for {unknown}: these statistics give {sorted(k for k in s if k != 'size_recall')}.")
    return {m: interval(s[m], level) for m in metrics}


def _aligned(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """Row indices that put both methods' frames in one order; an error unless both hold the same frames."""
    sa, sb = [str(x) for x in a["stems"]], [str(x) for x in b["stems"]]
    if sorted(sa) != sorted(sb):
        only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
        raise ValueError(
            f"a paired bootstrap needs both methods evaluated on the same frames; frames only in the first: "
            f"{only_a[:5]}{'...' if len(only_a) > 5 else ''}, only in the second: {only_b[:5]}"
            f"{'...' if len(only_b) > 5 else ''}. Re-evaluate both with the same benchmark folder and protocol.")
    order_b = {s: i for i, s in enumerate(sb)}
    return np.arange(len(sa)), np.array([order_b[s] for s in sa])


def _take(stats: dict, idx: np.ndarray) -> dict:
    F = len(stats["stems"])
    return {k: (np.asarray(v)[idx] if np.ndim(v) and len(v) == F else v) for k, v in stats.items()}


def paired_bootstrap(stats_a: dict, stats_b: dict, metric: str = "auprc", n_boot: int = N_BOOT, seed: int = SEED,
                     level: float = LEVEL, convention: str = "course") -> dict[str, float]:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same frames, resampled together.

    Returns ``diff`` (on all frames, from the histograms), ``lo``, ``hi`` (the ``level`` interval of
    the difference), ``p_value`` (two-sided, ``min(1, 2 min(P(d <= 0), P(d >= 0)))`` over the
    resamples) and ``significant`` (1.0 when the interval excludes 0, else 0.0)."""
    ia, ib = _aligned(stats_a, stats_b)
    a, b = _take(stats_a, ia), _take(stats_b, ib)
    F = len(a["stems"])
    w = multiplicities(F, n_boot, seed)
    ones = np.ones((1, F), np.int64)
    pick = lambda st, ww: samples(st, ww, convention)[metric]
    d = pick(a, w) - pick(b, w)
    diff = float((pick(a, ones) - pick(b, ones))[0])
    lo, hi = interval(d, level)
    d = d[np.isfinite(d)]
    p = float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))) if d.size else float("nan")
    return dict(diff=diff, lo=lo, hi=hi, p_value=p, significant=float(not (lo <= 0 <= hi)) if np.isfinite(lo) else float("nan"))


# ----------------------------------------------------------------------------- tables for the report
def _fmt(x: float, lo: float | None = None, hi: float | None = None, digits: int = 1) -> str:
    if not np.isfinite(x):
        return "–"
    s = f"{100 * x:.{digits}f}"
    return s if lo is None or not np.isfinite(lo) else f"{s} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def stored_stats(rows: pd.DataFrame, results_path: str | Path) -> dict[int, dict]:
    """The stored frame statistics of each row that has them, by row position."""
    from .results import load_frame_stats

    out = {}
    for i, (_, row) in enumerate(rows.iterrows()):
        st = load_frame_stats(results_path, row)
        if st is not None:
            out[i] = st
    return out


def interval_table(rows: pd.DataFrame, results_path: str | Path, metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
                   n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL, convention: str = "course",
                   digits: int = 1) -> pd.DataFrame:
    """One row per (model, score), one column per (dataset, metric): ``74.4 [68.1, 80.2]`` (percent,
    the stored exact value and its ``level`` bootstrap interval). In each column the best method
    (highest AuPRC, sIoU, PPV, F1; lowest FPR95) is marked ``best`` and every method whose paired
    difference to it is not significant at that level ``~`` (a tie with the best, within the noise).

    ``rows``: the result rows to show, one per (model, score, dataset), e.g. ``report.anomaly_rows(df)``.
    Rows without stored frame statistics show their value alone."""
    if not len(rows):
        return pd.DataFrame()
    stats = stored_stats(rows, results_path)
    rows = rows.reset_index(drop=True)
    cells: dict[tuple, dict] = {}
    for dataset, group in rows.groupby("dataset", sort=False):
        for metric in metrics:
            if metric not in group or group[metric].isna().all():
                continue
            better = (lambda x, y: x < y) if metric in LOWER_IS_BETTER else (lambda x, y: x > y)
            best = None
            for i, r in group.iterrows():
                if np.isfinite(r[metric]) and (best is None or better(r[metric], group.loc[best, metric])):
                    best = i
            for i, r in group.iterrows():
                lo = hi = None
                mark = ""
                if i in stats:
                    try:
                        lo, hi = bootstrap_ci(stats[i], [metric], n_boot, seed, level, convention)[metric]
                    except ValueError:
                        lo = hi = None
                    if i == best:
                        mark = " best"
                    elif best in stats and metric in ("auprc", "fpr_at_95_tpr", "auroc", "siou_gt", "ppv", "f1_mean"):
                        try:
                            t = paired_bootstrap(stats[best], stats[i], metric, n_boot, seed, level, convention)
                            mark = " ~" if t["significant"] == 0.0 else ""
                        except ValueError:
                            mark = ""
                cells.setdefault((r["model"], r["score"]), {})[(dataset, metric)] = _fmt(r[metric], lo, hi, digits) + mark
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "score"])
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["dataset", "metric"])
    return table.fillna("–")


def size_table(rows: pd.DataFrame, results_path: str | Path, n_boot: int = N_BOOT, seed: int = SEED,
               level: float = LEVEL, digits: int = 1) -> pd.DataFrame:
    """Recall (%) at each row's pooled 95%-TPR threshold per ground-truth component area bin, with
    its bootstrap interval: index (model, score, dataset), one column per area bin (pixels at the
    evaluation resolution), plus the number of components per bin. The pooled recall is 95% by
    construction; a bin far below it holds the anomalies the method misses."""
    out = {}
    stats = stored_stats(rows.reset_index(drop=True), results_path)
    for i, r in rows.reset_index(drop=True).iterrows():
        if i not in stats:
            continue
        st = stats[i]
        titles = _components.size_bin_titles(tuple(st["size_edges"]))
        w = multiplicities(len(st["stems"]), n_boot, seed)
        boot = size_recall(st, w)
        det, pix, comp = st["size_detected"].sum(0), st["size_pixels"].sum(0), st["size_components"].sum(0)
        cells = {}
        for b, title in enumerate(titles):
            rec = det[b] / pix[b] if pix[b] else float("nan")
            lo, hi = interval(boot[:, b], level) if pix[b] else (None, None)
            cells[title] = f"{_fmt(rec, lo, hi, digits)} (n={int(comp[b])})"
        out[(r["model"], r["score"], r["dataset"])] = cells
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "score", "dataset"])
    return table
