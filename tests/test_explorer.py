"""The explorer's numbers by hand, and the widget built headless from a store of stored maps."""

from __future__ import annotations

import numpy as np
import pytest

from anomalyseg.report.explorer import (
    OVERLAY_COLORS,
    explore,
    stored_runs,
    threshold_view,
    tpr_threshold,
)
from anomalyseg.results import load_maps, read_results
from test_report import make_store

SCORE = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.6], [0.5, 0.95, 0.3]])
LABEL = np.array([[1, 1, 0], [0, 1, 255], [1, 0, 255]], dtype=np.uint8)


def test_threshold_view_counts_by_hand():
    v = threshold_view(SCORE, LABEL, 0.6)
    # >= 0.6: (0,0) 1 TP, (0,1) 1 TP, (1,0) 0 FP, (1,2) void, (2,1) 0 FP; below: (1,1) 1 FN, (2,0) 1
    # FN.
    assert (v["tp"], v["fp"], v["fn"]) == (2, 2, 2)
    assert v["precision"] == 2 / 4 and v["recall"] == 2 / 4
    assert (
        tuple(v["overlay"][0, 0]) == OVERLAY_COLORS["tp"]
        and tuple(v["overlay"][1, 0]) == OVERLAY_COLORS["fp"]
    )
    assert (
        tuple(v["overlay"][1, 1]) == OVERLAY_COLORS["fn"]
        and tuple(v["overlay"][0, 2]) == OVERLAY_COLORS["tn"]
    )
    assert (
        tuple(v["overlay"][1, 2]) == OVERLAY_COLORS["void"]
    )  # void stays black even above the threshold
    high = threshold_view(SCORE, LABEL, 1.0)
    assert (
        (high["tp"], high["fp"], high["fn"]) == (0, 0, 4)
        and np.isnan(high["precision"])
        and high["recall"] == 0
    )


def test_default_threshold_reaches_95_percent_recall():
    # 4 anomaly pixels score 0.9, 0.8, 0.2, 0.5: 95% of 4 needs all 4, so the 4th highest, 0.2.
    assert tpr_threshold(SCORE, LABEL) == pytest.approx(0.2)
    assert threshold_view(SCORE, LABEL, tpr_threshold(SCORE, LABEL))["recall"] == 1.0
    assert tpr_threshold(SCORE, LABEL, tpr=0.5) == pytest.approx(0.8)  # 2 of 4
    twenty = np.arange(20, dtype=np.float32)
    assert (
        tpr_threshold(twenty, np.ones(20, np.uint8)) == 1.0
    )  # 19 of 20 pixels, not 20 by rounding error
    with pytest.raises(ValueError, match="same shape"):
        threshold_view(SCORE, LABEL[:2], 0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("explorer"))


def test_widget_shows_the_stored_frame(store):
    runs = stored_runs(store)
    assert list(runs) == ["RoadAnomaly21", "fs_static"]
    df = read_results(store)
    eomt_runs = list(df[(df.model == "eomt") & (df.dataset == "RoadAnomaly21")].run_id.unique())
    assert list(runs["RoadAnomaly21"])[:2] == eomt_runs[::-1]  # latest first
    box = explore(store)
    dataset, run, frame, score = box.children[0].children + box.children[1].children
    slider, numbers = box.children[2], box.children[3]
    assert (dataset.value, run.value, frame.value) == ("RoadAnomaly21", eomt_runs[-1], "0")
    f = load_maps(store, run.value, dataset.value)["0"]
    m = f["maps"][score.value]
    assert slider.min == pytest.approx(m.min()) and slider.max == pytest.approx(m.max())
    assert slider.value == pytest.approx(tpr_threshold(m, f["label"]), abs=slider.step)
    # Moving the slider redraws with that frame's counts.
    slider.value = float(np.median(m))
    v = threshold_view(m, f["label"], slider.value)
    assert (
        box.state["view"]["tp"] == v["tp"]
        and f"TP {v['tp']} · FP {v['fp']} · FN {v['fn']}" in numbers.value
    )
    assert box.children[4].value[:8] == b"\x89PNG\r\n\x1a\n"
    # Switching run and frame reloads the maps and resets the threshold to that frame's 95% TPR.
    run.value = eomt_runs[0]
    assert [s for _, s in score.options] == ["msp", "max_logit", "rba", "anomaly_head"]
    frame.value = "2"
    f = load_maps(store, run.value, dataset.value)["2"]
    assert slider.value == pytest.approx(
        tpr_threshold(f["maps"][score.value], f["label"]), abs=slider.step
    )


def test_empty_store_gives_a_message(tmp_path):
    w = explore(tmp_path / "results.csv")
    assert "No stored score maps" in w.value
