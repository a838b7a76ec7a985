"""What the per-frame statistics cost and how close their histograms come to the exact metrics.

Evaluates one ERFNet (random initialisation unless --checkpoint: the scores only need to exist,
and an untrained network's MaxEntropy crowds near log 20, the hard case for bins) on the embedded
benchmarks twice on cached outputs, without and with ``frame_stats``, then reports
- the extra seconds of the evaluation with frame statistics (histograms, size recall, components);
- per row, |binned - exact| of AuPRC and FPR95 on all frames (the bootstrap's bin error);
- the seconds of notebook 06's three tables (1000 resamples) over every row.

    PYTHONPATH=lib OMP_NUM_THREADS=1 python benchmarks/bench_frame_stats.py --data data/demo/Validation_Dataset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomalyseg import bootstrap
from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.evaluate import OutputCache, evaluate_anomaly
from anomalyseg.models.erfnet import ERFNet, ErfnetSegmenter
from anomalyseg.results import load_frame_stats, read_results, to_markdown


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the Validation_Dataset folder (e.g. data/demo/Validation_Dataset)")
    ap.add_argument("--checkpoint", default=None, help="ERFNet weights; default a random initialisation (seed 0)")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512), help="ERFNet input size H W")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    seg = ErfnetSegmenter(args.checkpoint or ERFNet(), checkpoint=args.checkpoint or "random-init", input_size=tuple(args.size))
    benchmarks = load_benchmarks(args.data)
    scores = ("msp", "max_logit", "max_entropy", "energy")
    cache = OutputCache()
    out = Path(tempfile.mkdtemp())
    kw = dict(scores=scores, cache=cache, progress=False, maps_frames=0, curve_points=0)
    t0 = time.perf_counter()
    evaluate_anomaly(seg, benchmarks, results_path=out / "warm.csv", frame_stats=False, **kw)
    t1 = time.perf_counter()
    evaluate_anomaly(seg, benchmarks, results_path=out / "plain.csv", frame_stats=False, **kw)
    t2 = time.perf_counter()
    evaluate_anomaly(seg, benchmarks, results_path=out / "stats.csv", frame_stats=True, **kw)
    t3 = time.perf_counter()
    rows = read_results(out / "stats.csv")
    pixels = sum(int(load_frame_stats(out / "stats.csv", r)["pos"].sum() + load_frame_stats(out / "stats.csv", r)["neg"].sum())
                 for _, r in rows[rows.score == "msp"].iterrows())
    print(f"{len(rows)} rows, {pixels / 1e6:.1f}M valid pixels per score; first pass with forwards {t1 - t0:.1f} s")
    print(f"cached evaluation: {t2 - t1:.2f} s without frame statistics, {t3 - t2:.2f} s with (+{t3 - t2 - (t2 - t1):.2f} s)")
    worst = {}
    for _, r in rows.iterrows():
        st = load_frame_stats(out / "stats.csv", r)
        m = bootstrap.pixel_metrics(st, np.ones((1, len(st["stems"]))))
        for k in ("auprc", "fpr_at_95_tpr"):
            d = abs(m[k][0] - r[k])
            if d >= worst.get(k, (-1,))[0]:
                worst[k] = (d, r["dataset"], r["score"], len(st["edges"]))
    for k, (d, ds, sc, D) in worst.items():
        print(f"largest |binned - exact| {k}: {100 * d:.4f} points ({sc} on {ds}, {D} bins)")
    t4 = time.perf_counter()
    tables = bootstrap.report_tables(rows, out / "stats.csv", n_boot=args.n_boot)
    t5 = time.perf_counter()
    print(f"notebook 06 tables ({args.n_boot} resamples, {len(rows)} rows): {t5 - t4:.1f} s")
    for name, table in tables.items():
        print(f"\n{name}\n{to_markdown(table)}")


if __name__ == "__main__":
    main()
