"""What a data root holds: counts, sizes, label values, and what is missing with the command that
fixes it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import BENCHMARKS
from .benchmarks import AnomalyBenchmark
from .cityscapes import CityscapesSegmentation
from .io import read_mask

FIXES = {
    "cityscapes": "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from the "
    "Cityscapes site, unzip them into one folder, then run `CITYSCAPES_DATASET=<root> "
    "csCreateTrainIdLabelImgs`",
    "benchmarks": "unzip the course's Validation_Dataset archive so that <root>/<name>/images and "
    "labels_masks exist",
    "coco": "download train2017 images and annotations_trainval2017, then `anomalyseg "
    "prepare-coco --coco-root <root>`",
}


def _sizes(paths) -> str:
    from PIL import Image

    c = Counter()
    for p in paths:
        with Image.open(p) as im:
            c[f"{im.height}x{im.width}"] += 1
    return ", ".join(f"{k} ({v})" for k, v in c.most_common(3))


def _found(frames: int, skipped: int, images: list, masks: list) -> dict:
    """The columns of a data set that opened: ``images``/``masks`` are the sampled files whose
    sizes and label values are reported."""
    values = np.unique(np.concatenate([np.unique(read_mask(m)) for m in masks]))
    return dict(
        status="ok",
        frames=frames,
        skipped=skipped,
        sizes=_sizes(images),
        label_values=" ".join(map(str, values)),
        fix="",
    )


def _not_found(e: Exception, dataset: str) -> dict:
    """The columns of a data set that did not open: a missing one gets the command that fetches it
    (``FIXES[dataset]``), a malformed one its error message."""
    missing = isinstance(e, FileNotFoundError)
    return dict(
        status="missing" if missing else "error",
        frames=0,
        skipped=0,
        sizes="",
        label_values="",
        fix=FIXES[dataset] if missing else str(e),
    )


def inventory(cityscapes: Path, benchmarks: Path, coco: Path, sample: int = 20) -> pd.DataFrame:
    """One row per data set: status (ok / missing / error), frames, skipped, sizes, label values,
    fix.

    Label values are read from up to ``sample`` masks per data set.
    """
    rows = []
    for split in ("train", "val"):
        row = dict(
            dataset=f"cityscapes/{split}", path=str(Path(cityscapes) / "leftImg8bit" / split)
        )
        try:
            ds = CityscapesSegmentation(cityscapes, split, check_labels=False)
            pairs = ds.pairs[:sample]
            row.update(_found(len(ds), 0, [i for i, _ in pairs], [lab for _, lab in pairs]))
        except (FileNotFoundError, ValueError) as e:
            row.update(_not_found(e, "cityscapes"))
        rows.append(row)
    for name in BENCHMARKS:
        folder = Path(benchmarks) / name
        row = dict(dataset=name, path=str(folder))
        try:
            ds = AnomalyBenchmark(folder)
            frames = ds.frames[:sample]
            row.update(
                _found(
                    len(ds), len(ds.skipped), [i for _, i, _ in frames], [m for _, _, m in frames]
                )
            )
        except (FileNotFoundError, ValueError) as e:
            row.update(_not_found(e, "benchmarks"))
        rows.append(row)
    row = dict(
        dataset="coco ood objects", path=str(Path(coco) / "annotations" / "ood_seg_train2017")
    )
    try:
        from .coco import OODObjects

        objs = OODObjects(coco, "train", 2017)
        row.update(status="ok", frames=len(objs), skipped=0, sizes="", label_values="0 254", fix="")
    except (FileNotFoundError, ValueError) as e:
        row.update(_not_found(e, "coco"))
    rows.append(row)
    return pd.DataFrame(rows)
