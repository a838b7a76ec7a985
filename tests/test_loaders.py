"""Real loaders on generated folders: conversions, skipped frames and every documented error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalyseg.data.benchmarks import AnomalyBenchmark, anomaly_fraction, load_benchmarks
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.data.io import DatasetError
from anomalyseg.labels import BENCHMARKS


def _write_frame(folder: Path, stem: str, mask: np.ndarray, ext: str = "png", size=None):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels_masks").mkdir(parents=True, exist_ok=True)
    h, w = size or mask.shape
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(folder / "images" / f"{stem}.{ext}")
    Image.fromarray(mask.astype(np.uint8)).save(folder / "labels_masks" / f"{stem}.png")


def test_road_anomaly_maps_2_to_1_and_skips_empty_frames(tmp_path):
    folder = tmp_path / "RoadAnomaly"
    m = np.zeros((8, 16), np.uint8)
    m[2:4, 3:6] = 2
    _write_frame(folder, "0", m, "jpg")
    _write_frame(folder, "1", np.zeros((8, 16), np.uint8), "jpg")
    ds = AnomalyBenchmark(folder)
    assert len(ds) == 1 and ds.skipped == ["1"]
    item = ds[0]
    assert item["image"].shape == (3, 8, 16) and item["image"].dtype.is_floating_point is False
    assert set(np.unique(item["label"].numpy())) == {0, 1}
    assert int((item["label"] == 1).sum()) == 6
    assert anomaly_fraction(ds) == pytest.approx(6 / 128)


def test_unexpected_mask_values_are_an_error_not_remapped(tmp_path):
    folder = tmp_path / "RoadAnomaly"
    m = np.zeros((8, 16), np.uint8)
    m[0, 0] = 1  # RoadAnomaly stores 0/2 only
    _write_frame(folder, "0", m, "jpg")
    with pytest.raises(DatasetError, match=r"values \[1\].*RoadAnomaly"):
        AnomalyBenchmark(folder)


def test_lost_and_found_raw_ids_are_rejected(tmp_path):
    folder = tmp_path / "FS_LostFound_full"
    m = np.ones((8, 16), np.uint8)
    m[3, 3] = 37  # a raw Lost&Found object id
    _write_frame(folder, "0", m)
    with pytest.raises(DatasetError, match="Lost&Found"):
        AnomalyBenchmark(folder)


def test_unpaired_files_are_listed(tmp_path):
    folder = tmp_path / "fs_static"
    m = np.zeros((8, 16), np.uint8)
    m[1, 1] = 1
    _write_frame(folder, "0", m, "jpg")
    _write_frame(folder, "1", m, "jpg")
    (folder / "labels_masks" / "1.png").unlink()
    Image.fromarray(m).save(folder / "labels_masks" / "7.png")
    with pytest.raises(
        DatasetError, match=r"images without a mask: \['1'\].*masks without an image: \['7'\]"
    ):
        AnomalyBenchmark(folder)


def test_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels_masks"):
        AnomalyBenchmark(tmp_path / "RoadAnomaly21")
    with pytest.raises(FileNotFoundError, match="Validation_Dataset"):
        load_benchmarks(tmp_path / "nowhere")
    (tmp_path / "vd" / "fs_static").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="RoadObsticle21"):
        load_benchmarks(tmp_path / "vd", names=["RoadObsticle21"])


def test_size_mismatch_and_unreadable_image(tmp_path):
    folder = tmp_path / "RoadAnomaly21"
    m = np.zeros((8, 16), np.uint8)
    m[1, 1] = 1
    _write_frame(folder, "0", m, size=(10, 16))
    with pytest.raises(DatasetError, match="same size"):
        AnomalyBenchmark(folder)[0]
    _write_frame(folder, "0", m)
    (folder / "images" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="Could not read the image"):
        AnomalyBenchmark(folder)[0]


def test_colour_mask_is_refused(tmp_path):
    folder = tmp_path / "RoadAnomaly21"
    _write_frame(folder, "0", np.zeros((8, 16), np.uint8))
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(folder / "labels_masks" / "0.png")
    with pytest.raises(DatasetError, match="single-channel"):
        AnomalyBenchmark(folder)


def test_embedded_benchmarks_load_with_their_conventions(tiny_data):
    found = load_benchmarks(tiny_data / "Validation_Dataset")
    assert set(found) == set(BENCHMARKS)
    for name, ds in found.items():
        assert len(ds) >= 1, name
        exts = {p.suffix for _, p, _ in ds.frames}
        assert exts == {"." + BENCHMARKS[name].image_ext}, name
        label = ds[0]["label"].numpy()
        assert set(np.unique(label)) <= {0, 1, 255} and (label == 1).any()


def test_real_road_photos_through_the_same_loader(realdata):
    ds = AnomalyBenchmark(realdata)
    assert ds.spec.folder == "binary" and len(ds) == 2 and not ds.skipped
    sums = dict(
        line.split()[::-1]
        for line in (realdata / "SHA256SUMS").read_text().splitlines()
        if line.strip()
    )
    for stem, image_path, mask_path in ds.frames:
        for p in (image_path, mask_path):
            key = next(k for k in sums if k.endswith(f"{p.parent.name}/{p.name}"))
            assert hashlib.sha256(p.read_bytes()).hexdigest() == sums[key]
    item = ds[0]
    assert item["image"].shape == (3, 720, 1280)
    frac = float((item["label"] == 1).float().mean())
    assert 0.001 < frac < 0.5


def _write_cityscapes(root: Path, split="val", labels=True, value=7):
    img_dir, lbl_dir = root / "leftImg8bit" / split / "aachen", root / "gtFine" / split / "aachen"
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    stem = "aachen_000000_000019"
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
    if labels:
        Image.fromarray(np.full((8, 16), value, np.uint8)).save(
            lbl_dir / f"{stem}_gtFine_labelTrainIds.png"
        )
    else:
        Image.fromarray(np.full((8, 16), 26, np.uint8)).save(
            lbl_dir / f"{stem}_gtFine_labelIds.png"
        )
    return stem


def test_cityscapes_reads_train_ids(tmp_path):
    stem = _write_cityscapes(tmp_path)
    ds = CityscapesSegmentation(tmp_path, "val")
    item = ds[0]
    assert item["stem"] == stem and item["target"].dtype.is_floating_point is False
    assert int(item["target"].unique()) == 7


def test_cityscapes_without_train_ids_names_the_command(tmp_path):
    _write_cityscapes(tmp_path, labels=False)
    with pytest.raises(DatasetError, match="csCreateTrainIdLabelImgs"):
        CityscapesSegmentation(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train"):
        CityscapesSegmentation(tmp_path, "train")


def test_cityscapes_rejects_label_ids_stored_as_train_ids(tmp_path):
    _write_cityscapes(tmp_path, value=26)  # a labelIds value (car) where train ids are expected
    with pytest.raises(DatasetError, match=r"values \[26\]"):
        CityscapesSegmentation(tmp_path, "val")[0]


def test_embedded_cityscapes(tiny_data):
    ds = CityscapesSegmentation(tiny_data / "cityscapes", "val")
    t = ds[0]["target"].numpy()
    assert len(ds) >= 2 and t.ndim == 2 and set(np.unique(t)) <= set(range(19)) | {255}
