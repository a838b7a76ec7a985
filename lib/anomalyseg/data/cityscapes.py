"""Cityscapes in its official layout, read as train ids (REFERENCE §1).

<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
<root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..labels import IGNORE_INDEX, NUM_CLASSES
from .io import DatasetError, check_values, files_fingerprint, read_mask, read_rgb

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
TRAIN_ID_VALUES = frozenset(range(NUM_CLASSES)) | {IGNORE_INDEX}


def _list_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"No Cityscapes images at {image_dir}. Expected the official layout "
            f"<root>/leftImg8bit/{split}/<city>/<stem>{IMAGE_SUFFIX} with <root> = {root}; point "
            "data_root at the folder that holds leftImg8bit/ and gtFine/, or generate the "
            "embedded default with `anomalyseg make-data`."
        )
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise DatasetError(
            f"{image_dir} holds no <city>/*{IMAGE_SUFFIX} files; expected the Cityscapes {split} "
            "frames there."
        )
    pairs, missing = [], []
    for image in images:
        stem = image.name[: -len(IMAGE_SUFFIX)]
        label = label_dir / image.parent.name / f"{stem}{LABEL_SUFFIX}"
        (pairs if label.is_file() else missing).append((image, label))
    if missing:
        if not label_dir.is_dir():
            raise DatasetError(
                f"No Cityscapes labels at {label_dir} for the {len(images)} {split} frames of "
                f"{image_dir}. Expected <root>/gtFine/{split}/<city>/<stem>{LABEL_SUFFIX}; "
                f"download gtFine_trainvaltest.zip into {root} and create the train ids with "
                f"`CITYSCAPES_DATASET={root} csCreateTrainIdLabelImgs`."
            )
        cities = sorted(
            {img.parent.name for img, _ in missing if not (label_dir / img.parent.name).is_dir()}
        )
        if cities:
            raise DatasetError(
                f"{len(missing)} of {len(images)} Cityscapes {split} frames have no label folder: "
                f"gtFine/{split} lacks the cities {cities[:5]} that leftImg8bit/{split} has (under "
                f"{label_dir}). Copy gtFine completely."
            )
        has_raw = any(
            any((label_dir / img.parent.name).glob("*_gtFine_labelIds.png"))
            for img, _ in missing[:1]
        )
        hint = (
            f"The gtFine folder has *_gtFine_labelIds.png but no *{LABEL_SUFFIX}: create the "
            f"train-id labels with cityscapesscripts: `CITYSCAPES_DATASET={root} "
            "csCreateTrainIdLabelImgs`."
            if has_raw
            else f"Expected each frame's labels at gtFine/{split}/<city>/<stem>{LABEL_SUFFIX}; if "
            f"you have the raw gtFine files, run `CITYSCAPES_DATASET={root} "
            "csCreateTrainIdLabelImgs`."
        )
        listed = ", ".join(str(label) for _, label in missing[:3])
        raise DatasetError(
            f"{len(missing)} of {len(images)} Cityscapes {split} frames have no train-id label "
            f"(e.g. {listed}). {hint}"
        )
    return pairs


class CityscapesSegmentation(Dataset):
    """Cityscapes frames with train-id targets.

    Item:
    ``{"image": tv_tensors.Image uint8 [3, H, W], "target": tv_tensors.Mask int64 [H, W], "stem":
    str}``
    with targets in 0..18 and 255 = void. ``transforms(image, target)`` runs on both (torchvision
    v2).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable | None = None,
        check_labels: bool = True,
    ):
        self.root, self.split, self.transforms = Path(root), split, transforms
        self.check_labels = check_labels
        self.pairs = _list_pairs(self.root, split)

    def __len__(self) -> int:
        return len(self.pairs)

    @functools.cached_property
    def fingerprint(self) -> str:
        """``io.files_fingerprint`` of this split's frames and train-id labels."""
        return files_fingerprint(self.pairs)

    def __getitem__(self, i: int) -> dict:
        image_path, label_path = self.pairs[i]
        image, label = read_rgb(image_path), read_mask(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]}; a frame and its label must have the same size."
            )
        if self.check_labels:
            check_values(label, TRAIN_ID_VALUES, label_path, "Cityscapes train-id (0..18, 255)")
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        target = tv_tensors.Mask(torch.from_numpy(label.astype(np.int64)))
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return {"image": img, "target": target, "stem": image_path.name[: -len(IMAGE_SUFFIX)]}
