"""Pooled anomaly metrics, mIoU and ECE against sklearn, ood-metrics' formula and hand-computed
cases."""

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    jaccard_score,
    roc_auc_score,
    roc_curve,
)

from anomalyseg.metrics import (
    AnomalyAccumulator,
    BinnedAnomalyAccumulator,
    CalibrationAccumulator,
    ConfusionMatrix,
    anomaly_metrics,
    auprc,
    auroc,
    counts_metrics,
    cumulative_metrics_rows,
    curve_points,
    ece,
    fpr_at_95_tpr,
)


def ood_metrics_fpr95(scores, labels, drop_intermediate=True):
    """ood-metrics' fpr_at_95_tpr (the course's FPR95), on sklearn's roc_curve."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    if all(tpr < 0.95):
        return 0
    if all(tpr >= 0.95):
        return min(fpr[tpr >= 0.95])
    return np.interp(0.95, tpr, fpr)


def smiyc_fpr95(scores, labels):
    """SegmentMeIfYouCan: FPR at the first threshold (from the top) where TPR >= 0.95."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr[np.searchsorted(tpr, 0.95, side="left")]


def synthetic(seed, n, ties=True, void=0.1, anomaly=0.1):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < anomaly).astype(np.uint8)
    labels[rng.random(n) < void] = 255
    labels[rng.random(n) < void / 4] = 2  # an unconverted value is void too
    scores = rng.normal(size=n).astype(np.float32) + 1.5 * (labels == 1)
    if ties:
        scores = np.round(scores * 4) / 4  # a few dozen distinct values
    return scores.astype(np.float32), labels


# ----------------------------------------------------------------------------- anomaly metrics
@pytest.mark.parametrize(
    "seed,n,ties",
    [(0, 300, True), (1, 300, False), (2, 5000, True), (3, 200_000, True), (4, 50, True)],
)
def test_metrics_match_sklearn_with_ties_and_void(seed, n, ties):
    scores, labels = synthetic(seed, n, ties)
    v = (labels == 0) | (labels == 1)
    m = anomaly_metrics(scores, labels)
    assert m["auprc"] == pytest.approx(
        average_precision_score(labels[v], scores[v]), rel=0, abs=1e-12
    )
    assert m["auroc"] == pytest.approx(roc_auc_score(labels[v], scores[v]), rel=0, abs=1e-12)
    assert m["fpr_at_95_tpr"] == ood_metrics_fpr95(scores[v], labels[v])  # bit for bit
    assert anomaly_metrics(scores, labels, "smiyc")["fpr_at_95_tpr"] == smiyc_fpr95(
        scores[v], labels[v]
    )
    assert m["num_pixels"] == v.sum() and m["anomaly_fraction"] == pytest.approx(
        (labels == 1).sum() / v.sum()
    )
    assert auprc(scores, labels) == m["auprc"] and auroc(scores, labels) == m["auroc"]
    assert fpr_at_95_tpr(scores, labels) == m["fpr_at_95_tpr"]


def test_fpr95_course_follows_roc_curve_dropped_points():
    # roc_curve drops the point at score 4 (tpr 1/2, fpr 2/3), collinear with its neighbours;
    # interpolating over all points lands 2 ulp away, so only the kept-point search matches.
    scores, labels = np.float32([4, 8, 2, 4, 2]), np.array([1, 0, 1, 0, 0])
    ref = ood_metrics_fpr95(scores, labels)
    assert ref != ood_metrics_fpr95(scores, labels, drop_intermediate=False)
    assert fpr_at_95_tpr(scores, labels) == ref


@pytest.mark.parametrize("seed", range(6))
def test_fpr95_course_exact_on_long_runs(seed):
    # Scores in blocks: long runs of equal (in-distribution, anomaly) counts per threshold,
    # which roc_curve drops, around the TPR 0.95 crossing; 20 or 40 anomaly pixels make
    # TPR hit 0.95 exactly.
    rng = np.random.default_rng(seed)
    n = 3000
    scores = np.arange(n, dtype=np.float32) // int(rng.integers(1, 4))
    labels = np.zeros(n, np.uint8)
    start = int(rng.integers(0, n - 500))
    labels[start : start + int(rng.choice([20, 40, 333]))] = 1
    assert fpr_at_95_tpr(scores, labels) == ood_metrics_fpr95(scores, labels)


def test_fpr95_course_exact_when_every_threshold_looks_alike():
    # one anomaly and one in-distribution pixel at each of 5000 scores: roc_curve keeps only the
    # two ends, so the search for kept points runs to both ends of the data
    scores = np.repeat(np.arange(5000, dtype=np.float32), 2)
    labels = np.tile([0, 1], 5000)
    assert fpr_at_95_tpr(scores, labels) == ood_metrics_fpr95(scores, labels) == pytest.approx(0.95)


def test_hand_computed_conventions():
    # 10 anomaly pixels: 9 at 10, 1 at 0; 10 in-distribution: 4 at 5, 2 at 0, 4 at -1.
    # ROC points (tpr, fpr): (0, 0) (.9, 0) (.9, .4) (1, .6) (1, 1).
    scores = np.float32([10] * 9 + [0] + [5] * 4 + [0] * 2 + [-1] * 4)
    labels = np.array([1] * 10 + [0] * 10)
    assert fpr_at_95_tpr(scores, labels) == pytest.approx(0.5)  # halfway from (.9, .4) to (1, .6)
    assert fpr_at_95_tpr(scores, labels, convention="smiyc") == pytest.approx(0.6)
    # TPR exactly 0.95 on a flat stretch: 20 anomaly pixels, 19 at 10 and 1 at 0; 10 in-distribution
    # at 5 and 10 at -1: points (.95, 0) and (.95, .5); np.interp takes the last, SMIYC the first.
    scores = np.float32([10] * 19 + [0] + [5] * 10 + [-1] * 10)
    labels = np.array([1] * 20 + [0] * 20)
    assert fpr_at_95_tpr(scores, labels) == 0.5
    assert fpr_at_95_tpr(scores, labels, convention="smiyc") == 0.0


def test_hand_computed_auprc_auroc_and_ties():
    # sklearn's docstring case: AP = 1/2 * 1 + 1/2 * 2/3; 3 of 4 (anomaly, normal) pairs ordered.
    scores, labels = np.float32([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert auprc(scores, labels) == pytest.approx(5 / 6)
    assert auroc(scores, labels) == pytest.approx(0.75)
    # a tie between classes is half a pair; -0.0 and +0.0 are one threshold
    assert auroc(np.float32([1, 1]), np.array([0, 1])) == 0.5
    assert auroc(np.float32([-0.0, 0.0]), np.array([1, 0])) == 0.5
    assert auprc(np.float32([-0.0, 0.0]), np.array([1, 0])) == 0.5


def test_scores_are_pooled_as_float32():
    scores = np.array([0.1, 0.1 + 1e-12, 0.3])  # the first two become one float32 value
    labels = np.array([0, 1, 0])
    assert auroc(scores, labels) == roc_auc_score(labels, scores.astype(np.float32)) == 0.25
    assert auroc(scores, labels) != roc_auc_score(labels, scores)


def test_infinite_scores_rank_at_the_ends():
    scores, labels = synthetic(5, 400)
    scores[:5], scores[5:10] = np.inf, -np.inf
    finite = np.where(np.isposinf(scores), 100.0, np.where(np.isneginf(scores), -100.0, scores))
    assert anomaly_metrics(scores, labels) == anomaly_metrics(finite, labels)
    v = labels <= 1
    assert auprc(scores, labels) == pytest.approx(
        average_precision_score(labels[v], finite[v]), abs=1e-12
    )


def test_torch_inputs_match_numpy():
    scores, labels = synthetic(6, 1000)
    ref = anomaly_metrics(scores, labels)
    assert (
        anomaly_metrics(
            torch.from_numpy(scores).reshape(10, 100), torch.from_numpy(labels).reshape(10, 100)
        )
        == ref
    )
    v = labels <= 1
    s16 = torch.from_numpy(scores[v]).half()  # half precision widens to float32 exactly
    assert anomaly_metrics(s16, torch.from_numpy(labels[v] == 1)) == anomaly_metrics(
        scores[v], labels[v] == 1
    )


def test_degenerate_sets():
    scores = np.float32([0.1, 0.2, 0.3])
    with pytest.warns(RuntimeWarning, match="no anomaly pixel"):
        m = anomaly_metrics(scores, np.array([0, 0, 255]))
    assert np.isnan([m["auprc"], m["fpr_at_95_tpr"], m["auroc"]]).all() and m["num_pixels"] == 2
    with pytest.warns(RuntimeWarning, match="no in-distribution pixel"):
        m = anomaly_metrics(scores, np.array([1, 1, 255]))
    assert m["auprc"] == average_precision_score([1, 1], scores[:2]) == 1.0
    assert np.isnan(m["auroc"]) and np.isnan(m["fpr_at_95_tpr"])
    with pytest.raises(ValueError, match="no valid pixel"):
        anomaly_metrics(scores, np.array([255, 255, 2]))


def test_bad_input_errors():
    scores, labels = np.float32([0.1, 0.2]), np.array([0, 1])
    with pytest.raises(ValueError, match="convention must be 'course'.*'smiyc'.*'sklearn'"):
        fpr_at_95_tpr(scores, labels, convention="sklearn")
    with pytest.raises(ValueError, match=r"same shape.*\(2,\) and \(3,\)"):
        auprc(scores, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="NaN at 1 valid pixels"):
        auroc(np.float32([0.1, np.nan]), labels)
    anomaly_metrics(
        np.float32([0.1, 0.2, np.nan]), np.array([0, 1, 255])
    )  # NaN on a void pixel is ignored
    with pytest.raises(ValueError, match="n >= 2"):
        curve_points(scores, labels, n=1)


# --------------------------------------------------------------------------- accumulator and curves
def test_accumulator_equals_one_shot():
    frames = [synthetic(10 + i, 1000) for i in range(4)]
    acc = AnomalyAccumulator()
    acc.update(frames[0][0].reshape(10, 100), frames[0][1].reshape(10, 100))
    acc.update(torch.from_numpy(frames[1][0]), torch.from_numpy(frames[1][1]))
    first = acc.compute()  # sorts the pooled pixels; later updates must still count
    acc.update(
        np.stack([f[0].reshape(10, 100) for f in frames[2:]]),
        np.stack([f[1].reshape(10, 100) for f in frames[2:]]),
    )
    scores, labels = np.concatenate([f[0] for f in frames]), np.concatenate([f[1] for f in frames])
    valid = int((labels <= 1).sum())
    assert first == anomaly_metrics(scores[:2000], labels[:2000])
    assert acc.compute() == anomaly_metrics(scores, labels)
    assert acc.compute("smiyc") == anomaly_metrics(scores, labels, "smiyc")
    assert (acc.num_frames, acc.num_pixels, acc.nbytes) == (4, valid, 4 * valid)


def test_curve_points_lie_on_sklearn_curves():
    scores, labels = synthetic(7, 20_000, ties=False)
    v = labels <= 1
    fpr, tpr, _ = roc_curve(labels[v], scores[v], drop_intermediate=False)  # every threshold
    tp, fp = np.round(tpr * (labels == 1).sum()), np.round(fpr * (labels == 0).sum())
    precision = {
        (round(a, 12), round(b, 12)): p
        for a, b, p in zip(fpr[1:], tpr[1:], tp[1:] / (tp[1:] + fp[1:]))
    }
    pts = curve_points(scores, labels, n=64)
    assert set(pts) == {"recall", "precision", "fpr", "tpr"} and 30 < len(pts["fpr"]) <= 65
    assert (pts["fpr"][0], pts["tpr"][0], pts["recall"][0], pts["precision"][0]) == (0, 0, 0, 1)
    np.testing.assert_array_equal(pts["recall"], pts["tpr"])
    for a, b, p in zip(pts["fpr"][1:], pts["tpr"][1:], pts["precision"][1:]):
        assert precision[round(a, 12), round(b, 12)] == pytest.approx(p, abs=1e-12)
    assert (
        np.all(np.diff(pts["fpr"]) >= 0)
        and np.all(np.diff(pts["tpr"]) >= 0)
        and pts["fpr"][-1] == 1.0
    )
    acc = AnomalyAccumulator()
    acc.update(scores, labels)
    assert all(np.array_equal(acc.pr_roc_points(64)[k], pts[k]) for k in pts)


# ----------------------------------------------------------------------------- mIoU
@pytest.mark.parametrize(
    "seed,n,bits", [(0, 300, 12), (1, 20_000, 14), (2, 200_000, 20), (3, 50, 10)]
)
def test_binned_metrics_are_sklearn_on_the_binned_scores(seed, n, bits):
    scores, labels = synthetic(seed, n, ties=False)
    scores[:5] = -0.0
    scores[5:10] = 0.0  # one threshold, as in sklearn
    scores[10:15] = -3e-30  # negatives below -0.0 keep their order
    acc = BinnedAnomalyAccumulator(bits)
    half = n // 2  # two updates pool like one
    acc.update(scores[:half], labels[:half])
    acc.update(torch.from_numpy(scores[half:]), torch.from_numpy(labels[half:]))
    q = acc.quantize(scores)
    assert (np.diff(q[np.argsort(scores, kind="stable")]) >= 0).all()  # monotone rounding down
    assert (q <= scores).all() and acc.num_frames == 2
    v = (labels == 0) | (labels == 1)
    m = acc.compute()
    assert m["auprc"] == pytest.approx(average_precision_score(labels[v], q[v]), rel=0, abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels[v], q[v]), rel=0, abs=1e-12)
    assert m["fpr_at_95_tpr"] == pytest.approx(ood_metrics_fpr95(q[v], labels[v]), rel=0, abs=1e-12)
    assert acc.compute("smiyc")["fpr_at_95_tpr"] == pytest.approx(
        smiyc_fpr95(q[v], labels[v]), rel=0, abs=1e-12
    )
    assert m["num_pixels"] == v.sum()


def test_binned_metrics_close_to_exact_at_20_bits():
    scores, labels = synthetic(5, 400_000, ties=False)
    acc = BinnedAnomalyAccumulator(20)
    acc.update(scores, labels)
    m, exact = acc.compute(), anomaly_metrics(scores, labels)
    for k in ("auprc", "fpr_at_95_tpr", "auroc"):
        assert abs(m[k] - exact[k]) < 1e-4, k  # under a hundredth of a percentage point
    pts = acc.pr_roc_points(64)
    assert (np.diff(pts["recall"]) >= 0).all() and (np.diff(pts["fpr"]) >= 0).all()
    assert pts["recall"][-1] == 1.0 and pts["fpr"][-1] == 1.0


def test_binned_errors_and_degenerate_sets():
    with pytest.raises(ValueError, match="bits must be in 10..24"):
        BinnedAnomalyAccumulator(32)
    acc = BinnedAnomalyAccumulator(12)
    with pytest.raises(ValueError, match="NaN at 1 pixels"):
        acc.update(np.array([0.1, np.nan], np.float32), np.array([0, 1], np.uint8))
    acc.update(np.array([0.1, 0.2], np.float32), np.array([0, 255], np.uint8))
    with pytest.warns(RuntimeWarning, match="no anomaly pixel"):
        assert np.isnan(acc.compute()["auprc"])
    empty = BinnedAnomalyAccumulator(12)
    empty.update(np.array([0.1], np.float32), np.array([255], np.uint8))
    with pytest.raises(ValueError, match="no valid pixel"):
        empty.compute()


def test_confusion_matrix_hand_computed():
    #   target: 0 0 1 1 2 255 254 1      pred: 0 1 1 1 0 2 2 3 (3 = a void channel: a miss)
    target = np.array([[0, 0, 1, 1], [2, 255, 254, 1]], dtype=np.uint8)  # 254: a pasted outlier
    pred = np.array([[0, 1, 1, 1], [0, 2, 2, 3]])
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, target)
    np.testing.assert_array_equal(
        cm.matrix, [[1, 1, 0, 0], [0, 2, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    )
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, target)
    # class 0: tp 1, fp 1 (the 2), fn 1 -> 1/3; class 1: tp 2, fp 1, fn 1 (the miss) -> 1/2;
    # class 2: tp 0, fp 0 (void targets ignored), fn 1 -> 0.
    np.testing.assert_allclose(cm.iou(), [1 / 3, 1 / 2, 0])
    assert cm.miou() == pytest.approx((1 / 3 + 1 / 2) / 3)
    cm2 = ConfusionMatrix(num_classes=5)  # classes 2..4 in neither prediction nor ground truth
    cm2.update(np.array([0, 1]), np.array([0, 1]))
    assert np.isnan(cm2.iou()[2:]).all()
    assert cm2.miou() == pytest.approx(2 / 5) and cm2.miou(absent="nan") == 1.0


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 19, (3, 40, 50)).astype(np.uint8)
    target[rng.random(target.shape) < 0.1] = 255
    target[rng.random(target.shape) < 0.05] = 254
    target[target == 7] = 255  # class 7 absent from the ground truth
    pred = np.where(
        rng.random(target.shape) < 0.6, target, rng.integers(0, 20, target.shape)
    )  # 19: void channel
    pred[pred == 255] = 4
    pred[pred == 254] = 5
    pred[pred == 12] = 3  # class 12 absent from the prediction
    cm, parts = ConfusionMatrix(), ConfusionMatrix()
    cm.update(pred, target)
    parts.update(torch.from_numpy(pred[0]), torch.from_numpy(target[0]))
    other = ConfusionMatrix()
    other.update(torch.from_numpy(pred[1:]), torch.from_numpy(target[1:]))
    parts.merge(other)
    v = target < 19
    ref = confusion_matrix(target[v], pred[v], labels=np.arange(20))
    np.testing.assert_array_equal(cm.matrix, ref[:19, :19])
    np.testing.assert_array_equal(parts.matrix, cm.matrix)
    assert cm.matrix.dtype == np.int64 and cm.matrix.shape == (19, 19)
    iou = jaccard_score(target[v], pred[v], labels=np.arange(19), average=None, zero_division=0)
    np.testing.assert_allclose(cm.iou(), iou, rtol=1e-12)
    assert cm.miou() == pytest.approx(iou.mean(), abs=1e-12)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="ignore_index must lie outside the classes 0..18"):
        ConfusionMatrix(19, ignore_index=3)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match="integer class ids.*argmax"):
        cm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="integer class ids"):
        cm.update(torch.zeros(19, 2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="absent must be 'zero'.*'nan'"):
        cm.miou(absent="skip")
    with pytest.raises(ValueError, match="19 and 20 classes"):
        cm.merge(ConfusionMatrix(20))


# ----------------------------------------------------------------------------- calibration
def guo_ece(conf, correct, n_bins):
    """Guo et al. (2017)'s loop: bins (lower, upper] over linspace(0, 1)."""
    edges, total = np.linspace(0, 1, n_bins + 1), 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = (conf > lo) & (conf <= hi)
        if b.any():
            total += b.mean() * abs(correct[b].mean() - conf[b].mean())
    return total


def test_ece_hand_computed():
    # 4 bins (0,.25] (.25,.5] (.5,.75] (.75,1]: |gaps| * counts = .2*1 + .5*1 + .15*2 + .05*2 over 6
    conf = np.array([0.2, 0.5, 0.6, 0.7, 0.9, 1.0])
    correct = np.array([0, 1, 1, 0, 1, 1], bool)
    assert ece(conf, correct, n_bins=4) == pytest.approx(1.1 / 6)
    acc = CalibrationAccumulator(n_bins=4)
    acc.update(conf, correct)
    b = acc.bins()
    np.testing.assert_array_equal(b["count"], [1, 1, 2, 2])
    np.testing.assert_allclose(b["accuracy"], [0, 1, 0.5, 1])
    np.testing.assert_allclose(b["confidence"], [0.2, 0.5, 0.65, 0.95])
    np.testing.assert_allclose(b["edges"], [0, 0.25, 0.5, 0.75, 1])


def test_calibration_accumulator_equals_one_shot():
    rng = np.random.default_rng(0)
    frames = [
        (
            rng.random((30, 40), dtype=np.float32) * 0.9 + 0.1,
            rng.random((30, 40)) < 0.7,
            rng.random((30, 40)) < 0.9,
        )
        for _ in range(3)
    ]
    acc = CalibrationAccumulator()
    for c, k, v in frames:
        acc.update(torch.from_numpy(c), torch.from_numpy(k), torch.from_numpy(v))
    conf = np.concatenate([c[v] for c, _, v in frames])
    correct = np.concatenate([k[v] for _, k, v in frames])
    assert acc.ece() == pytest.approx(ece(conf, correct), abs=1e-12)
    assert acc.ece() == pytest.approx(guo_ece(conf.astype(np.float64), correct, 15), abs=1e-12)
    assert acc.bins()["count"].sum() == conf.size and np.isnan(
        acc.bins()["accuracy"][0]
    )  # bin (0, 1/15] empty


def test_calibration_errors():
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        ece(np.array([0.5, 1.2]), np.array([True, False]))
    with pytest.raises(ValueError, match="n_bins must be a positive"):
        CalibrationAccumulator(n_bins=0)
    with pytest.raises(
        ValueError, match=r"correct must be a per-pixel mask of the confidences' shape \(2,\)"
    ):
        ece(np.array([0.5, 0.7]), np.array([True]))
    with pytest.raises(ValueError, match="valid must be a per-pixel mask"):
        CalibrationAccumulator().update(
            np.array([0.5, 0.7]), np.array([True, False]), np.array([True])
        )
    with pytest.raises(ValueError, match="ECE of no pixel"):
        CalibrationAccumulator().ece()


def _histograms(scores, labels):
    """Anomaly and in-distribution counts per distinct score, ascending (the bins of exact
    frame statistics)."""
    u, inv = np.unique(scores, return_inverse=True)
    return (
        np.bincount(inv[labels == 1], minlength=len(u)),
        np.bincount(inv[labels == 0], minlength=len(u)),
    )


def counts_metrics_rows(pos_counts, neg_counts, convention="course"):
    """``cumulative_metrics_rows`` of per-bin counts ``[B, D]`` in ascending score order, the
    input ``counts_metrics`` takes one row of."""
    pos, neg = np.asarray(pos_counts)[:, ::-1], np.asarray(neg_counts)[:, ::-1]
    return cumulative_metrics_rows(np.cumsum(pos, axis=1), np.cumsum(neg, axis=1), convention)


def test_counts_metrics_rows_equal_counts_metrics_bit_for_bit():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):  # sparse histograms: empty bins everywhere, as in a bootstrap resample
        D = int(rng.integers(1, 300))
        pos = rng.poisson(rng.uniform(0.05, 3), D) * (rng.random(D) < rng.uniform(0.1, 1))
        neg = rng.poisson(rng.uniform(0.5, 30), D) * (rng.random(D) < rng.uniform(0.1, 1))
        pos[rng.integers(D)] += 1
        rows.append((pos, neg + (neg.sum() == 0)))
    for seed in range(6):  # the long collinear runs of test_fpr95_course_exact_on_long_runs
        r = np.random.default_rng(seed)
        scores = np.arange(3000, dtype=np.float32) // int(r.integers(1, 4))
        labels = np.zeros(3000, np.uint8)
        start = int(r.integers(0, 2500))
        labels[start : start + int(r.choice([20, 40, 333]))] = 1
        rows.append(_histograms(scores, labels))
    rows.append(_histograms(np.repeat(np.arange(500.0), 2), np.tile([0, 1], 500)))
    D = max(len(p) for p, _ in rows)
    P = np.array([np.r_[np.zeros(D - len(p), int), p] for p, _ in rows])  # empty low bins
    N = np.array([np.r_[np.zeros(D - len(n), int), n] for _, n in rows])
    for convention in ("course", "smiyc"):
        got = counts_metrics_rows(P, N, convention)
        # float64 counts (a bootstrap's weighted sums) give the same bits
        assert all(
            np.array_equal(got[k], v)
            for k, v in counts_metrics_rows(P.astype(float), N.astype(float), convention).items()
        )
        for k in ("auprc", "fpr_at_95_tpr", "auroc"):
            ref = [counts_metrics(p, n, convention)[k] for p, n in zip(P, N)]
            np.testing.assert_array_equal(got[k], ref)  # exact, not approximately
    # and the metric itself: ood-metrics' FPR95 and sklearn's AuPRC of the pixels
    scores = np.repeat(np.arange(D, dtype=np.float32), (P + N)[-3])
    labels = np.concatenate(
        [np.r_[np.ones(p, int), np.zeros(n, int)] for p, n in zip(P[-3], N[-3])]
    )
    got = counts_metrics_rows(P[-3:-2], N[-3:-2])
    assert got["fpr_at_95_tpr"][0] == ood_metrics_fpr95(scores, labels)
    assert got["auprc"][0] == pytest.approx(average_precision_score(labels, scores), abs=1e-14)


def test_cumulative_metrics_rows_degenerate_rows():
    P, N = np.array([[0, 0, 0], [1, 0, 2], [3, 1, 0]]), np.array([[2, 1, 0], [0, 0, 0], [0, 2, 5]])
    with (
        pytest.warns(RuntimeWarning, match="no anomaly pixel"),
        pytest.warns(RuntimeWarning, match="no in-distribution pixel"),
    ):
        got = counts_metrics_rows(P, N)
    assert np.isnan([got[k][0] for k in got]).all()  # no anomaly: every metric undefined
    assert got["auprc"][1] == 1.0 and np.isnan([got["auroc"][1], got["fpr_at_95_tpr"][1]]).all()
    assert got["auroc"][2] == counts_metrics(P[2], N[2])["auroc"]
    with pytest.raises(ValueError, match="no valid pixel"):
        counts_metrics_rows(np.zeros((1, 3), int), np.zeros((1, 3), int))
