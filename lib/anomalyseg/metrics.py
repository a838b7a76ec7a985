"""Pooled anomaly metrics (AuPRC, FPR95, AUROC), mIoU and calibration (REFERENCE §5).

Anomaly metrics pool every valid pixel of a data set: label 1 = anomaly (the positive class),
label 0 = in-distribution, anything else (255, 2, ...) is void and ignored. Scores are pooled as
float32 (a float64 input is rounded first, which can create ties; the reference figures in the
tests are sklearn on the same float32 values). -0.0 and +0.0 are one threshold, as in sklearn;
+-inf are ranked like any other value; NaN is an error.

All three metrics come from one ranking: the anomaly and in-distribution scores are sorted
separately (numpy's SIMD sort) and the cumulative counts at each distinct anomaly score are read
with ``searchsorted``, which gives

- ``auprc``: sklearn ``average_precision_score``, term for term (to ~1e-15);
- ``auroc``: sklearn ``roc_auc_score``, from exact integer counts (Mann-Whitney);
- ``fpr_at_95_tpr``: ``convention="course"`` is the ``ood-metrics`` package the course uses,
  ``np.interp(0.95, tpr, fpr)`` over sklearn's ``roc_curve``, bit for bit: the two curve points
  it interpolates between are found the way ``roc_curve(drop_intermediate=True)`` keeps them.
  ``convention="smiyc"`` is the SegmentMeIfYouCan benchmark's: the FPR at the first (highest)
  threshold whose TPR reaches 0.95, over every distinct threshold.

Degenerate sets: no anomaly pixel gives NaN for all three (sklearn's AuPRC would be 0.0, an
artefact of setting recall to 1), no in-distribution pixel gives AuPRC 1.0 and NaN for the other
two (as sklearn); each with a warning. No valid pixel at all is an error.

Inputs may be numpy arrays or torch tensors (on any device) of any matching shape.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

CONVENTIONS = ("course", "smiyc")
TARGET_TPR = 0.95


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")  # no torch import for numpy-only users
    return torch is not None and isinstance(x, torch.Tensor)


def _numpy(x) -> np.ndarray:
    if not _is_torch(x):
        return np.asarray(x)
    x = x.detach().cpu()
    return (
        x.float() if x.is_floating_point() and x.element_size() < 4 else x
    ).numpy()  # numpy has no bfloat16


def _check_same_shape(a, b, what: str, names=("scores", "labels")) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{what}: {names[0]} and {names[1]} must have the same shape (one label per pixel), "
            f"got {tuple(a.shape)} and {tuple(b.shape)}; resize the label map to the prediction "
            "(nearest neighbour) first."
        )


def _split(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Valid pixels' scores as float32, split by label: ``(anomaly, in_distribution)``."""
    if _is_torch(scores) or _is_torch(labels):
        import torch

        s = torch.as_tensor(scores).detach()
        y = torch.as_tensor(labels, device=s.device)
        _check_same_shape(s, y, "anomaly metrics")
        s, y = s.reshape(-1).float(), y.reshape(-1)
        # mask on the tensor's device so that only valid pixels cross to the host
        pos, neg = (s[y], s[~y]) if y.dtype == torch.bool else (s[y == 1], s[y == 0])
        return pos.cpu().numpy(), neg.cpu().numpy()
    s, y = np.asarray(scores), np.asarray(labels)
    _check_same_shape(s, y, "anomaly metrics")
    s, y = s.reshape(-1).astype(np.float32, copy=False), y.reshape(-1)
    if y.dtype == bool:
        return s[y], s[~y]
    return s[y == 1], s[y == 0]


def _torch_int32():
    import torch

    return torch.int32


def _sort_checked(x: np.ndarray) -> np.ndarray:
    x.sort()  # in place: x is always our own copy
    if x.size and np.isnan(x[-1]):  # numpy sorts NaN last
        raise ValueError(
            f"scores contain NaN at {int(np.isnan(x).sum())} valid pixels; anomaly scores must be "
            "numbers (check the class map for NaN/inf logits, or a temperature of 0)."
        )
    return x


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(
            "convention must be 'course' (ood-metrics: interpolate sklearn's ROC curve at TPR "
            f"0.95) or 'smiyc' (FPR at the first threshold reaching TPR 0.95), got {convention!r}."
        )


# ----------------------------------------------------------------------------- ranked scores
class _Ranked:
    """Anomaly (``pos``) and in-distribution (``neg``) scores, each sorted ascending.

    Threshold t predicts "anomaly" for score >= t, so at t the true positives are
    ``#pos >= t`` and the false positives ``#neg >= t`` (sklearn's ``roc_curve`` convention).
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray):
        self.pos, self.neg = pos, neg
        self.P, self.N = len(pos), len(neg)

    def tps(self, t):
        return self.P - np.searchsorted(self.pos, t, "left")

    def fps(self, t):
        return self.N - np.searchsorted(self.neg, t, "left")

    def counts(self, t) -> tuple[int, int]:
        """(#in-distribution, #anomaly) pixels whose score equals t."""
        return (
            int(np.searchsorted(self.neg, t, "right") - np.searchsorted(self.neg, t, "left")),
            int(np.searchsorted(self.pos, t, "right") - np.searchsorted(self.pos, t, "left")),
        )

    def window(self, t, up: bool, width: int):
        """Distinct scores next to t, nearest first: above t (``up``) or t and below, with their
        (#in-distribution, #anomaly) counts and whether they run to the end of the data.

        Only ``width`` scores of each class are read; values that more of the unread scores
        might share are cut off, so every count returned is complete.
        """
        ip, ineg = np.searchsorted(self.pos, t, "right"), np.searchsorted(self.neg, t, "right")
        if up:
            ps, ns = self.pos[ip : ip + width], self.neg[ineg : ineg + width]
            unread = [
                x[i + width] for x, i in ((self.pos, ip), (self.neg, ineg)) if i + width < len(x)
            ]
            vals = np.union1d(ps, ns)
            vals = vals[vals < min(unread)] if unread else vals
        else:
            ps, ns = self.pos[max(ip - width, 0) : ip], self.neg[max(ineg - width, 0) : ineg]
            unread = [
                x[i - width - 1] for x, i in ((self.pos, ip), (self.neg, ineg)) if i - width > 0
            ]
            vals = np.union1d(ps, ns)[::-1]
            vals = vals[vals > max(unread)] if unread else vals
        npos = np.searchsorted(ps, vals, "right") - np.searchsorted(ps, vals, "left")
        nneg = np.searchsorted(ns, vals, "right") - np.searchsorted(ns, vals, "left")
        return vals, nneg, npos, not unread

    # -- metrics ---------------------------------------------------------------------------
    def auprc_auroc(self) -> tuple[float, float]:
        P, N = self.P, self.N
        first = np.flatnonzero(
            np.r_[True, self.pos[1:] != self.pos[:-1]]
        )  # each distinct anomaly score
        u = self.pos[first]
        tps = P - first
        lt = np.searchsorted(self.neg, u, "left")
        fps = N - lt
        # sklearn's step sum, one term per threshold where recall moves (the others are exact
        # zeros): (recall at the next higher threshold - recall here) * precision here.
        recall = tps / P
        precision = tps / (tps + fps)
        ap = float(max(0.0, -np.sum(np.diff(np.append(recall, 0.0)) * precision)))
        if N == 0:
            return ap, float("nan")
        # Mann-Whitney U in integers: each anomaly pixel counts 2 per lower in-distribution
        # score and 1 per tie, exactly the trapezoids of the ROC curve.
        le = np.searchsorted(self.neg, u, "right")
        size = np.diff(np.append(first, P))
        return ap, float(np.sum(size * (lt + le))) / (2.0 * P * N)

    def fpr_at_tpr(self, convention: str = "course") -> float:
        P, N = self.P, self.N
        if N == 0:
            return float("nan")
        if convention == "smiyc":
            k = _min_count(P, TARGET_TPR)  # fewest true positives with tps / P >= 0.95
            return float(self.fps(self.pos[P - k]) / N)
        # ood-metrics: np.interp(0.95, tpr, fpr) on roc_curve's points. np.interp reads the last
        # point with tpr <= 0.95 and the next one, so we find those two among the points
        # roc_curve keeps, and call np.interp on them for the same float operations.
        k = _max_count(P, TARGET_TPR)  # most true positives with tps / P <= 0.95
        v = self.pos[P - k - 1]  # highest threshold with tpr > 0.95
        above = self._kept_above(v)
        t0, f0 = (0.0, 0.0) if above is None else (self.tps(above) / P, self.fps(above) / N)
        below = self._kept_at_or_below(v)
        return float(np.interp(TARGET_TPR, [t0, self.tps(below) / P], [f0, self.fps(below) / N]))

    # roc_curve(drop_intermediate=True) drops point i (not the first or last threshold) when
    # both second differences of (fps, tps) vanish there, i.e. when the (#in-distribution,
    # #anomaly) counts at threshold i equal those at the next lower threshold.
    def _kept_above(self, v):
        """Nearest threshold above v that roc_curve keeps; None: only its (0, 0) start."""
        c0, width = self.counts(v), 64
        while True:
            vals, nneg, npos, at_end = self.window(v, up=True, width=width)
            differ = np.flatnonzero((nneg != c0[0]) | (npos != c0[1]))
            if differ.size:
                return vals[differ[0]]
            if at_end:  # all equal up to the highest score, the first point, always kept
                return vals[-1] if vals.size else None
            width *= 4

    def _kept_at_or_below(self, v):
        """Nearest threshold at or below v that roc_curve keeps."""
        if (
            np.searchsorted(self.pos, v, "right") == self.P
            and np.searchsorted(self.neg, v, "right") == self.N
        ):
            return v  # highest score: the first point, always kept
        width = 64
        while True:
            vals, nneg, npos, at_end = self.window(v, up=False, width=width)
            if vals.size:
                differ = np.flatnonzero((nneg[:-1] != nneg[1:]) | (npos[:-1] != npos[1:]))
                if differ.size:
                    return vals[differ[0]]
                if at_end:  # the lowest score, the last point, always kept
                    return vals[-1]
            width *= 4

    def best_f1(self) -> tuple[float, float]:
        """``(threshold, F1)`` of the pixel F1-maximising threshold (prediction: score >=
        threshold),
        the highest one on ties. F1 only rises where an anomaly pixel joins, so the distinct
        anomaly scores are the only candidates."""
        P, N = self.P, self.N
        first = np.flatnonzero(np.r_[True, self.pos[1:] != self.pos[:-1]])
        u = self.pos[first]
        tps, fps = P - first, N - np.searchsorted(self.neg, u, "left")
        f1 = 2.0 * tps / (tps + P + fps)  # 2 TP / (2 TP + FP + FN), FN = P - TP
        i = np.flatnonzero(f1 == f1.max())[-1]
        return float(u[i]), float(f1[i])

    def tpr_threshold(self, rate: float = TARGET_TPR) -> float:
        """The highest threshold whose TPR (score >= threshold) reaches ``rate``: SMIYC's FPR95
        point."""
        return float(self.pos[self.P - _min_count(self.P, rate)])

    def curve(self, n: int) -> dict[str, np.ndarray]:
        """PR and ROC points at about ``n`` thresholds: quantiles of both classes' scores, so
        that both low recall and low FPR are drawn finely. Starts at threshold +inf."""

        def pick(x: np.ndarray, m: int) -> np.ndarray:
            return (
                x[np.unique(np.linspace(0, len(x) - 1, m).round().astype(np.int64))]
                if len(x)
                else x
            )

        t = np.unique(np.concatenate([pick(self.pos, n // 2), pick(self.neg, n - n // 2)]))[::-1]
        tps, fps = self.tps(t), self.fps(t)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr, fpr = tps / self.P, fps / self.N
        # (recall 0, precision 1) closes the PR curve as in sklearn's precision_recall_curve
        return dict(
            recall=np.r_[0.0, tpr],
            precision=np.r_[1.0, tps / (tps + fps)],
            fpr=np.r_[0.0, fpr],
            tpr=np.r_[0.0, tpr],
        )

    def metrics(self, convention: str = "course") -> dict:
        _check_convention(convention)
        P, N = self.P, self.N
        out = _empty_result(P, N)
        if P == 0:
            return out
        out["auprc"], out["auroc"] = self.auprc_auroc()
        out["fpr_at_95_tpr"] = self.fpr_at_tpr(convention)
        return out


def _empty_result(P: int, N: int) -> dict:
    """The result dict before the metrics, NaN-filled; refuses an empty set and warns about a
    degenerate one (P = 0: every metric undefined; N = 0: FPR95 and AUROC undefined)."""
    if P + N == 0:
        raise ValueError(
            "no valid pixel to score: anomaly metrics need labels 0 (in-distribution) or 1 "
            "(anomaly), and none was given (no frame at all, or every label void). Check that the "
            "data set holds frames and the mask conversion of the benchmark."
        )
    if P == 0:
        warnings.warn(
            "no anomaly pixel (label 1): AuPRC, FPR95 and AUROC are undefined (NaN).",
            RuntimeWarning,
            stacklevel=4,
        )
    elif N == 0:
        warnings.warn(
            "no in-distribution pixel (label 0): FPR95 and AUROC are undefined (NaN).",
            RuntimeWarning,
            stacklevel=4,
        )
    return dict(
        auprc=float("nan"),
        fpr_at_95_tpr=float("nan"),
        auroc=float("nan"),
        num_pixels=P + N,
        anomaly_fraction=P / (P + N),
    )


def _curve_metrics(
    tps: np.ndarray, fps: np.ndarray, P: int, N: int, convention: str = "course"
) -> dict:
    """The anomaly metrics from cumulative counts at each threshold, highest first (``tps``,
    ``fps``:
    anomaly and in-distribution pixels at or above it; thresholds where neither moves left out) and
    the totals ``P``, ``N``: every formula of ``_Ranked`` on tied groups of scores."""
    out = _empty_result(P, N)
    if P == 0:
        return out
    # sklearn's average precision: sum over thresholds of (recall step) x precision
    recall = tps / P
    out["auprc"] = float(max(0.0, np.sum(np.diff(np.r_[0.0, recall]) * (tps / (tps + fps)))))
    if N == 0:
        return out
    # AUROC: trapezoids between consecutive thresholds, in exact integers
    t0, f0 = np.r_[0, tps[:-1]], np.r_[0, fps[:-1]]
    out["auroc"] = float(np.sum((fps - f0) * (tps + t0))) / (2.0 * P * N)
    if convention == "smiyc":
        out["fpr_at_95_tpr"] = float(
            fps[np.searchsorted(tps, _min_count(P, TARGET_TPR), "left")] / N
        )
    else:
        # roc_curve(drop_intermediate=True) keeps the first and last points and those where
        # the (fps, tps) curve bends; ood-metrics interpolates the kept points at TPR 0.95.
        keep = (
            np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
            if len(tps) > 2
            else np.ones(len(tps), bool)
        )
        tpr, fpr = np.r_[0.0, tps[keep] / P], np.r_[0.0, fps[keep] / N]
        out["fpr_at_95_tpr"] = float(np.interp(TARGET_TPR, tpr, fpr))
    return out


def counts_metrics(pos_counts, neg_counts, convention: str = "course") -> dict:
    """The anomaly metrics of scores given as counts per bin: ``pos_counts``, ``neg_counts`` ``[D]``
    (anomaly and in-distribution pixels) over D bins in ascending score order, the pixels of a bin
    tied. Exact when each bin holds one distinct score (sklearn's values); the pooled frames of a
    bootstrap resample are a weighted sum of per-frame counts (``bootstrap``). Many count vectors
    at once: ``cumulative_metrics_rows``."""
    _check_convention(convention)
    pos, neg = np.asarray(pos_counts)[::-1], np.asarray(neg_counts)[::-1]
    used = (pos + neg) > 0
    tps, fps = np.cumsum(pos[used]), np.cumsum(neg[used])
    return _curve_metrics(tps, fps, int(pos.sum()), int(neg.sum()), convention)


def cumulative_metrics_rows(
    tps, fps, convention: str = "course", trapezoids=None
) -> dict[str, np.ndarray]:
    """``counts_metrics`` of B count vectors given cumulatively, from the highest-score bin down:
    ``tps``, ``fps`` ``[B, D]`` (anomaly and in-distribution pixels at or above each bin; integer
    counts, or float64 holding exact integers). Returns ``auprc``, ``fpr_at_95_tpr``, ``auroc``
    ``[B]``, equal bit for bit to ``counts_metrics`` row by row (the same float operations on the
    same values), in a few array passes instead of B calls: the bootstrap's 1000 resamples.
    ``trapezoids`` ``[B]``: the AUROC's integer sum ``sum_i (fps_i - fps_i-1)(tps_i + tps_i-1)``
    where the caller has it cheaper (``bootstrap.pixel_metrics``: a quadratic form of the frame
    multiplicities); summed here otherwise.

    An empty bin repeats the previous counts, so the AuPRC terms (recall step x precision) run
    over all D bins (an empty bin's is 0); their sum alone runs row by row over the non-empty bins,
    so that numpy adds the same terms in the same order. FPR95 (``course``) interpolates between
    the two ROC points around TPR 0.95 that ``roc_curve(drop_intermediate=True)`` keeps, found by
    walking from the crossing to the nearest bends. Rows without anomaly pixels give NaN (and
    without in-distribution pixels NaN FPR95 and AUROC), with ``_empty_result``'s warning."""
    _check_convention(convention)
    tps, fps = np.asarray(tps), np.asarray(fps)
    P, N = tps[:, -1], fps[:, -1]
    for p, n in {(int(p), int(n)) for p, n in zip(P > 0, N > 0)}:
        _empty_result(p, n)  # raises on a row without pixels, warns on a degenerate one
    seen = tps + fps
    used = np.empty(seen.shape, bool)  # the non-empty bins: the thresholds of _curve_metrics
    used[:, 0] = seen[:, 0] > 0
    np.not_equal(seen[:, 1:], seen[:, :-1], out=used[:, 1:])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tps / P[:, None]
        step = np.empty_like(recall)  # recall[i] - recall[i - 1], recall[-1] = 0
        step[:, 0] = recall[:, 0]
        np.subtract(recall[:, 1:], recall[:, :-1], out=step[:, 1:])
        step *= np.divide(tps, seen, out=recall)  # x precision
        if trapezoids is None:
            prev_t = np.pad(tps[:, :-1], ((0, 0), (1, 0)))
            prev_f = np.pad(fps[:, :-1], ((0, 0), (1, 0)))
            trapezoids = np.sum((fps - prev_f) * (tps + prev_t), axis=1)
        auroc = np.asarray(trapezoids).astype(np.float64) / (2.0 * P * N)
    out = {k: np.full(len(P), np.nan) for k in ("auprc", "fpr_at_95_tpr", "auroc")}
    for b in np.flatnonzero(P > 0):
        u = np.flatnonzero(used[b])
        out["auprc"][b] = max(0.0, np.sum(step[b, u]))
        if N[b] == 0:
            continue
        out["auroc"][b] = auroc[b]
        t, f, Pb, Nb = tps[b], fps[b], int(P[b]), int(N[b])
        if convention == "smiyc":
            out["fpr_at_95_tpr"][b] = f[np.searchsorted(t, _min_count(Pb, TARGET_TPR))] / Nb
        else:
            out["fpr_at_95_tpr"][b] = _interp_kept(t, f, u, Pb, Nb)
    return out


def _interp_kept(tps: np.ndarray, fps: np.ndarray, used: np.ndarray, P: int, N: int) -> float:
    """``np.interp(0.95, tpr, fpr)`` over the points ``roc_curve(drop_intermediate=True)`` keeps of
    the cumulative counts ``tps``, ``fps`` at the non-empty bins ``used`` (as ``_curve_metrics``
    does on those), reading only the two kept points around the crossing: the last one with
    TPR <= 0.95 (or the origin) and the next."""
    n = len(used)

    def kept(i: int) -> bool:  # the first, the last, and where the (fps, tps) curve bends
        if i == 0 or i == n - 1:
            return True
        a, b, c = used[i - 1], used[i], used[i + 1]
        return fps[c] - 2 * fps[b] + fps[a] != 0 or tps[c] - 2 * tps[b] + tps[a] != 0

    # the first non-empty bin with TPR > 0.95: the first bin where tps passes the count
    hi = int(np.searchsorted(used, np.searchsorted(tps, _max_count(P, TARGET_TPR), "right")))
    while not kept(hi):
        hi += 1
    lo = hi - 1
    while lo >= 0 and not kept(lo):
        lo -= 1
    x0, y0 = (tps[used[lo]] / P, fps[used[lo]] / N) if lo >= 0 else (0.0, 0.0)
    if x0 == TARGET_TPR:  # np.interp's rule at a point
        return float(y0)
    x1, y1 = tps[used[hi]] / P, fps[used[hi]] / N
    return float((y1 - y0) / (x1 - x0) * (TARGET_TPR - x0) + y0)


def _max_count(P: int, rate: float) -> int:
    """Largest k in 0..P with k / P <= rate, in the float arithmetic sklearn's tpr uses."""
    k = min(int(rate * P) + 2, P)  # the float product may round below the answer
    while k > 0 and k / P > rate:
        k -= 1
    return k


def _min_count(P: int, rate: float) -> int:
    """Smallest k in 0..P with k / P >= rate."""
    k = _max_count(P, rate)
    return k if k / P >= rate else k + 1


def _rank(scores, labels) -> _Ranked:
    pos, neg = _split(scores, labels)
    return _Ranked(_sort_checked(pos), _sort_checked(neg))


# ----------------------------------------------------------------------------- one-shot API
def anomaly_metrics(scores, labels, convention: str = "course") -> dict:
    """AuPRC, FPR95 and AUROC of pooled pixels from one sort.

    Args:
        scores: anomaly scores, any shape (e.g. ``[N, H, W]``), higher = more anomalous.
        labels: same shape; 1 = anomaly, 0 = in-distribution, other values are void.
        convention: FPR95 convention, ``"course"`` (ood-metrics) or ``"smiyc"``.

    Returns:
        ``dict(auprc=, fpr_at_95_tpr=, auroc=, num_pixels=, anomaly_fraction=)``, rates as
        fractions; ``num_pixels`` counts valid pixels.
    """
    _check_convention(convention)
    return _rank(scores, labels).metrics(convention)


def auprc(scores, labels) -> float:
    """Area under the precision-recall curve, equal to sklearn ``average_precision_score``."""
    return anomaly_metrics(scores, labels)["auprc"]


def fpr_at_95_tpr(scores, labels, convention: str = "course") -> float:
    """False positive rate at 95% true positive rate (``"course"``: ood-metrics, ``"smiyc"``)."""
    return anomaly_metrics(scores, labels, convention)["fpr_at_95_tpr"]


def auroc(scores, labels) -> float:
    """Area under the ROC curve, equal to sklearn ``roc_auc_score``."""
    return anomaly_metrics(scores, labels)["auroc"]


def curve_points(scores, labels, n: int = 256) -> dict[str, np.ndarray]:
    """About ``n`` points of the PR and ROC curves for plotting:
    ``dict(recall=, precision=, fpr=, tpr=)``, from the highest threshold down."""
    if int(n) < 2:
        raise ValueError(f"curve_points needs n >= 2 points, got {n!r}.")
    return _rank(scores, labels).curve(int(n))


pr_roc_points = curve_points


class AnomalyAccumulator:
    """Pools the valid pixels of many frames, then computes the anomaly metrics once.

    Keeps only valid pixels' scores, as float32 split by label: 4 bytes a valid pixel, 0.8 GB
    for 100 frames of 1024x2048. ``compute`` sorts them in place and keeps the sorted arrays, so
    ``pr_roc_points`` after it (or a second ``compute``) does not sort again.

    ``update`` counts one frame per call, or ``B`` frames for ``[B, H, W]`` inputs.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []
        self._ranked: _Ranked | None = None
        self.num_frames = 0

    def update(self, scores, labels) -> None:
        """Add one frame (``[H, W]``) or a batch (``[B, H, W]``) of scores and labels."""
        pos, neg = _split(scores, labels)
        self._pos += [pos] if pos.size else []
        self._neg += [neg] if neg.size else []
        self._ranked = None
        shape = tuple(scores.shape) if _is_torch(scores) else np.shape(scores)
        self.num_frames += shape[0] if len(shape) == 3 else 1

    @property
    def num_pixels(self) -> int:
        return sum(map(len, self._pos)) + sum(map(len, self._neg))

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in self._pos) + sum(x.nbytes for x in self._neg)

    def _rank(self) -> _Ranked:
        if self._ranked is None:

            def cat(xs: list[np.ndarray]) -> np.ndarray:
                if len(xs) == 1:
                    return xs[0]
                return np.concatenate(xs) if xs else np.empty(0, np.float32)

            pos, neg = _sort_checked(cat(self._pos)), _sort_checked(cat(self._neg))
            self._pos, self._neg = [pos], [neg]  # one sorted chunk: the frames' chunks are freed
            self._ranked = _Ranked(pos, neg)
        return self._ranked

    def compute(self, convention: str = "course") -> dict:
        """``dict(auprc=, fpr_at_95_tpr=, auroc=, num_pixels=, anomaly_fraction=)`` over all
        frames."""
        _check_convention(convention)
        return self._rank().metrics(convention)

    def operating_points(self, rate: float = TARGET_TPR) -> dict:
        """Thresholds (prediction: score >= threshold) on the pooled pixels: ``best_f1_threshold``
        and ``best_f1`` (pixel F1, the threshold SMIYC's component metrics binarise at) and
        ``tpr95_threshold`` (the highest threshold with TPR >= ``rate``). Needs an anomaly pixel."""
        ranked = self._rank()
        if ranked.P == 0:
            raise ValueError(
                "operating_points needs at least one anomaly pixel (label 1) to place a threshold."
            )
        t, f1 = ranked.best_f1()
        return dict(best_f1_threshold=t, best_f1=f1, tpr95_threshold=ranked.tpr_threshold(rate))

    def pr_roc_points(self, n: int = 256) -> dict[str, np.ndarray]:
        """About ``n`` PR/ROC points for plotting: ``dict(recall=, precision=, fpr=, tpr=)``."""
        if int(n) < 2:
            raise ValueError(f"pr_roc_points needs n >= 2 points, got {n!r}.")
        return self._rank().curve(int(n))


class PerImageAccumulator:
    """Anomaly metrics of each frame, averaged over frames (protocol ``per_image``; REFERENCE §5
    pools pixels instead, which weighs a frame by its pixel count and is the course's default).

    A frame's metric that is undefined (no in-distribution pixel: FPR95, AUROC) is left out of
    that metric's mean. Same ``update`` / ``compute`` as ``AnomalyAccumulator``; no pooled curve.
    """

    def __init__(self):
        self._frames: list[dict] = []
        self.num_frames = 0

    def update(self, scores, labels) -> None:
        """Add one frame ``[H, W]`` (a batch ``[B, H, W]`` counts as one frame per item)."""
        shape = tuple(scores.shape) if _is_torch(scores) else np.shape(scores)
        for s, y in zip(scores, labels) if len(shape) == 3 else [(scores, labels)]:
            ranked = _rank(s, y)
            if ranked.P == 0:
                continue  # no anomaly pixel: every metric undefined for this frame
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                m = ranked.metrics("course")
            m["fpr_smiyc"] = ranked.fpr_at_tpr("smiyc") if ranked.N else float("nan")
            self._frames.append(m)
            self.num_frames += 1

    def compute(self, convention: str = "course") -> dict:
        """Means over frames:
        ``dict(auprc=, fpr_at_95_tpr=, auroc=, num_pixels=, anomaly_fraction=)``."""
        _check_convention(convention)
        if not self._frames:
            raise ValueError("PerImageAccumulator: no frame with an anomaly pixel was added.")

        def mean(k: str) -> float:
            values = [f[k] for f in self._frames]
            return float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")

        return dict(
            auprc=mean("auprc"),
            auroc=mean("auroc"),
            fpr_at_95_tpr=mean("fpr_smiyc" if convention == "smiyc" else "fpr_at_95_tpr"),
            num_pixels=sum(f["num_pixels"] for f in self._frames),
            anomaly_fraction=mean("anomaly_fraction"),
        )

    def pr_roc_points(self, n: int = 256) -> dict[str, np.ndarray]:
        """Per-image averages have no single curve: ``{}``."""
        return {}


class BinnedAnomalyAccumulator:
    """The anomaly metrics from histograms of the scores instead of a sort (opt-in, approximate).

    Each score's float32 bit pattern is mapped to an order-preserving integer and its top
    ``bits`` bits pick a bin (sign, 8 exponent and ``bits - 9`` mantissa bits: a relative
    resolution of 2**-15 = 3e-5 for the default 24), counted per class with a bincount (numpy on
    the CPU, torch on a GPU, where only the counts cross to the host). Only the bins the scores
    touch are kept, so memory follows the spread of the scores (a few MB for the usual scores),
    not the number of pixels, and an update costs a few passes over the frame: 5.8x faster than
    the exact accumulator's sort at 50M pixels (``benchmarks/bench_metrics.py``).

    The metrics are exact for the scores rounded down to their bin's lowest value
    (``quantize``): every formula of ``AnomalyAccumulator`` (sklearn's AuPRC and AUROC, the
    ood-metrics FPR95 with ``roc_curve``'s dropped points, the SMIYC FPR95) runs on the bins'
    counts. Scores closer than the resolution become ties. That costs hundredths of a point for
    well-spread scores but can cost tenths where a score crowds into a narrow band: MaxEntropy of
    the small demo EoMT sits within 1e-5 of log(19) on most pixels, and 24 bits moved its AuPRC by
    up to 0.32 points (``benchmarks/bench_sweep.py``). Reported tables therefore use exact rows.
    """

    def __init__(self, bits: int = 24):
        if not 10 <= int(bits) <= 24:
            raise ValueError(
                "BinnedAnomalyAccumulator: bits must be in 10..24 (2**bits bins per class), got "
                f"{bits!r}."
            )
        self.bits = int(bits)
        self.reset()

    def reset(self) -> None:
        self._counts, self._lo = (
            None,
            0,
        )  # int64 [3, bins from _lo] on the host: in-distribution, anomaly, void
        self.num_frames = 0

    def _bin_index(self, x, code):
        """Flat index ``3 * bin + code`` of each score (float32 ``x``; ``code`` 0 in-distribution,
        1 anomaly, 2 void). numpy on the CPU (its integer ops are SIMD), torch on a GPU; the same
        integer formula either way."""
        x = x + 0.0  # -0.0 + 0.0 = +0.0: one threshold, as in sklearn
        if bool(np.isnan(x).any() if isinstance(x, np.ndarray) else x.isnan().any()):
            nan = int(np.isnan(x).sum() if isinstance(x, np.ndarray) else x.isnan().sum())
            raise ValueError(
                f"scores contain NaN at {nan} pixels; anomaly scores must be numbers (check the "
                "class map for NaN/inf logits, or a temperature of 0)."
            )
        i = x.view(np.int32) if isinstance(x, np.ndarray) else x.view(_torch_int32())
        key = i ^ (
            (i >> 31) & 0x7FFFFFFF
        )  # flip the magnitude of negative floats: order-preserving
        key >>= 32 - self.bits
        key += 1 << (self.bits - 1)
        key *= 3
        key += code
        return key

    def quantize(self, scores) -> np.ndarray:
        """The value each score is counted as: the lowest float32 of its bin."""
        x = _numpy(scores).astype(np.float32)
        key = self._bin_index(x.reshape(-1), np.zeros(1, np.int32)) // 3 - (1 << (self.bits - 1))
        i = key << (32 - self.bits)
        return (i ^ ((i >> 31) & 0x7FFFFFFF)).view(np.float32).reshape(x.shape)

    def update(self, scores, labels) -> None:
        """Add one frame (``[H, W]``) or a batch (``[B, H, W]``) of scores and labels."""
        _check_same_shape(scores, labels, "anomaly metrics")
        if _is_torch(scores) and scores.device.type != "cpu":
            import torch

            y = torch.as_tensor(labels, device=scores.device).reshape(-1)
            code = y.to(torch.int32) if y.dtype == torch.bool else y.clamp(max=2).to(torch.int32)
            idx = self._bin_index(scores.detach().reshape(-1).float(), code)
            if idx.numel():
                lo = int(idx.min()) // 3
                self._add(lo, torch.bincount(idx - 3 * lo).cpu().numpy())
        else:
            y = _numpy(labels).reshape(-1)
            code = y.astype(np.int32) if y.dtype == bool else np.minimum(y, 2).astype(np.int32)
            idx = self._bin_index(_numpy(scores).reshape(-1).astype(np.float32), code)
            if idx.size:
                lo = int(idx.min()) // 3
                self._add(lo, np.bincount(idx - 3 * lo))
        self.num_frames += scores.shape[0] if len(scores.shape) == 3 else 1

    def _add(self, lo: int, flat_counts: np.ndarray) -> None:
        """Add per-(bin, code) counts starting at bin ``lo``. Only the range of bins the scores
        have touched is kept, so memory follows the spread of the scores, not ``2**bits``."""
        counts = np.pad(flat_counts, (0, -len(flat_counts) % 3)).reshape(-1, 3).T
        hi = lo + counts.shape[1]
        if self._counts is None:
            self._lo, self._counts = lo, counts.astype(np.int64)
            return
        old_lo, old_hi = self._lo, self._lo + self._counts.shape[1]
        if lo < old_lo or hi > old_hi:
            grown = np.zeros((3, max(hi, old_hi) - min(lo, old_lo)), np.int64)
            grown[:, old_lo - min(lo, old_lo) : old_hi - min(lo, old_lo)] = self._counts
            self._lo, self._counts = min(lo, old_lo), grown
        self._counts[:, lo - self._lo : hi - self._lo] += counts

    @property
    def num_pixels(self) -> int:
        return 0 if self._counts is None else int(self._counts.sum())

    @property
    def nbytes(self) -> int:
        return 0 if self._counts is None else self._counts.nbytes

    def _curve(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Cumulative (tps, fps) at each non-empty bin from the highest down, and (P, N)."""
        if self._counts is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0
        counts = self._counts[:2]  # [2, bins]: in-distribution, anomaly (row 2: void)
        used = np.flatnonzero(counts.sum(0))[::-1]
        return (
            np.cumsum(counts[1, used]),
            np.cumsum(counts[0, used]),
            int(counts[1].sum()),
            int(counts[0].sum()),
        )

    def compute(self, convention: str = "course") -> dict:
        """``dict(auprc=, fpr_at_95_tpr=, auroc=, num_pixels=, anomaly_fraction=)`` over all
        frames."""
        _check_convention(convention)
        return _curve_metrics(*self._curve(), convention)

    def pr_roc_points(self, n: int = 256) -> dict[str, np.ndarray]:
        """About ``n`` PR/ROC points for plotting: ``dict(recall=, precision=, fpr=, tpr=)``,
        at bins spread evenly over both classes' pixels."""
        if int(n) < 2:
            raise ValueError(f"pr_roc_points needs n >= 2 points, got {n!r}.")
        tps, fps, P, N = self._curve()
        pick = np.unique(
            np.r_[
                np.searchsorted(tps, np.linspace(0, P, n // 2), "left"),
                np.searchsorted(fps, np.linspace(0, N, n - n // 2), "left"),
            ].clip(0, len(tps) - 1)
        )
        tp, fp = tps[pick], fps[pick]
        with np.errstate(invalid="ignore", divide="ignore"):
            return dict(
                recall=np.r_[0.0, tp / P],
                precision=np.r_[1.0, tp / (tp + fp)],
                fpr=np.r_[0.0, fp / N],
                tpr=np.r_[0.0, tp / P],
            )


# ----------------------------------------------------------------------------- mIoU
class ConfusionMatrix:
    """Confusion matrix over ``num_classes`` for mIoU, rows = ground truth, columns = prediction.

    Ground-truth values outside ``0..num_classes-1`` are ignored: ``ignore_index`` (255), the
    pasted-outlier value 254, anything else. A prediction outside ``0..num_classes-1`` (ERFNet's
    void channel 19 when the argmax runs over all 20) is a miss of the true class, counted in
    its false negatives, as in the course's ``iouEval``.

    IoU = TP / (TP + FP + FN) per class. ``miou(absent="zero")`` is the course convention: the
    mean over all classes, where a class absent from both prediction and ground truth counts 0;
    ``absent="nan"`` averages only the classes that appear.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = 255):
        if int(num_classes) < 1:
            raise ValueError(
                "num_classes must be a positive class count (19 for Cityscapes), got "
                f"{num_classes!r}."
            )
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index must lie outside the classes 0..{num_classes - 1} (Cityscapes: "
                f"255), got {ignore_index}; a class id cannot also mean 'ignore'."
            )
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self._counts = np.zeros(
            (self.num_classes, self.num_classes + 1), dtype=np.int64
        )  # + misses

    @property
    def matrix(self) -> np.ndarray:
        """``[C, C]`` int64 counts, rows = ground truth, columns = prediction (sklearn's layout)."""
        return self._counts[:, : self.num_classes]

    def update(self, pred, target) -> None:
        """Add predictions and ground truth, ``[H, W]`` or ``[B, H, W]`` integer class ids."""
        C = self.num_classes
        if _is_torch(pred) or _is_torch(target):
            import torch

            p = torch.as_tensor(pred)
            t = torch.as_tensor(target, device=p.device)
            if p.is_floating_point() or t.is_floating_point():
                raise ValueError(_FLOAT_PRED.format(p.dtype, t.dtype, tuple(p.shape)))
            _check_same_shape(p, t, "ConfusionMatrix.update", ("pred", "target"))
            p, t = p.reshape(-1).long(), t.reshape(-1).long()
            valid = (t >= 0) & (t < C)
            p = torch.where((p >= 0) & (p < C), p, C)[valid]
            counts = torch.bincount(t[valid] * (C + 1) + p, minlength=C * (C + 1)).cpu().numpy()
        else:
            p, t = np.asarray(pred), np.asarray(target)
            if not (np.issubdtype(p.dtype, np.integer) or p.dtype == bool) or not np.issubdtype(
                t.dtype, np.integer
            ):
                raise ValueError(_FLOAT_PRED.format(p.dtype, t.dtype, p.shape))
            _check_same_shape(p, t, "ConfusionMatrix.update", ("pred", "target"))
            p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
            valid = (t >= 0) & (t < C)
            p = np.where((p >= 0) & (p < C), p, C)[valid]
            counts = np.bincount(t[valid] * (C + 1) + p, minlength=C * (C + 1))
        self._counts += counts.reshape(C, C + 1)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (other workers, other shards); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge confusion matrices over {self.num_classes} and {other.num_classes} "
                "classes."
            )
        self._counts += other._counts
        return self

    def reset(self) -> None:
        self._counts[:] = 0

    def iou(self) -> np.ndarray:
        """Per-class IoU ``[C]`` float64; NaN for a class absent from prediction and ground
        truth."""
        tp = np.diag(self._counts).astype(np.float64)
        union = self._counts.sum(1) + self.matrix.sum(0) - tp  # TP + FN (misses included) + FP
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self, absent: str = "zero") -> float:
        """Mean IoU. ``absent="zero"`` (course): mean over all classes, absent ones count 0;
        ``"nan"``: mean over the classes present in prediction or ground truth."""
        iou = self.iou()
        if absent == "zero":
            return float(np.nan_to_num(iou, nan=0.0).mean())
        if absent == "nan":
            return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        raise ValueError(
            "absent must be 'zero' (course iouEval: classes absent from prediction and ground "
            f"truth count 0) or 'nan' (average only the classes present), got {absent!r}."
        )


_FLOAT_PRED = (
    "ConfusionMatrix.update needs integer class ids for pred and target, got {} and {} of shape "
    "{}; pass the argmax over the class dimension of the class map, not the map itself."
)


# ----------------------------------------------------------------------------- calibration
def _bins(confidences, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each confidence, equal-width bins (lo, hi] over [0, 1] (0 joins bin 0)."""
    if int(n_bins) < 1:
        raise ValueError(
            "n_bins must be a positive number of confidence bins (15 by convention), got "
            f"{n_bins!r}."
        )
    c = _numpy(confidences).reshape(-1)
    if c.size and not (c.min() >= 0.0 and c.max() <= 1.0):  # also catches NaN
        raise ValueError(
            f"confidences must be probabilities in [0, 1] (the maximum softmax probability per "
            f"pixel), got values in [{c.min()}, {c.max()}]."
        )
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    return np.clip(np.searchsorted(edges, c, "left") - 1, 0, int(n_bins) - 1), c


def _flags(x, shape, name: str) -> np.ndarray:
    k = _numpy(x)
    if k.shape != tuple(shape):
        raise ValueError(
            f"{name} must be a per-pixel mask of the confidences' shape {tuple(shape)}, got "
            f"{k.shape}."
        )
    return k.reshape(-1).astype(bool, copy=False)


class CalibrationAccumulator:
    """Expected calibration error over many frames from per-bin sums, not per-pixel values.

    ``update(confidence, correct, valid)`` per frame: the maximum softmax probability ``[H, W]``,
    whether its argmax equals the ground truth, and which pixels count (e.g. target != 255).
    """

    def __init__(self, n_bins: int = 15):
        _bins(np.empty(0), n_bins)  # validates n_bins
        self.n_bins = int(n_bins)
        self.edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        self.conf_sum = np.zeros(self.n_bins)
        self.correct_sum = np.zeros(self.n_bins, dtype=np.int64)
        self.count = np.zeros(self.n_bins, dtype=np.int64)

    def update(self, confidence, correct, valid=None) -> None:
        """Add a frame: ``confidence``, ``correct`` and optional ``valid``, all of one shape."""
        conf = _numpy(confidence)
        k = _flags(correct, conf.shape, "correct")
        if valid is not None:
            v = _flags(valid, conf.shape, "valid")
            conf, k = conf.reshape(-1)[v], k[v]
        idx, c = _bins(conf, self.n_bins)
        self.conf_sum += np.bincount(idx, weights=c, minlength=self.n_bins)
        self.correct_sum += np.bincount(idx[k], minlength=self.n_bins)
        self.count += np.bincount(idx, minlength=self.n_bins)

    def ece(self) -> float:
        """sum over bins of (count / total) * |accuracy - mean confidence|."""
        total = self.count.sum()
        if total == 0:
            raise ValueError("ECE of no pixel: call update with at least one valid pixel first.")
        return float(np.abs(self.conf_sum - self.correct_sum).sum() / total)

    def bins(self) -> dict[str, np.ndarray]:
        """Reliability diagram: mean ``confidence`` and ``accuracy`` per bin (NaN if empty),
        ``count`` and ``edges`` ``[n_bins + 1]``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return dict(
                confidence=self.conf_sum / self.count,
                accuracy=self.correct_sum / self.count,
                count=self.count.copy(),
                edges=self.edges.copy(),
            )


def ece(confidences, correct, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017) with ``n_bins`` equal-width bins (lo, hi].

    ``confidences``: maximum softmax probability per pixel, any shape; ``correct``: same shape,
    whether the argmax class is right. Pass valid pixels only (or use CalibrationAccumulator).
    """
    acc = CalibrationAccumulator(n_bins)
    acc.update(confidences, correct)
    return acc.ece()
