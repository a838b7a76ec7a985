"""The append-only results store (``results/results.csv``); its tables are in
``anomalyseg.report.tables``.

Every evaluation appends rows; nothing ever rewrites an earlier run. An append writes the old
content plus the new rows to a temporary file in the same folder and renames it over the store,
under a lock, so a crash never leaves half a file and two notebooks never interleave rows.

The store also owns the arrays stored beside it, each written once under a new run id and read
back by the row that points at it: PR/ROC points (``curves/<run_id>.npz``, ``save_curves`` /
``load_curves``), the score maps of the first frames (``maps/<run_id>/<dataset>/<stem>.npz``,
``save_maps`` / ``load_maps``) and per-frame statistics (``frame_stats/<run_id>/<dataset>.npz``,
``save_frame_stats`` / ``load_frame_stats``). Rows are built by ``result_row`` only.
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

import numpy as np
import pandas as pd

from .labels import BENCHMARKS

COLUMNS = (
    "run_id",
    "time",
    "git_commit",
    "model",
    "checkpoint",
    "dataset",
    "score",
    "temperature",
    "temperature_on",
    "auprc",
    "fpr_at_95_tpr",
    "auroc",
    "miou",
    "ece",
    "nll",
    "frames_used",
    "frames_skipped",
    "fpr_convention",
    "eval_size",
    "curves",
    "metric_bins",
    "notes",
    # SMIYC component metrics (fractions) and the per-frame statistics file (``frame_stats``)
    "siou_gt",
    "ppv",
    "f1_mean",
    "frame_stats",
    "protocol",
    "data_fingerprint",
)
# ``protocol``: the name of the ``anomalyseg.protocol.EvalProtocol`` a row was evaluated under. Rows
# stored before the column existed have none and count as ``legacy`` in tables (``protocol_rows``).
# ``data_fingerprint``: ``data.io.files_fingerprint`` of the frames a row was computed on (empty for
# rows stored before it existed and for data sets that do not give one): stored rows are reused
# only for the same frames.
# Course order of the benchmark columns, with their short titles.
DATASET_TITLES = {name: spec.title for name, spec in BENCHMARKS.items()}
DATASET_ORDER = ("RoadAnomaly21", "RoadObsticle21", "FS_LostFound_full", "fs_static", "RoadAnomaly")
# The ``dataset`` of mIoU rows (``evaluate.evaluate_miou``'s default).
MIOU_DATASET = "cityscapes_val"


def new_run_id(tag: str = "run") -> str:
    """A sortable, unique id: ``<tag>-YYYYmmdd-HHMMSS-<8 hex>`` (32 random bits: no clash within a
    second)."""
    return f"{tag}-{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def git_commit() -> str:
    """The short commit of the checkout the package runs from, or ``unknown`` (pip install,
    Colab)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def _locked(path: Path):
    """Hold the store's exclusive lock: ``flock`` on ``<store>.lock``, which the holder removes
    before it lets go, so that nothing is left beside the store. A waiter that then wins the lock
    of a removed file (its inode is no longer the one at the path) opens the path again: only the
    holder of the file currently at the path proceeds, so two appends never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, current = os.fstat(fd), os.stat(lock_path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                break
        except FileNotFoundError:  # removed by the holder we waited for: try again
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        try:
            lock_path.unlink()  # while still holding it (see above)
        except OSError:
            pass  # gone already, or a folder that allows no removal: an empty file is harmless
        os.close(fd)  # releases the lock


class ResultsStoreError(ValueError):
    """The results store cannot be read or appended to as it is; the message names the file, says
    how to repair it and, for a refused append, where the new rows were kept instead."""


def _store_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise ResultsStoreError(
            f"The results store {path} is a folder; expected a CSV file path such as "
            f"{path / 'results.csv'}."
        )
    return path


def check_store(path: str | Path = "results/results.csv") -> Path:
    """Check, before any work, that rows can be appended to the store at ``path``: it is a file
    (or does not exist yet) in a folder that can be created and written, and an existing file is
    a store this module wrote (UTF-8, comma-separated, a ``run_id`` column). Raises
    ``ResultsStoreError`` (or ``PermissionError``) naming the file otherwise; returns ``path``."""
    path = _store_path(path)
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ResultsStoreError(
            f"Cannot create the results folder {folder}: {existing} is a file, not a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        target = path if path.exists() else existing
        raise PermissionError(
            f"The results store {path} cannot be written ({target} is read-only); choose a "
            "writable --results path (results_path=...) before anything is computed."
        )
    if path.is_file():
        _parse_header(path, path.read_bytes())
    return path


def _parse_header(path: Path, data: bytes) -> list[str] | None:
    """The column names of the store's bytes ``data`` (None when it holds no header: empty or only
    blank lines); raises ``ResultsStoreError`` for a file that is not a store of this module."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsStoreError(
            f"The results store {path} is not UTF-8 text (byte {e.start} is "
            f"{data[e.start : e.start + 1]!r}): it is damaged or not a results file. Move it away "
            "(or restore it from a backup); the store is a comma-separated UTF-8 file whose first "
            f"line is {','.join(COLUMNS[:4])},..."
        ) from None
    if not text.strip():
        return None
    first = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    header = next(csv.reader([first]))
    if "run_id" not in header:
        semicolon = ";" in first and "run_id" in first
        raise ResultsStoreError(
            f"The results store {path} does not start with a header of comma-separated columns "
            f"with run_id (its first line is {first[:80]!r})"
            + (
                "; it looks re-saved by a spreadsheet with ';' as separator (and perhaps decimal "
                "commas). Re-save it as CSV with ',' as separator and '.' as decimal point "
                "(UTF-8), or move it away"
                if semicolon
                else "; it is damaged or not a results file. Move it away or restore it from a "
                "backup"
            )
            + ". Nothing in it was changed."
        )
    return header


def _side_file(path: Path) -> Path:
    return path.with_name(
        f"{path.stem}.unsaved-{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}{path.suffix}"
    )


def _check_columns(row: dict) -> None:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(
            f"Result rows may only hold the columns {COLUMNS}; got unknown keys {sorted(unknown)}."
        )


def run_columns(run_id: str) -> dict:
    """The columns every row of one evaluation shares: ``run_id``, ``time`` (now, ISO 8601 to the
    second) and ``git_commit`` (``git_commit()``)."""
    now = _dt.datetime.now().isoformat(timespec="seconds")
    return dict(run_id=run_id, time=now, git_commit=git_commit())


def result_row(run: dict, model: str, checkpoint, dataset: str, score: str, **values) -> dict:
    """One row of the store: ``run`` (``run_columns``), the ``model`` and ``checkpoint`` evaluated,
    the ``dataset``, the ``score`` (a score name, ``miou`` or ``calibration``) and any other
    ``COLUMNS`` as ``values`` (metrics as fractions; a column not given stays empty). The one
    place rows are built (anomaly, mIoU and calibration rows). ValueError names unknown columns."""
    row = dict(run, model=model, checkpoint=checkpoint, dataset=dataset, score=score, **values)
    _check_columns(row)
    return row


def append_rows(rows: Iterable[dict], path: str | Path = "results/results.csv") -> int:
    """Append ``rows`` (dicts keyed by ``COLUMNS``; missing keys stay empty) atomically.

    Unknown keys are an error, so a typo never silently drops a figure. Returns the rows written.

    Rows already in the store are never rewritten: new rows are written in the file's own column
    order, and columns it lacks (an older store) are added at the end of its header line only, so
    older rows read as empty there. A file that is not a store of this module (re-saved by a
    spreadsheet with ';' separators, damaged) is left untouched: the new rows go to a side file
    ``<stem>.unsaved-<time>.csv`` beside it and ``ResultsStoreError`` names both files and the
    repair
    (``merge_results`` appends the side file once the store is repaired).
    """
    path = _store_path(path)
    rows = list(rows)
    for row in rows:
        _check_columns(row)
    if not rows:
        return 0
    with _locked(path):
        old = path.read_bytes() if path.exists() else b""
        try:
            header = _parse_header(path, old)
        except ResultsStoreError as e:
            side = _side_file(path)
            _replace(side, _csv_bytes(rows, list(COLUMNS), header=True))
            raise ResultsStoreError(
                f"{e} The {len(rows)} new rows were written to {side} instead; once {path.name} is "
                f"repaired, add them with anomalyseg.results.merge_results({str(side)!r}, "
                f"{str(path)!r})."
            ) from None
        if header is None:  # a new store, or one holding only blank lines (no row to keep)
            _replace(path, _csv_bytes(rows, list(COLUMNS), header=True))
            return len(rows)
        missing = [c for c in COLUMNS if c not in header]
        if missing:  # extend the header line only; every earlier row keeps its bytes
            first, sep, rest = old.partition(b"\n")
            newline = b"\r\n" if first.endswith(b"\r") else b"\n"
            old = first.rstrip(b"\r") + ("," + ",".join(missing)).encode() + newline + rest
            header = header + missing
        if not old.endswith(b"\n"):
            old += b"\n"
        _replace(path, old + _csv_bytes(rows, header, header=False))
    return len(rows)


def _csv_bytes(rows: list[dict], fieldnames: list[str], header: bool) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def merge_results(side_file: str | Path, path: str | Path = "results/results.csv") -> int:
    """Append the rows of a side file (written when an append was refused) to the store at
    ``path``, then delete the side file. Returns the rows appended."""
    side_file = Path(side_file)
    df = pd.read_csv(side_file, dtype=str, keep_default_na=False)
    n = append_rows(df.to_dict("records"), path)
    side_file.unlink()
    return n


def atomic_write(path: str | Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``, so a reader
    never sees half a file. On any failure (a full disk) the temporary file is removed, and an
    ``OSError`` is raised again as one error naming ``path`` (not a chain of three)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(
                e.errno,
                f"could not write {path}: {e.strerror or e}. Free some space or write it "
                "elsewhere (--results / --cache-dir, results_path= / cache_dir=)",
                str(path),
            ) from None
        raise


def _replace(path: Path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


NUMERIC_COLUMNS = (
    "temperature",
    "auprc",
    "fpr_at_95_tpr",
    "auroc",
    "miou",
    "ece",
    "nll",
    "siou_gt",
    "ppv",
    "f1_mean",
)


def read_results(path: str | Path = "results/results.csv") -> pd.DataFrame:
    """All rows of the store as a DataFrame (metrics as floats, fractions not percent).

    Reads what the file holds: a store re-saved by a spreadsheet with ';' separators and decimal
    commas is read as such. A line with more fields than the header, or bytes that are not text,
    raise ``ResultsStoreError`` naming the file and the lines (a dropped line could let an older
    figure stand in for a newer one). An empty file reads as no rows.
    """
    path = _store_path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        _parse_header(path, data)  # raises, naming the file and the repair
        raise
    if not text.strip():
        return pd.DataFrame(columns=list(COLUMNS))
    first = text.split("\n", 1)[0].rstrip("\r")
    # A spreadsheet's re-save: ';' between fields and decimal commas in the numbers.
    spreadsheet = "run_id" not in next(csv.reader([first])) and "run_id" in next(
        csv.reader([first], delimiter=";")
    )
    sep, decimal = (";", ",") if spreadsheet else (",", ".")
    if not spreadsheet:
        _parse_header(path, data)  # raises for a file without a run_id column
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    width = len(next(reader))
    long_lines = [reader.line_num for row in reader if len(row) > width]
    if long_lines:
        raise ResultsStoreError(
            f"The results store {path} has lines with more fields than its {width} columns: "
            f"line(s) {long_lines[:10]}{' ...' if len(long_lines) > 10 else ''}. A field holding a "
            "comma must be quoted; remove the extra field (or quote it) in those lines with a "
            "text editor. Nothing was changed."
        )
    # Hex digests may be all digits ("0123456", "12e4...") and would read as numbers.
    hex_columns = {"git_commit": str, "data_fingerprint": str}
    df = pd.read_csv(
        io.StringIO(text), sep=sep, keep_default_na=False, na_values=[""], dtype=hex_columns
    )
    for col in NUMERIC_COLUMNS:
        if col in df:
            values = (
                df[col].astype(str).str.replace(",", ".", regex=False)
                if decimal == ","
                else df[col]
            )
            df[col] = pd.to_numeric(values, errors="coerce")
    return df


def protocol_rows(df: pd.DataFrame, protocol: str | None = "course") -> pd.DataFrame:
    """Rows evaluated under ``protocol`` (None: every row). Rows without a recorded protocol (a
    store older than the ``protocol`` column) were made by the pre-protocol evaluation,
    ``legacy``."""
    if protocol is None or not len(df):
        return df
    from .protocol import UNRECORDED_PROTOCOL, get_protocol

    name = get_protocol(protocol).name
    recorded = (
        df["protocol"].astype(object).fillna(UNRECORDED_PROTOCOL).replace("", UNRECORDED_PROTOCOL)
        if "protocol" in df
        else pd.Series(UNRECORDED_PROTOCOL, index=df.index)
    )
    return df[recorded == name]


def latest(
    df: pd.DataFrame,
    keys=("model", "dataset", "score", "temperature", "temperature_on", "protocol"),
) -> pd.DataFrame:
    """Keep the most recent row for each combination of ``keys`` (later rows win), where an exact
    row wins over a binned one (``metric_bins``, a temperature sweep's) whatever their order."""
    if not len(df):
        return df
    keys = [k for k in keys if k in df]
    if "metric_bins" in df:
        binned = df["metric_bins"].notna() & (df["metric_bins"].astype(str) != "")
        df = pd.concat([df[binned], df[~binned]])
    return df.drop_duplicates(subset=keys, keep="last")


def checkpoint_rows(
    df: pd.DataFrame, model: str, checkpoint: str, protocol: str | None = "course"
) -> pd.DataFrame:
    """Rows of exactly this ``model`` and ``checkpoint`` evaluated under ``protocol`` (None:
    any)."""
    df = protocol_rows(df, protocol)
    if not len(df):
        return df
    return df[(df["model"] == model) & (df["checkpoint"].astype(str) == str(checkpoint))]


def data_fingerprint(dataset) -> str:
    """The ``data_fingerprint`` of a row computed on ``dataset``: its ``fingerprint`` (the data
    sets of ``anomalyseg.data``), or "" for a data set that gives none."""
    return str(getattr(dataset, "fingerprint", "") or "")


def _same_data(df: pd.DataFrame, fingerprints: dict[str, str] | None) -> pd.Series:
    """Rows whose ``data_fingerprint`` is that of their dataset in ``fingerprints`` (a dataset
    without one there, or with "", accepts any row; rows stored without one match no fingerprint:
    they are computed again once)."""
    keep = pd.Series(True, index=df.index)
    column = "data_fingerprint"
    stored = df[column].fillna("").astype(str) if column in df else pd.Series("", index=df.index)
    for dataset, fp in (fingerprints or {}).items():
        if fp:
            keep &= (df["dataset"] != dataset) | (stored == fp)
    return keep


def stored_anomaly_rows(
    path: str | Path,
    model: str,
    checkpoint: str,
    scores: Iterable[str] | None = None,
    datasets: Iterable[str] = DATASET_ORDER,
    protocol: str | None = "course",
    fingerprints: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Latest stored benchmark rows of exactly this model and checkpoint at T = 1 (pixel or class
    temperature: identical at 1) under ``protocol`` (``anomalyseg.protocol``), one per (dataset,
    score), for ``scores`` (None: every score) on ``datasets``, computed on the frames
    ``fingerprints`` names (``{dataset: data_fingerprint}``; None: any frames)."""
    df = checkpoint_rows(read_results(path), model, checkpoint, protocol)
    if not len(df):
        return df
    keep = df["dataset"].isin(list(datasets)) & np.isclose(df["temperature"].astype(float), 1.0)
    keep &= _same_data(df, fingerprints)
    if scores is not None:
        keep &= df["score"].isin(list(scores))
    return latest(df[keep], keys=("dataset", "score")).reset_index(drop=True)


def stored_miou(
    path: str | Path,
    model: str,
    checkpoint: str,
    protocol: str | None = "course",
    dataset: str = MIOU_DATASET,
    fingerprint: str = "",
) -> float | None:
    """The latest stored mIoU (fraction) of exactly this model and checkpoint at class temperature
    1 under ``protocol`` on ``dataset`` (computed on the frames ``fingerprint`` names; "": any), or
    None when the store has none."""
    df = checkpoint_rows(read_results(path), model, checkpoint, protocol)
    if not len(df):
        return None
    at_one = np.isclose(df["temperature"].astype(float), 1.0)
    same = _same_data(df, {dataset: fingerprint})
    rows = df[(df["score"] == "miou") & (df["dataset"] == dataset) & at_one & same]
    return float(rows["miou"].iloc[-1]) if len(rows) else None


# ----------------------------------------------------------------------------- per-frame statistics
def training_log(run_dir: str | Path) -> pd.DataFrame:
    """Every metric a Lightning training logged in ``run_dir``, read from its CSV logs
    (``logs/version_*/metrics.csv``; each resumed session writes a new version, joined here in
    version order): one row per ``step`` with the latest non-empty value of each column
    (``train_loss``, ``train_loss_*`` terms, ``val_miou``, ``lr``, ...), sorted by step.

    Raises ``FileNotFoundError`` naming the folder when it holds no logs. The one reader of
    training logs: the trainers, the zoo and the report all read through it.
    """
    files = sorted(
        Path(run_dir).glob("logs/version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[-1]),
    )
    if not files:
        raise FileNotFoundError(
            f"No training logs under {Path(run_dir) / 'logs'}: expected the folder of a training "
            "run (train_erfnet, train_eomt, finetune_oe or train_anomaly_head write "
            "logs/version_*/metrics.csv there)."
        )
    df = pd.concat([pd.read_csv(p) for p in files], ignore_index=True)
    metrics = [c for c in df.columns if c not in ("step", "epoch")]
    return df.groupby("step")[metrics].last().reset_index().sort_values("step", ignore_index=True)


# ------------------------------------------------------------------------ arrays beside the store
def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed(arrays)`` to ``path``, atomically (``atomic_write``)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def curves_ref(run_id: str) -> str:
    """A run's PR/ROC points, relative to the store's folder: ``curves/<run_id>.npz`` (a row's
    ``curves`` column adds ``#<row key>``)."""
    return f"curves/{run_id}.npz"


def save_curves(results_path: str | Path, run_id: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write a run's PR/ROC points (``{"<row key>|recall" | "precision" | "fpr" | "tpr": array}``)
    beside the store; rewritten whole as the run adds benchmarks (a run id is never reused)."""
    path = Path(results_path).parent / curves_ref(run_id)
    save_npz(path, arrays)
    return path


def load_curves(results_path: str | Path, row) -> dict[str, np.ndarray] | None:
    """PR/ROC points stored for one result row (``recall``, ``precision``, ``fpr``, ``tpr``), or
    None."""
    return load_row_arrays(results_path, row, "curves")


def maps_folder(results_path: str | Path, run_id: str, dataset: str) -> Path:
    """Where a run's score maps of one data set are stored:
    ``<store folder>/maps/<run_id>/<dataset>/``."""
    return Path(results_path).parent / "maps" / run_id / dataset


def save_maps(
    results_path: str | Path,
    run_id: str,
    dataset: str,
    stem: str,
    maps: dict[str, np.ndarray],
    label: np.ndarray,
    image: np.ndarray | None = None,
) -> Path:
    """Store one frame for the report and the explorer: its score ``maps`` (``{score: [H, W]}``,
    kept as float16, in the given order), its ``label`` ``[H, W]`` (uint8) and, when given, its
    ``image`` ``[3, H, W]`` (uint8) at the same size, in ``maps_folder(...)/<stem>.npz``."""
    arrays = {f"map|{score}": np.asarray(m).astype(np.float16) for score, m in maps.items()}
    arrays["label"] = np.asarray(label).astype(np.uint8)
    if image is not None:
        arrays["image"] = np.asarray(image).astype(np.uint8)
    path = maps_folder(results_path, run_id, dataset) / f"{stem}.npz"
    save_npz(path, arrays)
    return path


def load_maps(results_path: str | Path, run_id: str, dataset: str) -> dict[str, dict]:
    """Stored frames of one run and data set (``save_maps``), in frame order:
    ``{stem: {"image", "label", "maps": {score: [H, W] float32}, "stem"}}`` (``image`` None when
    not stored)."""
    out = {}
    files = maps_folder(results_path, run_id, dataset).glob("*.npz")
    for path in sorted(files, key=lambda p: (len(p.stem), p.stem)):
        with np.load(path) as z:
            maps = {
                k.split("|", 1)[1]: z[k].astype(np.float32) for k in z.files if k.startswith("map|")
            }
            image = z["image"] if "image" in z.files else None
            out[path.stem] = {"image": image, "label": z["label"], "maps": maps, "stem": path.stem}
    return out


def frame_stats_ref(run_id: str, dataset: str) -> str:
    """A run's per-frame statistics of one benchmark, relative to the store's folder:
    ``frame_stats/<run_id>/<dataset>.npz`` (a row's ``frame_stats`` column adds ``#<row key>``)."""
    return f"frame_stats/{run_id}/{dataset}.npz"


def save_frame_stats(results_path: str | Path, run_id: str, dataset: str, arrays: dict) -> Path:
    """Write one benchmark's per-frame statistics (``{"<row key>|<name>": array}``, see
    ``frame_stats``) atomically beside the store; a run id is new for every evaluation, so nothing
    already stored is overwritten."""
    path = Path(results_path).parent / frame_stats_ref(run_id, dataset)
    save_npz(path, arrays)
    return path


def load_row_arrays(results_path: str | Path, row, column: str) -> dict | None:
    """The arrays a row's ``column`` (``<file>.npz#<key>``, a path relative to the store's folder)
    points at, as ``{name: array}`` without the key's prefix; None when the row has no reference or
    the file is gone. Read without pickle: the files hold plain arrays only."""
    ref = row.get(column) if hasattr(row, "get") else None
    if not isinstance(ref, str) or "#" not in ref:
        return None
    file, key = ref.split("#", 1)
    path = Path(results_path).parent / file
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        found = {k[len(key) + 1 :]: z[k] for k in z.files if k.startswith(key + "|")}
    return found or None


def load_frame_stats(results_path: str | Path, row) -> dict | None:
    """The per-frame statistics stored for one result row (its ``frame_stats`` column,
    ``frame_stats/<run_id>/<dataset>.npz#<key>``) as ``{name: array}``, or None when it has none
    or the file is gone."""
    return load_row_arrays(results_path, row, "frame_stats")
