"""COCO objects for Outlier Exposure (REFERENCE §1, seed 000's ``prepare_eomt_coco.py``).

``prepare_coco_ood`` turns COCO instance annotations into one-object masks::

    <coco_root>/annotations/instances_<split><year>.json        (input, pycocotools format)
    <coco_root>/<split><year>/<file name>                        (input images)
    <coco_root>/annotations/ood_seg_<split><year>/<image id>.png (object = 254, elsewhere 0)
    <coco_root>/<split><year>_ood_subset/<file name>             (copies of the kept images)
    <coco_root>/annotations/ood_seg_<split><year>.json           (manifest: settings, summary,
    kept items)

``OODObjects`` reads that output back as tightly cropped ``(image, mask)`` objects for ``MixOOD``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..labels import OOD_OBJECT_VALUE
from ..progress import tqdm
from .io import DatasetError, read_mask, read_rgb

# COCO categories that look like a Cityscapes class: pasting them as "anomalies" would teach the
# model that inlier classes are outliers. Name -> (COCO category id, the Cityscapes class it
# overlaps).
CITYSCAPES_LIKE_CATEGORIES: dict[str, tuple[int, str]] = {
    "person": (1, "person / rider"),
    "bicycle": (2, "bicycle"),
    "car": (3, "car"),
    "motorcycle": (4, "motorcycle"),
    "airplane": (5, "no class, but seen on the road it is labelled like a vehicle (truck / bus)"),
    "bus": (6, "bus"),
    "train": (7, "train"),
    "truck": (8, "truck"),
    "boat": (9, "no class, but a trailered boat reads as a vehicle (truck / car)"),
    "traffic light": (10, "traffic light"),
    "fire hydrant": (11, "pole-like street furniture (pole / sidewalk clutter)"),
    "stop sign": (13, "traffic sign"),
    "parking meter": (14, "pole / traffic sign"),
    "bench": (15, "street furniture on the sidewalk (fence / sidewalk)"),
}

TEMP_SUFFIX = ".partial"


def _paths(coco_root: Path, split: str, year: int) -> dict[str, Path]:
    name = f"{split}{year}"
    return {
        "annotations": coco_root / "annotations" / f"instances_{name}.json",
        "images": coco_root / name,
        "masks": coco_root / "annotations" / f"ood_seg_{name}",
        "subset": coco_root / f"{name}_ood_subset",
        "manifest": coco_root / "annotations" / f"ood_seg_{name}.json",
    }


def _layout(coco_root: Path, split: str, year: int) -> str:
    return (
        f"<coco_root>/annotations/instances_{split}{year}.json and <coco_root>/{split}{year}/<file "
        "name> (the official COCO download unpacked into one folder; here <coco_root> = "
        f"{coco_root})"
    )


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file and ``os.replace`` so an interrupted run never leaves a half file
    under the final name (a file that exists is complete)."""
    tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    write(tmp)
    os.replace(tmp, path)


def _check_settings(split, year, max_images, min_area, max_area_fraction) -> None:
    if not isinstance(split, str) or not split or "/" in split:
        raise ValueError(
            "prepare_coco_ood: split must be a COCO split name such as 'train' or 'val', got "
            f"{split!r}."
        )
    if not isinstance(year, int):
        raise ValueError(f"prepare_coco_ood: year must be an integer such as 2017, got {year!r}.")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(
            "prepare_coco_ood: max_images must be a positive integer or None (= all), got "
            f"{max_images!r}."
        )
    if min_area < 0:
        raise ValueError(
            f"prepare_coco_ood: min_area is a pixel count and must be >= 0, got {min_area!r}."
        )
    if not 0 < max_area_fraction <= 1:
        raise ValueError(
            "prepare_coco_ood: max_area_fraction is a fraction of the frame and must lie in (0, "
            f"1], got {max_area_fraction!r}."
        )


# pycocotools reads the full COCO train2017 json (448 MB) in about 20 s on this project's CPU.
_JSON_BYTES_PER_S = 448e6 / 20


def _reading_note(annotations: Path) -> str:
    """``448.0 MB, about 20 s`` for the full COCO train json; just the size for a file read in
    under 2 s (the embedded data's few kB)."""
    size = annotations.stat().st_size
    seconds = size / _JSON_BYTES_PER_S
    shown = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
    return shown + (f", about {seconds:.0f} s" if seconds >= 2 else "")


def _largest_object(
    coco, image: dict, min_area: int, max_area_fraction: float
) -> np.ndarray | None:
    """Binary mask ``[h, w]`` of the image's largest single object whose rasterised area lies in
    ``[min_area, max_area_fraction * h * w]`` (ties: lowest annotation id), or None."""
    limit = max_area_fraction * image["height"] * image["width"]
    best, best_area = None, -1
    # Crowd annotations mark groups of objects, not one object to paste.
    for ann in sorted(coco.imgToAnns.get(image["id"], []), key=lambda a: a["id"]):
        if ann.get("iscrowd", 0):
            continue
        with (
            warnings.catch_warnings()
        ):  # pycocotools' numpy-2 copy= DeprecationWarning, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = coco.annToMask(ann)
        area = int(mask.sum())
        if min_area <= area <= limit and area > best_area:
            best, best_area = mask, area
    return best


def prepare_coco_ood(
    coco_root: str | os.PathLike,
    split: str = "train",
    year: int = 2017,
    max_images: int | None = 400,
    min_area: int = 1000,
    max_area_fraction: float = 0.4,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write one-object OOD masks (value 254) and image copies for Outlier Exposure.

    Drops every image holding one of ``CITYSCAPES_LIKE_CATEGORIES`` (crowd annotations included),
    walks the remaining images in an order shuffled with ``seed`` and keeps from each its largest
    non-crowd object of ``min_area`` pixels to ``max_area_fraction`` of the frame, until
    ``max_images`` are kept (None = all): a reproducible shuffled proxy subset, as RbA does.

    Safe to re-run: files are written atomically (temp + ``os.replace``), so a file under its
    final name is complete and is skipped (masks only when the manifest shows they were chosen
    with the same ``min_area`` / ``max_area_fraction``); stray temp files of an interrupted run
    are removed; and files outside the current selection are deleted from the two output
    folders, so they always hold exactly this selection. The manifest says ``complete: false``
    until the run ends, and ``OODObjects`` refuses such a folder.

    Returns a summary dict: ``kept``, ``dropped_overlap``, ``dropped_size``, ``unused``
    (candidates never examined because ``max_images`` was reached), ``total`` (images in the
    json), ``written`` (files written by this call) and the output folders ``masks`` / ``images``.
    """
    from pycocotools.coco import COCO

    _check_settings(split, year, max_images, min_area, max_area_fraction)
    coco_root = Path(coco_root)
    p = _paths(coco_root, split, year)
    if not p["annotations"].is_file():
        raise FileNotFoundError(
            f"prepare_coco_ood: no COCO annotation file at {p['annotations']}. Expected the layout "
            f"{_layout(coco_root, split, year)}; download annotations_trainval{year}.zip from "
            "cocodataset.org and unpack it into <coco_root>."
        )
    if not p["images"].is_dir():
        raise FileNotFoundError(
            f"prepare_coco_ood: no COCO image folder at {p['images']}. Expected the layout "
            f"{_layout(coco_root, split, year)}; unpack {split}{year}.zip into <coco_root>."
        )
    if progress:
        print(f"Reading {p['annotations']} ({_reading_note(p['annotations'])}) ...")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing chatter
            coco = COCO(str(p["annotations"]))
    except (
        ValueError,
        KeyError,
        TypeError,
        AssertionError,
    ) as e:  # json.JSONDecodeError is a ValueError
        raise DatasetError(
            f"The COCO annotation file {p['annotations']} could not be read ({type(e).__name__}: "
            f"{e}); it is truncated (an interrupted download or unzip) or not a COCO instances "
            f"json. Unpack annotations_trainval{year}.zip into <coco_root> again."
        ) from None

    overlap_ids = {
        c["id"] for c in coco.loadCats(coco.getCatIds()) if c["name"] in CITYSCAPES_LIKE_CATEGORIES
    }
    image_ids = sorted(coco.imgs)
    overlapping = {
        i
        for i in image_ids
        if any(a["category_id"] in overlap_ids for a in coco.imgToAnns.get(i, []))
    }
    candidates = [i for i in image_ids if i not in overlapping]

    present = set(os.listdir(p["images"]))
    missing = [
        coco.imgs[i]["file_name"] for i in candidates if coco.imgs[i]["file_name"] not in present
    ]
    if missing:
        raise DatasetError(
            f"prepare_coco_ood: {len(missing)} images referenced by {p['annotations'].name} are "
            f"missing from {p['images']} (e.g. {', '.join(missing[:3])}). Expected every image of "
            f"the json in that folder; unpack the complete {split}{year}.zip there, or use the "
            "annotation file that matches these images."
        )

    order = np.random.default_rng(seed).permutation(len(candidates))
    target = len(candidates) if max_images is None else min(max_images, len(candidates))
    settings = dict(
        split=split,
        year=year,
        max_images=max_images,
        min_area=min_area,
        max_area_fraction=max_area_fraction,
        seed=seed,
    )
    # Masks already on disk are reused only if they were chosen by the same object rule.
    previous = _read_manifest(p["manifest"]) if p["manifest"].is_file() else None
    trusted = previous is not None and all(
        previous["settings"].get(k) == settings[k] for k in ("min_area", "max_area_fraction")
    )
    p["masks"].mkdir(parents=True, exist_ok=True)
    p["subset"].mkdir(parents=True, exist_ok=True)
    for folder in (p["masks"], p["subset"]):
        for stray in folder.glob(f".*{TEMP_SUFFIX}"):
            stray.unlink()
    # Marks the folders as in progress until the end, so OODObjects refuses a half-prepared set.
    manifest = {"settings": settings, "complete": False, "items": []}
    _atomic_write(p["manifest"], lambda t: t.write_text(json.dumps(manifest, indent=1)))

    kept: list[dict] = []
    dropped_size = written = examined = 0
    bar = tqdm(
        total=target, desc=f"COCO OOD objects {split}{year}", unit="obj", disable=not progress
    )
    for k in order:
        if len(kept) >= target:
            break
        image = coco.imgs[candidates[k]]
        examined += 1
        mask_path = p["masks"] / f"{image['id']}.png"
        copy_path = p["subset"] / image["file_name"]
        source = p["images"] / image["file_name"]
        if not (trusted and mask_path.is_file()):
            obj = _largest_object(coco, image, min_area, max_area_fraction)
            if obj is None:
                dropped_size += 1
                continue
            mask = (obj * OOD_OBJECT_VALUE).astype(np.uint8)
            _atomic_write(mask_path, lambda t: Image.fromarray(mask).save(t, format="PNG"))
            written += 1
        if not copy_path.is_file() or copy_path.stat().st_size != source.stat().st_size:
            _atomic_write(copy_path, lambda t: shutil.copyfile(source, t))
            written += 1
        kept.append({"id": image["id"], "file_name": image["file_name"]})
        bar.update(1)
    bar.close()

    # These folders belong to this function: anything outside the current selection is a leftover
    # of a run with other settings and would otherwise leak into OODObjects.
    keep_masks = {f"{e['id']}.png" for e in kept}
    keep_images = {e["file_name"] for e in kept}
    for folder, keep in ((p["masks"], keep_masks), (p["subset"], keep_images)):
        for f in folder.iterdir():
            if f.is_file() and f.name not in keep:
                f.unlink()

    summary = {
        "kept": len(kept),
        "dropped_overlap": len(overlapping),
        "dropped_size": dropped_size,
        "unused": len(candidates) - examined,
        "total": len(image_ids),
        "written": written,
    }
    manifest = {"settings": settings, "complete": True, "summary": summary, "items": kept}
    _atomic_write(p["manifest"], lambda t: t.write_text(json.dumps(manifest, indent=1)))
    print(
        f"COCO OOD objects {split}{year}: kept {summary['kept']} of {summary['total']} images "
        f"(dropped {summary['dropped_overlap']} with Cityscapes-like objects, "
        f"{summary['dropped_size']} without an object of {min_area} px to {max_area_fraction:.0%} "
        f"of the frame, {summary['unused']} not needed for max_images={max_images}); {written} "
        f"files written to {p['masks']} and {p['subset']}"
    )
    return {**summary, "masks": str(p["masks"]), "images": str(p["subset"])}


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
        items = manifest["items"]
        assert isinstance(manifest["settings"], dict)
        assert all({"id", "file_name"} <= set(e) for e in items)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise DatasetError(
            f"The OOD manifest {path} is not valid JSON with an 'items' list of {{id, file_name}}: "
            f"{e!r}. Delete it and re-run prepare_coco_ood (`anomalyseg prepare-coco`) to rebuild "
            "it."
        ) from e
    return manifest


def _pairs_by_stem(masks: Path, subset: Path) -> list[tuple[Path, Path]]:
    """Pair masks with images when there is no manifest (folders prepared by seed 000's script):
    mask ``<id>.png`` goes with the image whose stem is the same number (``000000000139.jpg``)."""

    def key(stem: str):
        return int(stem) if stem.isdigit() else stem

    images = (
        {key(f.stem): f for f in subset.iterdir() if f.is_file() and not f.name.startswith(".")}
        if subset.is_dir()
        else {}
    )
    pairs = []
    for m in sorted(masks.glob("*.png")):
        if key(m.stem) not in images:
            raise DatasetError(
                f"The OOD mask {m} has no image: expected {subset}/<file name> whose stem is "
                f"{m.stem} (zero padding allowed). Re-run prepare_coco_ood (`anomalyseg "
                "prepare-coco`) to restore the copies."
            )
        pairs.append((images[key(m.stem)], m))
    return pairs


class OODObjects(Dataset):
    """The objects written by ``prepare_coco_ood``, each cropped tightly to its bounding box.

    Item: ``(image uint8 tensor [3, h, w], mask bool tensor [h, w])`` where ``mask`` marks the
    object's pixels inside its box.
    """

    def __init__(self, coco_root: str | os.PathLike, split: str = "train", year: int = 2017):
        self.root = Path(coco_root)
        p = _paths(self.root, split, year)
        if not p["masks"].is_dir():
            raise FileNotFoundError(
                f"No prepared COCO OOD objects at {p['masks']}. Prepare them first with "
                "`anomalyseg prepare-coco` or "
                f"anomalyseg.data.coco.prepare_coco_ood({str(self.root)!r}, split={split!r}, "
                f"year={year}), which needs {_layout(self.root, split, year)}."
            )
        if p["manifest"].is_file():
            manifest = _read_manifest(p["manifest"])
            if not manifest.get("complete"):
                raise DatasetError(
                    f"The COCO OOD preparation at {p['masks']} is incomplete ({p['manifest'].name} "
                    "says the run was interrupted or is still running). Re-run prepare_coco_ood "
                    "(`anomalyseg prepare-coco`) with the same settings to finish it."
                )
            items = manifest["items"]
            self.pairs = [
                (p["subset"] / e["file_name"], p["masks"] / f"{e['id']}.png") for e in items
            ]
        else:
            self.pairs = _pairs_by_stem(p["masks"], p["subset"])
        for image, mask in self.pairs:
            if not mask.is_file():
                raise DatasetError(
                    f"The OOD mask {mask} listed in {p['manifest']} is missing; re-run "
                    "prepare_coco_ood."
                )
            if not image.is_file():
                raise DatasetError(
                    f"The OOD mask {mask} has no image: expected {image}. Re-run prepare_coco_ood "
                    "(`anomalyseg prepare-coco`) to restore the image copies."
                )
        if not self.pairs:
            raise DatasetError(
                f"{p['masks']} holds no OOD masks; re-run prepare_coco_ood with a larger "
                "max_images or a smaller min_area."
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = read_rgb(image_path), read_mask(mask_path) == OOD_OBJECT_VALUE
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"The OOD mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}; expected the same size. "
                "Re-run prepare_coco_ood."
            )
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            raise DatasetError(
                f"The OOD mask {mask_path} has no pixel of value {OOD_OBJECT_VALUE}; expected one "
                "object."
            )
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        crop = torch.from_numpy(np.ascontiguousarray(image[box])).permute(2, 0, 1).contiguous()
        return crop, torch.from_numpy(np.ascontiguousarray(mask[box]))
