"""The append-only results store, and the course's tables of its rows (``report.tables``)."""

import multiprocessing as mp

import pandas as pd
import pytest

from anomalyseg import results
from anomalyseg.protocol import describe
from anomalyseg.report import tables


def _row(**kw):
    base = dict(
        run_id="r1",
        model="erfnet",
        dataset="RoadAnomaly21",
        score="msp",
        temperature=1.0,
        temperature_on="pixel",
        auprc=0.291,
        fpr_at_95_tpr=0.62512,
        auroc=0.9,
        protocol="course",
    )
    base.update(kw)
    return base


def test_appends_never_overwrite(tmp_path):
    path = tmp_path / "results" / "results.csv"
    results.append_rows([_row()], path)
    first = path.read_bytes()
    results.append_rows([_row(run_id="r2", auprc=0.5)], path)
    assert path.read_bytes().startswith(first)
    df = results.read_results(path)
    assert list(df["run_id"]) == ["r1", "r2"] and df["auprc"].tolist() == [0.291, 0.5]
    assert not list(path.parent.glob("*.tmp"))


def test_unknown_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="auprcc"):
        results.append_rows([_row(auprcc=1.0)], tmp_path / "r.csv")


def _append_many(args):
    path, k = args
    for i in range(20):
        results.append_rows([_row(run_id=f"p{k}-{i}")], path)


def test_concurrent_appends_keep_every_row(tmp_path):
    # Each append reads the store and renames a new copy over it: a lock held by two processes at
    # once would lose rows. The lock file is removed by each holder, so waiters race for new ones.
    path = tmp_path / "results.csv"
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(path, k) for k in range(4)])
    df = results.read_results(path)
    assert len(df) == 80 and df["run_id"].nunique() == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no lock file left behind


def test_older_schema_keeps_its_rows(tmp_path):
    path = tmp_path / "results.csv"
    pd.DataFrame([{"run_id": "old", "model": "erfnet", "auprc": 0.1}]).to_csv(path, index=False)
    results.append_rows([_row(run_id="new")], path)
    df = results.read_results(path)
    assert list(df["run_id"]) == ["old", "new"]


def test_course_table_formats_percent_and_keeps_latest(tmp_path):
    path = tmp_path / "results.csv"
    results.append_rows(
        [_row(auprc=0.1), _row(dataset="RoadAnomaly", auprc=0.1242, fpr_at_95_tpr=0.8258)], path
    )
    results.append_rows(
        [_row(run_id="r2")], path
    )  # a re-run replaces the first RA21 figure in the table
    table = tables.anomaly_table(results.read_results(path))
    assert list(table.columns) == ["SMIYC RA-21", "Road Anomaly"]
    assert table.loc[("erfnet", "msp"), "SMIYC RA-21"] == "29.10 / 62.51"
    assert table.loc[("erfnet", "msp"), "Road Anomaly"] == "12.42 / 82.58"
    md = tables.markdown(table)
    assert "| erfnet | msp | 29.10 / 62.51 | 12.42 / 82.58 |" in md


def test_tables_with_titles_show_display_names_and_caption(tmp_path):
    path = tmp_path / "results.csv"
    results.append_rows(
        [
            _row(model="eomt", score="max_logit", auprc=0.25),
            _row(model="eomt", score="miou", dataset="cityscapes_val", miou=0.5),
        ],
        path,
    )
    df = results.read_results(path)
    md = tables.markdown(tables.with_titles(tables.anomaly_table(df)))
    assert md.splitlines()[0] == "**AuPRC / FPR95 (%) per benchmark, `course` convention**"
    assert "| Model | Score | SMIYC RA-21 |" in md and "| EoMT | MaxLogit | 25.00 / " in md
    assert md.endswith("_" + describe("course") + "_")
    md = tables.markdown(tables.with_titles(tables.miou_table(df)))
    assert md.splitlines()[0] == "**mIoU (%), `course` convention**"
    assert "| Model | Benchmark | T | mIoU |" in md
    assert "| EoMT | Cityscapes val | 1.0 | 50.00 |" in md


def test_run_ids_are_unique_and_sortable():
    ids = [results.new_run_id("eomt") for _ in range(50)]
    assert len(set(ids)) == 50 and all(i.startswith("eomt-") for i in ids)


def test_tables_prefer_exact_rows_and_course_score_order(tmp_path):
    from anomalyseg.report.tables import anomaly_table
    from anomalyseg.results import append_rows, latest, read_results

    path = tmp_path / "r.csv"
    base = dict(
        model="eomt",
        dataset="fs_static",
        temperature=1.0,
        temperature_on="pixel",
        fpr_at_95_tpr=0.5,
        protocol="course",
    )
    append_rows(
        [
            dict(base, score=s, auprc=a)
            for s, a in (("rba", 0.3), ("msp", 0.1), ("energy", 0.2), ("max_logit", 0.4))
        ],
        path,
    )
    append_rows(
        [dict(base, score="msp", auprc=0.11, metric_bins="2^20")], path
    )  # a later sweep row
    df = read_results(path)
    assert latest(df).set_index("score").auprc["msp"] == 0.1
    table = anomaly_table(df)
    assert [s for _, s in table.index] == ["msp", "max_logit", "energy", "rba"]
    assert table.iloc[0, 0].startswith("10.00")


def test_a_store_older_than_the_protocol_column_still_reads_and_counts_as_legacy(tmp_path):
    """A store written before the ``protocol`` column: it reads, its rows count as the pre-protocol
    evaluation (``legacy``) in tables, and a new row is appended beside them without rewriting
    them."""
    path = tmp_path / "results.csv"
    old_columns = [c for c in results.COLUMNS if c != "protocol"]
    old = pd.DataFrame([_row()]).reindex(columns=old_columns)
    old.to_csv(path, index=False)
    before = path.read_text()
    df = results.read_results(path)
    assert "protocol" not in df and len(df) == 1
    assert (
        len(results.protocol_rows(df, "legacy")) == 1 and results.protocol_rows(df, "course").empty
    )
    assert tables.anomaly_table(df).empty and not tables.anomaly_table(df, protocol="legacy").empty
    results.append_rows([_row(run_id="r2", auprc=0.5)], path)  # protocol="course"
    assert path.read_text().startswith(before.splitlines()[0].split(",notes")[0])
    df = results.read_results(path)
    assert list(df.run_id) == ["r1", "r2"]
    assert results.protocol_rows(df, "legacy").run_id.tolist() == ["r1"]
    assert results.protocol_rows(df, "course").run_id.tolist() == ["r2"]
    md = tables.markdown(tables.anomaly_table(df))
    assert "50.00" in md and "protocol `course`" in md
