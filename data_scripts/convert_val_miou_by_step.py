"""One-off conversion of demo-weights manifests written before ``val_miou_by_step`` became pairs.

Old entries hold ``{"<Lightning's 0-based step>": val_miou}`` (JSON's sorted keys put "1499"
before "499"); ``pipeline.train_demo_weights`` now writes ``[[steps_done, val_miou], ...]`` in
training order (``demo_models.val_miou_by_step``: steps done = logged step + 1). Only that field
of each entry changes (weights, sha256s and every other field stay as they are), through the
manifest's own writer; an entry already in pairs is left alone, so the script can be rerun.

    PYTHONPATH=lib python data_scripts/convert_val_miou_by_step.py [FOLDER ...]

FOLDER: a folder holding manifest.json (default: the package's shipped demo_weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

from anomalyseg import demo_models


def converted(by_step: dict | list) -> list[list]:
    """``{"499": 0.19, "999": 0.21}`` -> ``[[500, 0.19], [1000, 0.21]]``; pairs as they are."""
    if isinstance(by_step, list):
        return by_step
    return [
        [int(step) + 1, miou] for step, miou in sorted(by_step.items(), key=lambda i: int(i[0]))
    ]


def convert(folder: str | Path = demo_models.WEIGHTS_DIR) -> list[str]:
    """Convert ``folder/manifest.json`` in place; returns the models whose entry changed."""
    changed = []
    for model, entry in demo_models.read_manifest(folder).items():
        if isinstance(entry.get("val_miou_by_step"), dict):
            entry["val_miou_by_step"] = converted(entry["val_miou_by_step"])
            demo_models._write_entry(folder, model, entry)
            changed.append(model)
    return changed


if __name__ == "__main__":
    for folder in sys.argv[1:] or [demo_models.WEIGHTS_DIR]:
        print(f"{folder}: converted {convert(folder) or 'nothing (already pairs)'}")
