"""Leakage guard: Outlier Exposure and the anomaly head never train on a benchmark frame.

One of seed 001's configurations trained its head on Road Anomaly itself, the data it was then
evaluated on. ``check_no_benchmark_frames`` refuses training data holding a benchmark frame: every
image under ``<benchmarks_root>/<name>/images/`` is hashed on its decoded pixels (so a copy
re-encoded as png, or renamed, still matches), at its own size and resized to each size of the
training frames (PIL bilinear, the course's resize, and PIL's other common filters), and every
training image is hashed on its decoded pixels. A copy made through a lossy format (jpg) or an
unusual resampler is not caught: the guard is against copies, not a near-duplicate search.

Hashes of the training files are cached in a JSON file (``cache_file``), keyed by path, size and
modification time, so a resumed or repeated run does not decode the training set again.
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
CACHE_VERSION = 1
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
            f"Leakage guard: no benchmark root {root}. Pass the folder holding the benchmarks the model will be "
            "evaluated on (the course's Validation_Dataset), so that training can refuse their frames."
        )
    return sorted(p for d in sorted(root.iterdir()) if (d / "images").is_dir()
                  for p in (d / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)  # fmt: skip


def benchmark_fingerprints(benchmarks_root: str | os.PathLike, sizes: Iterable[tuple[int, int]] = ()) -> dict[str, tuple[Path, str]]:
    """``{pixel_hash: (benchmark file, how)}`` for every benchmark frame at its own size
    (``how = "same pixels"``) and resized to each ``(height, width)`` of ``sizes`` with each of
    ``RESIZE_FILTERS`` (``how = "resized to WxH, <filter>"``)."""
    sizes = sorted(set(sizes))
    found: dict[str, tuple[Path, str]] = {}
    for path in benchmark_frames(benchmarks_root):
        rgb = read_rgb(path)
        found.setdefault(pixel_hash(rgb), (path, "same pixels"))
        image = Image.fromarray(rgb)
        for h, w in sizes:
            if (h, w) == rgb.shape[:2]:
                continue
            for name, method in RESIZE_FILTERS.items():
                resized = np.asarray(image.resize((w, h), method))
                found.setdefault(pixel_hash(resized), (path, f"resized to {w}x{h}, {name}"))
    return found


def _training_hashes(files: list[Path], cache_file: Path | None) -> dict[Path, tuple[str, tuple[int, int]]]:
    cache: dict = {}
    if cache_file is not None and cache_file.is_file():
        try:
            stored = json.loads(cache_file.read_text())
            if stored.get("version") == CACHE_VERSION:
                cache = stored["files"]
        except (ValueError, KeyError, TypeError):
            cache = {}  # a damaged cache is rebuilt, never trusted
    out, fresh = {}, {}
    for path in files:
        stat = path.stat()
        key, entry = str(path.resolve()), cache.get(str(path.resolve()))
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            digest, shape = entry[2], (entry[3], entry[4])
        else:
            rgb = read_rgb(path)
            digest, shape = pixel_hash(rgb), rgb.shape[:2]
        fresh[key] = [stat.st_size, stat.st_mtime_ns, digest, int(shape[0]), int(shape[1])]
        out[path] = (digest, (int(shape[0]), int(shape[1])))
    if cache_file is not None and fresh != cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": fresh}))
        os.replace(tmp, cache_file)
    return out


def check_no_benchmark_frames(
    training_files: Iterable[str | os.PathLike],
    benchmarks_root: str | os.PathLike,
    what: str = "the training data",
    cache_file: str | os.PathLike | None = None,
    resize_sizes: Iterable[tuple[int, int]] | None = None,
) -> int:
    """Refuse training images that are benchmark frames; returns how many images were checked.

    Args:
        training_files: every image the training may read (Cityscapes train frames, COCO images).
        benchmarks_root: the benchmarks the model will be evaluated on (``<name>/images/*``).
        what: how the error names the training data (e.g. ``"finetune_oe's training data"``).
        cache_file: JSON cache of the training files' hashes (path, size, mtime); None: no cache.
        resize_sizes: ``(height, width)`` sizes to compare resized benchmark frames at; None: the
            sizes of ``training_files`` that more than one file shares, plus the first file's
            (the frames of a training set; single-image sizes such as COCO's are compared as is).
    Raises:
        LeakageError: one paragraph naming each training file that is a benchmark frame, the
            benchmark file it copies and how (same pixels, or resized with which filter).
        FileNotFoundError: ``benchmarks_root`` does not exist.
    """
    files = [Path(f) for f in training_files]
    hashes = _training_hashes(files, Path(cache_file) if cache_file is not None else None)
    if resize_sizes is None:
        counts: dict[tuple[int, int], int] = {}
        for _, shape in hashes.values():
            counts[shape] = counts.get(shape, 0) + 1
        resize_sizes = {s for s, n in counts.items() if n > 1} | ({hashes[files[0]][1]} if files else set())
    fingerprints = benchmark_fingerprints(benchmarks_root, resize_sizes)
    leaks = [(path, *fingerprints[digest]) for path, (digest, _) in hashes.items() if digest in fingerprints]
    if leaks:
        listed = "; ".join(f"{train} is {bench} ({how})" for train, bench, how in leaks[:10])
        more = f"; and {len(leaks) - 10} more" if len(leaks) > 10 else ""
        raise LeakageError(
            f"Leakage guard: {what} holds {len(leaks)} frame(s) of the benchmarks under {Path(benchmarks_root)}, which "
            f"Outlier Exposure and the anomaly head must never train on (the model is evaluated on them): {listed}{more}. "
            "Remove these files from the training data (they are not changed here), or, if these are not the benchmarks "
            "this model will be evaluated on, pass the right benchmarks_root."
        )
    return len(files)


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

    files = [image for image, _ in CityscapesSegmentation(data_root, "train").pairs]
    if coco_root is not None:
        files += [image for image, _ in OODObjects(coco_root, split=coco_split).pairs]
    return check_no_benchmark_frames(files, benchmarks_root, what=what, cache_file=cache_file)
