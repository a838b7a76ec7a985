"""Figures: score maps, segmentations, per-class IoU. Report-level charts live in ``report.py``.

Every function returns a matplotlib Figure and never calls ``plt.show``; notebooks display it,
``save_figure`` writes PNG (and PDF for LaTeX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


import matplotlib.pyplot as plt
import numpy as np
import torch

from .labels import CLASS_NAMES, colorize
from .scores import SCORE_TITLES


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


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


def score_maps_figure(samples: Sequence[dict], scores: Sequence[str] | None = None, cell: float = 2.6):
    """Grid: one row per frame, columns image | ground truth | one map per score.

    ``samples`` are dicts with ``image`` ``[3, H, W]``, ``label`` ``[H, W]`` and ``maps`` ``{score: [H, W]}``
    (see ``anomalyseg.evaluate.frame_maps``). Each map is scaled to its own 1st-99th percentile,
    since scores live on different scales; brighter means more anomalous.
    """
    scores = list(scores or samples[0]["maps"])
    ncol = 2 + len(scores)
    h, w = _np(samples[0]["label"]).shape
    fig, axes = plt.subplots(len(samples), ncol, figsize=(cell * ncol * w / max(h, w) * 1.6, cell * len(samples) * h / max(h, w) * 1.6),
                             squeeze=False)
    for r, s in enumerate(samples):
        panels = [(_hwc(s["image"]), "image"), (label_overlay(s["label"]), "ground truth")]
        for name in scores:
            m = _np(s["maps"][name]).astype(np.float32)
            lo, hi = np.percentile(m, [1, 99])
            panels.append((np.clip((m - lo) / max(hi - lo, 1e-12), 0, 1), SCORE_TITLES.get(name, name)))
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="inferno" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(s.get("stem", ""), fontsize=8)
    fig.tight_layout()
    return fig


def segmentation_figure(samples: Sequence[dict], cell: float = 2.6):
    """Rows of image | ground-truth train ids | prediction, in the Cityscapes palette."""
    fig, axes = plt.subplots(len(samples), 3, figsize=(cell * 3 * 1.6, cell * len(samples) * 0.9), squeeze=False)
    for r, s in enumerate(samples):
        for c, (img, title) in enumerate([(_hwc(s["image"]), "image"), (colorize(_np(s["label"])), "ground truth"),
                                          (colorize(_np(s["pred"])), "prediction")]):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def per_class_iou_figure(per_class, title: str = "IoU per class"):
    """Horizontal bars of IoU (percent) per Cityscapes class; one bar group per column of ``per_class``."""
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
