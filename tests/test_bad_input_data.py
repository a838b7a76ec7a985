"""Data readers under a new user's folders (issue 12): 16-bit frames, other spellings, upper-case
suffixes, half-copied Cityscapes, killed generators, damaged COCO annotations."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalyseg.data.benchmarks import AnomalyBenchmark, load_benchmarks
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.data.io import DatasetError, read_rgb
from anomalyseg.labels import BENCHMARKS

REPO = Path(__file__).resolve().parents[1]


def _frame(folder: Path, stem: str, image: Image.Image, mask_suffix: str = ".png"):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels_masks").mkdir(parents=True, exist_ok=True)
    image.save(folder / "images" / f"{stem}.png")
    mask = np.zeros((image.height, image.width), np.uint8)
    mask[1:3, 1:3] = 1
    Image.fromarray(mask).save(folder / "labels_masks" / f"{stem}{mask_suffix}", format="PNG")


def test_16_bit_grayscale_frame_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 83, (8, 12)).astype(np.uint16)  # mean about 41
    image = Image.fromarray((gray8 * 257).astype("<u2"))  # PIL: mode I;16
    _frame(tmp_path / "fs_static", "0", image)
    path = tmp_path / "fs_static" / "images" / "0.png"
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # what PIL makes of a 16-bit grayscale PNG
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 12, 3)
    np.testing.assert_array_equal(rgb[..., 0], gray8)  # v * 257 / 257
    assert (rgb[..., 0] == rgb[..., 2]).all()
    item = AnomalyBenchmark(tmp_path / "fs_static")[0]
    np.testing.assert_array_equal(
        item["image"].numpy(), np.broadcast_to(gray8, (3, 8, 12))
    )  # mean was ~254


def test_smiyc_spelling_is_read_and_unknown_folders_are_named(tiny_data, tmp_path):
    root = tmp_path / "Validation_Dataset"
    for name in BENCHMARKS:
        target = "RoadObstacle21" if name == "RoadObsticle21" else name
        shutil.copytree(tiny_data / "Validation_Dataset" / name, root / target)
    (root / "LostAndFound_raw").mkdir()
    with pytest.warns(UserWarning, match=r"\['LostAndFound_raw'\]"):
        found = load_benchmarks(root)
    assert list(found) == list(BENCHMARKS)  # five, under the course's names
    assert found["RoadObsticle21"].folder.name == "RoadObstacle21"
    assert found["RoadObsticle21"].spec is BENCHMARKS["RoadObsticle21"]
    assert list(load_benchmarks(root, ["RoadObstacle21"])) == ["RoadObsticle21"]
    shutil.copytree(root / "RoadObstacle21", root / "RoadObsticle21")
    with pytest.raises(DatasetError, match="two spellings"):
        load_benchmarks(root)


def test_upper_case_mask_suffix_pairs_up(tmp_path):
    image = Image.fromarray(np.full((6, 6, 3), 90, np.uint8))
    _frame(tmp_path / "RoadAnomaly21", "0", image, mask_suffix=".PNG")
    _frame(tmp_path / "RoadAnomaly21", "1", image)
    ds = AnomalyBenchmark(tmp_path / "RoadAnomaly21")
    assert [s for s, _, _ in ds.frames] == ["0", "1"] and int(ds[0]["label"].max()) == 1


def _cityscapes_images(root: Path, cities=("aachen", "bremen")):
    for city in cities:
        d = root / "leftImg8bit" / "val" / city
        d.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(
            d / f"{city}_000000_000019_leftImg8bit.png"
        )


def test_cityscapes_hints_say_what_is_there(tmp_path):
    _cityscapes_images(tmp_path)
    with pytest.raises(DatasetError) as info:  # no gtFine at all
        CityscapesSegmentation(tmp_path, "val")
    assert f"No Cityscapes labels at {tmp_path / 'gtFine' / 'val'}" in str(info.value)
    assert "has *_gtFine_labelIds.png" not in str(info.value)

    (tmp_path / "gtFine" / "val" / "aachen").mkdir(parents=True)  # one city copied, and empty
    with pytest.raises(DatasetError) as info:
        CityscapesSegmentation(tmp_path, "val")
    assert "['bremen']" in str(info.value) and "has *_gtFine_labelIds.png" not in str(info.value)

    (tmp_path / "gtFine" / "val" / "bremen").mkdir()
    with pytest.raises(
        DatasetError
    ) as info:  # cities there, no labels of any kind: no claim about labelIds
        CityscapesSegmentation(tmp_path, "val")
    assert "has *_gtFine_labelIds.png" not in str(info.value) and "csCreateTrainIdLabelImgs" in str(
        info.value
    )

    for city in ("aachen", "bremen"):
        Image.fromarray(np.zeros((8, 16), np.uint8)).save(
            tmp_path / "gtFine" / "val" / city / f"{city}_000000_000019_gtFine_labelIds.png"
        )
    with pytest.raises(DatasetError, match=r"has \*_gtFine_labelIds.png but no"):
        CityscapesSegmentation(tmp_path, "val")


def test_stale_partial_folders_of_make_data_are_removed(tmp_path):
    from anomalyseg.data.synthetic import make_data

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = (
        tmp_path / f".tiny.partial-{dead.pid}-abcd1234"
    )  # left by a make-data killed with SIGKILL
    older = tmp_path / ".tiny.partial-x7k2m9q1"  # the former naming, without a pid
    alive = tmp_path / f".tiny.partial-{os.getpid()}-efgh5678"  # a run still going on
    for d in (stale, older, alive):
        (d / "cityscapes").mkdir(parents=True)
    make_data(tmp_path / "tiny", preset="tiny", progress=False, prepare_coco=False)
    assert not stale.exists() and not older.exists() and alive.exists()
    assert (tmp_path / "tiny" / "EMBEDDED_DATA.json").is_file()


def test_make_data_stopped_by_sigterm_leaves_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "anomalyseg.cli",
            "make-data",
            "--preset",
            "demo",
            "--out",
            str(tmp_path / "demo"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600  # generous: a loaded CI machine takes long to import
    while (
        not list(tmp_path.glob(".demo.partial-*"))
        and time.time() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.2)
    assert list(tmp_path.glob(".demo.partial-*")), "make-data never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_truncated_coco_annotations_are_named(tiny_data, tmp_path):
    from anomalyseg.data.coco import prepare_coco_ood

    coco = tmp_path / "coco"
    shutil.copytree(tiny_data / "coco", coco)
    ann = coco / "annotations" / "instances_train2017.json"
    ann.write_text(ann.read_text()[:200])
    with pytest.raises(ValueError) as info:
        prepare_coco_ood(coco, max_images=2)
    assert str(ann) in str(info.value) and "truncated" in str(info.value)


def test_yaml_syntax_error_and_unknown_params_are_refused(tmp_path):
    from anomalyseg.pipeline import NOTEBOOKS, parameter_names, run_all

    bad = tmp_path / "params.yaml"
    bad.write_text("benchmarks_root: [unclosed\n")
    with pytest.raises(ValueError) as info:
        run_all(preset="tiny", params_file=bad, runs_dir=tmp_path / "runs")
    assert str(bad) in str(info.value) and "line" in str(info.value)
    typo = tmp_path / "typo.yaml"
    typo.write_text("benchmark_root: /data/Validation_Dataset\n")
    with pytest.raises(ValueError) as info:
        run_all(preset="tiny", params_file=typo, runs_dir=tmp_path / "runs")
    assert "benchmark_root" in str(info.value) and "benchmarks_root" in str(info.value)
    assert "benchmarks_root" in parameter_names()
    with pytest.raises(ValueError, match="05_anomaly_head.*02_eomt_eval|after"):
        run_all(preset="tiny", start_at="05", stop_after="02", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing written
    assert len(NOTEBOOKS) == 7
