"""Figures: pictures of frames (score maps, segmentations, pasted training samples, score maps
before / after), charts of the store's rows (bars, PR / ROC curves, temperature sweeps, the
qualitative grid), training curves read from a run's logs, reliability diagrams, and ``save_all``.

Every function returns a matplotlib Figure (or ``None`` when the store has nothing to draw) and
never calls ``plt.show``; notebooks display it, ``save_figure`` writes PNG (and PDF for LaTeX).
Nothing here runs a model: frames come as arrays, metrics from the results store
(``anomalyseg.results``), curve points and score maps from the files stored beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..labels import CLASS_NAMES, OOD_OBJECT_VALUE, colorize
from ..metrics import _is_torch
from ..results import (
    DATASET_ORDER,
    DATASET_TITLES,
    MIOU_DATASET,
    latest,
    load_curves,
    load_maps,
    protocol_rows,
    training_log,
)
from ..scores import score_title
from .names import (
    HIGHER_IS_BETTER,
    METRIC_TITLES,
    label,
    method_title,
    model_order,
    model_title,
    score_key,
)
from .selection import (
    anomaly_rows,
    best_scores,
    check_store_frame,
    map_runs,
    temperature_sweeps,
)

PASTED_COLOR = (255, 0, 255)  # magenta: no Cityscapes class uses it


# ----------------------------------------------------------------------------- pictures of frames
def _np(x) -> np.ndarray:
    # torch is not imported for this: notebook 06 draws from the store and never needs it
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _hwc(image) -> np.ndarray:
    a = _np(image)
    return a.transpose(1, 2, 0) if a.ndim == 3 and a.shape[0] == 3 else a


def label_overlay(label) -> np.ndarray:
    """Benchmark label ``[H, W]`` as RGB: anomaly orange, in-distribution grey, void black."""
    lab = _np(label)
    out = np.zeros(lab.shape + (3,), np.uint8)
    out[lab == 0] = (90, 90, 90)
    out[lab == 1] = (255, 140, 0)
    return out


def _scaled(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``m`` mapped linearly from [lo, hi] to [0, 1], clipped (a constant map stays drawable)."""
    return np.clip((m - lo) / max(hi - lo, 1e-12), 0, 1)


def _frame_grid(
    rows: Sequence[Sequence[tuple[np.ndarray, str]]], ylabels: Sequence[str], cell: float
):
    """One row of panels per frame, each ``(picture, column title)``: an RGB image, or a map
    ``[H, W]`` in [0, 1] drawn in ``inferno``; the column titles above the first row, ``ylabels``
    beside each row. The panels keep the frames' aspect ratio."""
    h, w = rows[0][1][0].shape[:2]
    ncol = len(rows[0])
    fig, axes = plt.subplots(
        len(rows),
        ncol,
        figsize=(cell * ncol * w / max(h, w) * 1.6, cell * len(rows) * h / max(h, w) * 1.6),
        squeeze=False,
    )
    for r, panels in enumerate(rows):
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(
                img,
                cmap="inferno" if img.ndim == 2 else None,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(ylabels[r], fontsize=8)
    fig.tight_layout()
    return fig


def score_maps_figure(
    samples: Sequence[dict], scores: Sequence[str] | None = None, cell: float = 2.6
):
    """Grid: one row per frame, columns image | ground truth | one map per score.

    ``samples`` are dicts with ``image`` ``[3, H, W]``, ``label`` ``[H, W]`` and ``maps``
    ``{score: [H, W]}`` (see ``anomalyseg.evaluate.frame_maps``). Each map is scaled to its own
    1st-99th percentile, since scores live on different scales; brighter means more anomalous.
    """
    scores = list(scores or samples[0]["maps"])
    rows = []
    for s in samples:
        panels = [(_hwc(s["image"]), "image"), (label_overlay(s["label"]), "ground truth")]
        for name in scores:
            m = _np(s["maps"][name]).astype(np.float32)
            panels.append((_scaled(m, *np.percentile(m, [1, 99])), score_title(name)))
        rows.append(panels)
    return _frame_grid(rows, [s.get("stem", "") for s in samples], cell)


def segmentation_figure(samples: Sequence[dict], cell: float = 2.6):
    """Rows of image | ground-truth train ids | prediction, in the Cityscapes palette.

    ``samples``: dicts with ``image`` ``[3, H, W]``, ``label`` ``[H, W]`` (train ids, 255 void) and
    ``pred`` ``[H, W]`` (see ``anomalyseg.evaluate.frame_maps``); without ``pred`` (data
    preparation: no model yet) the prediction column is left out."""
    columns = 3 if all("pred" in s for s in samples) else 2
    fig, axes = plt.subplots(
        len(samples),
        columns,
        figsize=(cell * columns * 1.6, cell * len(samples) * 0.9),
        squeeze=False,
    )
    for r, s in enumerate(samples):
        panels = [(_hwc(s["image"]), "image"), (colorize(_np(s["label"])), "ground truth")]
        if columns == 3:
            panels.append((colorize(_np(s["pred"])), "prediction"))
        for c, (img, title) in enumerate(panels):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def per_class_iou_figure(per_class, title: str = "IoU per class"):
    """Horizontal bars of IoU (percent) per Cityscapes class; one bar group per column of
    ``per_class``."""
    df = per_class if hasattr(per_class, "columns") else None
    cols = list(df.columns) if df is not None else ["IoU"]
    values = df.to_numpy() if df is not None else _np(per_class)[:, None]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(CLASS_NAMES) + 1))
    y = np.arange(len(CLASS_NAMES))
    hgt = 0.8 / len(cols)
    for i, c in enumerate(cols):
        ax.barh(y + i * hgt, 100 * values[:, i], height=hgt, label=str(c))
    ax.set_yticks(y + 0.4 - hgt / 2, CLASS_NAMES, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)"), ax.set_xlim(0, 100), ax.set_title(title)
    if len(cols) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, figures_dir: str | Path, name: str, pdf: bool = True) -> Path:
    """Write ``<figures_dir>/<name>.png`` (150 dpi) and, for LaTeX, ``.pdf``."""
    d = Path(figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    fig.savefig(d / f"{name}.png", dpi=150, bbox_inches="tight")
    if pdf:
        fig.savefig(d / f"{name}.pdf", bbox_inches="tight")
    return d / f"{name}.png"


def pasted_samples_figure(items: Sequence[dict], cell: float = 2.2):
    """Columns = training items (``image``, ``target`` with 254 on pasted pixels, ``outlier_mask``);
    rows: the frame with its pasted object, the semantic target (pasted pixels magenta: they belong
    to no class), and the outlier mask (orange = outlier 1, grey = inlier 0, black = void 255)."""
    if not items:
        raise ValueError(
            "pasted_samples_figure: no items to show (oe_enabled=False pastes nothing, or no "
            "object fitted)."
        )
    n = len(items)
    fig, axes = plt.subplots(3, n, figsize=(cell * n, cell * 3), squeeze=False)
    for c, item in enumerate(items):
        target = _np(item["target"])
        colored = colorize(np.where(target == OOD_OBJECT_VALUE, 255, target))
        colored[target == OOD_OBJECT_VALUE] = PASTED_COLOR
        pasted = int((_np(item["outlier_mask"]) == 1).sum())
        for r, (img, title) in enumerate(
            [
                (_hwc(item["image"]), f"{pasted} px pasted"),
                (colored, "target"),
                (label_overlay(item["outlier_mask"]), "outlier mask"),
            ]
        ):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            axes[r, c].set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def before_after_figure(
    before: Sequence[dict], after: Sequence[dict], score: str = "rba", cell: float = 2.6
):
    """Rows = frames; columns image | ground truth | ``score`` before | ``score`` after.

    ``before`` / ``after`` are ``anomalyseg.evaluate.frame_maps`` of the same items for the two
    models. Both maps of a row share one colour scale (1st-99th percentile of the two together),
    so a score that moved is seen moving; brighter = more anomalous.
    """
    if len(before) != len(after) or not before:
        raise ValueError(
            "before_after_figure: expected the same non-empty list of frames twice, got "
            f"{len(before)} and {len(after)}."
        )
    title = score_title(score)
    rows = []
    for b, a in zip(before, after):
        mb, ma = _np(b["maps"][score]).astype(np.float32), _np(a["maps"][score]).astype(np.float32)
        lo, hi = np.percentile(np.concatenate([mb.ravel(), ma.ravel()]), [1, 99])
        rows.append(
            [
                (_hwc(b["image"]), "image"),
                (label_overlay(b["label"]), "ground truth"),
                (_scaled(mb, lo, hi), f"{title} before OE"),
                (_scaled(ma, lo, hi), f"{title} after OE"),
            ]
        )
    return _frame_grid(
        rows, [f"{b.get('dataset', '')} {b.get('stem', '')}".strip() for b in before], cell
    )


def objects_figure(objects, n: int = 6, cell: float = 2.2):
    """The first ``n`` outlier objects, each cut out by its mask (black around it), in one row.

    ``objects``: a sequence of ``(image uint8 [3, h, w], mask bool [h, w])`` such as
    ``anomalyseg.data.coco.OODObjects``; titled with how many there are."""
    n = min(int(n), len(objects))
    if n < 1:
        raise ValueError(
            "objects_figure: no objects to show (prepare them with `anomalyseg prepare-coco`)."
        )
    fig, axes = plt.subplots(1, n, figsize=(cell * n, cell * 1.1), squeeze=False)
    for i in range(n):
        image, mask = objects[i]
        axes[0, i].imshow(_hwc(_np(image) * _np(mask)))
        axes[0, i].axis("off")
    fig.suptitle(
        f"{len(objects)} COCO objects for outlier exposure (cut out by their masks)", fontsize=9
    )
    return fig


# ----------------------------------------------------------------------------- training curves
def _log_columns(
    logged: Sequence[str], panels: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The logged columns each panel draws: its exact names first, then those its ``*`` patterns
    match among the columns no panel names exactly."""
    exact = {c for cols in panels.values() for c in cols if "*" not in c}
    out = {}
    for title, cols in panels.items():
        mine = [c for c in cols if "*" not in c and c in logged]
        mine += [
            c
            for p in cols
            if "*" in p
            for c in logged
            if fnmatchcase(c, p) and c not in exact and c not in mine
        ]
        out[title] = mine
    return out


def training_figure(
    runs: str | Path | Mapping[str, str | Path],
    panels: Mapping[str, Sequence[str]],
    smooth: bool = False,
    cell: tuple[float, float] = (4.5, 2.8),
):
    """Training curves over the steps, read from each run's CSV logs (``results.training_log``,
    resumed sessions joined): one panel per entry of ``panels`` (title -> logged columns, e.g.
    ``{"loss": ["train_loss"], "val mIoU": ["val_miou"]}``; a name with ``*`` matches every logged
    column that no panel names exactly, so ``["train_loss_*"]`` and ``["train_loss_outlier"]`` split
    the terms), one line per run and column.

    ``runs``: a run folder, or ``{legend name: run folder}`` to compare runs. ``smooth``: each line
    a running mean over ~10% of its points drawn over the faint raw values (noisy per-step losses).
    The legend names the run, and the column (a loss term without its ``train_loss_`` prefix) where
    a panel draws several. Raises ``FileNotFoundError`` naming a folder without logs.
    """
    runs = {"": runs} if isinstance(runs, (str, Path)) else dict(runs)
    logs = {name: training_log(folder) for name, folder in runs.items()}
    fig, axes = plt.subplots(
        1, len(panels), figsize=(cell[0] * len(panels), cell[1]), squeeze=False
    )
    for ax, title in zip(axes[0], panels):
        lines = [
            (run, c, log[["step", c]].dropna())
            for run, log in logs.items()
            for c in _log_columns(list(log.columns), panels)[title]
        ]
        lines = [line for line in lines if len(line[2])]  # a column this run never filled
        several = (
            len({c for _, c, _ in lines}) > 1
        )  # name the column only where the panel has several
        for run, c, points in lines:
            name = " ".join(filter(None, (run, c.removeprefix("train_loss_") if several else "")))
            if smooth:
                (line,) = ax.plot(points["step"], points[c], alpha=0.25, lw=0.8)
                window = max(1, len(points) // 10)
                ax.plot(
                    points["step"],
                    points[c].rolling(window, min_periods=1).mean(),
                    color=line.get_color(),
                    label=name or c,
                )
            else:
                ax.plot(
                    points["step"],
                    points[c],
                    marker="o" if len(points) < 20 else None,
                    ms=3,
                    label=name or c,
                )
        ax.set_title(title, fontsize=9), ax.set_xlabel("step"), ax.grid(alpha=0.3)
        if lines and (len(lines) > 1 or any(runs)):
            ax.legend(fontsize=7)
        elif not lines:
            ax.text(
                0.5,
                0.5,
                f"{', '.join(panels[title])} not logged",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=8,
            )
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- calibration
def reliability_figure(curves: Mapping[str, dict], title: str | None = None, cell: float = 2.8):
    """Reliability diagrams side by side, one per ``calibration_curve`` result in ``curves``
    (``{"EoMT, T = 1": curve, ...}``): accuracy per confidence bin against the diagonal of
    perfect calibration, the gap shaded, ECE in the panel title; below, the share of pixels
    per bin (log scale), since a bin with few pixels weighs little in the ECE."""
    if not curves:
        raise ValueError("reliability_figure needs at least one calibration_curve result.")
    n = len(curves)
    fig, axes = plt.subplots(
        2,
        n,
        figsize=(cell * n, cell * 1.45),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
        sharex=True,
    )
    for j, (name, c) in enumerate(curves.items()):
        edges = np.asarray(c["edges"])
        left, width = edges[:-1], np.diff(edges)
        acc, conf, count = (
            np.asarray(c["accuracy"]),
            np.asarray(c["confidence"]),
            np.asarray(c["count"]),
        )
        full = count > 0
        ax = axes[0, j]
        ax.bar(
            left[full],
            acc[full],
            width[full],
            align="edge",
            color="tab:blue",
            edgecolor="white",
            label="accuracy",
        )
        lo, hi = np.minimum(acc, conf)[full], np.maximum(acc, conf)[full]
        ax.bar(
            left[full],
            hi - lo,
            width[full],
            bottom=lo,
            align="edge",
            color="tab:red",
            alpha=0.3,
            label="gap",
        )
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.grid(alpha=0.3)
        ax.set_title(f"{name}\nECE {100 * c['ece']:.2f}%", fontsize=9)
        share = count / max(count.sum(), 1)
        axes[1, j].bar(left, np.where(share > 0, share, np.nan), width, align="edge", color="grey")
        axes[1, j].set_yscale("log"), axes[1, j].set_ylim(1e-5, 1.5)
        axes[1, j].set_xlabel("confidence (max softmax)")
    axes[0, 0].set_ylabel("accuracy"), axes[1, 0].set_ylabel("pixel share")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------- charts of the store's rows
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 2)))


def _color(score: str):
    return plt.get_cmap("tab10")(score_key(score)[0] % 10)


def _style(model: str, models: Sequence[str], score: str) -> dict:
    """Colour by score, line style by model, so one figure reads both ways."""
    i = list(models).index(model) if model in models else 0
    return dict(color=_color(score), linestyle=_LINESTYLES[i % len(_LINESTYLES)])


def _panels(n: int, nrows: int = 1, w: float = 3.4, h: float = 3.0):
    fig, axes = plt.subplots(nrows, n, figsize=(w * n, h * nrows), squeeze=False)
    return fig, axes


def bar_chart(df: pd.DataFrame, metric: str = "auprc", temperature: float = 1.0):
    """One panel per benchmark: ``metric`` (percent) of every method, one bar per score, coloured by
    score. None when there are no benchmark rows."""
    if metric not in ("auprc", "fpr_at_95_tpr", "auroc"):
        raise ValueError(f"bar_chart draws 'auprc', 'fpr_at_95_tpr' or 'auroc', got {metric!r}.")
    rows = anomaly_rows(df, temperature)
    if not len(rows):
        return None
    rows = rows.assign(method=[method_title(m, s) for m, s in zip(rows["model"], rows["score"])])
    datasets = [d for d in DATASET_ORDER if d in set(rows["dataset"])]
    methods = list(dict.fromkeys(rows["method"]))
    width = 0.8 / rows.groupby(["dataset", "method"]).size().max()
    fig, axes = _panels(len(datasets), w=max(3.4, 0.9 * len(methods) + 1), h=3.2)
    legend = {}
    for ax, d in zip(axes[0], datasets):
        for i, method in enumerate(methods):
            bars = rows[(rows["dataset"] == d) & (rows["method"] == method)]
            for k, (score, value) in enumerate(zip(bars["score"], bars[metric])):
                x = i + (k - (len(bars) - 1) / 2) * width  # centred in the method's slot
                legend[score_title(score)] = ax.bar(
                    x, 100 * value, width=width, color=_color(score)
                )
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(DATASET_TITLES.get(d, d), fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(
        f"{METRIC_TITLES[metric]} (%) " + ("↑" if HIGHER_IS_BETTER[metric] else "↓")
    )
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="upper center",
        ncol=len(legend),
        fontsize=8,
        bbox_to_anchor=(0.5, 1.06),
    )
    fig.tight_layout()
    return fig


def curve_data(
    df: pd.DataFrame, results_path: str | Path, dataset: str, temperature: float = 1.0
) -> list[dict]:
    """Stored PR/ROC points of each method x score on ``dataset``: dicts with ``model``, ``score``,
    ``label``, ``auprc``, ``fpr_at_95_tpr`` and ``recall``, ``precision``, ``fpr``, ``tpr`` arrays.
    Rows whose curve file is gone are left out."""
    rows = anomaly_rows(df, temperature)
    out = []
    for _, r in rows[rows["dataset"] == dataset].iterrows():
        pts = load_curves(results_path, r)
        if pts is not None:
            out.append(
                dict(
                    model=r["model"],
                    score=r["score"],
                    label=label(r["model"], r["score"]),
                    auprc=r["auprc"],
                    fpr_at_95_tpr=r["fpr_at_95_tpr"],
                    **pts,
                )
            )
    return out


def curves_figure(
    df: pd.DataFrame, results_path: str | Path, kind: str = "pr", temperature: float = 1.0
):
    """PR (``kind="pr"``: precision vs recall) or ROC (``"roc"``: TPR vs FPR, log FPR axis) curves
    from the stored points: one panel per benchmark, one line per method x score. None without
    curves."""
    if kind not in ("pr", "roc"):
        raise ValueError(f"curves_figure kind is 'pr' or 'roc', got {kind!r}.")
    data = {d: curve_data(df, results_path, d, temperature) for d in DATASET_ORDER}
    data = {d: c for d, c in data.items() if c}
    if not data:
        return None
    models = model_order({c["model"] for cs in data.values() for c in cs})
    fig, axes = _panels(len(data), h=3.4)
    for ax, (d, cs) in zip(axes[0], data.items()):
        for c in cs:
            style = _style(c["model"], models, c["score"])
            if kind == "pr":
                ax.plot(
                    c["recall"],
                    c["precision"],
                    label=f"{c['label']} ({100 * c['auprc']:.1f})",
                    lw=1.3,
                    **style,
                )
            else:
                ax.plot(
                    np.maximum(c["fpr"], 1e-5),
                    c["tpr"],
                    label=f"{c['label']} ({100 * c['fpr_at_95_tpr']:.1f})",
                    lw=1.3,
                    **style,
                )
        if kind == "pr":
            ax.set_xlabel("recall"), ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        else:
            ax.set_xscale("log"), ax.set_xlim(1e-5, 1), ax.set_ylim(0, 1.02), ax.set_xlabel("FPR")
            ax.axhline(0.95, color="grey", lw=0.7, ls=":")
        ax.set_title(DATASET_TITLES.get(d, d), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=6,
            loc="lower left" if kind == "pr" else "lower right",
            title="AuPRC" if kind == "pr" else "FPR95",
            title_fontsize=6,
        )
    axes[0, 0].set_ylabel("precision" if kind == "pr" else "TPR")
    fig.tight_layout()
    return fig


def temperature_figure(
    df: pd.DataFrame,
    temperature_on: str = "pixel",
    metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
):
    """AuPRC and FPR95 (rows) against T (log axis) per benchmark (columns), one line per model x
    score swept with ``temperature_on``. None without such a sweep."""
    rows = temperature_sweeps(df, temperature_on)
    if not len(rows):
        return None
    datasets = [d for d in DATASET_ORDER if d in set(rows["dataset"])]
    models = model_order(rows["model"].unique())
    fig, axes = _panels(len(datasets), nrows=len(metrics), h=2.8)
    for j, d in enumerate(datasets):
        for (m, s), g in rows[rows["dataset"] == d].groupby(["model", "score"], sort=False):
            for i, metric in enumerate(metrics):
                axes[i, j].plot(
                    g["temperature"],
                    100 * g[metric],
                    marker="o",
                    ms=3,
                    label=label(m, s),
                    **_style(m, models, s),
                )
        axes[0, j].set_title(DATASET_TITLES.get(d, d), fontsize=10)
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.set_xlabel(f"T ({temperature_on})") if i == len(metrics) - 1 else None
            ax.set_ylabel(f"{METRIC_TITLES[metric]} (%)") if j == 0 else None
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(len(labels), 5)
    top = (
        1 - (0.25 + 0.2 * math.ceil(len(labels) / ncol)) / fig.get_size_inches()[1]
    )  # room for title and legend
    fig.suptitle(
        "temperature on the "
        f"{'class logits' if temperature_on == 'class' else 'per-pixel class map'}",
        fontsize=10,
    )
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=ncol,
        fontsize=7,
        bbox_to_anchor=(0.5, 1 - 0.3 / fig.get_size_inches()[1]),
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def miou_temperature_figure(df: pd.DataFrame):
    """Cityscapes-val mIoU (percent) against the class temperature, one line per model with at least
    two class temperatures. None without such rows."""
    check_store_frame(df)
    df = protocol_rows(df, "course")
    rows = df[
        (df["score"] == "miou")
        & (df["dataset"] == MIOU_DATASET)
        & (df["temperature_on"] == "class")
    ]
    rows = latest(rows, keys=("model", "temperature"))
    if not len(rows):
        return None
    rows = rows[rows.groupby("model")["temperature"].transform("nunique") >= 2]
    if not len(rows):
        return None
    fig, ax = plt.subplots(figsize=(4, 3))
    models = model_order(rows["model"].unique())
    for m in models:
        g = rows[rows["model"] == m].sort_values("temperature")
        ax.plot(
            g["temperature"],
            100 * g["miou"],
            marker="o",
            label=model_title(m),
            linestyle=_LINESTYLES[models.index(m) % 6],
        )
    (
        ax.set_xscale("log", base=2),
        ax.set_xlabel("T (class)"),
        ax.set_ylabel("mIoU (%)"),
        ax.grid(alpha=0.3),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def qualitative_samples(
    df: pd.DataFrame,
    results_path: str | Path,
    dataset: str,
    frames: int = 2,
    scores: Sequence[str] | None = None,
) -> list[dict]:
    """The first ``frames`` stored frames of ``dataset`` as ``score_maps_figure`` samples:
    image and ground truth, and one map per method keyed by its ``label``.

    ``scores=None`` shows each model's ``best_scores``; a list shows those scores of every model.
    Each map comes from the latest run of its model that stored it (a later temperature sweep may
    have stored fewer scores)."""
    runs = map_runs(df, results_path, dataset)
    wanted = best_scores(df) if scores is None else {m: list(scores) for m in runs}
    loaded: dict[str, dict] = {}

    def stored(run):
        if run not in loaded:
            loaded[run] = load_maps(results_path, run, dataset)
        return loaded[run]

    columns = []  # (label, run, score)
    for model, model_runs in runs.items():
        for s in wanted.get(model, []):
            run = next(
                (r for r in model_runs if any(s in f["maps"] for f in stored(r).values())), None
            )
            if run is not None:
                columns.append((label(model, s), run, s))
    if not columns:
        return []
    first = stored(columns[0][1])
    stems = [st for st in first if all(st in stored(r) for _, r, _ in columns)][
        : max(int(frames), 0)
    ]
    samples = []
    for st in stems:
        f = first[st]
        image = (
            f["image"] if f["image"] is not None else np.zeros((3,) + f["label"].shape, np.uint8)
        )
        samples.append(
            dict(
                image=image,
                label=f["label"],
                stem=f"{DATASET_TITLES.get(dataset, dataset)} · {st}",
                maps={lab: stored(r)[st]["maps"][s] for lab, r, s in columns},
            )
        )
    return samples


def qualitative_grid(
    df: pd.DataFrame,
    results_path: str | Path,
    datasets: Sequence[str] | None = None,
    frames: int = 2,
    scores: Sequence[str] | None = None,
):
    """Rows of frames (``frames`` per benchmark), columns image | ground truth | each method's score
    map, from the stored maps (see ``qualitative_samples``). None when no maps are stored."""
    samples = []
    for d in datasets or DATASET_ORDER:
        samples += qualitative_samples(df, results_path, d, frames, scores)
    if not samples:
        return None
    # A method absent on one benchmark leaves a blank panel there rather than dropping its column.
    columns = list(dict.fromkeys(k for s in samples for k in s["maps"]))
    for s in samples:
        s["maps"] = {
            k: s["maps"].get(k, np.full(s["label"].shape, np.nan, np.float32)) for k in columns
        }
    return score_maps_figure(samples, columns, cell=1.5)


# ----------------------------------------------------------------------------- everything at once
def save_all(
    df: pd.DataFrame,
    results_path: str | Path,
    figures_dir: str | Path,
    frames: int = 2,
    protocol: str = "course",
    drawn: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write the comparison table (markdown, LaTeX) and every figure that has rows (PNG and PDF)
    into ``figures_dir``; returns the paths written. The table holds the rows evaluated under
    ``protocol``; the figures, the ``course`` protocol's.

    ``drawn``: figures already drawn from the same ``df`` by their file names (``bars_auprc``,
    ``bars_fpr_at_95_tpr``, ``pr_curves``, ``roc_curves``, ``temperature_pixel``,
    ``temperature_class``, ``miou_temperature``, ``qualitative``; ``None`` where there was nothing
    to draw), as notebook 06 shows them: saved as they are instead of drawn a second time."""
    from .tables import comparison_table, save_tables

    written = []
    table = comparison_table(df, protocol=protocol)
    if not table.empty:
        written += save_tables(table, figures_dir)
    figures = {
        "bars_auprc": lambda: bar_chart(df, "auprc"),
        "bars_fpr_at_95_tpr": lambda: bar_chart(df, "fpr_at_95_tpr"),
        "pr_curves": lambda: curves_figure(df, results_path, "pr"),
        "roc_curves": lambda: curves_figure(df, results_path, "roc"),
        "temperature_pixel": lambda: temperature_figure(df, "pixel"),
        "temperature_class": lambda: temperature_figure(df, "class"),
        "miou_temperature": lambda: miou_temperature_figure(df),
        "qualitative": lambda: qualitative_grid(df, results_path, frames=frames),
    }
    drawn = drawn or {}
    for name, make in figures.items():
        fig = drawn[name] if name in drawn else make()
        if fig is None:
            continue
        png = save_figure(fig, figures_dir, name)
        plt.close(fig)  # a notebook would otherwise show every saved figure again
        written += [png, png.with_suffix(".pdf")]
    return written
