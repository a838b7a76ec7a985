"""Prepare COCO objects for Outlier Exposure (thin entry to
``anomalyseg.data.coco.prepare_coco_ood``).

python data_scripts/prepare_coco_ood.py /path/to/coco --split train --year 2017 --max-images 400
"""

from __future__ import annotations

import argparse

from anomalyseg.data.coco import prepare_coco_ood


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "coco_root",
        help="folder holding annotations/instances_<split><year>.json and <split><year>/",
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--year", type=int, default=2017)
    parser.add_argument(
        "--max-images",
        type=lambda s: None if s.lower() in ("none", "all") else int(s),
        default=400,
        help="size of the seeded shuffled subset; 'all' keeps every eligible image",
    )
    parser.add_argument("--min-area", type=int, default=1000, help="smallest object, in pixels")
    parser.add_argument(
        "--max-area-fraction",
        type=float,
        default=0.4,
        help="largest object, as a fraction of the frame",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    return prepare_coco_ood(
        args.coco_root,
        split=args.split,
        year=args.year,
        max_images=args.max_images,
        min_area=args.min_area,
        max_area_fraction=args.max_area_fraction,
        seed=args.seed,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
