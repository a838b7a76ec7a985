"""The append-only results store (``results/results.csv``) and the course's tables.

Every evaluation appends rows; nothing ever rewrites an earlier run. An append writes the old
content plus the new rows to a temporary file in the same folder and renames it over the store,
under a lock, so a crash never leaves half a file and two notebooks never interleave rows.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import io
import os
import secrets
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import pandas as pd

from .labels import BENCHMARKS

COLUMNS = (
    "run_id", "time", "git_commit", "model", "checkpoint", "dataset", "score", "temperature",
    "temperature_on", "auprc", "fpr_at_95_tpr", "auroc", "miou", "ece", "nll", "frames_used", "frames_skipped",
    "fpr_convention", "eval_size", "curves", "metric_bins", "notes",
)
# Course order of the benchmark columns, with their short titles.
DATASET_TITLES = {name: spec.title for name, spec in BENCHMARKS.items()}
DATASET_ORDER = ("RoadAnomaly21", "RoadObsticle21", "FS_LostFound_full", "fs_static", "RoadAnomaly")
SCORE_ORDER = ("msp", "max_logit", "max_entropy", "energy", "rba", "void_prob")


def new_run_id(tag: str = "run") -> str:
    """A sortable, unique id: ``<tag>-YYYYmmdd-HHMMSS-<8 hex>`` (32 random bits: no clash within a second)."""
    return f"{tag}-{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def git_commit() -> str:
    """The short commit of the checkout the package runs from, or ``unknown`` (pip install, Colab)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_rows(rows: Iterable[dict], path: str | Path = "results/results.csv") -> int:
    """Append ``rows`` (dicts keyed by ``COLUMNS``; missing keys stay empty) atomically.

    Unknown keys are an error, so a typo never silently drops a figure. Returns the rows written.
    """
    path = Path(path)
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"Result rows may only hold the columns {COLUMNS}; got unknown keys {sorted(unknown)}.")
    if not rows:
        return 0
    with _locked(path):
        old = path.read_bytes() if path.exists() else b""
        if old:
            header = next(csv.reader(io.StringIO(old.decode().split("\n", 1)[0])))
            if tuple(header) != COLUMNS:
                # An older schema: keep every earlier row and column, add ours.
                frame = pd.concat([pd.read_csv(path, dtype=str, keep_default_na=False), pd.DataFrame(rows)], ignore_index=True)
                buf = io.StringIO()
                frame.to_csv(buf, index=False)
                _replace(path, buf.getvalue().encode())
                return len(rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        if not old:
            writer.writeheader()
        writer.writerows(rows)
        if old and not old.endswith(b"\n"):
            old += b"\n"
        _replace(path, old + buf.getvalue().encode())
    return len(rows)


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(path: str | Path = "results/results.csv") -> pd.DataFrame:
    """All rows of the store as a DataFrame (metrics as floats, fractions not percent)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for col in ("temperature", "auprc", "fpr_at_95_tpr", "auroc", "miou", "ece", "nll"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def latest(df: pd.DataFrame, keys=("model", "dataset", "score", "temperature", "temperature_on")) -> pd.DataFrame:
    """Keep the most recent row for each combination of ``keys`` (later rows win), where an exact
    row wins over a binned one (``metric_bins``, a temperature sweep's) whatever their order."""
    if not len(df):
        return df
    keys = [k for k in keys if k in df]
    if "metric_bins" in df:
        binned = df["metric_bins"].notna() & (df["metric_bins"].astype(str) != "")
        df = pd.concat([df[binned], df[~binned]])
    return df.drop_duplicates(subset=keys, keep="last")


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.2f}"


def anomaly_table(
    df: pd.DataFrame, metrics=("auprc", "fpr_at_95_tpr"), index=("model", "score"), temperature: float | None = 1.0
) -> pd.DataFrame:
    """The course's table: one row per ``index``, one column per benchmark, cells ``AuPRC / FPR95``
    in percent with two decimals. Uses the latest row of each combination."""
    rows = df[df["dataset"].isin(DATASET_ORDER)] if len(df) else df
    if temperature is not None and len(rows):
        rows = rows[(rows["temperature"].isna()) | (rows["temperature"] == temperature)]
    rows = latest(rows)
    if not len(rows):
        return pd.DataFrame()
    rows = rows.assign(cell=[" / ".join(_pct(r[m]) for m in metrics) for _, r in rows.iterrows()])
    table = rows.pivot_table(index=list(index), columns="dataset", values="cell", aggfunc="last")
    if "score" in table.index.names:  # the course's order of the scores, learned ones after them
        rank = {s: i for i, s in enumerate(SCORE_ORDER)}
        order = sorted(range(len(table)), key=lambda i: tuple(
            (rank.get(v, len(rank)), v) if n == "score" else (0, v) for n, v in zip(table.index.names, table.index[i])))
        table = table.iloc[order]
    cols = [d for d in DATASET_ORDER if d in table.columns]
    table = table[cols].rename(columns=DATASET_TITLES).fillna("–")
    table.columns.name = " / ".join({"auprc": "AuPRC", "fpr_at_95_tpr": "FPR95", "auroc": "AUROC"}[m] for m in metrics)
    return table


def miou_table(df: pd.DataFrame) -> pd.DataFrame:
    """mIoU (percent) per model and class temperature, latest row of each."""
    rows = df[df["score"] == "miou"] if len(df) else df
    rows = latest(rows)
    if not len(rows):
        return pd.DataFrame()
    out = rows[["model", "dataset", "temperature", "miou"]].copy()
    out["miou"] = out["miou"].map(_pct)
    return out.reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-markdown rendering of a table (no extra dependency)."""
    if table.empty:
        return "_no results yet_"
    t = table.reset_index() if any(n is not None for n in table.index.names) else table
    header = [str(c) for c in t.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines)
