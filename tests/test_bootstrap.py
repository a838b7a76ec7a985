"""Frame bootstrap against a direct re-implementation (resample frames, np.concatenate, sklearn),
and the per-frame statistics the evaluation stores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from anomalyseg import bootstrap as B
from anomalyseg import components as C
from anomalyseg.frame_stats import FrameStatsAccumulator, histogram_edges
from anomalyseg.metrics import anomaly_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluate import ListData, ToySegmenter  # noqa: E402


def _frames(rng, F=6, n=150, shift=1.0, decimals=None):
    out = []
    for f in range(F):
        y = (rng.random(n) < rng.uniform(0.05, 0.3)).astype(np.uint8)
        y[0], y[1] = 1, 0
        y[rng.random(n) < 0.1] = 255
        s = (
            rng.normal(size=n) + shift * (y == 1) + rng.normal() * 0.5
        )  # frames differ: the interval is wide
        out.append(((s if decimals is None else s.round(decimals)).astype(np.float32), y))
    return out


def _stats(frames, max_bins=None, track=None):
    acc = FrameStatsAccumulator(track, **({} if max_bins is None else {"max_bins": max_bins}))
    for i, (s, y) in enumerate(frames):
        acc.add_frame(s.reshape(10, -1), y.reshape(10, -1), str(i))
    acc.compute()
    return acc.frame_stats()[0]


def _ood_metrics_fpr95(y, s):
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.interp(0.95, tpr, fpr))


def _direct(frames, n_boot, seed):
    """Resample frames with the same draws, pool their pixels, and ask sklearn."""
    draws = np.random.default_rng(seed).integers(0, len(frames), (n_boot, len(frames)))
    ap, fpr = [], []
    for d in draws:
        s = np.concatenate([frames[i][0] for i in d])
        y = np.concatenate([frames[i][1] for i in d])
        keep = y < 2
        ap.append(average_precision_score(y[keep], s[keep]))
        fpr.append(_ood_metrics_fpr95(y[keep], s[keep]))
    return np.array(ap), np.array(fpr)


def test_resamples_equal_a_direct_reimplementation():
    rng = np.random.default_rng(1)
    frames = _frames(rng, decimals=2)  # ties inside and across frames
    st = _stats(frames)
    assert len(st["edges"]) < 1000  # few distinct scores: one bin per score, the exact metric
    w = B.multiplicities(len(frames), 200, seed=7)
    ours = B.pixel_metrics(st, w)
    ap, fpr = _direct(frames, 200, seed=7)
    np.testing.assert_allclose(ours["auprc"], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["fpr_at_95_tpr"], fpr, rtol=0, atol=1e-12)
    ci = B.bootstrap_ci(st, ("auprc", "fpr_at_95_tpr"), n_boot=200, seed=7)
    assert ci["auprc"] == pytest.approx(tuple(np.quantile(ap, [0.025, 0.975])), abs=1e-12)
    assert ci["fpr_at_95_tpr"] == pytest.approx(tuple(np.quantile(fpr, [0.025, 0.975])), abs=1e-12)
    lo, hi = ci["auprc"]
    assert lo < anomaly_metrics(*map(np.concatenate, zip(*frames)))["auprc"] < hi and hi - lo > 0.02
    # the same seed gives the same interval; another seed another one
    assert B.bootstrap_ci(st, ("auprc",), n_boot=200, seed=7) == {"auprc": ci["auprc"]}
    assert B.bootstrap_ci(st, ("auprc",), n_boot=200, seed=8)["auprc"] != ci["auprc"]


def test_quantile_bins_when_scores_are_many():
    rng = np.random.default_rng(2)
    frames = _frames(rng, F=8, n=2000)
    st = _stats(frames, max_bins=512)
    assert len(st["edges"]) <= 512
    s, y = map(np.concatenate, zip(*frames))
    exact = anomaly_metrics(s, y)
    ones = np.ones((1, len(frames)), np.int64)
    binned = {k: v[0] for k, v in B.pixel_metrics(st, ones).items()}
    # 256 quantile bins per class: within a bin the pixels tie; measured here 0.0016 AuPRC, 0.0008
    # FPR95
    assert binned["auprc"] == pytest.approx(exact["auprc"], abs=0.005)
    assert binned["fpr_at_95_tpr"] == pytest.approx(exact["fpr_at_95_tpr"], abs=0.005)
    # the histograms hold every valid pixel of every frame
    assert st["pos"].sum() == (y == 1).sum() and st["neg"].sum() == (y == 0).sum()
    np.testing.assert_array_equal(st["pos"].sum(1), [(f[1] == 1).sum() for f in frames])
    # every score falls in the bin whose lower edge is the highest one at or below it
    e = histogram_edges(np.sort(s[y == 1]), np.sort(s[y == 0]), 512)
    assert e[0] == s[y < 2].min()


def test_paired_test_tells_noise_from_a_real_difference():
    rng = np.random.default_rng(4)
    frames = _frames(rng, F=10, n=300, shift=1.5, decimals=1)
    good = _stats(frames)
    # exchangeable methods: the same signal with independent noise of one distribution
    a = [((s + rng.normal(size=s.shape)).round(1).astype(np.float32), y) for s, y in frames]
    b = [((s + rng.normal(size=s.shape)).round(1).astype(np.float32), y) for s, y in frames]
    bad = _stats([(rng.normal(size=s.shape).round(1).astype(np.float32), y) for s, y in frames])
    real = B.paired_bootstrap(good, bad, "auprc", n_boot=300)
    s, y = map(np.concatenate, zip(*frames))
    assert real["significant"] == 1.0 and real["lo"] > 0 and real["p_value"] < 0.01
    assert real["diff"] == pytest.approx(
        anomaly_metrics(s, y)["auprc"] - B.pixel_metrics(bad, np.ones((1, 10)))["auprc"][0]
    )
    noise = B.paired_bootstrap(_stats(a), _stats(b), "auprc", n_boot=300)
    assert noise["significant"] == 0.0 and noise["lo"] < 0 < noise["hi"] and noise["p_value"] > 0.05
    # the p-value is the two-sided tail share of the resampled differences at 0
    d = (
        B.pixel_metrics(_stats(a), B.multiplicities(10, 300))["auprc"]
        - B.pixel_metrics(_stats(b), B.multiplicities(10, 300))["auprc"]
    )
    assert noise["p_value"] == pytest.approx(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
    # frames are matched by stem, whatever their order
    shuffled = {k: (v[::-1] if np.ndim(v) and len(v) == 10 else v) for k, v in bad.items()}
    assert B.paired_bootstrap(good, shuffled, "auprc", n_boot=300) == pytest.approx(real)
    other = dict(bad, stems=np.array([f"x{i}" for i in range(10)]))
    with pytest.raises(ValueError, match="same frames"):
        B.paired_bootstrap(good, other)


class BlobData(ListData):
    """Frames with mid-grey anomaly blobs, which the toy model maps to flat logits and so to high
    MaxLogit scores: its components are found, mostly (labels are not iid noise)."""

    def __init__(self, n=4, seed=0):
        rng = np.random.default_rng(seed)
        self.items, self.skipped = [], []
        for i in range(n):
            lab = np.zeros((12, 20), np.uint8)
            for _ in range(2):
                r, c = rng.integers(0, 9), rng.integers(0, 16)
                lab[r : r + rng.integers(2, 4), c : c + rng.integers(2, 5)] = 1
            lab[11, :] = 255
            img = rng.integers(60, 120, (3, 12, 20))
            img[:, lab == 1] = rng.integers(
                95, 150, (3, int((lab == 1).sum()))
            )  # mid-grey: flat logits
            self.items.append(
                {
                    "image": torch.as_tensor(img, dtype=torch.uint8),
                    "label": torch.as_tensor(lab),
                    "stem": str(i),
                }
            )


def test_evaluation_stores_frame_stats_and_component_metrics(tmp_path, monkeypatch):
    from anomalyseg import evaluate
    from anomalyseg import scores as S
    from anomalyseg.evaluate import evaluate_anomaly
    from anomalyseg.results import load_frame_stats, read_results

    # 12x20 toy frames: SMIYC's filters (500 / 100 px) would leave nothing, so a small track
    track = C.Track("toy", 4, 3)
    monkeypatch.setitem(evaluate.SMIYC_TRACKS, "RoadAnomaly21", track)

    seg, data = ToySegmenter(), BlobData(4)
    path = tmp_path / "results.csv"
    evaluate_anomaly(
        seg,
        {"RoadAnomaly21": data, "fs_static": ListData(3, seed=2)},
        scores=("msp", "max_logit"),
        results_path=path,
        progress=False,
    )
    assert seg.forwards == 7
    stored = read_results(path)
    ra = stored[(stored.dataset == "RoadAnomaly21") & (stored.score == "max_logit")].iloc[0]
    st = load_frame_stats(path, ra)
    assert list(st["stems"]) == ["0", "1", "2", "3"]
    # Independent check of the component metrics: score maps from the scores module, the best-F1
    # threshold from sklearn's PR curve, SMIYC's anomaly-track filters (the toy frames are at
    # native size).
    maps = [
        S.max_logit(seg.class_map(seg.raw_outputs(it["image"]), (12, 20))).numpy()
        for it in data.items
    ]
    labels = [it["label"].numpy() for it in data.items]
    keep = np.concatenate([lab.ravel() for lab in labels]) < 2
    y = np.concatenate([lab.ravel() for lab in labels])[keep]
    s = np.concatenate([m.ravel() for m in maps])[keep]
    prec, rec, thr = precision_recall_curve(y, s)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-300)
    t = thr[np.flatnonzero(f1 == f1.max())[-1]]
    assert float(st["best_f1_threshold"]) == pytest.approx(t)
    want = C.component_metrics(maps, labels, t, track)
    assert want["components_gt"] > 2 and want["components_pred"] > 2 and 0 < want["f1_mean"] < 1
    assert (ra.siou_gt, ra.ppv, ra.f1_mean) == pytest.approx(
        (want["siou_gt"], want["ppv"], want["f1_mean"]), rel=1e-12
    )
    assert int(st["n_gt"].sum()) == want["components_gt"]
    # fs_static is not a SMIYC track: no component metrics, but histograms and size recall
    fs = stored[(stored.dataset == "fs_static") & (stored.score == "msp")].iloc[0]
    assert np.isnan(fs.siou_gt)
    st = load_frame_stats(path, fs)
    assert "tp" not in st and st["size_detected"].sum() <= st["size_pixels"].sum()
    # the detected share of anomaly pixels at the 95%-TPR threshold is the pooled TPR (>= 0.95)
    assert 0.95 <= st["size_detected"].sum() / st["size_pixels"].sum() < 1.0
    # temperature sweeps store no frame statistics
    df2 = evaluate_anomaly(
        seg,
        {"fs_static": ListData(3, seed=2)},
        scores=("msp",),
        results_path=path,
        progress=False,
        frame_stats=False,
    )
    assert df2.frame_stats.isna().all() or (df2.frame_stats.fillna("") == "").all()


def test_interval_table_marks_ties_with_the_best(tmp_path):
    import pandas as pd

    from anomalyseg.results import save_frame_stats

    rng = np.random.default_rng(4)
    frames = _frames(rng, F=10, n=300, shift=1.5, decimals=1)
    methods = {
        "good": frames,
        "twin": [
            ((s + rng.normal(size=s.shape) * 0.3).round(1).astype(np.float32), y) for s, y in frames
        ],
        "bad": [(rng.normal(size=s.shape).round(1).astype(np.float32), y) for s, y in frames],
    }
    arrays, rows = {}, []
    for name, fr in methods.items():
        st = _stats(fr)
        arrays.update({f"{name}|{k}": v for k, v in st.items()})
        s, y = map(np.concatenate, zip(*fr))
        m = anomaly_metrics(s, y)
        rows.append(
            dict(
                model=name,
                score="msp",
                dataset="RoadAnomaly21",
                auprc=m["auprc"],
                fpr_at_95_tpr=m["fpr_at_95_tpr"],
                frame_stats=f"frame_stats/r/RoadAnomaly21.npz#{name}",
            )
        )
    rows.append(
        dict(
            model="old",
            score="msp",
            dataset="RoadAnomaly21",
            auprc=0.5,
            fpr_at_95_tpr=0.5,
            frame_stats="",
        )
    )
    save_frame_stats(tmp_path / "results.csv", "r", "RoadAnomaly21", arrays)
    table = B.interval_table(pd.DataFrame(rows), tmp_path / "results.csv", n_boot=300)
    cell = table.loc[("good", "msp"), "SMIYC RA-21 AuPRC"]
    lo, hi = B.bootstrap_ci(arrays_of(arrays, "good"), ("auprc",), n_boot=300)["auprc"]
    assert cell == f"{100 * rows[0]['auprc']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (best)"
    twin = B.paired_bootstrap(
        arrays_of(arrays, "good"), arrays_of(arrays, "twin"), "auprc", n_boot=300
    )
    assert table.loc[("twin", "msp"), "SMIYC RA-21 AuPRC"].endswith(" (~)") == (
        twin["significant"] == 0.0
    )
    assert not table.loc[("bad", "msp"), "SMIYC RA-21 AuPRC"].endswith(
        ")"
    )  # significantly worse: no mark
    assert (
        table.loc[("old", "msp"), "SMIYC RA-21 AuPRC"] == "50.0"
    )  # no stored statistics: the value alone
    # a later row with the same figures but no statistics (a temperature sweep's T = 1 row) borrows
    # those of its twin when the store is given
    df = pd.DataFrame(rows + [dict(rows[0], frame_stats="")])
    shown = df.drop_duplicates(subset=["model", "score", "dataset"], keep="last")
    assert (
        B.interval_table(shown, tmp_path / "results.csv", n_boot=300).loc[
            ("good", "msp"), "SMIYC RA-21 AuPRC"
        ]
        == f"{100 * rows[0]['auprc']:.1f}"
    )
    assert (
        B.interval_table(shown, tmp_path / "results.csv", n_boot=300, store=df).loc[
            ("good", "msp"), "SMIYC RA-21 AuPRC"
        ]
        == cell
    )
    changed = pd.DataFrame(rows + [dict(rows[0], frame_stats="", auprc=rows[0]["auprc"] + 0.01)])
    assert (
        "["
        not in B.interval_table(
            changed.drop_duplicates(subset=["model", "score", "dataset"], keep="last"),
            tmp_path / "results.csv",
            n_boot=300,
            store=changed,
        ).loc[("good", "msp"), "SMIYC RA-21 AuPRC"]
    )
    # FPR95: lower is better
    fprs = {r["model"]: r["fpr_at_95_tpr"] for r in rows[:3]}
    best = min(fprs, key=fprs.get)
    assert table.loc[(best, "msp"), "SMIYC RA-21 FPR95"].endswith("(best)")


def arrays_of(arrays: dict, name: str) -> dict:
    return {k.split("|", 1)[1]: v for k, v in arrays.items() if k.startswith(name + "|")}
