"""What the per-frame statistics cost and how close their histograms come to the exact metrics.

One ERFNet (random weights unless --weights: the scores only need to exist, and an untrained
network's MaxEntropy crowds near log 20, the hard case for bins) on each embedded benchmark folder,
evaluated on cached outputs without and with ``frame_stats`` (histograms for the bootstrap, recall
by
size, SMIYC components on RA-21 / RO-21), with MSP, MaxLogit, MaxEntropy and Energy. Per benchmark:
the extra seconds, the bins, and the largest |binned - exact| AuPRC and FPR95 on all frames (the
error the bootstrap's histograms carry); then the seconds of notebook 06's three tables.

    PYTHONPATH=lib OMP_NUM_THREADS=1 python benchmarks/bench_frame_stats.py --data
    data/demo/Validation_Dataset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import machine_line, markdown_table
from anomalyseg import bootstrap
from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.evaluate import OutputCache, evaluate_anomaly
from anomalyseg.models.erfnet import ERFNet, ErfnetSegmenter
from anomalyseg.report.tables import uncertainty_tables
from anomalyseg.results import load_frame_stats, read_results

HEADERS = (
    "benchmark",
    "frames",
    "valid px (M)",
    "plain (s)",
    "with frame stats (s)",
    "extra",
    "bins (max)",
    "binned - exact AuPRC (max, points)",
    "binned - exact FPR95 (max, points)",
)
SCORES = ("msp", "max_logit", "max_entropy", "energy")


class _Subset(torch.utils.data.Dataset):
    def __init__(self, data, n):
        self.data, self.n, self.skipped = data, min(n, len(data)), getattr(data, "skipped", [])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.data[i]


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        required=True,
        help="the Validation_Dataset folder (e.g. data/demo/Validation_Dataset)",
    )
    ap.add_argument(
        "--weights", default=None, help="ERFNet weights; default a random initialisation (seed 0)"
    )
    ap.add_argument(
        "--input-size", type=int, nargs=2, default=(256, 512), help="ERFNet input size H W"
    )
    ap.add_argument(
        "--max-frames", type=int, default=10**9, help="frames per benchmark (smoke tests)"
    )
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the tables")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seg = ErfnetSegmenter(
        args.weights or ERFNet(),
        checkpoint=args.weights or "random-init",
        input_size=tuple(args.input_size),
    )
    benchmarks = {k: _Subset(v, args.max_frames) for k, v in load_benchmarks(args.data).items()}
    cache, out = OutputCache(), Path(tempfile.mkdtemp())
    kw = dict(scores=SCORES, cache=cache, progress=False, maps_frames=0, curve_points=0)
    evaluate_anomaly(
        seg, benchmarks, results_path=out / "warm.csv", frame_stats=False, **kw
    )  # the forwards
    rows, total = [], [0.0, 0.0]
    for name, data in benchmarks.items():
        t0 = time.perf_counter()
        evaluate_anomaly(seg, {name: data}, results_path=out / "plain.csv", frame_stats=False, **kw)
        t1 = time.perf_counter()
        evaluate_anomaly(seg, {name: data}, results_path=out / "stats.csv", frame_stats=True, **kw)
        t2 = time.perf_counter()
        total[0] += t1 - t0
        total[1] += t2 - t1
        stored = read_results(out / "stats.csv")
        err, bins, px = {"auprc": 0.0, "fpr_at_95_tpr": 0.0}, 0, 0
        for _, r in stored[stored.dataset == name].iterrows():
            st = load_frame_stats(out / "stats.csv", r)
            m = bootstrap.pixel_metrics(st, np.ones((1, len(st["stems"]))))
            err = {k: max(err[k], abs(m[k][0] - r[k])) for k in err}
            bins, px = max(bins, len(st["edges"])), int(st["pos"].sum() + st["neg"].sum())
        rows.append(
            [
                name,
                len(data),
                f"{px / 1e6:.2f}",
                f"{t1 - t0:.2f}",
                f"{t2 - t1:.2f}",
                f"{(t2 - t1) / (t1 - t0) - 1:+.0%}",
                bins,
                f"{100 * err['auprc']:.4f}",
                f"{100 * err['fpr_at_95_tpr']:.4f}",
            ]
        )
    rows.append(
        [
            "**all**",
            sum(len(d) for d in benchmarks.values()),
            "",
            f"{total[0]:.2f}",
            f"{total[1]:.2f}",
            f"{total[1] / total[0] - 1:+.0%}",
            "",
            "",
            "",
        ]
    )
    df = read_results(out / "stats.csv")
    t0 = time.perf_counter()
    tables = uncertainty_tables(df, out / "stats.csv", n_boot=args.n_boot)
    t_tables = time.perf_counter() - t0
    text = (
        machine_line("cpu")
        + "\n\n"
        + markdown_table(HEADERS, rows)
        + f"\n\nnotebook 06's tables ({', '.join(tables)}; {args.n_boot} resamples, {len(df)} "
        f"rows): {t_tables:.2f} s\n"
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
