"""SMIYC component-level metrics (sIoU, PPV, mean F1) and recall by anomaly size.

The definition is the SegmentMeIfYouCan benchmark's, ``road_anomaly_benchmark/metrics/
instance_segmentation.py`` (github.com/SegmentMeIfYouCan/road-anomaly-benchmark, commit 1c7804e;
Chan et al., NeurIPS 2021 Datasets and Benchmarks): ``default_instancer``, ``segment_metrics``
and ``MetricSegment.aggregate``. That code uses ``np.int`` elsewhere in the package and no longer
runs on NumPy >= 1.24, so it is written here; ``tests/test_components.py`` checks hand-derived
cases and a line-by-line transcription of its loops.

Per frame (label 1 anomaly, 0 in-distribution, anything else void):

1. The prediction is the score map binarised at one threshold for the whole data set, and is
   switched off on void pixels. SMIYC's threshold is the pixel-level best-F1 point of the pooled
   precision-recall curve (``MetricSegment.get_thresh_p_from_curve``: ``best_f1_threshold``, from
   its 768 per-frame quantile bins); here it is the exact best-F1 threshold of the pooled pixels
   (``AnomalyAccumulator.operating_points``), and a pixel is predicted when its score is >= it,
   which is the prediction that curve point counts (SMIYC's ``anomaly_p > thresh_p`` is applied to a
   bin edge that falls between scores).
2. Connected components with 8-connectivity (``scipy.ndimage.label`` with a 3x3 structure, as
   SMIYC) of the ground-truth anomaly and of the prediction.
3. Predicted components smaller than ``min_pred_size`` pixels are dropped (SMIYC ``thresh_segsize``:
   500 anomaly track, 50 obstacle track); ground-truth components smaller than ``min_gt_size``
   (``thresh_instsize``: 100 / 10) become void. SMIYC's loop also treats the background (component
   0, every pixel outside the anomaly) as a component: on a frame with fewer than ``min_gt_size``
   such pixels it all becomes void. Kept for fidelity; it only touches toy-sized frames.
4. Only pixels inside the region of interest (not void after step 3) count. For a ground-truth
   component k and the union K^ of predicted components meeting it,
   ``sIoU(k) = |k n K^| / |(k u K^) \\ A(k)|`` with A(k) the pixels of K^ on other ground-truth
   components; for a predicted component k^, ``PPV(k^) = |k^ n K| / |k^|``, K the anomaly pixels.
5. Over a data set: sIoU gt and PPV are means over all components of all frames (not per frame);
   at each tau in ``np.linspace(0.25, 0.75, 11)``, TP = ground-truth components with sIoU >= tau,
   FN = those with sIoU < tau, FP = predicted components with PPV < tau, summed over frames;
   ``F1(tau) = 2 TP / (2 TP + FN + FP)``, and mean F1 averages the 11 values. (REFERENCE §5 words
   the comparisons as > and <=; the code uses >= and <, and so do we.)

Sizes: SMIYC applies its size filters at each frame's native resolution; the evaluation may run
at another one, so the filters given in native pixels are scaled by the area ratio
(``scaled_min_size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# SMIYC's sIoU / PPV thresholds, the same float values as its np.linspace.
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)
# 8-connectivity, SMIYC's ``np.ones((3, 3))`` structure.
STRUCTURE = np.ones((3, 3), dtype=np.uint8)


@dataclass(frozen=True)
class Track:
    """SMIYC size filters, in pixels at the native resolution: predicted components below
    ``min_pred_size`` are dropped, ground-truth components below ``min_gt_size`` become void."""

    name: str
    min_pred_size: int
    min_gt_size: int


# MetricSegment.configs: SegEval-AnomalyTrack and SegEval-ObstacleTrack.
ANOMALY_TRACK = Track("SegEval-AnomalyTrack", 500, 100)
OBSTACLE_TRACK = Track("SegEval-ObstacleTrack", 50, 10)
# Benchmark folder -> its SMIYC track (the course's zip spells RoadObstacle21 "RoadObsticle21").
SMIYC_TRACKS = {
    "RoadAnomaly21": ANOMALY_TRACK,
    "RoadObsticle21": OBSTACLE_TRACK,
    "RoadObstacle21": OBSTACLE_TRACK,
}


def scaled_min_size(
    native_pixels: int, eval_size: tuple[int, int], native_size: tuple[int, int] | None
) -> int:
    """A size filter of ``native_pixels`` at the native resolution ``native_size`` (H, W), in pixels
    at ``eval_size``: scaled by the area ratio and rounded (at least 0). Unscaled without a native
    size."""
    if native_size is None or tuple(native_size) == tuple(eval_size):
        return int(native_pixels)
    ratio = (eval_size[0] * eval_size[1]) / (native_size[0] * native_size[1])
    return int(round(native_pixels * ratio))


def _numpy2d(x, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(
            f"component metrics take one frame at a time: {what} must be [H, W], got shape "
            f"{a.shape}."
        )
    return a


def gt_components(label) -> tuple[np.ndarray, int]:
    """``(ids [H, W] int32, count)``: the 8-connected components of a label map's anomaly (label
    1)."""
    return ndimage.label(_numpy2d(label, "label") == 1, STRUCTURE)


def frame_components(
    pred,
    label,
    min_pred_size: int = 0,
    min_gt_size: int = 0,
    gt: tuple[np.ndarray, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SMIYC's ``default_instancer`` on one frame: ground-truth and predicted component ids of the
    pixels in the region of interest, both flat ``[n_roi]`` int arrays (0 = none).

    Args:
        pred: bool ``[H, W]``, the binarised score map (switched off on void here).
        label: ``[H, W]``, 1 anomaly, 0 in-distribution, anything else void.
        min_pred_size, min_gt_size: size filters in pixels at this resolution.
        gt: ``gt_components(label)`` when already computed.
    """
    pred, label = _numpy2d(pred, "pred").astype(bool), _numpy2d(label, "label")
    if pred.shape != label.shape:
        raise ValueError(
            f"component metrics: pred {pred.shape} and label {label.shape} must have one shape."
        )
    valid = (label == 0) | (label == 1)
    gt = (gt if gt is not None else gt_components(label))[0]
    seg, _ = ndimage.label(pred & valid, STRUCTURE)
    if min_pred_size > 0 and seg.max():
        small = np.bincount(seg.ravel()) < min_pred_size
        small[0] = False
        seg[small[seg]] = 0
    roi = valid.copy()
    if min_gt_size > 0:
        small = (
            np.bincount(gt.ravel(), minlength=1) < min_gt_size
        )  # index 0: SMIYC's background quirk
        roi &= ~small[gt]
    return gt[roi], seg[roi]


def segment_metrics(gt: np.ndarray, seg: np.ndarray) -> dict[str, np.ndarray]:
    """SMIYC's ``segment_metrics`` on one frame's flat component ids (``frame_components``):
    ``siou_gt`` per ground-truth component, ``siou_pred`` and ``ppv`` per predicted component
    (ascending ids), and the sizes ``size_gt``, ``size_pred``.

    From the contingency table M[g, p] of the region's pixels: for ground-truth g, with S the
    predicted components meeting it, sIoU = sum_{p>0} M[g, p] / (|g| + sum_{p in S} M[0, p])
    (SMIYC's intersection / (|K^| + |k| - intersection - adjustment), simplified); for predicted p,
    PPV = sum_{g>0} M[g, p] / |p|."""
    gt, seg = np.asarray(gt, np.int64).ravel(), np.asarray(seg, np.int64).ravel()
    G, S = int(gt.max(initial=0)) + 1, int(seg.max(initial=0)) + 1
    M = np.bincount(gt * S + seg, minlength=G * S).reshape(G, S)
    size_gt, size_pred = M.sum(1), M.sum(0)
    g_ids, p_ids = np.flatnonzero(size_gt[1:]) + 1, np.flatnonzero(size_pred[1:]) + 1
    meets = M[:, 1:] > 0  # [G, S-1]: component g meets predicted component p
    inter_gt = M[g_ids, 1:].sum(1)
    siou_gt = inter_gt / (size_gt[g_ids] + (meets[g_ids] * M[0, 1:]).sum(1))
    inter_pred = M[1:, p_ids].sum(0)
    siou_pred = inter_pred / (size_pred[p_ids] + (meets[1:, p_ids - 1] * M[1:, :1]).sum(0))
    return dict(
        siou_gt=siou_gt.astype(np.float64),
        siou_pred=siou_pred.astype(np.float64),
        ppv=(inter_pred / size_pred[p_ids]).astype(np.float64),
        size_gt=size_gt[g_ids],
        size_pred=size_pred[p_ids],
    )


def frame_counts(
    siou_gt: np.ndarray, ppv: np.ndarray, thresholds=SIOU_THRESHOLDS
) -> dict[str, np.ndarray]:
    """One frame's contribution to the data-set metrics: sums and counts of sIoU and PPV and the
    TP, FN, FP at each threshold ``[len(thresholds)]``: the per-frame statistics a bootstrap
    resamples."""
    t = np.asarray(thresholds)[:, None]
    return dict(
        siou_sum=np.float64(np.sum(siou_gt)),
        n_gt=np.int64(len(siou_gt)),
        ppv_sum=np.float64(np.sum(ppv)),
        n_pred=np.int64(len(ppv)),
        tp=(siou_gt[None] >= t).sum(1),
        fn=(siou_gt[None] < t).sum(1),
        fp=(ppv[None] < t).sum(1),
    )


def aggregate(counts: dict[str, np.ndarray], weights: np.ndarray | None = None) -> dict[str, float]:
    """SMIYC's ``MetricSegment.aggregate`` from per-frame counts (``frame_counts`` stacked over
    frames: ``[F]`` or ``[F, thresholds]``), each frame taken ``weights[f]`` times (default once).

    Returns fractions: ``siou_gt`` and ``ppv`` (means over all components), ``f1_mean`` and
    ``f1_25``, ``f1_50``, ``f1_75``, and the component counts ``components_gt``,
    ``components_pred``.
    A mean over no component is NaN (SMIYC divides 0 by 0). Many weightings at once:
    ``aggregate_rows``."""
    w = np.ones(len(counts["n_gt"])) if weights is None else np.asarray(weights, np.float64)
    return {
        k: (int(v[0]) if k.startswith("components_") else float(v[0]))
        for k, v in aggregate_rows(counts, w[None]).items()
    }


# The per-frame sums that are not integers: their weighted totals are summed as one frame
# weighting at a time (``np.tensordot``), so that a bootstrap resample adds them in the same
# order as a single ``aggregate``; the integer counts are exact in any order (one matrix product).
_FLOAT_SUMS = ("siou_sum", "ppv_sum")


def aggregate_rows(counts: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """``aggregate`` for each row of ``weights`` ``[B, F]`` (frame multiplicities of B
    resamples): the same keys, arrays ``[B]``, equal bit for bit to ``aggregate`` row by row."""
    w = np.asarray(weights, np.float64)
    tot = {
        k: (
            np.array([np.tensordot(r, np.asarray(v, np.float64), axes=(0, 0)) for r in w])
            if k in _FLOAT_SUMS
            else w @ np.asarray(v, np.float64)
        )
        for k, v in counts.items()
    }

    def div(a, b) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

    denom = 2 * tot["tp"] + tot["fn"] + tot["fp"]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tot["tp"] / np.where(denom > 0, denom, 1), np.nan)
    pick = (
        {round(t, 2): i for i, t in enumerate(SIOU_THRESHOLDS)}
        if f1.shape[1] == len(SIOU_THRESHOLDS)
        else {}
    )
    out = dict(
        siou_gt=div(tot["siou_sum"], tot["n_gt"]),
        ppv=div(tot["ppv_sum"], tot["n_pred"]),
        # one row at a time: numpy's mean of a row, as a single aggregate takes it
        f1_mean=np.array([np.mean(r) if len(r) else np.nan for r in f1], np.float64),
        components_gt=np.round(tot["n_gt"]).astype(np.int64),
        components_pred=np.round(tot["n_pred"]).astype(np.int64),
    )
    for t in (0.25, 0.5, 0.75):
        out[f"f1_{int(round(t * 100))}"] = f1[:, pick[t]] if t in pick else np.full(len(w), np.nan)
    return out


def component_metrics(
    score_maps,
    labels,
    threshold: float,
    track: Track | None = None,
    min_pred_size: int | None = None,
    min_gt_size: int | None = None,
) -> dict[str, float]:
    """SMIYC's component metrics of a list of frames: score maps and labels ``[H, W]`` each,
    binarised at ``threshold`` (score >= threshold), with ``track``'s size filters (default the
    anomaly track) unless given in pixels. Returns ``aggregate``'s dict."""
    track = track or ANOMALY_TRACK
    min_pred = track.min_pred_size if min_pred_size is None else min_pred_size
    min_gt = track.min_gt_size if min_gt_size is None else min_gt_size
    per_frame = []
    for s, label in zip(score_maps, labels):
        s = _numpy2d(s, "score map")
        m = segment_metrics(*frame_components(s >= threshold, label, min_pred, min_gt))
        per_frame.append(frame_counts(m["siou_gt"], m["ppv"]))
    if not per_frame:
        raise ValueError("component_metrics needs at least one frame.")
    return aggregate({k: np.stack([f[k] for f in per_frame]) for k in per_frame[0]})


# ----------------------------------------------------------------------------- recall by size
# Ground-truth component areas (pixels at the evaluation resolution): [0, 100), [100, 1000), ...
SIZE_EDGES = (0, 100, 1000, 10000, math.inf)


def size_bin_titles(edges=SIZE_EDGES) -> list[str]:
    """``["<100", "100-1k", ...]``: titles of the area bins ``[edges[i], edges[i+1])`` in pixels."""

    def fmt(x) -> str:
        return f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"

    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        out.append(
            f"<{fmt(hi)}"
            if lo <= 0
            else f">={fmt(lo)}"
            if math.isinf(hi)
            else f"{fmt(lo)}-{fmt(hi)}"
        )
    return out


def frame_size_counts(
    detected, label, edges=SIZE_EDGES, gt: tuple[np.ndarray, int] | None = None
) -> dict[str, np.ndarray]:
    """Per area bin of ground-truth components (8-connected anomaly pixels,
    ``[edges[i], edges[i+1])``
    pixels): ``pixels`` (anomaly pixels in components of that area), ``detected`` (those with
    ``detected`` True) and ``components``, each ``[len(edges) - 1]`` int64.

    ``detected``: bool ``[H, W]``, e.g. the score map >= the pooled 95%-TPR threshold; then
    ``detected / pixels`` over a data set is the recall per size, whose pixel-weighted mean is
    95%."""
    detected, label = _numpy2d(detected, "detected").astype(bool), _numpy2d(label, "label")
    gt, n = gt if gt is not None else gt_components(label)
    nb = len(edges) - 1
    if n == 0:
        z = np.zeros(nb, np.int64)
        return dict(pixels=z, detected=z.copy(), components=z.copy())
    area = np.bincount(gt.ravel(), minlength=n + 1)[1:]
    hit = np.bincount(gt.ravel(), weights=detected.ravel(), minlength=n + 1)[1:]
    b = np.searchsorted(np.asarray(edges[1:-1], np.float64), area, "right")  # bin of each component
    return dict(
        pixels=np.bincount(b, weights=area, minlength=nb).astype(np.int64),
        detected=np.bincount(b, weights=hit, minlength=nb).round().astype(np.int64),
        components=np.bincount(b, minlength=nb).astype(np.int64),
    )
