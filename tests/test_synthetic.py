"""The embedded procedural data set: same layouts and label conventions as the real data sets,
read back by the real loaders and by pycocotools."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalyseg.data import synthetic
from anomalyseg.data.benchmarks import AnomalyBenchmark
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.labels import BENCHMARKS, CLASS_NAMES

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning"
)  # pycocotools on numpy 2
TINY = synthetic.PRESETS["tiny"]
CITYSCAPES_LIKE = {
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synthetic.make_data(
        tmp_path_factory.mktemp("embedded") / "data", "tiny", seed=0, progress=False
    )


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = synthetic.make_data(tmp_path / "again", "tiny", seed=0, progress=False)
    other = synthetic.make_data(tmp_path / "other", "tiny", seed=1, progress=False)
    first = _digest(tiny)
    assert _digest(again) == first
    changed = _digest(other)
    frames = [k for k in first if k.startswith("cityscapes/leftImg8bit") or "/images/" in k]
    assert sum(changed.get(k) != first[k] for k in frames) == len(frames)


def test_two_processes_write_the_same_bytes_as_one(tiny, tmp_path):
    # every image has its own RNG stream and file, and the COCO annotation ids are numbered in
    # image order whichever process drew the image
    two = synthetic.make_data(tmp_path / "two", "tiny", seed=0, progress=False, workers=2)
    assert synthetic._default_workers(TINY) == 1  # the fixture `tiny` ran in one process
    assert _digest(two) == _digest(tiny)
    anns = json.loads((two / "coco/annotations/instances_train2017.json").read_text())
    assert [a["id"] for a in anns["annotations"]] == list(range(1, len(anns["annotations"]) + 1))


def test_cityscapes_layout_and_train_ids(tiny):
    root = tiny / "cityscapes"
    for split, n in (("train", TINY.n_train), ("val", TINY.n_val)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*"))
        assert len(images) == n
        for image in images:
            assert re.fullmatch(
                rf"{image.parent.name}_\d{{6}}_\d{{6}}_leftImg8bit\.png", image.name
            )
            label = (
                root
                / "gtFine"
                / split
                / image.parent.name
                / image.name.replace("_leftImg8bit", "_gtFine_labelTrainIds")
            )
            with Image.open(image) as im, Image.open(label) as lab:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (TINY.width, TINY.height))
                assert (lab.mode, lab.size) == ("L", im.size)
                values = set(np.unique(np.asarray(lab)).tolist())
            assert values <= set(range(19)) | {255}
        # The real reader takes it as it is.
        data = CityscapesSegmentation(root, split)
        assert len(data) == n and data[0]["target"].shape == (TINY.height, TINY.width)


def test_class_coverage_and_void(tiny):
    seen = np.zeros(256, dtype=np.int64)
    for label in (tiny / "cityscapes" / "gtFine").rglob("*_gtFine_labelTrainIds.png"):
        seen += np.bincount(np.asarray(Image.open(label)).ravel(), minlength=256)
    present = {CLASS_NAMES[i] for i in range(19) if seen[i]}
    assert {"road", "sidewalk", "building", "vegetation", "sky", "car"} <= present
    assert len(present) >= 12, present
    assert 0 < seen[255] < 0.1 * seen.sum()  # a little void: the hood and borders


def test_classes_are_learnable_but_not_trivially():
    """A small per-pixel classifier (colour, local mean and contrast, image row) trained on some
    frames labels unseen frames far better than the majority class, yet far from perfectly."""
    from scipy.ndimage import uniform_filter
    from sklearn.tree import DecisionTreeClassifier

    def features(img):
        x = img.astype(np.float32) / 255
        mean = uniform_filter(x, (5, 5, 1))
        std = np.sqrt(np.maximum(uniform_filter(x**2, (5, 5, 1)) - mean**2, 0))
        row = np.broadcast_to(np.linspace(0, 1, x.shape[0])[:, None, None], (*x.shape[:2], 1))
        return np.concatenate([x, mean, std, row], -1).reshape(-1, 10)

    frames = [synthetic.cityscapes_frame(np.random.default_rng(i), 64, 128) for i in range(16)]
    X = [features(img) for img, _ in frames]
    y = [labels.ravel() for _, labels in frames]
    Xtr, ytr, Xte, yte = (
        np.concatenate(X[:12]),
        np.concatenate(y[:12]),
        np.concatenate(X[12:]),
        np.concatenate(y[12:]),
    )
    Xtr, ytr, Xte, yte = Xtr[ytr != 255], ytr[ytr != 255], Xte[yte != 255], yte[yte != 255]
    pick = np.random.default_rng(0).choice(len(ytr), 20000, replace=False)
    tree = DecisionTreeClassifier(max_depth=12, min_samples_leaf=20, random_state=0).fit(
        Xtr[pick], ytr[pick]
    )
    accuracy = (tree.predict(Xte) == yte).mean()
    majority = np.bincount(yte).max() / len(yte)
    assert majority + 0.2 < accuracy < 0.97


@pytest.mark.parametrize("folder", list(BENCHMARKS))
def test_benchmark_layout_and_conventions(tiny, folder):
    spec = BENCHMARKS[folder]
    root = tiny / "Validation_Dataset" / folder
    n = dict(TINY.benchmark_frames)[folder]
    assert sorted(p.name for p in (root / "images").iterdir()) == [
        f"{i}.{spec.image_ext}" for i in range(n)
    ]
    assert sorted(p.name for p in (root / "labels_masks").iterdir()) == [
        f"{i}.png" for i in range(n)
    ]
    fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[spec.image_ext]
    with_anomaly = 0
    for i in range(n):
        with (
            Image.open(root / "images" / f"{i}.{spec.image_ext}") as im,
            Image.open(root / "labels_masks" / f"{i}.png") as m,
        ):
            assert im.format == fmt and im.mode == "RGB" and m.mode == "L" and im.size == m.size
            assert im.size == TINY.frame_size(folder)[::-1]
            mask = np.asarray(m)
        values = set(np.unique(mask).tolist())
        assert values <= set(spec.stored_values), (i, values)
        with_anomaly += int((spec.convert(mask) == 1).any())
        if folder in ("RoadObsticle21", "FS_LostFound_full"):
            assert mask[0].tolist() == [255] * mask.shape[1]  # the sky row is off-road, hence void
            assert (mask == 0).mean() > 0.1  # the road is there and counts
    assert with_anomaly == n - 1  # exactly one frame without anomaly pixels, as real sets have
    data = AnomalyBenchmark(root)
    assert len(data.skipped) == 1 and len(data) == n - 1
    item = data[0]
    assert item["image"].shape[1:] == item["label"].shape and set(
        np.unique(item["label"].numpy())
    ) <= {0, 1, 255}


def test_benchmark_frame_without_anomaly_is_clean():
    for folder in BENCHMARKS:
        _, mask = synthetic.benchmark_frame(
            np.random.default_rng(3), folder, 64, 128, with_anomaly=False
        )
        assert not (BENCHMARKS[folder].convert(mask) == 1).any()


def test_anomalies_are_more_saturated_than_the_scene(tiny):
    """Benchmark anomalies come from a family of saturated, patterned textures no class uses."""
    sat_anomaly, sat_scene = [], []
    for folder, spec in BENCHMARKS.items():
        root = tiny / "Validation_Dataset" / folder
        for mask_path in (root / "labels_masks").glob("*.png"):
            label = spec.convert(np.asarray(Image.open(mask_path)))
            rgb = np.asarray(
                Image.open(root / "images" / f"{mask_path.stem}.{spec.image_ext}").convert("HSV")
            )
            sat_anomaly.append(rgb[label == 1, 1])
            sat_scene.append(rgb[label == 0, 1])
    assert np.median(np.concatenate(sat_anomaly)) > 1.5 * np.median(np.concatenate(sat_scene))


def test_coco_layout_reads_in_pycocotools(tiny):
    from pycocotools.coco import COCO

    coco_root = tiny / "coco"
    coco = COCO(str(coco_root / "annotations" / "instances_train2017.json"))
    assert len(coco.imgs) == TINY.n_coco
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert {1: "person", 3: "car", 6: "bus", 18: "dog", 88: "teddy bear"}.items() <= names.items()
    used = {names[a["category_id"]] for a in coco.anns.values()}
    assert (
        used & CITYSCAPES_LIKE and used - CITYSCAPES_LIKE
    )  # the preparation's filter has work to do
    for image in coco.imgs.values():
        assert (
            re.fullmatch(r"\d{12}\.jpg", image["file_name"])
            and int(image["file_name"][:12]) == image["id"]
        )
        with Image.open(coco_root / "train2017" / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"])
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        assert mask.sum() == pytest.approx(ann["area"], abs=1) and mask.sum() > 0
        x, y, w, h = ann["bbox"]
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == pytest.approx(
            (x, y, x + w, y + h), abs=1
        )
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"], list)


def test_coco_objects_are_prepared(tiny):
    pytest.importorskip("anomalyseg.data.coco").prepare_coco_ood  # written by the OE part
    from pycocotools.coco import COCO

    coco = COCO(str(tiny / "coco" / "annotations" / "instances_train2017.json"))
    masks = sorted((tiny / "coco" / "annotations" / "ood_seg_train2017").glob("*.png"))
    assert len(masks) >= 3
    banned = {c["id"] for c in coco.loadCats(coco.getCatIds()) if c["name"] in CITYSCAPES_LIKE}
    for path in masks:
        image_id = int(path.stem)
        assert not {a["category_id"] for a in coco.imgToAnns[image_id]} & banned
        values = set(np.unique(np.asarray(Image.open(path))).tolist())
        assert values == {0, 254}
        assert (tiny / "coco" / "train2017_ood_subset" / coco.imgs[image_id]["file_name"]).is_file()


def test_ensure_data_is_idempotent_and_refuses_other_settings(tiny, tmp_path):
    before = _digest(tiny)
    assert synthetic.ensure_data(tiny, "tiny", seed=0, progress=False) == tiny
    assert _digest(tiny) == before
    with pytest.raises(ValueError, match="seed=1"):
        synthetic.ensure_data(tiny, "tiny", seed=1, progress=False)
    with pytest.raises(ValueError, match="preset='demo'"):
        synthetic.ensure_data(tiny, "demo", seed=0, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an embedded data set"):
        synthetic.ensure_data(foreign, "tiny", progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_ensure_data_replaces_an_earlier_generator_version_only(tiny, tmp_path, capsys):
    # After an update of the generator, `make demo` regenerates the data it made before instead of
    # stopping; a data set from a newer generator (or of another preset/seed) is still refused.
    old = tmp_path / "old"
    synthetic.make_data(old, "tiny", seed=0, progress=False)
    marker = json.loads((old / synthetic.MARKER).read_text())
    marker.pop("training_data_version")
    (old / synthetic.MARKER).write_text(json.dumps({**marker, "version": 1}))
    (old / "Validation_Dataset" / "stale.txt").write_text("from generator version 1")
    assert synthetic.ensure_data(old, "tiny", seed=0, progress=False) == old
    assert f"generator version 1; generating version {synthetic.GENERATOR_VERSION}" in (
        capsys.readouterr().out
    )
    marker_now = json.loads((old / synthetic.MARKER).read_text())
    assert marker_now["version"] == synthetic.GENERATOR_VERSION
    assert not (old / "Validation_Dataset" / "stale.txt").exists()
    assert _digest(old) == _digest(tiny)
    newer = {**marker, "version": synthetic.GENERATOR_VERSION + 1}
    (old / synthetic.MARKER).write_text(json.dumps(newer))
    with pytest.raises(ValueError, match=f"version {synthetic.GENERATOR_VERSION + 1}"):
        synthetic.ensure_data(old, "tiny", seed=0, progress=False)


# What the shipped demo weights trained on: the first Cityscapes-layout frames of both splits
# and COCO stand-ins of the demo preset, seed 0, per TRAINING_DATA_VERSION. When the digest
# changes, the training frames changed: bump TRAINING_DATA_VERSION and retrain the shipped
# weights (`anomalyseg demo-weights`, README), which record the version they trained on.
TRAINING_FRAMES_SHA256 = {
    1: "a03666623d56eb477c5fd49f94797d2a4e4caa9acb5752d06bd7d7b7c4847140",
}


def test_training_frames_change_only_with_the_training_data_version():
    from anomalyseg import demo_models

    demo = synthetic.PRESETS["demo"]
    h = hashlib.sha256()
    for stream in (0, 1):  # train, val
        for i in range(2):
            image, labels = synthetic.cityscapes_frame(
                synthetic._rng(0, stream, i), demo.height, demo.width
            )
            h.update(image.tobytes() + labels.tobytes())
    for i in range(2):
        rng = synthetic._rng(0, 21, i)
        size = demo.coco_size if rng.uniform() < 0.7 else demo.coco_size[::-1]
        image, anns = synthetic.coco_image(rng, *size, 100 + i, 1)
        h.update(image.tobytes() + repr(anns).encode())
    assert h.hexdigest() == TRAINING_FRAMES_SHA256[synthetic.TRAINING_DATA_VERSION]
    for model, entry in demo_models.read_manifest().items():
        assert entry["data"]["training_data_version"] == synthetic.TRAINING_DATA_VERSION, model


def _components(labels: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Anomaly share of the scored pixels and each component's area as a share of its frame."""
    from scipy import ndimage

    anomaly = scored = 0
    areas = []
    for label in labels:
        a = label == 1
        anomaly, scored = anomaly + a.sum(), scored + (label != 255).sum()
        comps, k = ndimage.label(a, structure=np.ones((3, 3)))
        areas += list(ndimage.sum(a, comps, range(1, k + 1)) / a.size)
    return anomaly / scored, np.array(areas)


def _anomaly_components(folder: str, n: int) -> tuple[float, np.ndarray]:
    """``_components`` of ``n`` demo-size frames of ``folder``."""
    H, W = synthetic.PRESETS["demo"].frame_size(folder)
    return _components(
        [
            BENCHMARKS[folder].convert(
                synthetic.benchmark_frame(synthetic._rng(0, 10, i), folder, H, W)[1]
            )
            for i in range(n)
        ]
    )


def test_anomaly_statistics_of_a_benchmark_folder(tiny):
    from anomalyseg.data.benchmarks import anomaly_statistics

    for folder in BENCHMARKS:
        ds = AnomalyBenchmark(tiny / "Validation_Dataset" / folder)
        share, areas = _components([ds[i]["label"].numpy() for i in range(len(ds))])
        stats = anomaly_statistics(ds)
        assert stats["frames"] == len(ds)
        assert stats["anomaly_share"] == pytest.approx(100 * share)
        assert stats["components_per_frame"] == pytest.approx(len(areas) / len(ds))
        expected = np.percentile(100 * areas, [10, 50, 90])
        got = [stats["area_p10"], stats["area_p50"], stats["area_p90"]]
        assert got == pytest.approx(expected)
    # two components touching at a corner are one (8-connectivity), as SMIYC counts them
    blocks = np.zeros((4, 6), np.uint8)
    blocks[0, 0] = blocks[1, 1] = blocks[3, 5] = 1
    assert _components([blocks])[1].tolist() == [2 / 24, 1 / 24]


def test_anomaly_statistics_table_names_its_units(tiny):
    """Notebook 00's table: one row per benchmark by its title, the statistics under readable
    headers with units, values as ``anomaly_statistics`` gives them (rounded for display)."""
    from anomalyseg.data.benchmarks import anomaly_statistics, load_benchmarks
    from anomalyseg.report.tables import anomaly_statistics_table

    benches = load_benchmarks(tiny / "Validation_Dataset", list(BENCHMARKS))
    table = anomaly_statistics_table(benches)
    assert list(table.index) == [BENCHMARKS[n].title for n in BENCHMARKS]
    assert list(table.columns) == [
        "frames",
        "anomaly pixels (% of scored pixels = chance AuPRC)",
        "anomaly components per frame (8-connected)",
        "component area p10 (% of the frame)",
        "component area p50 (% of the frame)",
        "component area p90 (% of the frame)",
    ]
    for name, ds in benches.items():
        row, stats = table.loc[BENCHMARKS[name].title], anomaly_statistics(ds)
        assert row.iloc[0] == len(ds) and table["frames"].dtype.kind == "i"
        assert row.iloc[1] == pytest.approx(stats["anomaly_share"], abs=0.005)
        assert row.iloc[2] == pytest.approx(stats["components_per_frame"], abs=0.005)
        for got, key in zip(row.iloc[3:], ("area_p10", "area_p50", "area_p90")):
            assert got == pytest.approx(stats[key], abs=0.0005)


def test_anomaly_sizes_follow_the_real_benchmarks():
    # Road Anomaly and RoadAnomaly21 show large objects, mostly animals, near the car: the two real
    # Road Anomaly-style frames in ../shared/realdata hold one object of 10% and 27% of the frame.
    # RoadObstacle21 and FS Lost&Found show small obstacles far ahead on the road.
    real = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "road_samples"
    masks = [np.asarray(Image.open(p)) for p in sorted(real.glob("labels_masks/*.png"))]
    if not masks:
        pytest.skip(f"no real road frames at {real}")
    real_area = float(np.median([(m == 1).mean() for m in masks]))
    for folder in ("RoadAnomaly", "RoadAnomaly21"):
        share, areas = _anomaly_components(folder, 8)
        assert 0.03 < share < 0.3, (folder, share)
        assert real_area / 8 < np.median(areas) < real_area * 2, (folder, np.median(areas))
    for folder in ("RoadObsticle21", "FS_LostFound_full"):
        share, areas = _anomaly_components(folder, 8)
        assert share < 0.02 and np.median(areas) < 0.002, (folder, share, np.median(areas))


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="preset 'huge'"):
        synthetic.make_data(tmp_path / "x", "huge")
    with pytest.raises(ValueError, match="non-negative integer"):
        synthetic.make_data(tmp_path / "x", "tiny", seed=-1)
    assert not (tmp_path / "x").exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "coco_image", broken)
    with pytest.raises(KeyboardInterrupt):
        synthetic.make_data(tmp_path / "data", "tiny", progress=False, prepare_coco=False)
    assert list(tmp_path.iterdir()) == []


def test_make_data_replaces_earlier_embedded_data(tiny, tmp_path):
    out = synthetic.make_data(tmp_path / "data", "tiny", seed=1, progress=False, prepare_coco=False)
    (out / "stale.txt").write_text("from an earlier run")
    synthetic.make_data(out, "tiny", seed=0, progress=False, prepare_coco=False)
    marker = json.loads((out / synthetic.MARKER).read_text())
    assert (
        not (out / "stale.txt").exists()
        and marker["seed"] == 0
        and marker["preset"]["name"] == "tiny"
    )
    assert _digest(out / "cityscapes") == _digest(tiny / "cityscapes")


def test_script_entry(tmp_path):
    path = Path(__file__).resolve().parents[1] / "data_scripts" / "make_embedded_data.py"
    spec = importlib.util.spec_from_file_location("make_embedded_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(
        ["--preset", "tiny", "--out", str(tmp_path / "d"), "--seed", "2", "--no-progress"]
    )
    assert json.loads((out / synthetic.MARKER).read_text())["seed"] == 2
    assert len(list((out / "Validation_Dataset").iterdir())) == 5
