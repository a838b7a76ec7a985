"""What a temperature sweep costs on cached outputs, against one uncached evaluation pass.

Notebook 03's requirement: sweeping T must cost less than one extra evaluation pass. For each model
(the embedded ERFNet and small EoMT of a workspace, trained first when absent, exactly as notebooks
01/02 train them), this prints

- ``forward``: the network alone over every frame (``zoo.seconds_per_frame`` x frames);
- ``pass``: ``evaluate.evaluation_pass``, one uncached evaluation at T = 1 (forward, class maps,
  every score with exact metrics on the five benchmarks, mIoU on Cityscapes val);
- ``sweep exact`` / ``sweep binned``: ``evaluate.temperature_sweep`` over ``--temperatures`` on the
  cached outputs, with sorted (exact, notebook 03's) and 2^``--bits``-bin histogram metrics, each
  in passes;
- ``binned - exact``: the largest AuPRC and FPR95 difference over every swept row, in points.

    python benchmarks/bench_sweep.py                           # the demo workspace of `make demo`
    python benchmarks/bench_sweep.py --output-dir /tmp/ws --preset tiny --train-steps 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Sequence

import torch

from _common import machine_line, markdown_table
from anomalyseg import zoo
from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.evaluate import (
    OutputCache,
    collect_outputs,
    evaluation_pass,
    sweep_points,
    temperature_sweep,
)
from anomalyseg.workspace import open_workspace

HEADERS = (
    "model",
    "frames",
    "forward (s)",
    "pass (s)",
    "points",
    "sweep exact (s)",
    "sweep binned (s)",
    "exact sweep / pass",
    "binned sweep / pass",
    "binned - exact AuPRC (max, points)",
    "binned - exact FPR95 (max, points)",
)


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-root",
        default="data",
        help="embedded data folder (generated at <data-root>/<preset>)",
    )
    ap.add_argument(
        "--output-dir",
        default=".",
        help="workspace with checkpoints/ (make demo's: the repository root)",
    )
    ap.add_argument("--preset", default="demo", choices=("demo", "tiny"))
    ap.add_argument(
        "--temperatures", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.1, 1.5, 2.0]
    )
    ap.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="train the embedded models this long when the workspace has none (default: the demo "
        "preset's)",
    )
    ap.add_argument("--bits", type=int, default=24, help="histogram bits of the binned sweep")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ws = open_workspace(args.data_root, args.preset, 0, args.output_dir)
    steps = args.train_steps
    eomt_train = dict(
        max_steps=steps or 400,
        batch_size=4,
        crop_size=128 if args.preset == "demo" else 32,
        seed=0,
        num_workers=0,
    )
    erfnet_size = (128, 256) if args.preset == "demo" else (64, 128)
    erfnet_train = dict(
        max_steps=steps or 700,
        batch_size=4,
        crop_size=erfnet_size,
        scale_range=(0.5, 0.5),
        lr=5e-3,
        seed=0,
        num_workers=0,
    )
    models = {
        "eomt": zoo.eomt_segmenter(ws, None, train=eomt_train, device="cpu", progress=False),
        "erfnet": zoo.erfnet_segmenter(
            ws, None, train=erfnet_train, input_size=erfnet_size, device="cpu", progress=False
        ),
    }
    val = CityscapesSegmentation(ws.cityscapes, "val")
    benches = load_benchmarks(ws.benchmarks)
    n_frames = len(val) + sum(len(ds) for ds in benches.values())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        cache = OutputCache(tmp)
        for name, seg in models.items():
            collect_outputs(seg, val, "cityscapes_val", cache, label_key="target", progress=False)
            for ds_name, ds in benches.items():
                collect_outputs(seg, ds, ds_name, cache, progress=False)
            forward = zoo.seconds_per_frame(seg, val) * n_frames
            one_pass = evaluation_pass(seg, benches, val)
            timed = {}
            for bits in (None, args.bits):
                started = time.perf_counter()
                timed[bits] = (
                    temperature_sweep(
                        seg,
                        benches,
                        val,
                        args.temperatures,
                        results_path=None,
                        cache=cache,
                        histogram_bits=bits,
                    ),
                    time.perf_counter() - started,
                )
            exact, binned = timed[None][0], timed[args.bits][0]
            anomaly = exact["score"] != "miou"
            diff = {
                m: 100
                * (binned.loc[anomaly, m].astype(float) - exact.loc[anomaly, m].astype(float))
                .abs()
                .max()
                for m in ("auprc", "fpr_at_95_tpr")
            }
            rows.append(
                [
                    name,
                    n_frames,
                    f"{forward:.1f}",
                    f"{one_pass:.1f}",
                    sweep_points(seg, args.temperatures),
                    f"{timed[None][1]:.1f}",
                    f"{timed[args.bits][1]:.1f}",
                    f"{timed[None][1] / one_pass:.2f}",
                    f"{timed[args.bits][1] / one_pass:.2f}",
                    f"{diff['auprc']:.4f}",
                    f"{diff['fpr_at_95_tpr']:.4f}",
                ]
            )
    out = "\n".join(
        [
            machine_line("cpu"),
            f"preset {args.preset}, temperatures {args.temperatures}, binned sweep with "
            f"2^{args.bits} bins",
            "",
            markdown_table(HEADERS, rows),
        ]
    )
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
