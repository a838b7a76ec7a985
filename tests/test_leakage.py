"""Leakage guard: training data that holds a benchmark frame is refused, with the file names."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import EomtForUniversalSegmentation

from anomalyseg.data import leakage
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.data.leakage import (
    LeakageError,
    check_no_benchmark_frames,
    guard_training_data,
    pixel_hash,
)
from anomalyseg.training.anomaly_head import train_anomaly_head
from anomalyseg.training.oe import finetune_oe
from anomalyseg.training.settings import TrainSettings
from helpers import tiny_eomt_config


def _leaky_root(tiny_data, tmp_path):
    """A copy of the tiny Cityscapes with two benchmark frames added as training frames: one
    resized to the training size (PIL bilinear, as the course resizes) and one at its own size,
    both re-encoded as png under Cityscapes names. Returns (root, [(train file, benchmark
    file)])."""
    root = tmp_path / "cityscapes"
    shutil.copytree(tiny_data / "cityscapes", root)
    train_frame = CityscapesSegmentation(root, "train").pairs[0][0]
    h, w = np.asarray(Image.open(train_frame)).shape[:2]
    city = train_frame.parent.name
    bench = tiny_data / "Validation_Dataset"
    resized_src = next((bench / "RoadAnomaly" / "images").iterdir())  # a jpg
    same_src = next((bench / "fs_static" / "images").iterdir())
    leaks = []
    for stem, src, size in (
        ("leak_000000_000001", resized_src, (w, h)),
        ("leak_000000_000002", same_src, None),
    ):
        image = Image.open(src).convert("RGB")
        if size is not None:
            image = image.resize(size, Image.Resampling.BILINEAR)
        dst = root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"
        image.save(dst)
        Image.fromarray(np.zeros((image.height, image.width), np.uint8)).save(
            root / "gtFine" / "train" / city / f"{stem}_gtFine_labelTrainIds.png"
        )
        leaks.append((dst, src))
    return root, leaks, (w, h)


def test_pixel_hash_reads_pixels_not_files(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.webp", lossless=True)
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    digests = {
        pixel_hash(np.asarray(Image.open(tmp_path / n).convert("RGB")))
        for n in ("a.png", "b.webp", "c.bmp")
    }
    assert digests == {pixel_hash(rgb)}
    changed = rgb.copy()
    changed[2, 3, 1] ^= 1
    assert pixel_hash(changed) != pixel_hash(rgb)
    assert pixel_hash(rgb.reshape(7, 5, 3)) != pixel_hash(rgb)  # same bytes, other shape


def test_a_training_root_holding_benchmark_frames_is_refused_with_the_file_names(
    tiny_data, tmp_path
):
    root, leaks, (w, h) = _leaky_root(tiny_data, tmp_path)
    with pytest.raises(LeakageError) as err:
        guard_training_data(
            root, tiny_data / "coco", tiny_data / "Validation_Dataset", "the OE data"
        )
    message = str(err.value)
    assert "the OE data holds 2 frame(s) of the benchmarks" in message and "\n" not in message
    (resized, resized_src), (same, same_src) = leaks
    assert f"{resized} is {resized_src} (resized to {w}x{h}, bilinear)" in message
    assert f"{same} is {same_src} (same pixels)" in message
    # a copy resized with another common filter is caught too
    Image.open(resized_src).convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(resized)
    with pytest.raises(
        LeakageError,
        match=rf"{resized.name} is .*{resized_src.name} \(resized to {w}x{h}, bicubic\)",
    ):
        guard_training_data(root, None, tiny_data / "Validation_Dataset", "the OE data")


def test_a_clean_root_passes_and_nothing_is_checked_without_a_benchmarks_root(tiny_data, tmp_path):
    # The embedded training frames and benchmarks come from one generator: no false alarm.
    checked = guard_training_data(
        tiny_data / "cityscapes",
        tiny_data / "coco",
        tiny_data / "Validation_Dataset",
        "the OE data",
        cache_file=tmp_path / "cache.json",
    )
    n_train = len(CityscapesSegmentation(tiny_data / "cityscapes", "train"))
    assert checked > n_train  # the COCO images were checked as well
    assert guard_training_data(tiny_data / "cityscapes", None, None, "the OE data") == 0
    with pytest.raises(FileNotFoundError, match="no benchmark root"):
        guard_training_data(tiny_data / "cityscapes", None, tmp_path / "missing", "the OE data")


def test_hashes_are_cached(tiny_data, tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    files = [image for image, _ in CityscapesSegmentation(tiny_data / "cityscapes", "train").pairs]
    bench = tiny_data / "Validation_Dataset"
    assert check_no_benchmark_frames(files, bench, cache_file=cache) == len(files)
    decoded = []
    real = leakage.read_rgb
    monkeypatch.setattr(leakage, "read_rgb", lambda p: decoded.append(p) or real(p))
    check_no_benchmark_frames(files, bench, cache_file=cache)
    assert decoded == []  # training and benchmark hashes came from the caches
    # a file not in the cache is decoded, the others are not
    shutil.copy(files[1], tmp_path / "copy.png")
    check_no_benchmark_frames(files, bench, cache_file=cache, other_files=[tmp_path / "copy.png"])
    assert decoded == [tmp_path / "copy.png"]
    # a damaged cache is rebuilt
    cache.write_text("{not json")
    decoded.clear()
    check_no_benchmark_frames(files, bench, cache_file=cache)
    assert sorted(decoded) == sorted(files)


def test_the_training_entry_points_refuse_a_leaky_root(tiny_data, tmp_path):
    root, leaks, _ = _leaky_root(tiny_data, tmp_path)
    bench = tiny_data / "Validation_Dataset"
    torch.manual_seed(0)
    model = EomtForUniversalSegmentation(tiny_eomt_config())
    with pytest.raises(
        LeakageError, match=rf"finetune_oe's training data holds 2 frame.*{leaks[0][0].name}"
    ):
        finetune_oe(
            model,
            root,
            tiny_data / "coco",
            tmp_path / "oe",
            TrainSettings(max_steps=1, progress=False),
            benchmarks_root=bench,
        )
    assert not (tmp_path / "oe" / "last.ckpt").exists()
    with pytest.raises(
        LeakageError, match=rf"train_anomaly_head's training data holds 2 frame.*{leaks[1][0].name}"
    ):
        train_anomaly_head(
            model,
            root,
            tiny_data / "coco",
            tmp_path / "head",
            TrainSettings(max_steps=1, progress=False),
            benchmarks_root=bench,
        )
    assert not (tmp_path / "head" / "last.ckpt").exists()
