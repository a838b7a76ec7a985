"""Per-frame statistics gathered by the evaluation's one visit per frame, for what pooled metrics
cannot give: bootstrap intervals (``bootstrap``), SMIYC component metrics and recall by anomaly
size (``components``).

The exact accumulator already keeps every valid pixel's score, frame by frame, in raster order
and split by label. ``FrameStatsAccumulator`` keeps those per-frame pieces (no copy) with a
reference to the frame's label until the pooled sort has given the data-set thresholds; then a
frame's score map on its valid pixels is rebuilt from them, with no second forward pass and no
second score computation:

- per-frame histograms over shared order-preserving bins (``histogram_edges``): the distinct
  scores themselves when there are at most ``max_bins`` (exact), otherwise quantiles of the
  anomaly and of the in-distribution scores (``max_bins / 2`` each), so that a crowded score
  (MaxEntropy near log 19) gets bins where its pixels are;
- recall per ground-truth component area at the pooled 95%-TPR threshold;
- for SMIYC RoadAnomaly21 / RoadObstacle21, the component metrics at the pooled best-F1 threshold.

Memory: the same 4 bytes per valid pixel and combination as ``AnomalyAccumulator`` until
``frame_stats`` has run (the pooled sort briefly doubles it, as it does there); the histograms are
``2 x frames x bins`` int32 (``max_bins`` 8192: 6.5 MB for 100 frames).
"""

from __future__ import annotations

import numpy as np

from . import components as _components
from .metrics import AnomalyAccumulator, _numpy, _split

MAX_BINS = 8192


def histogram_edges(
    pos_sorted: np.ndarray, neg_sorted: np.ndarray, max_bins: int = MAX_BINS
) -> np.ndarray:
    """Lower edges ``[D]`` (ascending float32) of the bins shared by every frame of a data set:
    bin k
    holds the scores in ``[edges[k], edges[k + 1])``. The distinct scores when both classes hold at
    most ``max_bins`` together (exact), else ``max_bins / 2`` quantiles of each class's scores."""

    def distinct(x):
        return x[np.r_[True, x[1:] != x[:-1]]] if x.size else x

    def count(x):
        return int(np.count_nonzero(x[1:] != x[:-1])) + 1 if x.size else 0

    if count(pos_sorted) + count(neg_sorted) <= max_bins:
        return np.union1d(distinct(pos_sorted), distinct(neg_sorted)).astype(np.float32)

    def pick(x: np.ndarray) -> np.ndarray:
        at = np.linspace(0, len(x) - 1, max(max_bins // 2, 2)).round().astype(np.int64)
        return x[np.unique(at)] if len(x) else x

    return np.union1d(pick(pos_sorted), pick(neg_sorted)).astype(np.float32)


def bin_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Count of ``x`` per bin of ``edges`` (``[D]`` int64); every value must be >= ``edges[0]``.

    Sorts the frame's scores (numpy's SIMD sort) and finds the edges in them: 4x faster than
    finding each score among the edges."""
    xs = np.sort(x)
    return np.diff(np.r_[np.searchsorted(xs, edges, "left"), len(xs)])


class FrameStatsAccumulator(AnomalyAccumulator):
    """``AnomalyAccumulator`` that also keeps each frame's pieces for ``frame_stats``.

    ``add_frame(scores [H, W], label [H, W], stem, native_size)`` per frame; after all frames,
    ``compute`` as usual and ``frame_stats`` once (it frees the per-frame pieces).

    ``track``: the SMIYC ``components.Track`` of the data set (None: no component metrics);
    ``size_edges``: ground-truth component area bins (pixels at the evaluation resolution).
    """

    def __init__(
        self,
        track: _components.Track | None = None,
        size_edges=_components.SIZE_EDGES,
        max_bins: int = MAX_BINS,
        gt_cache: dict | None = None,
    ):
        super().__init__()
        self.track, self.size_edges, self.max_bins = track, tuple(size_edges), int(max_bins)
        self._frames: list[tuple] = []
        # ground-truth components by stem, shared by the accumulators of one data set's combinations
        self._gt_cache = gt_cache if gt_cache is not None else {}

    def add_frame(
        self, scores, label, stem: str, native_size: tuple[int, int] | None = None
    ) -> None:
        if len(tuple(scores.shape)) != 2:
            raise ValueError(
                f"add_frame takes one frame's score map [H, W], got shape {tuple(scores.shape)}."
            )
        pos, neg = _split(scores, label)
        self._pos += [pos] if pos.size else []
        self._neg += [neg] if neg.size else []
        self._ranked = None
        self.num_frames += 1
        self._frames.append((stem, pos, neg, _numpy(label), native_size))

    def frame_stats(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """``(arrays, summary)``: the per-frame arrays to store (``stems``; ``edges``, ``pos``,
        ``neg`` histograms ``[F, D]``; ``size_edges``, ``size_pixels``, ``size_detected``,
        ``size_components`` ``[F, bins]``; with a track the component counts ``siou_sum``, ``n_gt``,
        ``ppv_sum``, ``n_pred`` ``[F]`` and ``tp``, ``fn``, ``fp`` ``[F, 11]``; the thresholds) and
        the summary for the result row: ``siou_gt``, ``ppv``, ``f1_mean`` (NaN without a track)."""
        if not self._frames:
            raise ValueError(
                "frame_stats needs the frames added with add_frame (and is called once)."
            )
        ops = self.operating_points()
        ranked = self._rank()
        edges = histogram_edges(ranked.pos, ranked.neg, self.max_bins)
        F, D, nb = len(self._frames), len(edges), len(self.size_edges) - 1
        arrays = dict(
            stems=np.array([f[0] for f in self._frames]),
            edges=edges,
            pos=np.zeros((F, D), np.int32),
            neg=np.zeros((F, D), np.int32),
            size_edges=np.asarray(self.size_edges, np.float64),
            size_pixels=np.zeros((F, nb), np.int64),
            size_detected=np.zeros((F, nb), np.int64),
            size_components=np.zeros((F, nb), np.int64),
            tpr95_threshold=np.float64(ops["tpr95_threshold"]),
            best_f1_threshold=np.float64(ops["best_f1_threshold"]),
        )
        per_frame = []
        t95, tf1 = np.float32(ops["tpr95_threshold"]), np.float32(ops["best_f1_threshold"])
        for i, (stem, pos, neg, label, native_size) in enumerate(self._frames):
            arrays["pos"][i], arrays["neg"][i] = bin_counts(pos, edges), bin_counts(neg, edges)
            anomaly = label == 1
            detected = np.zeros(label.shape, bool)
            detected[anomaly] = pos >= t95
            if stem not in self._gt_cache:
                self._gt_cache[stem] = _components.gt_components(label)
            gt = self._gt_cache[stem]
            sizes = _components.frame_size_counts(detected, label, self.size_edges, gt=gt)
            for k in ("pixels", "detected", "components"):
                arrays[f"size_{k}"][i] = sizes[k]
            if self.track is not None:
                pred = np.zeros(label.shape, bool)
                pred[anomaly] = pos >= tf1
                pred[label == 0] = neg >= tf1
                size = tuple(label.shape)
                m = _components.segment_metrics(
                    *_components.frame_components(
                        pred,
                        label,
                        _components.scaled_min_size(self.track.min_pred_size, size, native_size),
                        _components.scaled_min_size(self.track.min_gt_size, size, native_size),
                        gt=gt,
                    )
                )
                per_frame.append(_components.frame_counts(m["siou_gt"], m["ppv"]))
        summary = dict(siou_gt=float("nan"), ppv=float("nan"), f1_mean=float("nan"))
        if per_frame:
            counts = {k: np.stack([f[k] for f in per_frame]) for k in per_frame[0]}
            arrays.update(counts)
            arrays["track"] = np.array(self.track.name)
            agg = _components.aggregate(counts)
            summary = {k: agg[k] for k in summary}
        self._frames = []  # the pooled sorted copy stays for the curves; the frames' pieces go
        return arrays, summary
