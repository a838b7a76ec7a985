"""Label conventions: the 19 Cityscapes train classes and each anomaly benchmark's mask values.

Names and colours come from cityscapesscripts' label table, so they match every Cityscapes tool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cityscapesscripts.helpers.labels import labels as _cs_labels

IGNORE_INDEX = 255
NUM_CLASSES = 19

_train = sorted((c for c in _cs_labels if 0 <= c.trainId < 255), key=lambda c: c.trainId)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in _train)
CLASS_COLORS: np.ndarray = np.array([c.color for c in _train], dtype=np.uint8)  # [19, 3]
ROAD, SIDEWALK = CLASS_NAMES.index("road"), CLASS_NAMES.index("sidewalk")
assert len(CLASS_NAMES) == NUM_CLASSES

# Benchmark masks after conversion: 0 = in-distribution, 1 = anomaly, 255 = void (ignored).
IN_DISTRIBUTION, ANOMALY, VOID = 0, 1, 255
# Outlier-exposure object masks written by COCO preparation carry this value.
OOD_OBJECT_VALUE = 254


@dataclass(frozen=True)
class BenchmarkSpec:
    """How one anomaly benchmark is stored in the course layout.

    ``stored_values`` are the only values its masks may hold; ``remap`` turns them into the
    0 / 1 / 255 convention above (values not in ``remap`` are kept as stored).
    """

    folder: str
    title: str
    image_ext: str
    num_frames: int
    stored_values: frozenset[int]
    remap: tuple[tuple[int, int], ...] = ()

    def convert(self, mask: np.ndarray) -> np.ndarray:
        """Map a stored mask ``[H, W]`` to 0 / 1 / 255."""
        out = mask.copy()
        for src, dst in self.remap:
            out[mask == src] = dst
        return out


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.folder: spec
    for spec in (
        BenchmarkSpec("RoadAnomaly21", "SMIYC RA-21", "png", 10, frozenset({0, 1, 255})),
        # "Obsticle" is the course's spelling of the folder; off-road pixels are void (255).
        BenchmarkSpec("RoadObsticle21", "SMIYC RO-21", "webp", 30, frozenset({0, 1, 255})),
        BenchmarkSpec("FS_LostFound_full", "FS L&F", "png", 100, frozenset({0, 1, 255})),
        BenchmarkSpec("fs_static", "FS Static", "jpg", 30, frozenset({0, 1, 255})),
        BenchmarkSpec("RoadAnomaly", "Road Anomaly", "jpg", 60, frozenset({0, 2}), remap=((2, 1),)),
    )
}
# A plain binary convention, for folders such as ../shared/realdata/road_samples.
BINARY = BenchmarkSpec("binary", "binary masks", "png", 0, frozenset({0, 1, 255}))


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Colour a train-id map ``[H, W]`` with the Cityscapes palette; ignore becomes black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:NUM_CLASSES] = CLASS_COLORS
    return palette[np.asarray(train_ids, dtype=np.uint8)]
