"""ERFNet through the evaluation path on real photographs, against an independent recomputation.

The two real road frames of ``../shared/realdata/road_samples`` (1280x720, neither divisible by 32
nor 2:1) go through exactly what notebook 01 runs: ``AnomalyBenchmark`` -> ``ErfnetSegmenter`` ->
``evaluate_anomaly``. The reference recomputes the pooled metrics from the network's logits on each
frame with the course's own steps for the rest: the mask resized by PIL (``Resize((512, 1024),
NEAREST)``), MSP from the softmax over the 19 classes, and sklearn / the ood-metrics FPR95 rule on
the pooled valid pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomalyseg.data.benchmarks import AnomalyBenchmark
from anomalyseg.evaluate import evaluate_anomaly
from anomalyseg.models.erfnet import ERFNet, ErfnetSegmenter
from anomalyseg.report.tables import chance_table
from anomalyseg.results import load_maps, read_results

SIZE = (512, 1024)  # the course's evaluation size (H, W)
SCORES = ("msp", "max_logit", "max_entropy", "energy")


@pytest.fixture(scope="module")
def erfnet_on_photos(realdata):
    """A random ERFNet whose BatchNorm statistics are set on the two photos, so that its logits vary
    over the frame the way a trained network's do (at init, eval-mode BN leaves them nearly
    flat)."""
    torch.manual_seed(0)
    model = ERFNet(20)
    bench = AnomalyBenchmark(realdata)
    seg = ErfnetSegmenter(model, checkpoint="random-bn-on-photos", input_size=SIZE)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():  # statistics at half size: same frames, a quarter of the cost
        images = torch.stack([bench[i]["image"] for i in range(len(bench))])
        model(ErfnetSegmenter(model, input_size=(256, 512)).preprocess(images))
    model.eval()
    return seg, bench


@pytest.fixture(scope="module")
def evaluated(erfnet_on_photos, tmp_path_factory):
    """One ``evaluate_anomaly`` run of the four scores on the photos, stored in a fresh results
    store."""
    seg, bench = erfnet_on_photos
    store = tmp_path_factory.mktemp("store") / "results" / "results.csv"
    rows = evaluate_anomaly(
        seg,
        {"road_samples": bench},
        scores=SCORES,
        results_path=store,
        run_id="erfnet-photos",
        progress=False,
    )
    return rows, store


def test_photos_go_through_the_evaluation_path(erfnet_on_photos, evaluated):
    _, bench = erfnet_on_photos
    rows, store = evaluated
    assert len(bench) == 2 and not bench.skipped
    assert sorted(rows.score) == sorted(SCORES)
    for col in ("auprc", "fpr_at_95_tpr", "auroc"):
        assert rows[col].map(math.isfinite).all() and rows[col].between(0, 1).all(), col
    assert (rows.frames_used == 2).all() and (rows.eval_size == "512x1024").all()
    assert len(read_results(store)) == len(SCORES)
    # Maps are stored at the network's input size, whatever the photo's size was.
    maps = load_maps(store, "erfnet-photos", "road_samples")
    assert sorted(maps) == sorted(stem for stem, _, _ in bench.frames)
    for frame in maps.values():
        assert frame["image"].shape == (3, *SIZE) and frame["label"].shape == SIZE
        assert set(frame["maps"]) == set(SCORES)
        for m in frame["maps"].values():
            assert m.shape == SIZE and np.isfinite(m).all() and m.std() > 0


def _course_fpr95(labels: np.ndarray, scores: np.ndarray) -> float:
    """ood-metrics' fpr_at_95_tpr (the course's): interpolate the ROC curve at TPR 0.95."""
    fpr, tpr, _ = roc_curve(labels, scores)
    if (tpr < 0.95).all():
        return 0.0
    if (tpr >= 0.95).all():
        return float(fpr[tpr >= 0.95].min())
    return float(np.interp(0.95, tpr, fpr))


def test_evaluate_anomaly_equals_sklearn_on_the_pooled_msp_pixels(erfnet_on_photos, evaluated):
    seg, bench = erfnet_on_photos
    rows, _ = evaluated
    pooled_scores, pooled_labels = [], []
    for i, (stem, _, mask_path) in enumerate(bench.frames):
        # The network's float32 logits on the frame (the course protocol caches them unrounded).
        logits = seg.forward_batch(bench[i]["image"][None])[0, :19].double().numpy()
        p = np.exp(logits - logits.max(0))
        msp = 1.0 - (p / p.sum(0)).max(0)
        # The course's target_transform: PIL Resize((512, 1024), NEAREST) of the mask.
        label = np.asarray(Image.open(mask_path).resize(SIZE[::-1], Image.NEAREST))
        valid = (label == 0) | (label == 1)
        pooled_scores.append(msp[valid])
        pooled_labels.append(label[valid])
    s, y = np.concatenate(pooled_scores), np.concatenate(pooled_labels)
    assert 0 < y.mean() < 1  # both classes present: the metrics below are well defined
    row = rows[rows.score == "msp"].iloc[0]
    # Another nearest-neighbour convention for the masks (torch's "nearest" takes floor(i * scale)
    # rather than PIL's pixel centres) moves AuPRC by about 1e-4 here, a 100 times this tolerance.
    assert row.auprc == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert row.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    # FPR95 reads one interpolated point of the curve, where float32 (ours) and float64 (here)
    # scores
    # order a few near-ties differently: a few 1e-6 apart.
    assert row.fpr_at_95_tpr == pytest.approx(_course_fpr95(y, s), abs=5e-5)


def test_chance_table_against_hand_counts(erfnet_on_photos, realdata):
    _, bench = erfnet_on_photos
    pos = tot = 0
    for _, _, mask_path in bench.frames:
        m = np.asarray(Image.open(mask_path))
        pos, tot = pos + int((m == 1).sum()), tot + int(((m == 0) | (m == 1)).sum())
    rows = pd.DataFrame(
        [
            dict(
                model="erfnet",
                dataset="road_samples",
                score="msp",
                temperature=1.0,
                temperature_on="pixel",
                auprc=0.30,
            ),
            dict(
                model="erfnet",
                dataset="road_samples",
                score="max_logit",
                temperature=1.0,
                temperature_on="pixel",
                auprc=0.10,
            ),
            dict(
                model="erfnet",
                dataset="road_samples",
                score="max_logit",
                temperature=1.0,
                temperature_on="pixel",
                auprc=0.40,
            ),
            dict(
                model="erfnet",
                dataset="road_samples",
                score="msp",
                temperature=2.0,
                temperature_on="pixel",
                auprc=0.99,
            ),
        ]
    )
    table = chance_table(rows, {"road_samples": bench}, ["msp", "max_logit"])
    r = table.loc["road_samples"]
    assert r["anomaly pixels"] == round(100 * pos / tot, 2)
    assert (r["msp"], r["max_logit"]) == (30.0, 40.0)  # T = 1 only; the later of two rows wins
    assert r["best score"] == "max_logit" and r["best / chance"] == round(0.40 / (pos / tot), 1)
    with pytest.raises(ValueError, match="one model"):
        chance_table(pd.concat([rows, rows.assign(model="eomt")]), {"road_samples": bench})
