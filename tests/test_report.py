"""The comparison report against the rows it reads: a store written by evaluate_anomaly /
evaluate_miou on a deterministic toy model, tables checked cell by cell, curves against sklearn,
files on disk."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import precision_recall_curve, roc_curve

from anomalyseg.evaluate import evaluate_anomaly, evaluate_miou
from anomalyseg.report import figures, names, selection, tables
from anomalyseg.results import read_results
from anomalyseg.scores import score_title
from test_evaluate import ListData, ToySegmenter

BENCHES = ("RoadAnomaly21", "fs_static")


class Toy(ToySegmenter):
    """The toy model under a course model name, with a learned score named like the real head."""

    extra_score_names = ("anomaly_head",)

    def __init__(self, name: str, seed: int, class_temperature: bool = True):
        super().__init__()
        self.name, self.supports_class_temperature = name, class_temperature
        self.proj = torch.randn(19, 3, generator=torch.Generator().manual_seed(seed))

    def extra_scores(self, raw, size):
        return {"anomaly_head": raw["logits"].float().std(0)}


def make_store(root: Path) -> Path:
    """ERFNet (MSP, MaxLogit, pixel sweep over 0.5/1/2, mIoU) and EoMT (MSP, MaxLogit, RbA, the
    anomaly head, then a class sweep of MSP, mIoU over class T) on two benchmarks; returns the
    store's path."""
    path = root / "results" / "results.csv"
    benches = {name: ListData(3, seed=i + 1) for i, name in enumerate(BENCHES)}
    city = ListData(2, seed=9, key="target", values=tuple(range(19)) + (255,))
    erfnet, eomt = Toy("erfnet", 1, class_temperature=False), Toy("eomt", 2)
    kw = dict(results_path=path, progress=False)
    evaluate_anomaly(
        erfnet, benches, scores=("msp", "max_logit"), temperatures=(0.5, 1.0, 2.0), **kw
    )
    evaluate_miou(erfnet, city, **kw)
    evaluate_anomaly(eomt, benches, scores=("msp", "max_logit", "rba", "anomaly_head"), **kw)
    evaluate_anomaly(
        eomt, benches, scores=("msp",), temperatures=(0.5, 1.0, 2.0), temperature_on="class", **kw
    )
    evaluate_miou(eomt, city, class_temperatures=(0.5, 1.0, 2.0), **kw)
    return path


# The (model, score) pairs of make_store's benchmark rows, in report order.
STORE_METHODS = [
    ("erfnet", "msp"),
    ("erfnet", "max_logit"),
    ("eomt", "msp"),
    ("eomt", "max_logit"),
    ("eomt", "rba"),
    ("eomt", "anomaly_head"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = make_store(tmp_path_factory.mktemp("report"))
    return path, read_results(path)


def _row(df, model, dataset, score, t=1.0):
    rows = df[(df.model == model) & (df.dataset == dataset) & (df.score == score)]
    rows = rows[rows.temperature.isna() | (rows.temperature == t)]
    return rows.iloc[-1]  # the latest row wins


def test_table_cells_are_the_rows(store):
    path, df = store
    table = tables.comparison_table(df)
    assert list(table.index) == STORE_METHODS
    assert list(table.columns) == [(d, m) for d in BENCHES for m in ("auprc", "fpr_at_95_tpr")] + [
        ("cityscapes_val", "miou")
    ]
    for model, score in table.index:
        for d in BENCHES:
            r = _row(df, model, d, score)
            assert table.loc[(model, score), (d, "auprc")] == r.auprc
            assert table.loc[(model, score), (d, "fpr_at_95_tpr")] == r.fpr_at_95_tpr
    # The EoMT MSP at T=1 of the later class sweep wins over the first run's (same value, later
    # row).
    miou = df[(df.score == "miou") & (df.temperature == 1.0)].groupby("model").miou.last()
    assert table.loc[("eomt", "anomaly_head"), ("cityscapes_val", "miou")] == miou["eomt"]
    assert table.loc[("erfnet", "msp"), ("cityscapes_val", "miou")] == miou["erfnet"]


def test_markdown_cells_are_percent_of_the_rows(store):
    _, df = store
    md = tables.comparison_markdown(tables.comparison_table(df)).splitlines()
    assert (
        md[0]
        == "| Method | Score | SMIYC RA-21 (AuPRC / FPR95) | FS Static (AuPRC / FPR95) | mIoU |"
    )
    cells = {
        tuple(c.strip() for c in line.strip("|").split("|")[:2]): [
            c.strip() for c in line.strip("|").split("|")[2:]
        ]
        for line in md[2:]
    }
    r = _row(df, "eomt", "fs_static", "rba")
    assert cells[("EoMT", "RbA")][1] == f"{100 * r.auprc:.2f} / {100 * r.fpr_at_95_tpr:.2f}"
    head = _row(df, "eomt", "RoadAnomaly21", "anomaly_head")
    assert (
        cells[("EoMT + anomaly head", "learned")][0]
        == f"{100 * head.auprc:.2f} / {100 * head.fpr_at_95_tpr:.2f}"
    )
    assert (
        cells[("ERFNet", "MaxLogit")][2]
        == f"{100 * _row(df, 'erfnet', 'cityscapes_val', 'miou').miou:.2f}"
    )


def test_latex_bolds_the_best_of_each_column(store):
    _, df = store
    table = tables.comparison_table(df)
    tex = tables.comparison_latex(table)
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
    assert r"\multicolumn{2}{c}{SMIYC RA-21}" in tex and r"\cmidrule(lr){3-4}" in tex
    body = [
        line
        for line in tex.splitlines()
        if line.endswith(r"\\") and any(s in line for s in ("MSP", "RbA", "MaxLogit", "learned"))
    ]
    assert len(body) == len(table)
    grid = [[c.strip() for c in line[:-2].split("&")][2:] for line in body]
    for j, (d, metric) in enumerate(table.columns):
        shown = [round(100 * v, 2) for v in table[(d, metric)]]
        best = max(shown) if metric != "fpr_at_95_tpr" else min(shown)
        for i, cell in enumerate(grid):
            bold = re.fullmatch(r"\\textbf\{(.*)\}", cell[j])
            assert float(bold.group(1) if bold else cell[j]) == shown[i]
            assert bool(bold) == (shown[i] == best), (d, metric, i)


def test_conventions_table_does_not_depend_on_the_stores_row_order(store):
    """run-all --jobs appends the rows of notebooks that run at once in either order: the table
    lists benchmarks in course order, scores in the score table's, the mIoU last, whatever the
    order of the rows it reads."""
    from anomalyseg.scores import SCORE_ORDER

    _, df = store
    table = tables.conventions_table(df, "eomt")
    learned_first = pd.concat([df[df.score == "anomaly_head"], df[df.score != "anomaly_head"]])
    pd.testing.assert_frame_equal(tables.conventions_table(learned_first, "eomt"), table)
    scores = [s for s in SCORE_ORDER if s in {"msp", "max_logit", "rba", "anomaly_head"}]
    assert list(table.index) == [
        (names.dataset_title(d), score_title(s)) for d in BENCHES for s in scores
    ] + [("Cityscapes val", "mIoU")]


def test_latex_marks_missing_cells_and_escapes_titles():
    base = dict(
        score="msp", temperature=1.0, temperature_on="pixel", miou=np.nan, protocol="course"
    )
    rows = pd.DataFrame(
        [
            dict(base, model="eomt", dataset="FS_LostFound_full", auprc=0.25, fpr_at_95_tpr=0.15),
            dict(base, model="erfnet", dataset="fs_static", auprc=0.07, fpr_at_95_tpr=0.42),
        ]
    )
    tex = tables.comparison_latex(tables.comparison_table(rows))
    assert r"FS L\&F" in tex
    assert r"ERFNet & MSP & -- & -- & \textbf{7.00} & \textbf{42.00} & -- \\" in tex


def test_pr_and_roc_points_lie_on_sklearns_curves(store):
    path, df = store
    data = {(c["model"], c["score"]): c for c in figures.curve_data(df, path, "fs_static")}
    assert set(data) == set(STORE_METHODS)
    seg, items = Toy("erfnet", 1, class_temperature=False), ListData(3, seed=2).items
    from anomalyseg.scores import msp

    scores = np.concatenate(
        [msp(seg.class_map(seg.raw_outputs(it["image"]), (12, 20))).numpy().ravel() for it in items]
    )
    labels = np.concatenate([it["label"].numpy().ravel() for it in items])
    keep = labels < 2
    precision, recall, _ = precision_recall_curve(labels[keep], scores[keep].astype(np.float32))
    fpr, tpr, _ = roc_curve(labels[keep], scores[keep].astype(np.float32), drop_intermediate=False)
    c = data[("erfnet", "msp")]
    ref_pr = np.c_[recall, precision]
    for point in np.c_[
        c["recall"], c["precision"]
    ]:  # each stored point is one of sklearn's thresholds
        assert np.abs(ref_pr - point).max(axis=1).min() < 1e-9, point
    for point in np.c_[c["fpr"], c["tpr"]]:
        assert np.abs(np.c_[fpr, tpr] - point).max(axis=1).min() < 1e-9, point


def test_temperature_sweeps_hold_only_swept_scores(store):
    _, df = store
    pixel = selection.temperature_sweeps(df, "pixel")
    assert set(zip(pixel.model, pixel.score)) == {("erfnet", "msp"), ("erfnet", "max_logit")}
    assert pixel[
        (pixel.model == "erfnet") & (pixel.score == "msp") & (pixel.dataset == "fs_static")
    ].temperature.tolist() == [0.5, 1.0, 2.0]
    cls = selection.temperature_sweeps(df, "class")
    assert set(zip(cls.model, cls.score)) == {("eomt", "msp")}
    with pytest.raises(ValueError, match="'pixel' or 'class'"):
        selection.temperature_sweeps(df, "logits")


def test_save_all_writes_every_figure(store, tmp_path):
    path, df = store
    written = figures.save_all(df, path, tmp_path / "figures")
    names = {p.name for p in written}
    for fig in (
        "bars_auprc",
        "bars_fpr_at_95_tpr",
        "pr_curves",
        "roc_curves",
        "temperature_pixel",
        "temperature_class",
        "miou_temperature",
        "qualitative",
    ):
        assert {f"{fig}.png", f"{fig}.pdf"} <= names, fig
    assert {"comparison_table.md", "comparison_table.tex"} <= names
    assert all(p.stat().st_size > 0 for p in written)
    md = (tmp_path / "figures" / "comparison_table.md").read_text()
    assert tables.comparison_markdown(tables.comparison_table(df)) in md


def test_save_all_saves_figures_already_drawn(store, tmp_path, monkeypatch):
    path, df = store
    drawn = {"bars_auprc": figures.bar_chart(df, "auprc"), "pr_curves": None}
    calls = []
    for name in ("bar_chart", "curves_figure"):
        make = getattr(figures, name)
        monkeypatch.setattr(
            figures, name, lambda *a, _m=make, **k: calls.append(a[-1]) or _m(*a, **k)
        )
    written = {p.name for p in figures.save_all(df, path, tmp_path / "f", drawn=drawn)}
    # the drawn bar chart is saved as it is, the empty entry skipped, the others drawn here
    assert calls == ["fpr_at_95_tpr", "roc"]
    assert {"bars_auprc.png", "bars_auprc.pdf", "roc_curves.png"} <= written
    assert "pr_curves.png" not in written
    again = {p.name for p in figures.save_all(df, path, tmp_path / "g")}
    assert again == written | {"pr_curves.png", "pr_curves.pdf"}


def test_qualitative_grid_shows_each_methods_best_map(store):
    path, df = store
    rows = df[df.dataset.isin(BENCHES) & (df.temperature == 1.0) & (df.score != "anomaly_head")]
    rows = rows.drop_duplicates(["model", "dataset", "score"], keep="last")
    best = {m: g.groupby("score").auprc.mean().idxmax() for m, g in rows.groupby("model")}
    assert selection.best_scores(df) == {
        "erfnet": [best["erfnet"]],
        "eomt": [best["eomt"], "anomaly_head"],
    }
    samples = figures.qualitative_samples(df, path, "fs_static", frames=2)
    assert [s["stem"] for s in samples] == ["FS Static · 0", "FS Static · 1"]
    assert list(samples[0]["maps"]) == [
        names.label("erfnet", best["erfnet"]),
        names.label("eomt", best["eomt"]),
        "EoMT + anomaly head",
    ]
    # The maps are the stored ones of the run that holds them (the class sweep stored only MSP).
    from anomalyseg.results import load_maps

    run = df[(df.model == "eomt") & (df.score == "anomaly_head")].run_id.iloc[-1]
    np.testing.assert_array_equal(
        samples[1]["maps"]["EoMT + anomaly head"],
        load_maps(path, run, "fs_static")["1"]["maps"]["anomaly_head"],
    )


def test_figures_cope_with_partial_and_empty_stores(store, tmp_path):
    path, df = store
    only_erfnet = selection.select_models(df, ["erfnet"])
    assert (
        figures.temperature_figure(only_erfnet, "class") is None
        and figures.miou_temperature_figure(only_erfnet) is None
    )
    assert figures.bar_chart(only_erfnet) is not None
    empty = read_results(tmp_path / "none.csv")
    assert (
        tables.comparison_table(empty).empty
        and tables.comparison_markdown(tables.comparison_table(empty)) == "_no results yet_"
    )
    assert figures.save_all(empty, tmp_path / "none.csv", tmp_path / "figures") == []
    with pytest.raises(ValueError, match=r"stored models: \['eomt', 'erfnet'\]"):
        selection.select_models(df, ["eomt_oe"])
    with pytest.raises(ValueError, match="not the results store"):
        tables.comparison_table(pd.DataFrame({"model": ["eomt"]}))


def test_missing_report_names_what_is_absent(store, tmp_path):
    _, df = store
    text = tables.missing_report(df)
    assert "EoMT + OE: no rows yet (notebook 04_outlier_exposure)" in text
    assert "EoMT + OE:" not in text.replace(
        "EoMT + OE: no rows yet", ""
    )  # one line for an absent model
    assert "ERFNet: no rows on SMIYC RO-21, FS L&F and Road Anomaly" in text
    assert "ERFNet: no MaxEntropy rows" in text and "EoMT: no MaxEntropy rows" in text
    assert "EoMT + hybrid anomaly head: no rows yet" in text and "EoMT + anomaly head:" not in text
    assert "EoMT: no pixel-temperature sweep" in text
    assert "EoMT: no calibration (ECE, fitted T) on the class temperature" in text
    assert (
        "class-temperature" not in text and "over class temperatures" not in text
    )  # both are stored
    assert "mIoU at T = 1" not in text
    assert "ERFNet: no mIoU" not in tables.missing_report(df, models=["erfnet"])
    assert "EoMT" not in tables.missing_report(df, models=["erfnet"])
    assert "empty" in tables.missing_report(read_results(tmp_path / "none.csv"))


# ----------------------------------------------------------------------------- notebook 06
@pytest.fixture
def data_root(tiny_data):
    return (
        tiny_data.parent
    )  # the session's tiny embedded data set: the workspace finds <data_root>/tiny


def _run_notebook06(out, data_root):
    import json

    import papermill as pm

    from anomalyseg.pipeline import notebooks_dir

    pm.execute_notebook(
        str(notebooks_dir() / "06_comparison_report.ipynb"),
        str(out / "06.ipynb"),
        parameters=dict(output_dir=str(out), preset="tiny", data_root=str(data_root)),
        cwd=str(notebooks_dir()),
        progress_bar=False,
    )
    nb = json.loads((out / "06.ipynb").read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return json.dumps(outputs)


@pytest.mark.slow
def test_notebook06_reports_a_filled_store(tmp_path, data_root):
    path = make_store(tmp_path)
    text = _run_notebook06(tmp_path, data_root)
    assert "EoMT + OE: no rows yet" in text and "image/png" in text
    figures = tmp_path / "figures"
    assert (
        (figures / "comparison_table.md")
        .read_text()
        .endswith(tables.comparison_markdown(tables.comparison_table(read_results(path))) + "\n")
    )
    assert {
        f"{n}.pdf" for n in ("bars_auprc", "pr_curves", "temperature_class", "qualitative")
    } <= {p.name for p in figures.iterdir()}


@pytest.mark.slow
def test_notebook06_runs_on_an_empty_store(tmp_path, data_root):
    text = _run_notebook06(tmp_path, data_root)
    assert (
        "The results store is empty" in text
        and "nothing to save yet" in text
        and "No stored score maps" in text
    )
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").iterdir())


# ----------------------------------------------------------------------------- notebook 04's tables
def _oe_rows(values):
    return pd.DataFrame(
        [dict(dataset=d, score=s, auprc=a, fpr_at_95_tpr=f) for (d, s), (a, f) in values.items()]
    )


def test_oe_tables_are_after_minus_before_in_points():
    before = _oe_rows(
        {
            ("RoadAnomaly21", "rba"): (0.10, 0.90),
            ("RoadAnomaly21", "msp"): (0.20, 0.80),
            ("fs_static", "rba"): (0.30, 0.50),
        }
    )
    after = _oe_rows(
        {
            ("RoadAnomaly21", "rba"): (0.35, 0.60),
            ("RoadAnomaly21", "msp"): (0.15, 0.85),
            ("fs_static", "msp"): (0.40, 0.40),
        }
    )
    delta = tables.delta_table(before, after)
    assert list(delta.index) == ["MSP", "RbA"]  # course order, display names
    assert list(delta.columns) == [
        ("SMIYC RA-21", "AuPRC"),
        ("SMIYC RA-21", "FPR95"),
        ("FS Static", "AuPRC"),
        ("FS Static", "FPR95"),
    ]
    assert (
        delta.loc["RbA", ("SMIYC RA-21", "AuPRC")] == 25.0
        and delta.loc["RbA", ("SMIYC RA-21", "FPR95")] == -30.0
    )
    assert delta.loc["MSP", ("SMIYC RA-21", "AuPRC")] == -5.0
    assert np.isnan(delta.loc["RbA", ("FS Static", "AuPRC")])  # no row after: no change to show
    rba = tables.before_after_table(before, after, "rba")
    assert list(rba.index) == ["SMIYC RA-21", "FS Static"]
    assert rba.loc["SMIYC RA-21"].to_dict() == {
        "AuPRC before": 10.0,
        "AuPRC after": 35.0,
        "AuPRC change": 25.0,
        "FPR95 before": 90.0,
        "FPR95 after": 60.0,
        "FPR95 change": -30.0,
    }
    assert rba.loc["FS Static", "AuPRC before"] == 30.0 and np.isnan(
        rba.loc["FS Static", "AuPRC after"]
    )
    miou = tables.miou_change_table(0.5, 0.4825)
    assert miou.loc["Cityscapes val"].to_dict() == {
        "mIoU before": 50.0,
        "mIoU after": 48.25,
        "change (points)": -1.75,
    }


# ----------------------------------------------------------------------- training curves and frames
def _write_log(run: Path, version: int, rows: list[dict]) -> None:
    folder = run / "logs" / f"version_{version}"
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)


def test_training_figure_draws_the_logged_values_of_each_run(tmp_path):
    """Panels by column (a ``*`` pattern takes what no panel names), one line per run, resumed
    versions joined: the drawn points are the log's values."""
    a, b = tmp_path / "a", tmp_path / "b"

    def step(s):
        return dict(
            step=s,
            train_loss=1 / (s + 1),
            train_loss_mask=0.5 / (s + 1),
            train_loss_outlier=0.1 * s,
        )

    _write_log(a, 0, [step(s) for s in range(5)])
    _write_log(a, 1, [step(s) for s in range(5, 8)])  # a resumed session
    _write_log(
        b,
        0,
        [
            dict(step=s, train_loss=2.0 - s, train_loss_mask=1.0, train_loss_outlier=np.nan)
            for s in range(3)
        ],
    )
    panels = {"terms": ["train_loss_*"], "outlier": ["train_loss_outlier"], "val": ["val_miou"]}
    fig = figures.training_figure({"a": a, "b": b}, panels)
    terms, outlier, val = fig.axes
    assert [line.get_label() for line in terms.lines] == [
        "a",
        "b",
    ]  # outlier term taken by its own panel
    x, y = terms.lines[0].get_data()
    assert list(x) == list(range(8)) and np.allclose(y, [0.5 / (s + 1) for s in range(8)])
    assert [line.get_label() for line in outlier.lines] == ["a"]  # b logged no outlier value
    assert np.allclose(outlier.lines[0].get_data()[1], [0.1 * s for s in range(8)])
    assert not val.lines and "val_miou not logged" in val.texts[0].get_text()
    smooth = figures.training_figure(a, {"loss": ["train_loss", "train_loss_mask"]}, smooth=True)
    raw, mean = smooth.axes[0].lines[
        :2
    ]  # faint raw values, then their running mean (window 8 // 10 = 1)
    assert np.allclose(raw.get_data()[1], mean.get_data()[1])
    assert [line.get_label() for line in smooth.axes[0].lines[1::2]] == ["train_loss", "mask"]
    with pytest.raises(FileNotFoundError, match="No training logs"):
        figures.training_figure(tmp_path / "none", {"loss": ["train_loss"]})


def test_frame_pictures_without_a_model(tmp_path):
    """Data preparation draws frames before any model exists: a segmentation figure without
    predictions has two columns; objects are shown cut out by their masks."""
    image = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)
    label = torch.zeros(4, 6, dtype=torch.long)
    assert len(figures.segmentation_figure([dict(image=image, label=label)] * 2).axes) == 4
    assert len(figures.segmentation_figure([dict(image=image, label=label, pred=label)]).axes) == 3
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1:3, 2:5] = True
    fig = figures.objects_figure([(image, mask)] * 3, n=6)
    assert len(fig.axes) == 3
    shown = fig.axes[0].images[0].get_array()
    assert np.array_equal(np.asarray(shown), (image * mask).permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="no objects"):
        figures.objects_figure([])
