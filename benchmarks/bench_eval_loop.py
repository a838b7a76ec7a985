"""Where an anomaly evaluation's time goes: data loading vs forward vs scores vs metrics, per frame.

Runs ERFNet (random weights, or ``--weights``) over the five embedded benchmark folders (the
``demo`` preset, 256x512 frames, generated into ``--data`` when absent: about a minute) in the
order ``anomalyseg.evaluate.evaluate_anomaly`` does, with each step timed on its own:

1. collect (one pass over each data set through a ``DataLoader`` like ``evaluate._loader``:
   unbatched items, ``num_workers`` workers, pinned memory only on CUDA):
   - ``loader start``: the wait for each data set's first item (worker start-up included);
   - ``data loading``: the wait for every further item, i.e. decoding the image and mask in the
     main process (``num_workers=0``) or what the workers could not hide behind the compute;
   - ``labels to eval size``: ``evaluate.resize_label``;
   - ``preprocess``: ``ErfnetSegmenter.preprocess`` (to the device, antialiased resize, /255);
   - ``network``: ``ErfnetSegmenter.model`` (``torch.cuda.synchronize`` after it on the GPU);
   - ``copy to host (fp16)``: the float16 CPU copy that ``raw_outputs`` caches;
2. ``class map + scores``: ``ErfnetSegmenter.class_map`` and each score of ``--scores``;
3. ``metric update``: ``AnomalyAccumulator.update`` per score and frame;
4. ``metric compute``: ``compute`` (the sort) and ``pr_roc_points`` per score and data set,
   spread over the frames.

The per-frame milliseconds of each step are the step's total time over all frames divided by
the number of frames. ``evaluate_anomaly`` itself is then run end to end on the same data
(results, curves and stored maps written to a temporary folder) for the overall frames/s; its
difference to the sum of the steps is mostly the maps it stores for the report.

    python benchmarks/bench_eval_loop.py --workers 0 2                      # 256x512, CPU
    python benchmarks/bench_eval_loop.py --input-size 512 1024 --workers 0 2
    python benchmarks/bench_eval_loop.py --device cuda --workers 0 2 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Subset

from _common import load_average, machine_line, markdown_table, script_device, sync
from anomalyseg.evaluate import evaluate_anomaly, resize_label
from anomalyseg.labels import NUM_CLASSES
from anomalyseg.metrics import AnomalyAccumulator
from anomalyseg.scores import get_score

STAGES = (
    "loader start",
    "data loading",
    "labels to eval size",
    "preprocess",
    "network",
    "copy to host (fp16)",
    "class map + scores",
    "metric update",
    "metric compute",
)


def load_data(args) -> dict:
    from anomalyseg.data.benchmarks import load_benchmarks
    from anomalyseg.data.synthetic import ensure_data

    root = ensure_data(args.data, preset=args.preset, progress=False)
    benchmarks = load_benchmarks(Path(root) / "Validation_Dataset")
    if args.max_frames:
        benchmarks = {
            k: _Named(v, range(min(len(v), args.max_frames))) for k, v in benchmarks.items()
        }
    return benchmarks


class _Named(Subset):
    """A ``Subset`` that keeps ``skipped`` (``evaluate_anomaly`` reports it)."""

    def __init__(self, dataset, indices):
        super().__init__(dataset, list(indices))
        self.skipped = getattr(dataset, "skipped", [])


def make_segmenter(args, device):
    from anomalyseg.models.erfnet import ERFNet, ErfnetSegmenter

    torch.manual_seed(0)
    model = args.weights if args.weights else ERFNet()
    return ErfnetSegmenter(model, input_size=tuple(args.input_size), device=device)


def timed_pass(
    segmenter, benchmarks: dict, scores: Sequence[str], workers: int, device
) -> tuple[dict, int, float]:
    """One evaluation with every step timed: ``({stage: seconds}, frames, wall seconds)``."""
    t = defaultdict(float)
    clock = time.perf_counter
    n_frames = 0
    start = clock()
    for dataset in benchmarks.values():
        loader = DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
        )
        frames = []
        t0 = clock()
        for i, item in enumerate(loader):
            t1 = clock()
            t["loader start" if i == 0 else "data loading"] += t1 - t0
            size = segmenter.eval_size(tuple(item["label"].shape[-2:]))
            label = resize_label(torch.as_tensor(item["label"]), size)
            t2 = clock()
            x = segmenter.preprocess(item["image"][None])
            sync(device)
            t3 = clock()
            logits = segmenter.model(x)
            sync(device)
            t4 = clock()
            raw = {"logits": logits[0].half().cpu()}  # what ErfnetSegmenter.raw_outputs caches
            t5 = clock()
            t["labels to eval size"] += t2 - t1
            t["preprocess"] += t3 - t2
            t["network"] += t4 - t3
            t["copy to host (fp16)"] += t5 - t4
            frames.append((raw, label))
            t0 = clock()
        accs = {s: AnomalyAccumulator() for s in scores}
        for raw, label in frames:
            t0 = clock()
            class_map = segmenter.class_map(raw, tuple(label.shape))[:NUM_CLASSES]
            maps = {s: get_score(s)(class_map) for s in scores}
            t1 = clock()
            for s, m in maps.items():
                accs[s].update(m, label)
            t["class map + scores"] += t1 - t0
            t["metric update"] += clock() - t1
        t0 = clock()
        for acc in accs.values():
            acc.compute()
            acc.pr_roc_points(256)
        t["metric compute"] += clock() - t0
        n_frames += len(frames)
    return dict(t), n_frames, clock() - start


def end_to_end(segmenter, benchmarks, scores, workers) -> float:
    """Seconds of ``evaluate_anomaly`` with its defaults (results, curves and maps to a temporary
    folder)."""
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        t = time.perf_counter()
        evaluate_anomaly(
            segmenter,
            benchmarks,
            scores=scores,
            results_path=Path(tmp) / "results.csv",
            num_workers=workers,
            progress=False,
        )
        return time.perf_counter() - t


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", default="/tmp/bench_data/demo", help="embedded data root (generated when absent)"
    )
    ap.add_argument("--preset", default="demo", choices=("demo", "tiny"))
    ap.add_argument(
        "--weights", default=None, help="ERFNet weights (default: random; timing needs none)"
    )
    ap.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=(256, 512),
        help="ERFNet input and evaluation size (256 512, or the course's 512 1024)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=(0, 2),
        help="DataLoader num_workers settings to compare",
    )
    ap.add_argument("--scores", nargs="+", default=("msp", "max_logit", "max_entropy", "energy"))
    ap.add_argument(
        "--max-frames", type=int, default=None, help="at most this many frames per data set"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads in the main process"
    )
    ap.add_argument(
        "--no-end-to-end",
        dest="end_to_end",
        action="store_false",
        help="skip the end-to-end evaluate_anomaly run",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print the markdown table and return it."""
    args = parse_args(argv)
    device = script_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    benchmarks = load_data(args)
    segmenter = make_segmenter(args, device)
    n_total = sum(len(d) for d in benchmarks.values())
    header = [
        machine_line(device),
        f"ERFNet ({'weights ' + args.weights if args.weights else 'random weights'}) at "
        f"{args.input_size[0]}x{args.input_size[1]}, {n_total} frames of {len(benchmarks)} data "
        f"sets ({args.data}), scores {', '.join(args.scores)}; ms per frame (share of the steps' "
        "sum)",
        "",
    ]
    print("\n".join(header), flush=True)
    with torch.inference_mode():
        # warm-up: one frame through every step (lazy initialisation, first-call allocations)
        first = next(iter(benchmarks.values()))
        timed_pass(segmenter, {"warm-up": _Named(first, range(1))}, args.scores, 0, device)
        results = {}
        for w in args.workers:
            load = f"{load_average():.1f}"
            stages, n, wall = timed_pass(segmenter, benchmarks, args.scores, w, device)
            e2e = (
                end_to_end(segmenter, benchmarks, args.scores, w)
                if args.end_to_end
                else float("nan")
            )
            results[w] = (stages, n, wall, e2e, load)
    headers = ["step"] + [f"workers={w} ms/frame" for w in args.workers]
    rows = []
    for stage in STAGES:
        row = [stage]
        for w, (stages, n, *_rest) in results.items():
            total = sum(stages.values())
            row.append(
                f"{stages.get(stage, 0.0) / n * 1e3:.2f} "
                f"({stages.get(stage, 0.0) / total * 100:.0f}%)"
            )
        rows.append(row)
    rows.append(
        ["**sum of the steps**"]
        + [f"{sum(s.values()) / n * 1e3:.2f}" for s, n, *_ in results.values()]
    )
    rows.append(
        ["**frames/s, timed loop**"] + [f"{n / wall:.2f}" for _, n, wall, *_ in results.values()]
    )
    rows.append(
        ["**frames/s, evaluate_anomaly**"]
        + [f"{n / e2e:.2f}" for _, n, _, e2e, _ in results.values()]
    )
    rows.append(["load average at start"] + [r[4] for r in results.values()])
    table = markdown_table(headers, rows)
    print(table, flush=True)
    return "\n".join(header) + "\n" + table


if __name__ == "__main__":
    main(sys.argv[1:])
