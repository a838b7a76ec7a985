"""Where a run reads data and writes results: one object every notebook opens first.

By default everything lives beside the notebooks: the embedded data set under ``data/<preset>``
(generated on first use), the results store, checkpoints, the output cache and figures. Real data
is used by pointing ``cityscapes_root``, ``benchmarks_root`` and ``coco_root`` at its folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    cityscapes: Path  # holds leftImg8bit/ and gtFine/
    benchmarks: Path  # the course's Validation_Dataset/
    coco: Path  # holds annotations/ and train2017*/ (prepared OOD objects)
    results_csv: Path
    checkpoints: Path
    cache: Path
    figures: Path
    embedded: bool  # True when the data is the generated road benchmark

    def describe(self) -> str:
        kind = "embedded procedural road benchmark" if self.embedded else "real data"
        return "\n".join(
            [f"data: {kind}"]
            + [
                f"  {k:<12} {getattr(self, k)}"
                for k in (
                    "cityscapes",
                    "benchmarks",
                    "coco",
                    "results_csv",
                    "checkpoints",
                    "cache",
                    "figures",
                )
            ]
        )


def open_workspace(
    data_root: str | Path = "../data",
    preset: str = "demo",
    seed: int = 0,
    output_dir: str | Path = "..",
    cityscapes_root: str | Path | None = None,
    benchmarks_root: str | Path | None = None,
    coco_root: str | Path | None = None,
    figures_dir: str | Path | None = None,
    generate: bool = True,
) -> Workspace:
    """Resolve the data and output folders of a run.

    Without real roots, the embedded data set of ``preset`` is generated at ``<data_root>/<preset>``
    when missing (``generate=False`` makes a missing one an error instead).
    """
    real = [r for r in (cityscapes_root, benchmarks_root, coco_root) if r is not None]
    embedded_root = Path(data_root) / preset
    if len(real) < 3:
        from .data.synthetic import ensure_data, make_data  # noqa: F401  (generator lives in data/)

        if not generate and not embedded_root.exists():
            raise FileNotFoundError(
                f"No embedded data at {embedded_root}; run `anomalyseg make-data --preset {preset} "
                f"--out {embedded_root}` or set cityscapes_root, benchmarks_root and coco_root to "
                "real data."
            )
        ensure_data(embedded_root, preset=preset, seed=seed)
    out = Path(output_dir)
    return Workspace(
        cityscapes=Path(cityscapes_root) if cityscapes_root else embedded_root / "cityscapes",
        benchmarks=Path(benchmarks_root)
        if benchmarks_root
        else embedded_root / "Validation_Dataset",
        coco=Path(coco_root) if coco_root else embedded_root / "coco",
        results_csv=out / "results" / "results.csv",
        checkpoints=out / "checkpoints",
        cache=out / "cache",
        figures=Path(figures_dir) if figures_dir else out / "figures",
        embedded=len(real) < 3,
    )
