"""SMIYC component metrics and recall by size: hand-derived cases, and a transcription of the
benchmark's own loops (road-anomaly-benchmark, metrics/instance_segmentation.py) on random
frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.ndimage import label as cc_label
from sklearn.metrics import precision_recall_curve

from anomalyseg import components as C
from anomalyseg.metrics import AnomalyAccumulator

V = 255


def _frames():
    """Two 6x8 frames. Frame 1: ground-truth components A (rows 1-2, cols 1-2) and B (rows 1-2,
    cols 5-6); predicted P1 (rows 1-2, cols 1-3) over A, P2 (rows 1-2, cols 6-7) half on B, a void
    row 4 predicted everywhere (switched off), P4 (row 5, cols 0-1) on the road.
    Frame 2: the same A and B, one predicted component P3 over rows 1-2, cols 1-6 (both and the
    road between)."""
    lab = np.zeros((6, 8), np.uint8)
    lab[1:3, 1:3] = 1
    lab[1:3, 5:7] = 1
    lab[4] = V
    p1 = np.zeros((6, 8), bool)
    p1[1:3, 1:4] = True
    p1[1:3, 6:8] = True
    p1[4] = True
    p1[5, 0:2] = True
    p2 = np.zeros((6, 8), bool)
    p2[1:3, 1:7] = True
    return [(p1, lab), (p2, lab.copy())]


def test_hand_built_frames():
    (p1, l1), (p2, l2) = _frames()
    m1 = C.segment_metrics(*C.frame_components(p1, l1))
    # A: 4 of its 4 pixels found, P1 adds 2 road pixels -> 4 / 6; B: 2 found, P2 adds 2 road -> 2
    # / 6
    np.testing.assert_allclose(m1["siou_gt"], [4 / 6, 2 / 6])
    # P1: 4 of 6 pixels on A; P2: 2 of 4 on B; P4: 0 of 2 (the void row is not predicted)
    np.testing.assert_allclose(m1["ppv"], [4 / 6, 2 / 4, 0.0])
    m2 = C.segment_metrics(*C.frame_components(p2, l2))
    # P3 (12 px) meets A and B: for A its pixels on B are left out of the union: 4 / (4 + 4 road)
    # = 1/2
    np.testing.assert_allclose(m2["siou_gt"], [0.5, 0.5])
    np.testing.assert_allclose(m2["ppv"], [8 / 12])
    # P3's own sIoU: 8 anomaly pixels / (12 + no unfound anomaly pixel)
    np.testing.assert_allclose(m2["siou_pred"], [8 / 12])

    counts = [C.frame_counts(m["siou_gt"], m["ppv"]) for m in (m1, m2)]
    agg = C.aggregate({k: np.stack([c[k] for c in counts]) for k in counts[0]})
    # sIoU over the 4 ground-truth components, PPV over the 4 predicted ones, pooled over frames
    assert agg["siou_gt"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    assert agg["ppv"] == pytest.approx((2 / 3 + 1 / 2 + 0 + 2 / 3) / 4)
    # sIoU [2/3, 1/3, 1/2, 1/2], PPV [2/3, 1/2, 0, 2/3]; TP: sIoU >= tau, FP: PPV < tau
    #   tau 0.25, 0.30: TP 4, FN 0, FP 1 -> 8/9;  0.35..0.50: TP 3, FN 1, FP 1 -> 6/8
    #   0.55..0.65: TP 1, FN 3, FP 2 -> 2/7;     0.70, 0.75: TP 0 -> 0
    f1 = [8 / 9] * 2 + [6 / 8] * 4 + [2 / 7] * 3 + [0.0] * 2
    assert agg["f1_mean"] == pytest.approx(np.mean(f1))
    assert (agg["f1_25"], agg["f1_50"], agg["f1_75"]) == pytest.approx((8 / 9, 6 / 8, 0.0))
    assert (agg["components_gt"], agg["components_pred"]) == (4, 4)


def test_size_filters():
    (p1, l1), _ = _frames()
    # Components of 4 pixels fall under min_gt_size 5 and become void; P4 (2 px) under
    # min_pred_size 3
    # is dropped. What is left of P1 and P2 is their road pixels: PPV 0 each, no ground truth.
    m = C.segment_metrics(*C.frame_components(p1, l1, min_pred_size=3, min_gt_size=5))
    assert m["siou_gt"].size == 0
    np.testing.assert_allclose(m["ppv"], [0.0, 0.0])
    np.testing.assert_array_equal(m["size_pred"], [2, 2])
    agg = C.aggregate({k: np.stack([v]) for k, v in C.frame_counts(m["siou_gt"], m["ppv"]).items()})
    assert np.isnan(agg["siou_gt"]) and agg["ppv"] == 0.0 and agg["f1_mean"] == 0.0
    # SMIYC's scaling to the evaluation resolution: 500 px at 1024x2048 are 125 px at 512x1024
    assert C.scaled_min_size(500, (512, 1024), (1024, 2048)) == 125
    assert C.scaled_min_size(500, (512, 1024), None) == 500


def test_component_metrics_binarise_at_the_threshold():
    (p1, l1), (p2, l2) = _frames()
    s1, s2 = p1 * 0.9 + 0.05, p2 * 0.9 + 0.05  # 0.95 predicted, 0.05 not
    out = C.component_metrics([s1, s2], [l1, l2], threshold=0.95, min_pred_size=0, min_gt_size=0)
    assert out["siou_gt"] == pytest.approx(0.5)
    none = C.component_metrics([s1, s2], [l1, l2], threshold=0.96, min_pred_size=0, min_gt_size=0)
    assert none["siou_gt"] == 0.0 and np.isnan(none["ppv"]) and none["f1_mean"] == 0.0


# ----------------------------------------------------------------------------- SMIYC's own loops
def _smiyc_instancer(anomaly_p, label_pixel_gt, thresh_p, thresh_segsize, thresh_instsize=0):
    """road_anomaly_benchmark.metrics.instance_segmentation.default_instancer, line by line."""
    segmentation = np.copy(anomaly_p)
    segmentation[anomaly_p > thresh_p] = 1
    segmentation[anomaly_p <= thresh_p] = 0
    anomaly_gt = np.zeros(label_pixel_gt.shape)
    anomaly_gt[label_pixel_gt == 1] = 1
    anomaly_pred = np.zeros(label_pixel_gt.shape)
    anomaly_pred[segmentation == 1] = 1
    anomaly_pred[label_pixel_gt == 255] = 0
    structure = np.ones((3, 3), dtype=np.uint8)
    anomaly_instances, n_anomaly = cc_label(anomaly_gt, structure)
    anomaly_seg_pred, n_seg_pred = cc_label(anomaly_pred, structure)
    if thresh_segsize is not None:
        labeled_mask = np.copy(anomaly_seg_pred)
        for comp in range(n_seg_pred + 1):
            if len(anomaly_seg_pred[labeled_mask == comp]) < thresh_segsize:
                anomaly_seg_pred[labeled_mask == comp] = 0
    labeled_mask = np.copy(anomaly_instances)
    label_pixel_gt = label_pixel_gt.copy()
    for comp in range(n_anomaly + 1):
        if len(anomaly_instances[labeled_mask == comp]) < thresh_instsize:
            label_pixel_gt[labeled_mask == comp] = 255
    mask_roi = label_pixel_gt < 255
    return anomaly_instances[mask_roi], anomaly_seg_pred[mask_roi]


def _smiyc_segment_metrics(
    anomaly_instances, anomaly_seg_pred, iou_thresholds=np.linspace(0.25, 0.75, 11, endpoint=True)
):
    """road_anomaly_benchmark.metrics.instance_segmentation.segment_metrics, line by line."""
    sIoU_gt, prec_pred, sIoU_pred = [], [], []
    for i in np.unique(anomaly_instances[anomaly_instances > 0]):
        tp_loc = anomaly_seg_pred[anomaly_instances == i]
        seg_ind = np.unique(tp_loc[tp_loc != 0])
        intersection = len(tp_loc[np.isin(tp_loc, seg_ind)])
        adjustment = len(
            anomaly_seg_pred[
                np.logical_and(
                    ~np.isin(anomaly_instances, [0, i]), np.isin(anomaly_seg_pred, seg_ind)
                )
            ]
        )
        adjusted_union = (
            np.sum(np.isin(anomaly_seg_pred, seg_ind))
            + np.sum(anomaly_instances == i)
            - intersection
            - adjustment
        )
        sIoU_gt.append(intersection / adjusted_union)
    for i in np.unique(anomaly_seg_pred[anomaly_seg_pred > 0]):
        tp_loc = anomaly_instances[anomaly_seg_pred == i]
        seg_ind = np.unique(tp_loc[tp_loc != 0])
        intersection = len(tp_loc[np.isin(tp_loc, seg_ind)])
        adjustment = len(
            anomaly_instances[
                np.logical_and(
                    ~np.isin(anomaly_seg_pred, [0, i]), np.isin(anomaly_instances, seg_ind)
                )
            ]
        )
        adjusted_union = (
            np.sum(np.isin(anomaly_instances, seg_ind))
            + np.sum(anomaly_seg_pred == i)
            - intersection
            - adjustment
        )
        sIoU_pred.append(intersection / adjusted_union)
        prec_pred.append(intersection / np.sum(anomaly_seg_pred == i))
    sIoU_gt, prec_pred = np.array(sIoU_gt), np.array(prec_pred)
    results = dict(sIoU_gt=sIoU_gt, sIoU_pred=np.array(sIoU_pred), prec_pred=prec_pred)
    for t in iou_thresholds:
        results["tp_" + str(int(t * 100))] = np.count_nonzero(sIoU_gt >= t)
        results["fn_" + str(int(t * 100))] = np.count_nonzero(sIoU_gt < t)
        results["fp_" + str(int(t * 100))] = np.count_nonzero(prec_pred < t)
    return results


def _smiyc_aggregate(frame_results, thresh_sIoU=np.linspace(0.25, 0.75, 11, endpoint=True)):
    """MetricSegment.aggregate: sIoU gt, PPV and mean F1."""
    siou = sum(np.sum(r["sIoU_gt"]) for r in frame_results) / sum(
        len(r["sIoU_gt"]) for r in frame_results
    )
    prec = sum(np.sum(r["prec_pred"]) for r in frame_results) / sum(
        len(r["prec_pred"]) for r in frame_results
    )
    f1_mean = 0.0
    for t in thresh_sIoU:
        tp = sum(r["tp_" + str(int(t * 100))] for r in frame_results)
        fn = sum(r["fn_" + str(int(t * 100))] for r in frame_results)
        fp = sum(r["fp_" + str(int(t * 100))] for r in frame_results)
        f1_mean += (2 * tp) / (2 * tp + fn + fp)
    return siou, prec, f1_mean / len(thresh_sIoU)


def _random_frame(rng, H=48, W=64, sigma=3.0):
    blobs = gaussian_filter(rng.normal(size=(H, W)), sigma)
    lab = (blobs > np.quantile(blobs, 0.85)).astype(np.uint8)
    lab[rng.random((H, W)) < 0.02] = 1  # some single-pixel anomalies, under the size filters
    lab[:, :6] = V  # a void band
    lab[gaussian_filter(rng.normal(size=(H, W)), 4) > 0.25] = V
    score = (
        gaussian_filter(rng.normal(size=(H, W)), sigma) * sigma
        + 0.6 * (lab == 1)
        + 0.05 * rng.normal(size=(H, W))
    )
    return score.astype(np.float32), lab


@pytest.mark.parametrize(
    "track", [C.ANOMALY_TRACK, C.OBSTACLE_TRACK, C.Track("none", 0, 0), C.Track("mid", 20, 8)]
)
def test_equals_the_benchmark_code_on_random_frames(track):
    rng = np.random.default_rng(3)
    big = track.min_pred_size > 100  # the anomaly track's 500 px filter needs larger blobs
    frames = [_random_frame(rng, *((120, 160, 8.0) if big else (48, 64, 3.0))) for _ in range(6)]
    scores = np.stack([f[0] for f in frames])
    t = float(np.quantile(scores, 0.8)) + 1e-4  # between scores: SMIYC's > and our >= agree
    assert not np.any(scores == np.float32(t))
    ours, theirs = [], []
    for s, lab in frames:
        mine = C.segment_metrics(
            *C.frame_components(s >= np.float32(t), lab, track.min_pred_size, track.min_gt_size)
        )
        ref = _smiyc_segment_metrics(
            *_smiyc_instancer(s, lab, np.float32(t), track.min_pred_size, track.min_gt_size)
        )
        np.testing.assert_allclose(mine["siou_gt"], ref["sIoU_gt"], rtol=1e-12)
        np.testing.assert_allclose(mine["siou_pred"], ref["sIoU_pred"], rtol=1e-12)
        np.testing.assert_allclose(mine["ppv"], ref["prec_pred"], rtol=1e-12)
        ours.append(C.frame_counts(mine["siou_gt"], mine["ppv"]))
        theirs.append(ref)
    agg = C.aggregate({k: np.stack([o[k] for o in ours]) for k in ours[0]})
    siou, prec, f1 = _smiyc_aggregate(theirs)
    assert (agg["siou_gt"], agg["ppv"], agg["f1_mean"]) == pytest.approx(
        (siou, prec, f1), rel=1e-12
    )
    assert agg["components_gt"] > 3 and agg["components_pred"] > 3  # the case is not empty


def test_best_f1_threshold_matches_a_brute_force_pr_curve():
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.1
    s = (rng.normal(size=3000) + 1.2 * y).astype(np.float32).round(2)  # ties
    acc = AnomalyAccumulator()
    acc.update(s, y.astype(np.uint8))
    ops = acc.operating_points()
    prec, rec, thr = precision_recall_curve(y, s)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-300)
    best = np.flatnonzero(f1 == f1.max())
    assert ops["best_f1_threshold"] == thr[best[-1]] and ops["best_f1"] == pytest.approx(
        f1.max(), rel=1e-12
    )
    # the 95%-TPR threshold: the highest with recall >= 0.95
    ok = [t for t in np.unique(s) if (s[y] >= t).mean() >= 0.95]
    assert ops["tpr95_threshold"] == max(ok)
    # hand case: anomaly 0.9, 0.5; road 0.7, 0.1 -> F1 2/3 at 0.9, 4/5 at 0.5
    acc = AnomalyAccumulator()
    acc.update(np.array([0.9, 0.5, 0.7, 0.1]), np.array([1, 1, 0, 0]))
    assert acc.operating_points() == pytest.approx(
        dict(best_f1_threshold=0.5, best_f1=0.8, tpr95_threshold=0.5)
    )


def test_recall_by_component_size():
    lab = np.zeros((20, 30), np.uint8)
    lab[0:5, 0:10] = 1  # 50 px
    lab[8:18, 10:25] = 1  # 150 px
    lab[19, 29] = 1  # 1 px
    lab[0, 20:30] = V
    det = np.zeros_like(lab, bool)
    det[0:5, 0:4] = True  # 20 of the 50
    det[8:18, 10:25] = True  # all of the 150
    det[0, 25] = True  # on void: not an anomaly pixel
    out = C.frame_size_counts(det, lab, edges=(0, 100, 1000, np.inf))
    np.testing.assert_array_equal(out["pixels"], [51, 150, 0])
    np.testing.assert_array_equal(out["detected"], [20, 150, 0])
    np.testing.assert_array_equal(out["components"], [2, 1, 0])
    assert C.size_bin_titles((0, 100, 1000, np.inf)) == ["<100", "100-1k", ">=1k"]


def test_bad_input_is_clear():
    with pytest.raises(ValueError, match="one frame at a time"):
        C.frame_components(np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="one shape"):
        C.frame_components(np.zeros((3, 4), bool), np.zeros((4, 3), np.uint8))


def test_aggregate_rows_equal_one_aggregate_per_weighting():
    # a bootstrap's resamples at once: each row is the pooled frames taken w[f] times, with the
    # same bits as one aggregate of that weighting; a frame weighting without components is NaN
    rng = np.random.default_rng(3)
    counts = [
        C.frame_counts(rng.random(int(n)), rng.random(int(m)))
        for n, m in rng.integers(0, 4, (7, 2))
    ]
    stacked = {k: np.stack([c[k] for c in counts]) for k in counts[0]}
    weights = np.vstack([rng.multinomial(7, np.ones(7) / 7, 50), np.zeros((1, 7), int)])
    weights[-1, np.flatnonzero(stacked["n_gt"] == 0)[:1]] = 7  # one frame without components
    rows = C.aggregate_rows(stacked, weights)
    for b, w in enumerate(weights):
        one = C.aggregate(stacked, w)
        for k, v in one.items():
            assert (np.isnan(v) and np.isnan(rows[k][b])) or rows[k][b] == v, (b, k)
