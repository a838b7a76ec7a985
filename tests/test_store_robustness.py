"""The results store and the evaluation under bad input (issue 12): nothing a user stored is ever
rewritten, work already done is kept, and every refusal names the file and the repair."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from anomalyseg import results
from anomalyseg.evaluate import (
    OutputCache,
    check_temperatures,
    collect_outputs,
    evaluate_anomaly,
    evaluate_miou,
    frame_name,
)
from anomalyseg.results import (
    ResultsStoreError,
    append_rows,
    check_store,
    merge_results,
    read_results,
)
from test_evaluate import ListData, ToySegmenter


def _row(**kw):
    base = dict(
        run_id="r1",
        model="erfnet",
        checkpoint="ck.pth",
        dataset="RoadAnomaly21",
        score="msp",
        temperature=1.0,
        temperature_on="pixel",
        auprc=0.291,
        fpr_at_95_tpr=0.62512,
        auroc=0.9,
    )
    return {**base, **kw}


def _side_files(path):
    return sorted(path.parent.glob(f"{path.stem}.unsaved-*{path.suffix}"))


# ----------------------------------------------------------------------------- data loss
def test_spreadsheet_resaved_store_is_read_and_never_rewritten(tmp_path):
    path = tmp_path / "results.csv"
    append_rows(
        [_row(), _row(run_id="r2", dataset="fs_static", auprc=0.5, fpr_at_95_tpr=0.25)], path
    )
    original = read_results(path)
    # what a spreadsheet in a decimal-comma locale writes back
    original.to_csv(path, sep=";", decimal=",", index=False)
    saved = path.read_bytes()
    assert b"0,291" in saved

    with pytest.raises(ResultsStoreError) as info:
        append_rows([_row(run_id="r3", auprc=0.7)], path)
    message = str(info.value)
    side = _side_files(path)
    assert len(side) == 1 and str(side[0]) in message and str(path) in message and "';'" in message
    assert path.read_bytes() == saved  # untouched
    assert read_results(side[0]).run_id.tolist() == ["r3"]

    # read what it can: the same figures as before the re-save
    again = read_results(path)
    for col in ("run_id", "model", "checkpoint", "dataset", "score"):
        assert again[col].tolist() == original[col].tolist()
    for col in ("temperature", "auprc", "fpr_at_95_tpr"):
        np.testing.assert_allclose(again[col], original[col])

    # the repair the message names: re-save with ',' and merge the side file
    again.to_csv(path, index=False)
    assert merge_results(side[0], path) == 1
    assert read_results(path).run_id.tolist() == ["r1", "r2", "r3"] and not _side_files(path)


def test_newline_only_store_takes_rows(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("\n")
    assert len(read_results(path)) == 0
    append_rows([_row()], path)  # was a bare StopIteration
    assert read_results(path).run_id.tolist() == ["r1"]


def test_random_bytes_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "results.csv"
    junk = b"\xff\xfe\x00\x9c" + bytes(range(256)) * 3
    path.write_bytes(junk)
    with pytest.raises(ResultsStoreError, match="not UTF-8") as info:
        read_results(path)
    assert str(path) in str(info.value)
    with pytest.raises(ResultsStoreError, match="unsaved"):
        append_rows([_row()], path)
    assert path.read_bytes() == junk and len(_side_files(path)) == 1
    with pytest.raises(ResultsStoreError, match=str(path)):
        check_store(path)


def test_extra_field_names_the_file_and_line(tmp_path):
    path = tmp_path / "results.csv"
    append_rows([_row(), _row(run_id="r2")], path)
    lines = path.read_text().splitlines()
    lines[2] += ",surplus"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResultsStoreError) as info:
        read_results(path)
    assert str(path) in str(info.value) and "[3]" in str(info.value)
    before = path.read_bytes()
    append_rows([_row(run_id="r3")], path)  # appending rewrites nothing, so it stays allowed
    assert path.read_bytes().startswith(before)


def test_older_and_newer_schemas_keep_every_row_byte_for_byte(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("run_id,model,auprc\nold,erfnet,0.1\nolder,eomt,0.2\n")
    append_rows([_row(run_id="new")], old)
    text = old.read_text()
    header, rest = text.split("\n", 1)
    assert header.startswith("run_id,model,auprc,") and set(results.COLUMNS) <= set(
        header.split(",")
    )
    assert rest.startswith("old,erfnet,0.1\nolder,eomt,0.2\n")  # earlier rows untouched
    df = read_results(old)
    assert df.run_id.tolist() == ["old", "older", "new"] and df.auprc.tolist() == [0.1, 0.2, 0.291]

    # a store written by a newer version (one more column, e.g. `protocol`): rows go in its order
    newer = tmp_path / "newer.csv"
    cols = list(results.COLUMNS) + ["protocol"]
    newer.write_text(
        ",".join(cols) + "\n" + ",".join("x" if c == "protocol" else "" for c in cols) + "\n"
    )
    before = newer.read_bytes()
    append_rows([_row(run_id="n2")], newer)
    assert newer.read_bytes().startswith(before)
    df = read_results(newer)
    assert df.protocol.fillna("").tolist() == ["x", ""] and df.run_id.fillna("").tolist() == [
        "",
        "n2",
    ]


def test_store_path_is_checked_before_any_work(tmp_path):
    with pytest.raises(ResultsStoreError, match="is a folder"):
        check_store(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(ResultsStoreError, match="is a file, not a folder"):
        check_store(tmp_path / "f" / "results.csv")
    seg = ToySegmenter()
    with pytest.raises(ResultsStoreError, match="is a folder"):
        evaluate_anomaly(
            seg, {"fs_static": ListData()}, scores=("msp",), results_path=tmp_path, progress=False
        )
    with pytest.raises(ResultsStoreError, match="is a folder"):
        evaluate_miou(
            seg, ListData(key="target", values=(0, 1, 255)), results_path=tmp_path, progress=False
        )
    assert seg.forwards == 0  # refused before computing


class _BadLastFrame(ListData):
    def __getitem__(self, i):
        if i == len(self) - 1:
            raise ValueError("The mask /x/2.png could not be read")
        return super().__getitem__(i)


def test_finished_benchmarks_are_stored_when_a_later_one_fails(tmp_path):
    path = tmp_path / "results.csv"
    with pytest.raises(ValueError, match="could not be read"):
        evaluate_anomaly(
            ToySegmenter(),
            {"fs_static": ListData(), "RoadAnomaly": _BadLastFrame(seed=1)},
            scores=("msp", "max_logit"),
            results_path=path,
            progress=False,
        )
    df = read_results(path)
    assert df.dataset.unique().tolist() == ["fs_static"] and len(df) == 2
    curves = path.parent / "curves" / f"{df.run_id.iloc[0]}.npz"
    assert curves.is_file()  # the stored rows' curves are there too


def test_benchmark_with_every_frame_skipped_keeps_the_others(tmp_path):
    path = tmp_path / "results.csv"
    empty = ListData(n=0)
    empty.skipped = ["0", "1", "2", "3"]
    with pytest.warns(UserWarning, match="all 4 frames were skipped"):
        rows = evaluate_anomaly(
            ToySegmenter(),
            {"RoadAnomaly": empty, "fs_static": ListData()},
            scores=("msp",),
            results_path=path,
            progress=False,
        )
    assert rows.dataset.tolist() == ["fs_static"] and read_results(path).dataset.tolist() == [
        "fs_static"
    ]


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), "warm"])
def test_temperatures_are_checked_where_they_enter(bad, tmp_path):
    seg = ToySegmenter()
    with pytest.raises(ValueError, match="temperature"):
        evaluate_anomaly(
            seg,
            {"fs_static": ListData()},
            temperatures=(1.0, bad),
            results_path=None,
            progress=False,
        )
    with pytest.raises(ValueError, match="temperature"):
        evaluate_anomaly(
            seg,
            {"fs_static": ListData()},
            temperatures=(bad,),
            temperature_on="class",
            results_path=None,
            progress=False,
        )
    with pytest.raises(ValueError, match="class temperature"):
        evaluate_miou(
            seg,
            ListData(key="target", values=(0, 1, 255)),
            class_temperatures=(bad,),
            results_path=None,
            progress=False,
        )
    assert seg.forwards == 0
    assert check_temperatures([0.5, 2]) == [0.5, 2.0]


# ----------------------------------------------------------------------- files that name themselves
def test_damaged_cache_file_is_evicted_and_recomputed(tmp_path):
    data = ListData()
    cache = OutputCache(tmp_path / "cache")
    seg = ToySegmenter()
    collect_outputs(seg, data, "fs_static", cache, progress=False)
    path = cache.path(seg, "fs_static", frame_name(data[1]))
    good = {k: v.clone() for k, v in load_file(path).items()}  # load_file maps the file
    path.write_bytes(path.read_bytes()[:-7])  # truncated by a crash or a full disk
    seg2 = ToySegmenter()
    with pytest.warns(UserWarning, match=str(path)):
        frames = collect_outputs(seg2, data, "fs_static", cache, progress=False)
    assert seg2.forwards == 1  # only the damaged frame
    torch.testing.assert_close(frames[1].raw["logits"], good["logits"])
    # damaged after being listed: the lazy read names the file and the fix
    path.write_bytes(b"garbage")
    with pytest.raises(OSError, match=f"{path}.*Delete it"):
        frames[1].raw


def test_a_frame_replaced_under_the_same_stem_is_computed_again(tmp_path):
    # Regenerated data (a new generator version, another seed) keep the file names: the cache
    # must answer the new pixels, not the outputs of the frame that had the name before.
    cache = OutputCache(tmp_path / "cache")
    old, new = ListData(seed=0), ListData(seed=1)
    assert [i["stem"] for i in old.items] == [i["stem"] for i in new.items]
    collect_outputs(ToySegmenter(), old, "fs_static", cache, progress=False)
    seg = ToySegmenter()
    frames = collect_outputs(seg, new, "fs_static", cache, progress=False)
    assert seg.forwards == len(new)
    for frame, item in zip(frames, new.items):
        torch.testing.assert_close(frame.raw["logits"], seg.raw_outputs(item["image"])["logits"])
    again = ToySegmenter()
    collect_outputs(again, new, "fs_static", cache, progress=False)
    assert again.forwards == 0  # the same pixels: read from the cache
    assert frame_name(old[0]) != frame_name(new[0])
    assert frame_name(old[0]) == frame_name({"stem": "0", "image": old[0]["image"].clone()})


def test_full_disk_leaves_no_temporary_file_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "results" / "results.csv"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", no_space)
    with pytest.raises(OSError) as info:
        evaluate_anomaly(
            ToySegmenter(),
            {"fs_static": ListData()},
            scores=("msp",),
            results_path=path,
            progress=False,
        )
    assert (
        info.value.errno == errno.ENOSPC and "maps" in str(info.value) and ".npz" in str(info.value)
    )
    assert (
        info.value.__context__ is None or info.value.__suppress_context__
    )  # one error, not three chained
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]

    from anomalyseg import cli

    described = cli.describe_error(info.value)
    assert "No space left on device" in described and "[Errno" not in described
    assert described.count(str(tmp_path)) == 1


def test_full_disk_while_appending_keeps_the_store(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    append_rows([_row()], path)
    before = path.read_bytes()
    real_fsync = results.os.fsync

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", no_space)
    with pytest.raises(OSError, match=f"could not write {path}"):
        append_rows([_row(run_id="r2")], path)
    monkeypatch.setattr(results.os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no lock file left
