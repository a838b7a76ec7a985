"""Tables: the comparison table and its markdown / LaTeX renderings, the store's tables of one
evaluation (``anomaly_table``, ``miou_table``), the conventions side by side, calibration, chance
level, the benchmarks' anomaly statistics, the learned scores against the best post-hoc one,
Outlier Exposure's before / after, the bootstrap tables of notebook 06, and ``missing_report``.

Every function reads rows (the results store's DataFrame, ``anomalyseg.results.read_results``, or
the rows an evaluation returned); none runs a model. Metrics stay fractions in the DataFrames that
hold numbers and become percent with two decimals when rendered as cells, as in the course.
``markdown`` renders any of these tables as GitHub markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..protocol import PROTOCOLS, UNRECORDED_PROTOCOL, describe, get_protocol
from ..results import DATASET_ORDER, DATASET_TITLES, MIOU_DATASET, latest, protocol_rows
from ..scores import LEARNED_SCORES, score_title
from .names import (
    HIGHER_IS_BETTER,
    METRIC_TITLES,
    dataset_title,
    is_learned,
    method_title,
    model_title,
    score_key,
)
from .selection import anomaly_rows, check_store_frame, miou_rows, sort_rows, temperature_sweeps

if TYPE_CHECKING:
    from ..data.benchmarks import AnomalyBenchmark


# What the pipeline is expected to produce, for missing_report: the notebook that writes each
# model's rows, its post-hoc scores, and the temperature sweeps of notebook 03.
EXPECTED_MODELS = {
    "erfnet": dict(
        notebook="01_erfnet_baseline", scores=("msp", "max_logit", "max_entropy"), sweeps=("pixel",)
    ),
    "eomt": dict(
        notebook="02_eomt_eval",
        scores=("msp", "max_logit", "max_entropy", "rba"),
        sweeps=("pixel", "class"),
    ),
    "eomt_oe": dict(notebook="04_outlier_exposure", scores=("rba",), sweeps=()),
}
# Learned scores run on a frozen EoMT (REFERENCE §6): expected when EoMT is in the report.
EXPECTED_LEARNED = {"anomaly_head": "05_anomaly_head", "anomaly_head_hybrid": "05_anomaly_head"}


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.2f}"


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-markdown rendering of any table (no extra dependency). ``table.attrs["caption"]``
    (what the cells are, set by ``anomaly_table`` and ``miou_table``) goes above it in bold; the
    evaluation protocol it names (``table.attrs["protocol"]``) under it, described."""
    if table.empty:
        return "_no results yet_"
    t = table.reset_index() if any(n is not None for n in table.index.names) else table
    header = [str(c) for c in t.columns]
    lines = [f"**{table.attrs['caption']}**", ""] if table.attrs.get("caption") else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in t.itertuples(index=False)]
    if table.attrs.get("protocol"):
        lines += ["", f"_{describe(table.attrs['protocol'])}_"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the comparison table
def comparison_table(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
    temperature: float = 1.0,
    fpr_convention: str = "course",
    protocol: str = "course",
) -> pd.DataFrame:
    """Every method x score x benchmark at ``temperature``, with the model's Cityscapes-val mIoU,
    all evaluated under ``protocol`` (``anomalyseg.protocol``; named in ``table.attrs["protocol"]``
    and by every rendering).

    Returns fractions (NaN where a row is missing): index ``(model, score)``, columns
    ``(dataset, metric)`` for each benchmark with rows, in course order, then
    ``("cityscapes_val", "miou")``. Render with ``comparison_markdown`` / ``comparison_latex``.
    """
    bad = [m for m in metrics if m not in ("auprc", "fpr_at_95_tpr", "auroc")]
    if bad or not metrics:
        raise ValueError(
            "comparison_table metrics are drawn from 'auprc', 'fpr_at_95_tpr' and 'auroc'; got "
            f"{list(metrics)}."
        )
    rows = anomaly_rows(df, temperature, fpr_convention, protocol)
    if not len(rows):
        return pd.DataFrame()
    long = rows.melt(
        id_vars=["model", "score", "dataset"], value_vars=list(metrics), var_name="metric"
    )
    table = long.pivot_table(
        index=["model", "score"],
        columns=["dataset", "metric"],
        values="value",
        aggfunc="last",
        dropna=False,
        sort=False,
    )
    datasets = [d for d in DATASET_ORDER if d in set(rows["dataset"])]
    table = table.reindex(
        columns=pd.MultiIndex.from_product([datasets, list(metrics)], names=["dataset", "metric"])
    )
    table = table.reindex(pd.MultiIndex.from_frame(rows[["model", "score"]].drop_duplicates()))
    miou = miou_rows(df, temperature, protocol).set_index("model")["miou"]
    table[(MIOU_DATASET, "miou")] = [miou.get(m, np.nan) for m, _ in table.index]
    table = table.astype(float)
    table.attrs["protocol"] = protocol
    return table


def _groups(table: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """Per benchmark of a ``comparison_table``: (dataset, title, its metric columns)."""
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    return [
        (
            d,
            "mIoU" if d == MIOU_DATASET else DATASET_TITLES.get(d, d),
            [m for dd, m in table.columns if dd == d],
        )
        for d in datasets
    ]


def _row_titles(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    return (
        [method_title(m, s) for m, s in table.index],
        ["learned" if is_learned(s) else score_title(s) for _, s in table.index],
    )


def comparison_markdown(table: pd.DataFrame) -> str:
    """GitHub markdown of a ``comparison_table``: one column per benchmark with ``AuPRC / FPR95``
    cells in percent (two decimals), then mIoU; ``–`` marks a missing row."""
    if table.empty:
        return markdown(table)
    methods, scores = _row_titles(table)
    out = pd.DataFrame({"Method": methods, "Score": scores})
    for d, title, ms in _groups(table):
        head = (
            title if d == MIOU_DATASET else f"{title} ({' / '.join(METRIC_TITLES[m] for m in ms)})"
        )
        out[head] = [" / ".join(_pct(table.loc[i, (d, m)]) for m in ms) for i in table.index]
    return markdown(out) + (
        f"\n\n_{describe(table.attrs['protocol'])}_" if table.attrs.get("protocol") else ""
    )


def _tex(s: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
    ):
        s = s.replace(a, b)
    return s


def comparison_latex(table: pd.DataFrame) -> str:
    """A booktabs ``tabular`` of a ``comparison_table``: percent with two decimals, the best value
    of each column in bold (highest AuPRC, AUROC and mIoU, lowest FPR95; ties at the shown precision
    are all bold), ``--`` for a missing row. Needs ``\\usepackage{booktabs}``."""
    if table.empty:
        return "% no results yet\n"
    cols = list(table.columns)
    shown = {c: table[c].map(lambda x: np.nan if pd.isna(x) else round(100 * x, 2)) for c in cols}
    best = {c: (shown[c].max() if HIGHER_IS_BETTER[c[1]] else shown[c].min()) for c in cols}
    lines = [
        r"% AuPRC and FPR95 in % pooled over each benchmark's pixels (T = 1); mIoU in % on "
        r"Cityscapes val.",
        "% " + describe(table.attrs.get("protocol", "course")).replace("`", ""),
        r"\begin{tabular}{ll" + "r" * len(cols) + "}",
        r"\toprule",
    ]
    top, rules, sub, j = ["", ""], [], ["Method", "Score"], 3
    for d, title, ms in _groups(table):
        if d == MIOU_DATASET:
            top.append("")
        else:
            top.append(
                rf"\multicolumn{{{len(ms)}}}{{c}}{{{_tex(title)}}}" if len(ms) > 1 else _tex(title)
            )
            rules.append(rf"\cmidrule(lr){{{j}-{j + len(ms) - 1}}}")
        sub += [METRIC_TITLES[m] for m in ms]
        j += len(ms)
    lines += [" & ".join(top) + r" \\", " ".join(rules), " & ".join(sub) + r" \\", r"\midrule"]
    previous = None
    for i, method, score in zip(table.index, *_row_titles(table)):
        if previous is not None and method != previous:
            lines.append(r"\addlinespace")
        cells = [_tex(method) if method != previous else "", _tex(score)]
        for c in cols:
            v = shown[c][i]
            cells.append(
                "--" if pd.isna(v) else (rf"\textbf{{{v:.2f}}}" if v == best[c] else f"{v:.2f}")
            )
        lines.append(" & ".join(cells) + r" \\")
        previous = method
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def save_tables(table: pd.DataFrame, figures_dir: str | Path) -> list[Path]:
    """Write ``comparison_table.md`` and ``comparison_table.tex`` into ``figures_dir``."""
    d = Path(figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    md, tex = d / "comparison_table.md", d / "comparison_table.tex"
    md.write_text(
        "AuPRC / FPR95 in %, T = 1; mIoU in % on Cityscapes val.\n\n"
        + comparison_markdown(table)
        + "\n"
    )
    tex.write_text(comparison_latex(table))
    return [md, tex]


# ------------------------------------------------------------------------- conventions side by side
def conventions_table(
    df: pd.DataFrame,
    model: str | None = None,
    metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
    temperature: float = 1.0,
) -> pd.DataFrame:
    """One model under every protocol it was evaluated with, side by side: rows (benchmark, score)
    in report order plus the Cityscapes-val mIoU last, one column per protocol (``course`` first),
    cells ``AuPRC / FPR95`` (or mIoU) in percent, latest row of each. ``model=None``: the store
    must hold only one model with rows under more than one protocol. Rows without a recorded
    protocol count as ``legacy``. Explains a gap between two reports of the same checkpoint
    (``convention_settings`` lists what each protocol does)."""
    check_store_frame(df)
    df = df.assign(
        protocol=df["protocol"]
        .astype(object)
        .fillna(UNRECORDED_PROTOCOL)
        .replace("", UNRECORDED_PROTOCOL)
        if "protocol" in df
        else UNRECORDED_PROTOCOL
    )
    rows = df[
        (df["dataset"].isin(DATASET_ORDER) | (df["score"] == "miou"))
        & (df["temperature"].isna() | np.isclose(df["temperature"].astype(float), temperature))
    ]
    if model is None:
        multi = sorted(m for m, g in rows.groupby("model") if g["protocol"].nunique() > 1)
        if len(multi) != 1:
            raise ValueError(
                "conventions_table needs model=: models with rows under several protocols: "
                f"{multi or 'none'}."
            )
        model = multi[0]
    rows = latest(rows[rows["model"] == model], keys=("dataset", "score", "protocol"))
    if not len(rows):
        return pd.DataFrame()
    # Report order (benchmarks, then the mIoU), not the store's: notebooks that run at once
    # (run-all --jobs) append in either order.
    rows = sort_rows(rows, ["dataset", "score"])
    known = [p for p in PROTOCOLS if p in set(rows["protocol"])]
    order = known + sorted(set(rows["protocol"]) - set(known))
    cell = [
        (_pct(r["miou"]) if r["score"] == "miou" else " / ".join(_pct(r[m]) for m in metrics))
        for _, r in rows.iterrows()
    ]
    rows = rows.assign(
        cell=cell,
        dataset=rows["dataset"].map(dataset_title),
        score=[("mIoU" if s == "miou" else score_title(s)) for s in rows["score"]],
    )
    table = rows.pivot_table(
        index=["dataset", "score"], columns="protocol", values="cell", aggfunc="last", sort=False
    )
    table = table.reindex(columns=order).fillna("–")
    table.columns.name = (
        f"{model_title(model)}: " + " / ".join(METRIC_TITLES[m] for m in metrics) + " (%)"
    )
    return table


def convention_settings(protocols: Sequence[str] | None = None) -> pd.DataFrame:
    """What each protocol sets (rows: input resize, skip rule, scoring, pooling, FPR95, mIoU
    channels, logits dtype, MSP formula; columns: protocols), for reading a
    ``conventions_table``."""
    ps = [get_protocol(p) for p in (protocols or PROTOCOLS)]
    names = [f.name for f in fields(ps[0]) if f.name not in ("name", "description")]
    return pd.DataFrame(
        {p.name: [getattr(p, n) for n in names] for p in ps}, index=pd.Index(names, name="setting")
    )


# ----------------------------------------------------------------------------- what is missing
def _listed(titles) -> str:
    titles = list(titles)
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def missing_report(df: pd.DataFrame, models: Sequence[str] | None = None) -> str:
    """Plain words on what the store lacks for the full comparison: models, benchmarks, scores,
    temperature sweeps and mIoU rows, each with the notebook that writes it. ``models`` limits the
    check to those models (``None``: every expected one)."""
    check_store_frame(df)
    if not len(df):
        return (
            "The results store is empty: nothing to compare yet. Run notebooks 01 to 05 "
            "(or `anomalyseg run-all`) to fill it, then run this notebook again."
        )
    expected = {m: e for m, e in EXPECTED_MODELS.items() if models is None or m in models}
    anomaly = anomaly_rows(df)
    lines = []
    for m, e in expected.items():
        mine = anomaly[anomaly["model"] == m]
        if not (df["model"] == m).any():
            lines.append(f"- {model_title(m)}: no rows yet (notebook {e['notebook']}).")
            continue
        if not len(mine):
            lines.append(
                f"- {model_title(m)}: no benchmark rows at T = 1 yet (notebook {e['notebook']})."
            )
        else:
            absent = [d for d in DATASET_ORDER if d not in set(mine["dataset"])]
            if absent:
                lines.append(
                    f"- {model_title(m)}: no rows on {_listed(DATASET_TITLES[d] for d in absent)}."
                )
            scores = [s for s in e["scores"] if s not in set(mine["score"])]
            if scores:
                lines.append(
                    f"- {model_title(m)}: no {_listed(score_title(s) for s in scores)} rows."
                )
        for t_on in e["sweeps"]:
            swept = temperature_sweeps(df[df["model"] == m], t_on)
            if not len(swept):
                lines.append(
                    f"- {model_title(m)}: no {t_on}-temperature sweep (notebook "
                    "03_temperature_scaling)."
                )
            if not (
                (df["model"] == m) & (df["score"] == "calibration") & (df["temperature_on"] == t_on)
            ).any():
                lines.append(
                    f"- {model_title(m)}: no calibration (ECE, fitted T) on the {t_on} temperature "
                    "(notebook 03_temperature_scaling)."
                )
        if not len(miou_rows(df[df["model"] == m])):
            lines.append(
                f"- {model_title(m)}: no Cityscapes-val mIoU at T = 1 (notebook {e['notebook']})."
            )
        miou = df[(df["model"] == m) & (df["score"] == "miou") & (df["temperature_on"] == "class")]
        if "class" in e["sweeps"] and miou["temperature"].nunique() < 2:
            lines.append(
                f"- {model_title(m)}: no mIoU over class temperatures (notebook "
                "03_temperature_scaling)."
            )
    if "eomt" in expected:
        lines += [
            f"- {method_title('eomt', s)}: no rows yet (notebook {nb})."
            for s, nb in EXPECTED_LEARNED.items()
            if s not in set(anomaly["score"])
        ]
    if not lines:
        return (
            "Nothing missing: every expected model, benchmark, score, temperature sweep, "
            "calibration and mIoU has rows."
        )
    return "Missing from the results store (the report shows what exists):\n" + "\n".join(lines)


# ---------------------------------------------------------------------------- one evaluation's rows
def anomaly_table(
    df: pd.DataFrame,
    metrics=("auprc", "fpr_at_95_tpr"),
    index=("model", "score"),
    temperature: float | None = 1.0,
    protocol: str | None = "course",
) -> pd.DataFrame:
    """The course's table: one row per ``index``, one column per benchmark, cells ``AuPRC / FPR95``
    in percent with two decimals. Uses the latest row of each combination evaluated under
    ``protocol`` (None: any; ``markdown`` names it under the table)."""
    df = protocol_rows(df, protocol)
    rows = df[df["dataset"].isin(DATASET_ORDER)] if len(df) else df
    if temperature is not None and len(rows):
        rows = rows[(rows["temperature"].isna()) | (rows["temperature"] == temperature)]
    rows = latest(rows)
    if not len(rows):
        return pd.DataFrame()
    rows = rows.assign(cell=[" / ".join(_pct(r[m]) for m in metrics) for _, r in rows.iterrows()])
    table = rows.pivot_table(index=list(index), columns="dataset", values="cell", aggfunc="last")
    if "score" in table.index.names:  # the course's order of the scores, learned ones after them
        order = sorted(
            range(len(table)),
            key=lambda i: tuple(
                score_key(v) if n == "score" else (0, v)
                for n, v in zip(table.index.names, table.index[i])
            ),
        )
        table = table.iloc[order]
    cols = [d for d in DATASET_ORDER if d in table.columns]
    table = table[cols].rename(columns=DATASET_TITLES).fillna("–")
    table.columns.name = " / ".join(METRIC_TITLES[m] for m in metrics)
    table.attrs["protocol"] = protocol  # markdown names it under the table
    table.attrs["caption"] = _caption(f"{table.columns.name} (%) per benchmark", protocol)
    return table


def miou_table(df: pd.DataFrame) -> pd.DataFrame:
    """mIoU (percent) per model and class temperature, latest row of each; the caption names the
    protocol when the rows share one."""
    rows = df[df["score"] == "miou"] if len(df) else df
    rows = latest(rows)
    if not len(rows):
        return pd.DataFrame()
    out = rows[["model", "dataset", "temperature", "miou"]].copy()
    out["miou"] = out["miou"].map(_pct)
    out = out.reset_index(drop=True)
    protocols = set(rows["protocol"]) if "protocol" in rows else set()
    out.attrs["caption"] = _caption("mIoU (%)", protocols.pop() if len(protocols) == 1 else None)
    return out


def _caption(cells: str, protocol: str | None) -> str:
    return cells + (f", `{protocol}` convention" if protocol else "")


# Display headers of the store's id columns, for ``with_titles``.
ID_HEADERS = {
    "model": "Model",
    "score": "Score",
    "dataset": "Benchmark",
    "temperature": "T",
    "temperature_on": "T on",
    "protocol": "Protocol",
    "miou": "mIoU",
}
_ID_TITLES = {"model": model_title, "score": score_title, "dataset": dataset_title}


def with_titles(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of a table of the store's ids (``anomaly_table``, ``miou_table``) as a reader sees it:
    models, scores and benchmarks by their display names (``report.names``: ``eomt`` -> ``EoMT``,
    ``max_logit`` -> ``MaxLogit``), headers of the id columns and index levels by ``ID_HEADERS``;
    cells and ``attrs`` (caption, protocol) kept."""
    out = table.copy()
    if any(n is not None for n in out.index.names):
        ids = out.index.to_frame(index=False)
        for col, title in _ID_TITLES.items():
            if col in ids:
                ids[col] = ids[col].map(title)
        ids = ids.rename(columns=ID_HEADERS)
        out.index = pd.MultiIndex.from_frame(ids) if ids.shape[1] > 1 else pd.Index(ids.iloc[:, 0])
    for col, title in _ID_TITLES.items():
        if col in out.columns:
            out[col] = out[col].map(title)
    out = out.rename(columns=ID_HEADERS)
    out.attrs = dict(table.attrs)
    return out


# ------------------------------------------------------------------------ calibration (notebook 03)
def calibration_table(fits: Sequence[dict]) -> pd.DataFrame:
    """One row per ``calibration.calibrate`` result: the fitted temperature, NLL and ECE (percent)
    before and after."""
    return pd.DataFrame(
        [
            _calibration_row(
                f["model"], f["temperature_on"], f["temperature"], f["before"], f["after"]
            )
            for f in fits
        ]
    )


def stored_calibration_table(df: pd.DataFrame) -> pd.DataFrame:
    """``calibration_table`` from the store's ``calibration`` rows (latest per model and kind)."""
    from ..calibration import FITTED_NOTE

    rows = df[df["score"] == "calibration"] if len(df) and "score" in df else df.iloc[0:0]
    if not len(rows):
        return pd.DataFrame()
    fitted = rows["notes"].fillna("").astype(str) == FITTED_NOTE
    out = []
    for (model, t_on), group in rows.groupby(["model", "temperature_on"], sort=False):
        before, after = group[~fitted.loc[group.index]], group[fitted.loc[group.index]]
        if not len(before) or not len(after):
            continue
        out.append(
            _calibration_row(
                model, t_on, after.iloc[-1]["temperature"], before.iloc[-1], after.iloc[-1]
            )
        )
    return pd.DataFrame(out)


def _calibration_row(model: str, temperature_on: str, fitted_t: float, before, after) -> dict:
    return dict(
        model=model,
        temperature_on=temperature_on,
        fitted_T=round(float(fitted_t), 4),
        nll_T1=round(float(before["nll"]), 4),
        nll_fitted=round(float(after["nll"]), 4),
        ece_T1=round(100 * float(before["ece"]), 2),
        ece_fitted=round(100 * float(after["ece"]), 2),
    )


def temperature_spread(sweeps: pd.DataFrame, metric: str = "auprc") -> pd.DataFrame:
    """How much a sweep moves ``metric``: max minus min over the temperatures, in percentage
    points, one row per (model, score), one column per benchmark. ``sweeps`` are rows as
    ``selection.temperature_sweeps`` returns them (one sweep kind)."""
    if not len(sweeps):
        return pd.DataFrame()
    spread = sweeps.groupby(["model", "score", "dataset"], sort=False)[metric].agg(
        lambda v: 100 * (v.max() - v.min())
    )
    table = spread.unstack("dataset")
    table = (
        table[[d for d in DATASET_ORDER if d in table.columns]]
        .rename(columns=DATASET_TITLES)
        .round(2)
    )
    table.columns.name = f"{metric} range over T (points)"
    return table


# ------------------------------------------------------------------ chance level (notebooks 01, 02)
def chance_table(
    results: pd.DataFrame,
    benchmarks: Mapping[str, AnomalyBenchmark],
    scores: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> pd.DataFrame:
    """AuPRC of each score next to each benchmark's anomaly pixel fraction, in percent.

    A score that ranks pixels at random has an AuPRC equal to the share of anomaly pixels among
    the valid ones (``data.benchmarks.anomaly_fraction``), so an AuPRC is only readable next to
    that number: 3% is good on FS Lost & Found (about 0.2% anomaly pixels) and worthless on a
    benchmark with 3% anomaly pixels.

    ``results``: anomaly rows of one model (``evaluate_anomaly``'s output, or the store filtered to
    one model); the latest row of each score at ``temperature`` is used. One row per benchmark of
    ``benchmarks`` (course order) with columns ``anomaly pixels`` (the AuPRC of a random score), one
    per score, ``best score``, and ``best / chance``: how many times the chance level the best score
    reaches (1 = no better than guessing, below 1 = ranks anomalies *below* normal pixels).
    Raises ``ValueError`` when the rows hold more than one model.
    """
    from ..data.benchmarks import anomaly_fraction

    rows = results[results["dataset"].isin(list(benchmarks))]
    temps = pd.to_numeric(rows["temperature"], errors="coerce")
    rows = latest(rows[(temps == temperature) | temps.isna()])
    if rows["model"].nunique() > 1:
        raise ValueError(
            "chance_table compares one model with chance; the rows hold models "
            f"{sorted(rows['model'].unique())}. "
            "Filter them first, e.g. rows[rows.model == 'erfnet']."
        )
    scores = list(scores) if scores is not None else list(dict.fromkeys(rows["score"]))
    names = [d for d in DATASET_ORDER if d in benchmarks] + [
        d for d in benchmarks if d not in DATASET_ORDER
    ]
    out = []
    for name in names:
        chance = anomaly_fraction(benchmarks[name])
        found = rows[rows["dataset"] == name]
        auprc = {
            s: float(found.loc[found["score"] == s, "auprc"].iloc[-1])
            for s in scores
            if (found["score"] == s).any()
        }
        best = max(auprc, key=auprc.get) if auprc else None
        out.append(
            {
                "benchmark": DATASET_TITLES.get(name, name),
                "anomaly pixels": round(100 * chance, 2),
                **{s: round(100 * auprc[s], 2) if s in auprc else float("nan") for s in scores},
                "best score": best or "–",
                "best / chance": round(auprc[best] / chance, 1)
                if best and chance > 0
                else float("nan"),
            }
        )
    return pd.DataFrame(out).set_index("benchmark")


# ---------------------------------------------------------- the benchmarks' anomalies (notebook 00)
# ``data.benchmarks.anomaly_statistics``'s keys as a reader reads them, with units, and decimals.
STATISTICS_HEADERS = {
    "frames": ("frames", 0),
    "anomaly_share": ("anomaly pixels (% of scored pixels = chance AuPRC)", 2),
    "components_per_frame": ("anomaly components per frame (8-connected)", 2),
    "area_p10": ("component area p10 (% of the frame)", 3),
    "area_p50": ("component area p50 (% of the frame)", 3),
    "area_p90": ("component area p90 (% of the frame)", 3),
}


def anomaly_statistics_table(benchmarks: Mapping[str, AnomalyBenchmark]) -> pd.DataFrame:
    """``data.benchmarks.anomaly_statistics`` of each benchmark (course order, unknown names after),
    one row each, titled by ``names.dataset_title``; columns ``STATISTICS_HEADERS`` (readable
    names with units, rounded for display)."""
    from ..data.benchmarks import anomaly_statistics

    names = [d for d in DATASET_ORDER if d in benchmarks]
    names += [d for d in benchmarks if d not in DATASET_ORDER]
    table = pd.DataFrame(
        [anomaly_statistics(benchmarks[n]) for n in names],
        index=pd.Index([dataset_title(n) for n in names], name="benchmark"),
    )
    table = table.round({key: digits for key, (_, digits) in STATISTICS_HEADERS.items()})
    table = table.astype({"frames": int})
    return table.rename(columns={key: head for key, (head, _) in STATISTICS_HEADERS.items()})


# --------------------------------------------------------------------- learned scores (notebook 05)
def compare_with_posthoc(
    rows: pd.DataFrame, learned: Sequence[str] = LEARNED_SCORES, percent: bool = False
) -> pd.DataFrame:
    """Per benchmark: the best post-hoc score of the same model (highest AuPRC) next to each learned
    score, from ``evaluate_anomaly``'s rows at T = 1.

    Returns one row per dataset (course order) with columns ``best_posthoc`` (its name),
    ``best_posthoc_auprc``, ``best_posthoc_fpr_at_95_tpr`` and ``<learned>_auprc`` /
    ``<learned>_fpr_at_95_tpr`` for each learned score present: fractions, or percent with two
    decimals when ``percent``.
    """
    rows = rows[rows["temperature"].isna() | np.isclose(rows["temperature"].astype(float), 1.0)]
    out = []
    for dataset, group in rows.groupby("dataset", sort=False):
        post = group[~group["score"].isin(learned)].sort_values("auprc", ascending=False)
        entry = {"dataset": dataset}
        if len(post):
            best = post.iloc[0]
            entry.update(
                best_posthoc=best["score"],
                best_posthoc_auprc=float(best["auprc"]),
                best_posthoc_fpr_at_95_tpr=float(best["fpr_at_95_tpr"]),
            )
        for score in learned:
            found = group[group["score"] == score]
            if len(found):
                entry[f"{score}_auprc"] = float(found.iloc[-1]["auprc"])
                entry[f"{score}_fpr_at_95_tpr"] = float(found.iloc[-1]["fpr_at_95_tpr"])
        out.append(entry)
    if not out:
        return pd.DataFrame()
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    table = pd.DataFrame(out).set_index("dataset")
    table = table.sort_index(key=lambda idx: idx.map(lambda d: order.get(d, len(order))))
    if percent:
        numeric = table.select_dtypes("number").columns
        table[numeric] = (table[numeric] * 100).round(2)
    return table


# ------------------------------------------------------------------- Outlier Exposure (notebook 04)
def _by_dataset_score(rows: pd.DataFrame, metric: str) -> pd.Series:
    return rows.set_index(["dataset", "score"])[metric].astype(float)


def delta_table(
    before: pd.DataFrame, after: pd.DataFrame, metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr")
) -> pd.DataFrame:
    """After minus before, in percentage points: index = score title, columns = (benchmark title,
    metric). ``before`` / ``after``: one row per (dataset, score) each, e.g. the rows of the model
    before and after Outlier Exposure. AuPRC should rise and FPR95 fall. Cells where either side
    has no row are NaN."""
    scores = sorted(set(before["score"]) | set(after["score"]), key=score_key)
    datasets = [d for d in DATASET_ORDER if d in set(before["dataset"]) | set(after["dataset"])]
    out = {}
    for d in datasets:
        for m in metrics:
            b, a = _by_dataset_score(before, m), _by_dataset_score(after, m)
            out[(DATASET_TITLES.get(d, d), METRIC_TITLES[m])] = [
                100 * (a.get((d, s), np.nan) - b.get((d, s), np.nan)) for s in scores
            ]
    table = pd.DataFrame(out, index=pd.Index([score_title(s) for s in scores], name="score"))
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["benchmark", "change (points)"])
    return table.round(2)


def before_after_table(
    before: pd.DataFrame, after: pd.DataFrame, score: str = "rba"
) -> pd.DataFrame:
    """One score's AuPRC and FPR95 (percent) per benchmark, before and after, with the change."""
    rows = []
    for d in [d for d in DATASET_ORDER if d in set(before["dataset"]) | set(after["dataset"])]:
        rec = {"benchmark": DATASET_TITLES.get(d, d)}
        for m in ("auprc", "fpr_at_95_tpr"):
            title = METRIC_TITLES[m]
            b = _by_dataset_score(before, m).get((d, score), np.nan)
            a = _by_dataset_score(after, m).get((d, score), np.nan)
            rec.update(
                {
                    f"{title} before": 100 * b,
                    f"{title} after": 100 * a,
                    f"{title} change": 100 * (a - b),
                }
            )
        rows.append(rec)
    return pd.DataFrame(rows).set_index("benchmark").round(2)


def miou_change_table(before: float, after: float) -> pd.DataFrame:
    """Cityscapes-val mIoU (percent) before and after fine-tuning (fractions in), and the change in
    points."""
    return pd.DataFrame(
        {
            "mIoU before": [100 * before],
            "mIoU after": [100 * after],
            "change (points)": [100 * (after - before)],
        },
        index=["Cityscapes val"],
    ).round(2)


# ------------------------------------------------------------------------ uncertainty (notebook 06)
def uncertainty_tables(
    df: pd.DataFrame,
    results_path: str | Path,
    temperature: float = 1.0,
    fpr_convention: str = "course",
    **kw,
) -> dict[str, pd.DataFrame]:
    """The three bootstrap tables of notebook 06 for every method in the store ``df`` (its latest
    row per model, score and benchmark at ``temperature``, as the comparison table), by file name:
    ``intervals`` (AuPRC and FPR95 with intervals), ``components`` (SMIYC sIoU gt, PPV, mean F1
    with intervals), ``recall_by_size`` (recall at the 95%-TPR threshold per component area).
    ``kw``: ``n_boot``, ``seed``, ``level``, ``digits`` of ``bootstrap.interval_table``. Empty
    tables are left out."""
    from ..bootstrap import component_table, interval_table, size_table

    rows = anomaly_rows(df, temperature, fpr_convention)
    kw = dict(kw, store=df)
    tables = dict(
        intervals=interval_table(rows, results_path, convention=fpr_convention, **kw),
        components=component_table(rows, results_path, convention=fpr_convention, **kw),
        recall_by_size=size_table(
            rows,
            results_path,
            **{k: v for k, v in kw.items() if k in ("n_boot", "seed", "level", "digits", "store")},
        ),
    )
    return {k: v for k, v in tables.items() if not v.empty}


def save_markdown_tables(tables: Mapping[str, pd.DataFrame], figures_dir: str | Path) -> list[Path]:
    """Write each table as ``<figures_dir>/<name>.md`` (GitHub markdown, ``markdown``); returns the
    paths."""
    out = []
    for name, table in tables.items():
        path = Path(figures_dir) / f"{name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(table) + "\n")
        out.append(path)
    return out
