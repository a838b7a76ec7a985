"""COCO OOD preparation and OODObjects, checked against pycocotools' own annToMask."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from anomalyseg.data.coco import OODObjects, prepare_coco_ood
from anomalyseg.data.io import DatasetError

H, W = 40, 50  # frame area 2000: with max_area_fraction 0.4 objects up to 800 px fit
SETTINGS = dict(min_area=60, max_area_fraction=0.4, progress=False)
REPO = Path(__file__).resolve().parents[1]
# pycocotools' own numpy-2 DeprecationWarning when the tests call annToMask as the reference.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(x0, y0, x1, y1, compressed=True):
    m = np.zeros((H, W), dtype=np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    m[y0, x0] = 0  # not a rectangle, so a bounding-box shortcut would be caught
    if not compressed:  # COCO stores crowd regions as uncompressed counts
        flat = m.flatten(order="F")
        counts, last, run = [], 0, 0
        for v in flat:
            if v != last:
                counts.append(run)
                last, run = v, 0
            run += 1
        counts.append(run)
        return {"size": [H, W], "counts": counts}
    rle = mask_utils.encode(m)
    return {"size": [H, W], "counts": rle["counts"].decode()}


def make_coco(root: Path) -> dict:
    """Seven frames; expected choice per frame written next to each (None = dropped)."""
    anns, images = [], []
    expect = {}

    def ann(image_id, cat, seg, crowd=0):
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat,
                "segmentation": seg,
                "iscrowd": crowd,
                "area": 0.0,
                "bbox": [0, 0, 1, 1],
            }
        )
        return len(anns)

    for i, name in enumerate(
        ["a.png", "b.jpg", "c.png", "d.png", "e.png", "f.png", "g.png"], start=1
    ):
        images.append({"id": i, "file_name": name, "height": H, "width": W})
    ann(1, 18, _box_polygon(2, 2, 20, 20))  # dog, but a person is in the frame -> dropped
    ann(1, 1, _box_polygon(25, 5, 30, 30))
    ann(2, 18, _box_polygon(2, 2, 12, 12))  # dog polygon, ~100 px
    expect[2] = ann(2, 44, _rle(15, 5, 40, 25))  # bottle RLE, ~499 px: the largest that fits
    ann(3, 44, _box_polygon(1, 1, 5, 5))  # only a tiny object -> dropped for size
    ann(4, 88, _box_polygon(0, 0, 49, 39))  # over 40% of the frame
    expect[4] = ann(4, 88, _box_polygon(10, 10, 25, 30))  # ~300 px
    ann(5, 3, _rle(0, 0, 30, 30, compressed=False), crowd=1)  # a crowd of cars still overlaps
    ann(6, 18, _rle(0, 0, 20, 30, compressed=False), crowd=1)  # crowd: never the pasted object
    expect[6] = ann(6, 18, _box_polygon(30, 5, 40, 20))
    expect[7] = ann(7, 62, _box_polygon(5, 20, 45, 35))
    data = {
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": c, "name": n, "supercategory": "x"}
            for c, n in [
                (1, "person"),
                (3, "car"),
                (18, "dog"),
                (44, "bottle"),
                (62, "chair"),
                (88, "teddy bear"),
            ]
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    rng = np.random.default_rng(0)
    for im in images:
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        fmt = "JPEG" if im["file_name"].endswith(".jpg") else "PNG"
        Image.fromarray(pixels).save(root / "train2017" / im["file_name"], format=fmt)
    return expect


def _coco(root: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(root / "annotations" / "instances_train2017.json"))


def _outputs(root: Path) -> dict[str, bytes]:
    out = {}
    for folder in (root / "annotations" / "ood_seg_train2017", root / "train2017_ood_subset"):
        for f in sorted(folder.iterdir()):
            out[f"{folder.name}/{f.name}"] = f.read_bytes()
    return out


@pytest.fixture
def coco_data(tmp_path):
    root = tmp_path / "coco"
    return root, make_coco(root)


@pytest.fixture
def coco_root(coco_data):
    return coco_data[0]


@pytest.fixture
def expected(coco_data):
    """image id -> annotation id of the object that must be kept."""
    return coco_data[1]


def test_prepare_keeps_largest_fitting_object_of_non_overlapping_images(
    coco_root, expected, capsys
):
    summary = prepare_coco_ood(coco_root, max_images=None, **SETTINGS)
    expect = expected
    assert {
        k: summary[k] for k in ("kept", "dropped_overlap", "dropped_size", "unused", "total")
    } == {"kept": len(expect), "dropped_overlap": 2, "dropped_size": 1, "unused": 0, "total": 7}
    assert "kept 4 of 7 images" in capsys.readouterr().out

    coco = _coco(coco_root)
    masks = sorted((coco_root / "annotations" / "ood_seg_train2017").iterdir())
    assert [m.name for m in masks] == [f"{i}.png" for i in sorted(expect)]
    for image_id, ann_id in expect.items():
        written = np.asarray(
            Image.open(coco_root / "annotations" / "ood_seg_train2017" / f"{image_id}.png")
        )
        reference = coco.annToMask(coco.loadAnns(ann_id)[0])
        np.testing.assert_array_equal(written, reference.astype(np.uint8) * 254)
        name = coco.imgs[image_id]["file_name"]
        assert (coco_root / "train2017_ood_subset" / name).read_bytes() == (
            coco_root / "train2017" / name
        ).read_bytes()


def test_reading_message_gives_the_time_only_for_a_large_json(coco_root, tmp_path, capsys):
    """The tiny json is read at once: its message gives its size, not the full COCO json's 20 s;
    a json of the full train2017 size (448 MB) is announced with its time."""
    from anomalyseg.data.coco import _reading_note

    prepare_coco_ood(coco_root, max_images=None, **{**SETTINGS, "progress": True})
    out = capsys.readouterr().out
    json_path = coco_root / "annotations" / "instances_train2017.json"
    kb = json_path.stat().st_size / 1e3
    assert f"Reading {json_path} ({kb:.0f} kB) ..." in out and " s)" not in out
    big = tmp_path / "instances_train2017.json"
    with open(big, "wb") as f:
        f.truncate(448_000_000)  # sparse: its size only
    assert _reading_note(big) == "448.0 MB, about 20 s"


def test_subset_is_a_seeded_shuffle(coco_root, expected):
    chosen = []
    for seed in range(6):
        prepare_coco_ood(coco_root, max_images=2, seed=seed, **SETTINGS)
        files = sorted(p.name for p in (coco_root / "annotations" / "ood_seg_train2017").iterdir())
        assert len(files) == 2 and {int(f[:-4]) for f in files} <= set(expected)
        assert (
            len(list((coco_root / "train2017_ood_subset").iterdir())) == 2
        )  # no leftovers of other seeds
        chosen.append(tuple(files))
    assert len(set(chosen)) > 1
    prepare_coco_ood(coco_root, max_images=2, seed=3, **SETTINGS)
    assert (
        tuple(sorted(p.name for p in (coco_root / "annotations" / "ood_seg_train2017").iterdir()))
        == chosen[3]
    )


def test_rerun_is_idempotent_and_finishes_an_interrupted_run(coco_root):
    prepare_coco_ood(coco_root, max_images=None, **SETTINGS)
    complete = _outputs(coco_root)
    assert prepare_coco_ood(coco_root, max_images=None, **SETTINGS)["written"] == 0
    assert _outputs(coco_root) == complete

    # An interruption: some outputs never written, a half-written temp file, manifest still in
    # progress.
    masks, subset = (
        coco_root / "annotations" / "ood_seg_train2017",
        coco_root / "train2017_ood_subset",
    )
    (masks / "4.png").unlink()
    (subset / "g.png").unlink()
    (masks / ".6.png.partial").write_bytes(b"\x89PNG trunc")
    manifest = coco_root / "annotations" / "ood_seg_train2017.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": False}))
    with pytest.raises(DatasetError, match="incomplete"):
        OODObjects(coco_root)

    summary = prepare_coco_ood(coco_root, max_images=None, **SETTINGS)
    assert summary["written"] == 2 and summary["kept"] == 4
    assert _outputs(coco_root) == complete
    assert len(OODObjects(coco_root)) == 4


def test_prepare_errors_name_the_expected_layout(tmp_path, coco_root):
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json.*layout"):
        prepare_coco_ood(tmp_path / "nowhere", progress=False)
    with pytest.raises(FileNotFoundError, match=r"image folder .*val2017"):
        (coco_root / "annotations" / "instances_val2017.json").write_text("{}")
        prepare_coco_ood(coco_root, split="val", progress=False)
    (coco_root / "train2017" / "f.png").unlink()
    with pytest.raises(
        DatasetError, match=r"1 images referenced by instances_train2017\.json are missing.*f\.png"
    ):
        prepare_coco_ood(coco_root, **SETTINGS)
    with pytest.raises(ValueError, match="max_area_fraction"):
        prepare_coco_ood(coco_root, max_area_fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="max_images"):
        prepare_coco_ood(coco_root, max_images=0, progress=False)


def test_ood_objects_are_tightly_cropped(coco_root, expected):
    prepare_coco_ood(coco_root, max_images=None, **SETTINGS)
    coco, objects = _coco(coco_root), OODObjects(coco_root)
    assert len(objects) == 4
    by_file = {coco.imgs[i]["file_name"]: a for i, a in expected.items()}
    for index in range(len(objects)):
        image, mask = objects[index]
        image_path, _ = objects.pairs[index]
        reference = coco.annToMask(coco.loadAnns(by_file[image_path.name])[0]).astype(bool)
        ys, xs = np.nonzero(reference)
        box = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert image.dtype == torch.uint8 and mask.dtype == torch.bool
        assert tuple(image.shape) == (3, *reference[box].shape)
        np.testing.assert_array_equal(mask.numpy(), reference[box])
        full = np.asarray(Image.open(coco_root / "train2017" / image_path.name).convert("RGB"))
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), full[box])


def test_ood_objects_errors(tmp_path, coco_root):
    with pytest.raises(FileNotFoundError, match=r"prepare_coco_ood|anomalyseg prepare-coco"):
        OODObjects(tmp_path / "empty")
    prepare_coco_ood(coco_root, max_images=None, **SETTINGS)
    (coco_root / "train2017_ood_subset" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2\.png has no image.*b\.jpg"):
        OODObjects(coco_root)


def test_ood_objects_without_manifest_pair_by_numeric_stem(tmp_path):
    """Folders prepared by seed 000's script: zero-padded COCO file names, no manifest."""
    root = tmp_path / "coco"
    masks, subset = root / "annotations" / "ood_seg_train2017", root / "train2017_ood_subset"
    masks.mkdir(parents=True)
    subset.mkdir()
    mask = np.zeros((6, 8), np.uint8)
    mask[1:4, 2:7] = 254
    Image.fromarray(mask).save(masks / "139.png")
    pixels = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    Image.fromarray(pixels).save(subset / "000000000139.png")
    image, crop = OODObjects(root)[0]
    assert crop.all() and tuple(crop.shape) == (3, 5)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), pixels[1:4, 2:7])
    Image.fromarray(mask).save(masks / "140.png")
    with pytest.raises(DatasetError, match="140.png has no image"):
        OODObjects(root)


def test_script_entry_calls_prepare(coco_root, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "prepare_coco_ood.py",
            str(coco_root),
            "--max-images",
            "2",
            "--min-area",
            "60",
            "--no-progress",
        ],
    )
    runpy.run_path(str(REPO / "data_scripts" / "prepare_coco_ood.py"), run_name="__main__")
    assert "kept 2 of 7 images" in capsys.readouterr().out
    assert len(list((coco_root / "annotations" / "ood_seg_train2017").iterdir())) == 2
