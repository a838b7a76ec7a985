"""Leakage guard: Outlier Exposure and the anomaly head never train on a benchmark frame.

One of seed 001's configurations trained its head on Road Anomaly itself, the data it was then
evaluated on. ``check_no_benchmark_frames`` refuses training data holding a benchmark frame: every
image under ``<benchmarks_root>/<name>/images/`` is hashed on its decoded pixels (so a copy
re-encoded as png, or renamed, still matches), at its own size and resized to each size of the
training frames (PIL bilinear, the course's resize, and PIL's other common filters), and every
training image is hashed on its decoded pixels. A copy made through a lossy format (jpg) or an
unusual resampler is not caught: the guard is against copies, not a near-duplicate search.

Hashes are cached in JSON files (``cache_file`` for the training files, ``<stem>_benchmarks.json``
beside it for the benchmark frames), keyed by path, size and modification time, so a resumed or
repeated run decodes nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .benchmarks import IMAGE_EXTS
from .io import DatasetError, read_rgb

# PIL's filters a resized copy is likely to have been made with; bilinear is the course's.
RESIZE_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
CACHE_VERSION = 2
CACHE_FILE = "leakage_check.json"  # in a training run's out_dir


class LeakageError(DatasetError):
    """Training data holds a frame of a benchmark the model is evaluated on."""


def pixel_hash(rgb: np.ndarray) -> str:
    """SHA-1 of a decoded image ``[H, W, 3]`` uint8: its shape and its pixel bytes (the file
    format, name and metadata do not enter)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h = hashlib.sha1(f"{rgb.shape}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def benchmark_frames(benchmarks_root: str | os.PathLike) -> list[Path]:
    """Every image of every benchmark under ``benchmarks_root`` (``<name>/images/*``), frames
    the evaluation skips included; ``FileNotFoundError`` when the root does not exist."""
    root = Path(benchmarks_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Leakage guard: no benchmark root {root}. Pass the folder holding the benchmarks the "
            "model will be evaluated on (the course's Validation_Dataset), so that training can "
            "refuse their frames."
        )
    return sorted(
        p
        for d in sorted(root.iterdir())
        if (d / "images").is_dir()
        for p in (d / "images").iterdir()
        if p.suffix.lower() in IMAGE_EXTS
    )


class _HashCache:
    """Hashes of files keyed by resolved path, size and modification time (plus ``extra``), kept
    in a JSON file; a damaged or older cache is rebuilt, never trusted."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self.old: dict = {}
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
                if stored.get("version") == CACHE_VERSION and isinstance(
                    stored.get("entries"), dict
                ):
                    self.old = stored["entries"]
            except ValueError:
                pass
        self.new: dict = {}

    def get(self, file: Path, compute, extra: str = ""):
        stat = file.stat()
        key = f"{file.resolve()}|{extra}"
        entry = self.old.get(key)
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and entry[:2] == [stat.st_size, stat.st_mtime_ns]
        ):
            entry = [stat.st_size, stat.st_mtime_ns, compute()]
        self.new[key] = entry
        return entry[2]

    def save(self) -> None:
        if self.path is None or self.new == self.old:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": self.new}))
        os.replace(tmp, self.path)


def _benchmark_hashes(path: Path, sizes: list[tuple[int, int]]) -> list[list[str]]:
    rgb = read_rgb(path)
    found = [[pixel_hash(rgb), "same pixels"]]
    image = Image.fromarray(rgb)
    for h, w in sizes:
        if (h, w) != rgb.shape[:2]:
            found += [
                [
                    pixel_hash(np.asarray(image.resize((w, h), method))),
                    f"resized to {w}x{h}, {name}",
                ]
                for name, method in RESIZE_FILTERS.items()
            ]
    return found


def benchmark_fingerprints(
    benchmarks_root: str | os.PathLike,
    sizes: Iterable[tuple[int, int]] = (),
    cache_file: str | os.PathLike | None = None,
) -> dict[str, tuple[Path, str]]:
    """``{pixel_hash: (benchmark file, how)}`` for every benchmark frame at its own size
    (``how = "same pixels"``) and resized to each ``(height, width)`` of ``sizes`` with each of
    ``RESIZE_FILTERS`` (``how = "resized to WxH, <filter>"``); cached in ``cache_file``."""
    sizes = sorted(set(sizes))
    cache = _HashCache(cache_file)
    found: dict[str, tuple[Path, str]] = {}
    for path in benchmark_frames(benchmarks_root):
        for digest, how in cache.get(
            path, lambda: _benchmark_hashes(path, sizes), extra=f"benchmark {sizes}"
        ):
            found.setdefault(digest, (path, how))
    cache.save()
    return found


def _image_hash(path: Path) -> list:
    rgb = read_rgb(path)
    return [pixel_hash(rgb), int(rgb.shape[0]), int(rgb.shape[1])]


def check_no_benchmark_frames(
    frames: Iterable[str | os.PathLike],
    benchmarks_root: str | os.PathLike,
    what: str = "the training data",
    cache_file: str | os.PathLike | None = None,
    other_files: Iterable[str | os.PathLike] = (),
) -> int:
    """Refuse training images that are benchmark frames; returns how many images were checked.

    Args:
        frames: the training frames (Cityscapes train): compared with every benchmark frame at
            its own size and resized to each size these frames have.
        benchmarks_root: the benchmarks the model will be evaluated on (``<name>/images/*``).
        what: how the error names the training data (e.g. ``"finetune_oe's training data"``).
        cache_file: JSON cache of the hashes (path, size, mtime); None: no cache.
        other_files: further images the training reads (COCO images), compared at their own size.
    Raises:
        LeakageError: one paragraph naming each training file that is a benchmark frame, the
            benchmark file it copies and how (same pixels, or resized with which filter).
        FileNotFoundError: ``benchmarks_root`` does not exist.
    """
    frames, others = [Path(f) for f in frames], [Path(f) for f in other_files]
    cache = _HashCache(cache_file)
    hashes = {
        path: cache.get(path, lambda: _image_hash(path), extra="training")
        for path in frames + others
    }
    cache.save()
    sizes = {(h, w) for path in frames for _, h, w in [hashes[path]]}
    bench_cache = (
        None
        if cache_file is None
        else Path(cache_file).with_name(Path(cache_file).stem + "_benchmarks.json")
    )
    fingerprints = benchmark_fingerprints(benchmarks_root, sizes, bench_cache)
    leaks = [
        (path, *fingerprints[digest])
        for path, (digest, _, _) in hashes.items()
        if digest in fingerprints
    ]
    if leaks:
        listed = "; ".join(f"{train} is {bench} ({how})" for train, bench, how in leaks[:10])
        more = f"; and {len(leaks) - 10} more" if len(leaks) > 10 else ""
        raise LeakageError(
            f"Leakage guard: {what} holds {len(leaks)} frame(s) of the benchmarks under "
            f"{Path(benchmarks_root)}, which Outlier Exposure and the anomaly head must never "
            f"train on (the model is evaluated on them): {listed}{more}. Remove these files from "
            "the training data (they are not changed here), or, if these are not the benchmarks "
            "this model will be evaluated on, pass the right benchmarks_root."
        )
    return len(hashes)


def guard_training_data(
    data_root: str | os.PathLike,
    coco_root: str | os.PathLike | None,
    benchmarks_root: str | os.PathLike | None,
    what: str,
    cache_file: str | os.PathLike | None = None,
    coco_split: str = "train",
) -> int:
    """``check_no_benchmark_frames`` over what an Outlier Exposure or anomaly-head training reads:
    the Cityscapes-layout ``train`` frames of ``data_root`` and the COCO images of
    ``OODObjects(coco_root, coco_split)`` (when ``coco_root`` is given). ``benchmarks_root=None``
    (not known) checks nothing and returns 0; otherwise returns the number of images checked."""
    if benchmarks_root is None:
        return 0
    from .cityscapes import CityscapesSegmentation
    from .coco import OODObjects

    frames = [image for image, _ in CityscapesSegmentation(data_root, "train").pairs]
    coco = (
        [image for image, _ in OODObjects(coco_root, split=coco_split).pairs]
        if coco_root is not None
        else []
    )
    return check_no_benchmark_frames(
        frames, benchmarks_root, what=what, cache_file=cache_file, other_files=coco
    )
