"""Pooled anomaly metrics: anomalyseg.metrics.anomaly_metrics against sklearn, as the course runs
it.

The course filters valid pixels, then calls ``average_precision_score``, ``roc_curve`` (for
ood-metrics' FPR95) and ``roc_auc_score``; we call ``anomaly_metrics`` on the raw pooled arrays
(void filtering included). Each (method, size) runs in a fresh subprocess that loads the data
and then measures wall time (best of ``--repeat``) and peak memory as the rise of the peak
resident set size (``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``)
over the resident set once the data are loaded. (``getrusage``'s ``ru_maxrss`` would not do: a
subprocess inherits the parent's peak across ``exec``.)

The last columns time ``BinnedAnomalyAccumulator(24)`` (the opt-in histogram metrics), fed in
frame-sized chunks, and its largest distance to the exact values in percentage points.

Synthetic data: float16-rounded scores (many ties, like half-precision model outputs), ~2% anomaly
pixels among valid ones and ~10% void pixels (255).

    python benchmarks/bench_metrics.py --pixels 1e6 10e6 50e6 --repeat 1 --sklearn-max 50e6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomalyseg.metrics import BinnedAnomalyAccumulator, anomaly_metrics


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n, dtype=np.float32) < 0.02).astype(np.uint8)
    labels[rng.random(n, dtype=np.float32) < 0.10] = 255
    scores = rng.standard_normal(n, dtype=np.float32)  # logits, anomalies shifted up
    scores[labels == 1] += 2.5
    np.negative(scores, out=scores)
    np.exp(scores, out=scores)
    scores += 1
    np.reciprocal(scores, out=scores)  # sigmoid, in place: 200M pixels stay within a few GB
    return scores.astype(np.float16).astype(np.float32), labels


def _ours(scores, labels):
    m = anomaly_metrics(scores, labels)
    return m["auprc"], m["fpr_at_95_tpr"], m["auroc"]


def _binned(scores, labels):
    # evaluate_anomaly(histogram_bits=24) feeds it frame-sized updates.
    acc = BinnedAnomalyAccumulator(24)
    step = 1 << 21  # ~ one 1024 x 2048 frame
    for i in range(0, len(scores), step):
        acc.update(scores[i : i + step], labels[i : i + step])
    m = acc.compute()
    return m["auprc"], m["fpr_at_95_tpr"], m["auroc"]


def _sklearn(scores, labels):
    valid = (labels == 0) | (labels == 1)
    s, y = scores[valid], labels[valid]
    ap = average_precision_score(y, s)
    fpr, tpr, _ = roc_curve(y, s)  # ood-metrics' fpr_at_95_tpr
    if all(tpr < 0.95):
        fpr95 = 0.0
    elif all(tpr >= 0.95):
        fpr95 = min(fpr[tpr >= 0.95])
    else:
        fpr95 = np.interp(0.95, tpr, fpr)
    return float(ap), float(fpr95), float(roc_auc_score(y, s))


def _status_kib(field: str) -> int:
    return next(
        int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":")
    )


def child(method: str, prefix: str, repeat: int) -> None:
    scores, labels = np.load(prefix + "_scores.npy"), np.load(prefix + "_labels.npy")
    fn = {"ours": _ours, "sklearn": _sklearn, "binned": _binned}[method]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _status_kib("VmRSS")
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        values = fn(scores, labels)
        best = min(best, time.perf_counter() - t)
    peak = _status_kib("VmHWM") - base
    print(json.dumps(dict(time=best, peak_mib=peak / 1024, values=values)))


def run_child(method: str, prefix: str, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, prefix, str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--pixels",
        type=float,
        nargs="+",
        default=[1e6, 10e6, 50e6],
        help="pooled pixels per run, void included",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="timed runs per subprocess (best is reported)"
    )
    ap.add_argument(
        "--sklearn-max", type=float, default=50e6, help="skip sklearn above this many pixels"
    )
    ap.add_argument(
        "--child", nargs=3, metavar=("METHOD", "PREFIX", "REPEAT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))

    import sklearn

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")
            ),
            cpu,
        )
    print(
        f"machine: {cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; numpy "
        f"{np.__version__}, scikit-learn {sklearn.__version__}, Python {platform.python_version()}"
    )
    print(
        "time: best of --repeat; memory: peak RSS (VmHWM) rise over the loaded data; fresh "
        "subprocess each\n"
    )
    print(
        "| pixels | valid | ours (s) | sklearn (s) | speed-up | ours peak (MiB) | sklearn peak "
        "(MiB) | memory ratio | max abs diff | binned 2^24 (s) | binned peak (MiB) | binned - "
        "ours (max, points) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        for n in map(int, args.pixels):
            prefix = f"{tmp}/{n}"
            scores, labels = make_data(n)
            valid = int(((labels == 0) | (labels == 1)).sum())
            np.save(prefix + "_scores.npy", scores)
            np.save(prefix + "_labels.npy", labels)
            del scores, labels
            ours = run_child("ours", prefix, args.repeat)
            row = [f"{n / 1e6:g}M", f"{valid / 1e6:.1f}M", f"{ours['time']:.2f}"]
            if n <= args.sklearn_max:
                sk = run_child("sklearn", prefix, args.repeat)
                diff = max(abs(a - b) for a, b in zip(ours["values"], sk["values"]))
                row += [
                    f"{sk['time']:.2f}",
                    f"{sk['time'] / ours['time']:.1f}x",
                    f"{ours['peak_mib']:.0f}",
                    f"{sk['peak_mib']:.0f}",
                    f"{ours['peak_mib'] / sk['peak_mib']:.2f}",
                    f"{diff:.1e}",
                ]
            else:
                row += ["-", "-", f"{ours['peak_mib']:.0f}", "-", "-", "-"]
            binned = run_child("binned", prefix, args.repeat)
            off = max(abs(a - b) for a, b in zip(ours["values"], binned["values"])) * 100
            row += [f"{binned['time']:.2f}", f"{binned['peak_mib']:.0f}", f"{off:.4f}"]
            print("| " + " | ".join(row) + " |", flush=True)
            for f in ("_scores.npy", "_labels.npy"):
                os.remove(prefix + f)


if __name__ == "__main__":
    main()
