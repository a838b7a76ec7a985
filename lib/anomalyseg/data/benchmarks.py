"""The five anomaly benchmarks in the course layout (REFERENCE §1).

    <Validation_Dataset>/<name>/images/<i>.<ext>
    <Validation_Dataset>/<name>/labels_masks/<i>.png

Masks are converted on load to 0 = in-distribution, 1 = anomaly, 255 = void. Frames without a
single anomaly pixel are skipped, as the course does, and counted in ``skipped``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..labels import ANOMALY, BENCHMARKS, BINARY, BenchmarkSpec
from .io import DatasetError, check_values, files_fingerprint, read_mask, read_rgb

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


class AnomalyBenchmark(Dataset):
    """One benchmark folder. Item:
    ``{"image": uint8 [3, H, W], "label": uint8 [H, W], "stem": str}``.

    ``spec`` defaults to the benchmark named by the folder (``RoadAnomaly``, ``fs_static``, ...);
    any other folder is read with the plain binary convention (0 / 1 / 255).
    """

    def __init__(
        self, folder: str | Path, spec: BenchmarkSpec | None = None, skip_empty: bool = True
    ):
        self.folder = Path(folder)
        self.name = canonical_name(
            self.folder.name
        )  # RoadObstacle21 (SMIYC's spelling) -> RoadObsticle21
        self.spec = spec or BENCHMARKS.get(self.name, BINARY)
        image_dir, mask_dir = self.folder / "images", self.folder / "labels_masks"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"No folder {d}. Expected the course layout {self.folder}/images/<i>.<ext> "
                    f"with masks {self.folder}/labels_masks/<i>.png, paired by file stem."
                )
        images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        masks = {
            p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() == ".png"
        }  # 0.png or 0.PNG
        if not images:
            raise DatasetError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTS)}).")
        no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
        if no_mask or no_image:
            raise DatasetError(
                f"Images and masks of {self.folder} do not pair up by stem: "
                + (f"images without a mask: {no_mask[:10]}; " if no_mask else "")
                + (f"masks without an image: {no_image[:10]}; " if no_image else "")
                + "each images/<i>.<ext> needs labels_masks/<i>.png."
            )
        stems = sorted(images, key=lambda s: (len(s), s))  # 0, 1, ..., 10 in numeric order
        self.frames: list[tuple[str, Path, Path]] = []
        self.skipped: list[str] = []
        for stem in stems:
            mask = read_mask(masks[stem])
            check_values(
                mask,
                self.spec.stored_values,
                masks[stem],
                f"{self.spec.title} ({self.spec.folder})",
            )
            if skip_empty and not (self.spec.convert(mask) == ANOMALY).any():
                self.skipped.append(stem)
            else:
                self.frames.append((stem, images[stem], masks[stem]))

    def __len__(self) -> int:
        return len(self.frames)

    @functools.cached_property
    def fingerprint(self) -> str:
        """``io.files_fingerprint`` of the frames this benchmark scores (skipped ones apart)."""
        return files_fingerprint((image, mask) for _, image, mask in self.frames)

    def __getitem__(self, i: int) -> dict:
        stem, image_path, mask_path = self.frames[i]
        image = read_rgb(image_path)
        label = self.spec.convert(read_mask(mask_path))
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{label.shape[1]}x{label.shape[0]}; an image and its mask must have the same size."
            )
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(label),
            "stem": stem,
        }

    def __repr__(self) -> str:
        return f"AnomalyBenchmark({self.name!r}, frames={len(self)}, skipped={len(self.skipped)})"


# Other spellings of a benchmark's folder -> the course's name (which the results store records).
ALIASES = {"RoadObstacle21": "RoadObsticle21"}  # SMIYC's spelling; the course writes RoadObsticle21


def canonical_name(folder_name: str) -> str:
    """The course's name of a benchmark folder, accepting the aliases in ``ALIASES``."""
    return ALIASES.get(folder_name, folder_name)


def load_benchmarks(
    validation_root: str | Path, names: list[str] | None = None
) -> dict[str, AnomalyBenchmark]:
    """Open the benchmark folders under ``validation_root`` (the course's ``Validation_Dataset``).

    With ``names=None`` every known benchmark found there is opened, and a folder that is not a
    known benchmark is named in a warning (never skipped without a word); naming one that is
    missing is an error. ``RoadObstacle21`` (SMIYC's spelling) is read as ``RoadObsticle21``.
    Keys are the course's names.
    """
    root = Path(validation_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"No benchmark root {root}. Expected the course's Validation_Dataset folder holding "
            f"{', '.join(BENCHMARKS)} (each with images/ and labels_masks/)."
        )
    present = {}  # course name -> folder
    for p in sorted(root.iterdir()):
        if p.is_dir() and canonical_name(p.name) in BENCHMARKS:
            if canonical_name(p.name) in present:
                raise DatasetError(
                    f"{root} holds both {present[canonical_name(p.name)].name} and {p.name}, two "
                    "spellings of one benchmark; keep one of them."
                )
            present[canonical_name(p.name)] = p
    if names is None:
        unknown = sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and canonical_name(p.name) not in BENCHMARKS
        )
        if unknown:
            warnings.warn(
                f"{root}: folders {unknown} are not benchmarks this package knows and are not "
                f"evaluated; known names: {', '.join(BENCHMARKS)} (also {', '.join(ALIASES)}). "
                "Rename a folder to evaluate it, or pass names=.",
                stacklevel=2,
            )
        if not present:
            raise FileNotFoundError(
                f"{root} holds none of the benchmark folders {list(BENCHMARKS)}"
                + (f"; found {unknown}." if unknown else ".")
            )
        names = [n for n in BENCHMARKS if n in present]
    wanted = {canonical_name(n): n for n in names}
    missing = [n for c, n in wanted.items() if c not in present and not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Benchmark folders {missing} are missing under {root}; found "
            f"{sorted(p.name for p in root.iterdir() if p.is_dir())}. Folder names follow the "
            "course (RoadObsticle21, or SMIYC's RoadObstacle21)."
        )
    return {c: AnomalyBenchmark(present.get(c, root / n)) for c, n in wanted.items()}


def _labels(dataset: AnomalyBenchmark):
    """The converted masks (0 / 1 / 255, ``[H, W]``) of ``dataset``'s frames, without the images."""
    for _, _, mask_path in dataset.frames:
        yield dataset.spec.convert(read_mask(mask_path))


def anomaly_fraction(dataset: AnomalyBenchmark) -> float:
    """Share of anomaly pixels among valid ones: the AuPRC of a random score (chance level)."""
    pos = tot = 0
    for m in _labels(dataset):
        pos += int((m == 1).sum())
        tot += int(((m == 0) | (m == 1)).sum())
    return pos / max(tot, 1)


def anomaly_statistics(dataset: AnomalyBenchmark) -> dict[str, float]:
    """How much of ``dataset`` is anomalous and how large its anomalies are, from the masks only.

    Returns ``frames``; ``anomaly_share`` (anomaly pixels among scored ones, in %: the chance
    AuPRC, as ``anomaly_fraction``); ``components_per_frame`` (anomaly components with
    8-connectivity, as SMIYC's component metrics count them); ``area_p10`` / ``area_p50`` /
    ``area_p90`` (percentiles of a component's area, in % of its frame's pixels, void included,
    so benchmarks of different frame sizes compare).
    """
    from scipy import ndimage

    areas, pos, tot = [], 0, 0
    for m in _labels(dataset):
        a = m == ANOMALY
        pos, tot = pos + int(a.sum()), tot + int((m != 255).sum())
        comps, n = ndimage.label(a, structure=np.ones((3, 3)))
        areas += (np.asarray(ndimage.sum(a, comps, range(1, n + 1))) / a.size * 100).tolist()
    p10, p50, p90 = np.percentile(areas, [10, 50, 90]) if areas else (np.nan,) * 3
    return {
        "frames": len(dataset),
        "anomaly_share": 100 * pos / max(tot, 1),
        "components_per_frame": len(areas) / max(len(dataset), 1),
        "area_p10": float(p10),
        "area_p50": float(p50),
        "area_p90": float(p90),
    }
