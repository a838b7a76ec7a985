"""What notebook 04 (Outlier Exposure) shows: pasted training samples, the change per benchmark
and score in points of the before / after rows (``evaluate.anomaly_rows_or_evaluate``, which
reuses stored rows), the mIoU change, and score maps before / after.

Figures return a matplotlib Figure and never call ``plt.show``; tables are DataFrames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .labels import OOD_OBJECT_VALUE, colorize
from .plots import SCORE_TITLES, _hwc, _np, label_overlay
from .results import DATASET_ORDER, DATASET_TITLES, training_log
from .scores import default_scores

OE_SCORES = default_scores("eomt")
PASTED_COLOR = (255, 0, 255)  # magenta: no Cityscapes class uses it


# ----------------------------------------------------------------------------- figures
def pasted_samples_figure(items: Sequence[dict], cell: float = 2.2):
    """Columns = training items (``image``, ``target`` with 254 on pasted pixels, ``outlier_mask``);
    rows: the frame with its pasted object, the semantic target (pasted pixels magenta: they belong
    to no class), and the outlier mask (orange = outlier 1, grey = inlier 0, black = void 255)."""
    if not items:
        raise ValueError("pasted_samples_figure: no items to show (oe_enabled=False pastes nothing, or no object fitted).")
    n = len(items)
    fig, axes = plt.subplots(3, n, figsize=(cell * n, cell * 3), squeeze=False)
    for c, item in enumerate(items):
        target = _np(item["target"])
        colored = colorize(np.where(target == OOD_OBJECT_VALUE, 255, target))
        colored[target == OOD_OBJECT_VALUE] = PASTED_COLOR
        pasted = int((_np(item["outlier_mask"]) == 1).sum())
        for r, (img, title) in enumerate([(_hwc(item["image"]), f"{pasted} px pasted"), (colored, "target"),
                                          (label_overlay(item["outlier_mask"]), "outlier mask")]):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            axes[r, c].set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def before_after_figure(before: Sequence[dict], after: Sequence[dict], score: str = "rba", cell: float = 2.6):
    """Rows = frames; columns image | ground truth | ``score`` before | ``score`` after.

    ``before`` / ``after`` are ``anomalyseg.evaluate.frame_maps`` of the same items for the two
    models. Both maps of a row share one colour scale (1st-99th percentile of the two together),
    so a score that moved is seen moving; brighter = more anomalous.
    """
    if len(before) != len(after) or not before:
        raise ValueError(f"before_after_figure: expected the same non-empty list of frames twice, got {len(before)} and {len(after)}.")
    h, w = _np(before[0]["label"]).shape
    fig, axes = plt.subplots(len(before), 4, figsize=(cell * 4 * w / max(h, w) * 1.6, cell * len(before) * h / max(h, w) * 1.6),
                             squeeze=False)
    title = SCORE_TITLES.get(score, score)
    for r, (b, a) in enumerate(zip(before, after)):
        mb, ma = _np(b["maps"][score]).astype(np.float32), _np(a["maps"][score]).astype(np.float32)
        lo, hi = np.percentile(np.concatenate([mb.ravel(), ma.ravel()]), [1, 99])
        panels = [(_hwc(b["image"]), "image"), (label_overlay(b["label"]), "ground truth"),
                  (np.clip((mb - lo) / max(hi - lo, 1e-12), 0, 1), f"{title} before OE"),
                  (np.clip((ma - lo) / max(hi - lo, 1e-12), 0, 1), f"{title} after OE")]
        for c, (img, t) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="inferno" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(t, fontsize=9)
        axes[r, 0].set_ylabel(f"{b.get('dataset', '')} {b.get('stem', '')}".strip(), fontsize=8)
    fig.tight_layout()
    return fig


def training_terms(run_dir: str | Path) -> pd.DataFrame:
    """Per-step loss terms of a ``finetune_oe`` run from its CSV logs (resumed runs joined):
    ``step``, ``train_loss`` and every ``train_loss_*`` term, ``loss_outlier`` included."""
    df = training_log(run_dir)
    cols = [c for c in df.columns if c == "train_loss" or c.startswith("train_loss_")]
    return df.dropna(subset=["train_loss"])[["step", *cols]].reset_index(drop=True)


def training_figure(terms: pd.DataFrame):
    """Two panels over the fine-tuning steps: the mask-classification terms (class, mask, dice)
    and the outlier term, each a running mean over ~10% of the steps beside the raw values."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    window = max(1, len(terms) // 10)
    groups = [("mask classification", [c for c in terms if c.startswith("train_loss_") and c != "train_loss_outlier"]),
              ("outlier term (weighted)", [c for c in ("train_loss_outlier",) if c in terms])]
    for ax, (title, cols) in zip(axes, groups):
        for c in cols:
            line, = ax.plot(terms["step"], terms[c], alpha=0.25, lw=0.8)
            ax.plot(terms["step"], terms[c].rolling(window, min_periods=1).mean(), color=line.get_color(),
                    label=c.removeprefix("train_loss_"))  # fmt: skip
        ax.set_title(title, fontsize=9), ax.set_xlabel("step")
        if cols:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "outlier_loss_enabled = False", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- tables
def _by_dataset_score(rows: pd.DataFrame, metric: str) -> pd.Series:
    return rows.set_index(["dataset", "score"])[metric].astype(float)


def delta_table(before: pd.DataFrame, after: pd.DataFrame, metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr")) -> pd.DataFrame:
    """After minus before, in percentage points: index = score, columns = (benchmark title, metric).

    AuPRC should rise and FPR95 fall. Cells where either side has no row are NaN.
    """
    scores = [s for s in OE_SCORES if s in set(before["score"]) | set(after["score"])]
    scores += sorted((set(before["score"]) | set(after["score"])) - set(scores))
    datasets = [d for d in DATASET_ORDER if d in set(before["dataset"]) | set(after["dataset"])]
    out = {}
    for d in datasets:
        for m in metrics:
            b, a = _by_dataset_score(before, m), _by_dataset_score(after, m)
            out[(DATASET_TITLES.get(d, d), {"auprc": "AuPRC", "fpr_at_95_tpr": "FPR95", "auroc": "AUROC"}[m])] = [
                100 * (a.get((d, s), np.nan) - b.get((d, s), np.nan)) for s in scores]
    table = pd.DataFrame(out, index=pd.Index([SCORE_TITLES.get(s, s) for s in scores], name="score"))
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["benchmark", "change (points)"])
    return table.round(2)


def before_after_table(before: pd.DataFrame, after: pd.DataFrame, score: str = "rba") -> pd.DataFrame:
    """One score's AuPRC and FPR95 (percent) per benchmark, before and after, with the change."""
    rows = []
    for d in [d for d in DATASET_ORDER if d in set(before["dataset"]) | set(after["dataset"])]:
        rec = {"benchmark": DATASET_TITLES.get(d, d)}
        for m, title in (("auprc", "AuPRC"), ("fpr_at_95_tpr", "FPR95")):
            b = _by_dataset_score(before, m).get((d, score), np.nan)
            a = _by_dataset_score(after, m).get((d, score), np.nan)
            rec.update({f"{title} before": 100 * b, f"{title} after": 100 * a, f"{title} change": 100 * (a - b)})
        rows.append(rec)
    return pd.DataFrame(rows).set_index("benchmark").round(2)


def miou_table(before: float, after: float) -> pd.DataFrame:
    """Cityscapes-val mIoU (percent) before and after fine-tuning, and the change in points."""
    return pd.DataFrame({"mIoU before": [100 * before], "mIoU after": [100 * after],
                         "change (points)": [100 * (after - before)]}, index=["Cityscapes val"]).round(2)
