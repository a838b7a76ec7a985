"""Write the embedded procedural road data set (a thin entry to
``anomalyseg.data.synthetic.make_data``).

python data_scripts/make_embedded_data.py --preset demo --out data/embedded --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomalyseg.data.synthetic import PRESETS, make_data


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="frame size and counts (see PRESETS)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to create (replaced if it holds embedded data)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    out = make_data(args.out, args.preset, args.seed, progress=not args.no_progress)
    print(f"wrote the {args.preset} embedded data set (seed {args.seed}) to {out}")
    return out


if __name__ == "__main__":
    main()
