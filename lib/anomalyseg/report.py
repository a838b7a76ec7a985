"""The comparison report: tables and figures from the results store only (never re-runs a model).

Every function takes the store as a DataFrame (``results.read_results``) and copes with whatever
subset of rows exists: a figure function returns ``None`` when it has nothing to draw, and
``missing_report`` says in plain words what has no rows yet. Metrics stay fractions in the tables
and become percent with two decimals when rendered, as in the course.

A *method* is a model (``erfnet``, ``eomt``, ``eomt_oe``...) or, for a learned score, a model with
that score (``eomt`` + ``anomaly_head``); post-hoc scores (``msp``, ``rba``...) are compared within
each method.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .evaluate import load_curves, load_maps
from .plots import SCORE_TITLES, save_figure, score_maps_figure
from .protocol import describe
from .results import COLUMNS, DATASET_ORDER, DATASET_TITLES, MIOU_DATASET, latest, protocol_rows
from .scores import LEARNED_SCORES, SCORE_ORDER

# Readable titles of model names and learned scores, the one place the report spells them.
METHOD_TITLES = {
    "erfnet": "ERFNet",
    "eomt": "EoMT",
    "eomt_oe": "EoMT + OE",
    "eomt_oe_road": "EoMT + OE (road only)",
    "eomt_oe_road_persp": "EoMT + OE (road only, perspective)",
    "anomaly_head": "anomaly head",
    "anomaly_head_hybrid": "hybrid anomaly head",
}
METRIC_TITLES = {"auprc": "AuPRC", "fpr_at_95_tpr": "FPR95", "auroc": "AUROC", "miou": "mIoU"}
# Higher is better except for false positives; decides the bold cell of each LaTeX column.
HIGHER_IS_BETTER = {"auprc": True, "fpr_at_95_tpr": False, "auroc": True, "miou": True}
_SCORE_ORDER = SCORE_ORDER

# What the pipeline is expected to produce, for missing_report: the notebook that writes each
# model's rows, its post-hoc scores, and the temperature sweeps of notebook 03.
EXPECTED_MODELS = {
    "erfnet": dict(notebook="01_erfnet_baseline", scores=("msp", "max_logit", "max_entropy"), sweeps=("pixel",)),
    "eomt": dict(notebook="02_eomt_eval", scores=("msp", "max_logit", "max_entropy", "rba"), sweeps=("pixel", "class")),
    "eomt_oe": dict(notebook="04_outlier_exposure", scores=("rba",), sweeps=()),
}
# Learned scores run on a frozen EoMT (REFERENCE §6): expected when EoMT is in the report.
EXPECTED_LEARNED = {"anomaly_head": "05_anomaly_head", "anomaly_head_hybrid": "05_anomaly_head"}


def model_title(model: str) -> str:
    return METHOD_TITLES.get(model, model)


def score_title(score: str) -> str:
    return SCORE_TITLES.get(score, score)


def is_learned(score: str) -> bool:
    return score in LEARNED_SCORES


def method_title(model: str, score: str | None = None) -> str:
    """``ERFNet``, ``EoMT + OE``; a learned score names its own method: ``EoMT + anomaly head``."""
    if score is not None and is_learned(score):
        return f"{model_title(model)} + {METHOD_TITLES[score]}"
    return model_title(model)


def label(model: str, score: str) -> str:
    """One line's legend entry: ``EoMT · MSP`` or ``EoMT + anomaly head``."""
    return method_title(model, score) if is_learned(score) else f"{model_title(model)} · {score_title(score)}"


# ----------------------------------------------------------------------------- selecting rows
def _check(df: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"The report reads the results store as a DataFrame (anomalyseg.results.read_results), got {type(df).__name__}.")
    lacking = [c for c in ("model", "dataset", "score", "temperature", "temperature_on", "auprc", "fpr_at_95_tpr", "miou") if c not in df]
    if lacking:
        raise ValueError(f"This table is not the results store: it lacks the columns {lacking} (expected {COLUMNS}).")
    return df


def _order(models: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_TITLES if m in set(models)]
    return known + sorted(set(models) - set(known))


def _score_key(score: str):
    return (_SCORE_ORDER.index(score), score) if score in _SCORE_ORDER else (len(_SCORE_ORDER), score)


def select_models(df: pd.DataFrame, models: Sequence[str] | None) -> pd.DataFrame:
    """Rows of ``models`` only (``None``: all); an unknown name is an error listing the stored ones."""
    _check(df)
    if models is None:
        return df
    models = [models] if isinstance(models, str) else list(models)
    stored = sorted(set(df["model"].dropna()))
    unknown = [m for m in models if m not in stored]
    if unknown:
        raise ValueError(f"report_models names {unknown}, which have no rows in the store; stored models: {stored or 'none yet'}.")
    return df[df["model"].isin(models)]


def anomaly_rows(df: pd.DataFrame, temperature: float = 1.0, fpr_convention: str = "course",
                 protocol: str | None = "course") -> pd.DataFrame:
    """Latest benchmark row per (model, dataset, score) at ``temperature`` (learned scores have none)
    evaluated under ``protocol`` (``anomalyseg.protocol``), in model, score and benchmark order."""
    _check(df)
    if protocol is not None:
        df = protocol_rows(df, protocol)
        from .protocol import get_protocol

        fpr_convention = get_protocol(protocol).fpr_convention
    rows = df[df["dataset"].isin(DATASET_ORDER) & (df["score"] != "miou")]
    if "fpr_convention" in rows:
        rows = rows[rows["fpr_convention"].isna() | (rows["fpr_convention"] == fpr_convention)]
    rows = rows[rows["temperature"].isna() | np.isclose(rows["temperature"].astype(float), temperature)]
    rows = latest(rows, keys=("model", "dataset", "score"))
    return _sorted(rows, ["model", "score", "dataset"])


def _sorted(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows in report order: known models first (``METHOD_TITLES``), scores as the course lists them,
    benchmarks in course order."""
    if not len(rows):
        return rows
    models = {m: i for i, m in enumerate(_order(rows["model"].unique()))}
    rank = {"model": models.get, "score": _score_key, "dataset": lambda d: (DATASET_ORDER + (d,)).index(d)}
    keys = [rows[c].map(rank[c]) if c in rank else rows[c] for c in by]
    order = sorted(range(len(rows)), key=lambda i: tuple(k.iloc[i] for k in keys))
    return rows.iloc[order].reset_index(drop=True)


def miou_rows(df: pd.DataFrame, temperature: float = 1.0, protocol: str | None = "course") -> pd.DataFrame:
    """Latest Cityscapes-val mIoU row per model at class temperature ``temperature`` under ``protocol``."""
    _check(df)
    df = protocol_rows(df, protocol)
    rows = df[(df["score"] == "miou") & (df["dataset"] == MIOU_DATASET)]
    rows = rows[np.isclose(rows["temperature"].astype(float), temperature)]
    return latest(rows, keys=("model",))


# ----------------------------------------------------------------------------- the comparison table
def comparison_table(df: pd.DataFrame, metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
                     temperature: float = 1.0, fpr_convention: str = "course", protocol: str = "course") -> pd.DataFrame:
    """Every method x score x benchmark at ``temperature``, with the model's Cityscapes-val mIoU,
    all evaluated under ``protocol`` (``anomalyseg.protocol``; named in ``table.attrs["protocol"]``
    and by every rendering).

    Returns fractions (NaN where a row is missing): index ``(model, score)``, columns
    ``(dataset, metric)`` for each benchmark with rows, in course order, then
    ``("cityscapes_val", "miou")``. Render with ``to_markdown`` / ``to_latex``.
    """
    bad = [m for m in metrics if m not in ("auprc", "fpr_at_95_tpr", "auroc")]
    if bad or not metrics:
        raise ValueError(f"comparison_table metrics are drawn from 'auprc', 'fpr_at_95_tpr' and 'auroc'; got {list(metrics)}.")
    rows = anomaly_rows(df, temperature, fpr_convention, protocol)
    if not len(rows):
        return pd.DataFrame()
    long = rows.melt(id_vars=["model", "score", "dataset"], value_vars=list(metrics), var_name="metric")
    table = long.pivot_table(index=["model", "score"], columns=["dataset", "metric"], values="value",
                             aggfunc="last", dropna=False, sort=False)
    datasets = [d for d in DATASET_ORDER if d in set(rows["dataset"])]
    table = table.reindex(columns=pd.MultiIndex.from_product([datasets, list(metrics)], names=["dataset", "metric"]))
    table = table.reindex(pd.MultiIndex.from_frame(rows[["model", "score"]].drop_duplicates()))
    miou = miou_rows(df, temperature, protocol).set_index("model")["miou"]
    table[(MIOU_DATASET, "miou")] = [miou.get(m, np.nan) for m, _ in table.index]
    table = table.astype(float)
    table.attrs["protocol"] = protocol
    return table


def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.2f}"


def _groups(table: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """Per benchmark of a ``comparison_table``: (dataset, title, its metric columns)."""
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    return [(d, "mIoU" if d == MIOU_DATASET else DATASET_TITLES.get(d, d), [m for dd, m in table.columns if dd == d])
            for d in datasets]


def _row_titles(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    return ([method_title(m, s) for m, s in table.index],
            ["learned" if is_learned(s) else score_title(s) for _, s in table.index])


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub markdown of a ``comparison_table``: one column per benchmark with ``AuPRC / FPR95``
    cells in percent (two decimals), then mIoU; ``–`` marks a missing row."""
    from .results import to_markdown as _md

    if table.empty:
        return _md(table)
    methods, scores = _row_titles(table)
    out = pd.DataFrame({"Method": methods, "Score": scores})
    for d, title, ms in _groups(table):
        head = title if d == MIOU_DATASET else f"{title} ({' / '.join(METRIC_TITLES[m] for m in ms)})"
        out[head] = [" / ".join(_pct(table.loc[i, (d, m)]) for m in ms) for i in table.index]
    return _md(out) + (f"\n\n_{describe(table.attrs['protocol'])}_" if table.attrs.get("protocol") else "")


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs ``tabular`` of a ``comparison_table``: percent with two decimals, the best value of
    each column in bold (highest AuPRC, AUROC and mIoU, lowest FPR95; ties at the shown precision
    are all bold), ``--`` for a missing row. Needs ``\\usepackage{booktabs}``."""
    if table.empty:
        return "% no results yet\n"
    cols = list(table.columns)
    shown = {c: table[c].map(lambda x: np.nan if pd.isna(x) else round(100 * x, 2)) for c in cols}
    best = {c: (shown[c].max() if HIGHER_IS_BETTER[c[1]] else shown[c].min()) for c in cols}
    lines = [r"% AuPRC and FPR95 in % pooled over each benchmark's pixels (T = 1); mIoU in % on Cityscapes val.",
             "% " + describe(table.attrs.get("protocol", "course")).replace("`", ""),
             r"\begin{tabular}{ll" + "r" * len(cols) + "}", r"\toprule"]
    top, rules, sub, j = ["", ""], [], ["Method", "Score"], 3
    for d, title, ms in _groups(table):
        if d == MIOU_DATASET:
            top.append("")
        else:
            top.append(rf"\multicolumn{{{len(ms)}}}{{c}}{{{_tex(title)}}}" if len(ms) > 1 else _tex(title))
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
            cells.append("--" if pd.isna(v) else (rf"\textbf{{{v:.2f}}}" if v == best[c] else f"{v:.2f}"))
        lines.append(" & ".join(cells) + r" \\")
        previous = method
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def save_tables(table: pd.DataFrame, figures_dir: str | Path) -> list[Path]:
    """Write ``comparison_table.md`` and ``comparison_table.tex`` into ``figures_dir``."""
    d = Path(figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    md, tex = d / "comparison_table.md", d / "comparison_table.tex"
    md.write_text("AuPRC / FPR95 in %, T = 1; mIoU in % on Cityscapes val.\n\n"
                  + to_markdown(table) + "\n")
    tex.write_text(to_latex(table))
    return [md, tex]


# ----------------------------------------------------------------------------- figures
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 2)))


def _color(score: str):
    return plt.get_cmap("tab10")(_score_key(score)[0] % 10)


def _style(model: str, models: Sequence[str], score: str) -> dict:
    """Colour by score, line style by model, so one figure reads both ways."""
    i = list(models).index(model) if model in models else 0
    return dict(color=_color(score), linestyle=_LINESTYLES[i % len(_LINESTYLES)])


def _panels(n: int, nrows: int = 1, w: float = 3.4, h: float = 3.0):
    fig, axes = plt.subplots(nrows, n, figsize=(w * n, h * nrows), squeeze=False)
    return fig, axes


def bar_chart(df: pd.DataFrame, metric: str = "auprc", temperature: float = 1.0):
    """One panel per benchmark: ``metric`` (percent) of every method, one bar per score, coloured by
    score. None when there are no benchmark rows."""
    if metric not in ("auprc", "fpr_at_95_tpr", "auroc"):
        raise ValueError(f"bar_chart draws 'auprc', 'fpr_at_95_tpr' or 'auroc', got {metric!r}.")
    rows = anomaly_rows(df, temperature)
    if not len(rows):
        return None
    rows = rows.assign(method=[method_title(m, s) for m, s in zip(rows["model"], rows["score"])])
    datasets = [d for d in DATASET_ORDER if d in set(rows["dataset"])]
    methods = list(dict.fromkeys(rows["method"]))
    width = 0.8 / rows.groupby(["dataset", "method"]).size().max()
    fig, axes = _panels(len(datasets), w=max(3.4, 0.9 * len(methods) + 1), h=3.2)
    legend = {}
    for ax, d in zip(axes[0], datasets):
        for i, method in enumerate(methods):
            bars = rows[(rows["dataset"] == d) & (rows["method"] == method)]
            for k, (score, value) in enumerate(zip(bars["score"], bars[metric])):
                x = i + (k - (len(bars) - 1) / 2) * width  # centred in the method's slot
                legend[score_title(score)] = ax.bar(x, 100 * value, width=width, color=_color(score))
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(DATASET_TITLES.get(d, d), fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"{METRIC_TITLES[metric]} (%) " + ("↑" if HIGHER_IS_BETTER[metric] else "↓"))
    fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=len(legend), fontsize=8, bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    return fig


def curve_data(df: pd.DataFrame, results_path: str | Path, dataset: str, temperature: float = 1.0) -> list[dict]:
    """Stored PR/ROC points of each method x score on ``dataset``: dicts with ``model``, ``score``,
    ``label``, ``auprc``, ``fpr_at_95_tpr`` and ``recall``, ``precision``, ``fpr``, ``tpr`` arrays.
    Rows whose curve file is gone are left out."""
    rows = anomaly_rows(df, temperature)
    out = []
    for _, r in rows[rows["dataset"] == dataset].iterrows():
        pts = load_curves(results_path, r)
        if pts is not None:
            out.append(dict(model=r["model"], score=r["score"], label=label(r["model"], r["score"]),
                            auprc=r["auprc"], fpr_at_95_tpr=r["fpr_at_95_tpr"], **pts))
    return out


def curves_figure(df: pd.DataFrame, results_path: str | Path, kind: str = "pr", temperature: float = 1.0):
    """PR (``kind="pr"``: precision vs recall) or ROC (``"roc"``: TPR vs FPR, log FPR axis) curves from
    the stored points: one panel per benchmark, one line per method x score. None without curves."""
    if kind not in ("pr", "roc"):
        raise ValueError(f"curves_figure kind is 'pr' or 'roc', got {kind!r}.")
    data = {d: curve_data(df, results_path, d, temperature) for d in DATASET_ORDER}
    data = {d: c for d, c in data.items() if c}
    if not data:
        return None
    models = _order({c["model"] for cs in data.values() for c in cs})
    fig, axes = _panels(len(data), h=3.4)
    for ax, (d, cs) in zip(axes[0], data.items()):
        for c in cs:
            style = _style(c["model"], models, c["score"])
            if kind == "pr":
                ax.plot(c["recall"], c["precision"], label=f"{c['label']} ({100 * c['auprc']:.1f})", lw=1.3, **style)
            else:
                ax.plot(np.maximum(c["fpr"], 1e-5), c["tpr"], label=f"{c['label']} ({100 * c['fpr_at_95_tpr']:.1f})", lw=1.3, **style)
        if kind == "pr":
            ax.set_xlabel("recall"), ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        else:
            ax.set_xscale("log"), ax.set_xlim(1e-5, 1), ax.set_ylim(0, 1.02), ax.set_xlabel("FPR")
            ax.axhline(0.95, color="grey", lw=0.7, ls=":")
        ax.set_title(DATASET_TITLES.get(d, d), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left" if kind == "pr" else "lower right",
                  title="AuPRC" if kind == "pr" else "FPR95", title_fontsize=6)
    axes[0, 0].set_ylabel("precision" if kind == "pr" else "TPR")
    fig.tight_layout()
    return fig


def temperature_sweeps(df: pd.DataFrame, temperature_on: str = "pixel", fpr_convention: str = "course",
                       protocol: str | None = "course") -> pd.DataFrame:
    """Latest benchmark rows of every (model, dataset, score) swept over at least two temperatures
    with ``temperature_on`` (``"pixel"`` or ``"class"``) under ``protocol``, sorted by temperature."""
    if temperature_on not in ("pixel", "class"):
        raise ValueError(f"temperature_on is 'pixel' or 'class', got {temperature_on!r}.")
    _check(df)
    df = protocol_rows(df, protocol)
    rows = df[df["dataset"].isin(DATASET_ORDER) & (df["temperature_on"] == temperature_on) & df["temperature"].notna()]
    if "fpr_convention" in rows:
        rows = rows[rows["fpr_convention"].isna() | (rows["fpr_convention"] == fpr_convention)]
    rows = latest(rows, keys=("model", "dataset", "score", "temperature"))
    if not len(rows):
        return rows
    n = rows.groupby(["model", "dataset", "score"])["temperature"].transform("nunique")
    return _sorted(rows[n >= 2], ["model", "score", "dataset", "temperature"])


def temperature_figure(df: pd.DataFrame, temperature_on: str = "pixel", metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr")):
    """AuPRC and FPR95 (rows) against T (log axis) per benchmark (columns), one line per model x
    score swept with ``temperature_on``. None without such a sweep."""
    rows = temperature_sweeps(df, temperature_on)
    if not len(rows):
        return None
    datasets = [d for d in DATASET_ORDER if d in set(rows["dataset"])]
    models = _order(rows["model"].unique())
    fig, axes = _panels(len(datasets), nrows=len(metrics), h=2.8)
    for j, d in enumerate(datasets):
        for (m, s), g in rows[rows["dataset"] == d].groupby(["model", "score"], sort=False):
            for i, metric in enumerate(metrics):
                axes[i, j].plot(g["temperature"], 100 * g[metric], marker="o", ms=3, label=label(m, s), **_style(m, models, s))
        axes[0, j].set_title(DATASET_TITLES.get(d, d), fontsize=10)
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.set_xlabel(f"T ({temperature_on})") if i == len(metrics) - 1 else None
            ax.set_ylabel(f"{METRIC_TITLES[metric]} (%)") if j == 0 else None
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(len(labels), 5)
    top = 1 - (0.25 + 0.2 * math.ceil(len(labels) / ncol)) / fig.get_size_inches()[1]  # room for title and legend
    fig.suptitle(f"temperature on the {'class logits' if temperature_on == 'class' else 'per-pixel class map'}", fontsize=10)
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=7, bbox_to_anchor=(0.5, 1 - 0.3 / fig.get_size_inches()[1]))
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def miou_temperature_figure(df: pd.DataFrame):
    """Cityscapes-val mIoU (percent) against the class temperature, one line per model with at least
    two class temperatures. None without such rows."""
    _check(df)
    df = protocol_rows(df, "course")
    rows = df[(df["score"] == "miou") & (df["dataset"] == MIOU_DATASET) & (df["temperature_on"] == "class")]
    rows = latest(rows, keys=("model", "temperature"))
    if not len(rows):
        return None
    rows = rows[rows.groupby("model")["temperature"].transform("nunique") >= 2]
    if not len(rows):
        return None
    fig, ax = plt.subplots(figsize=(4, 3))
    models = _order(rows["model"].unique())
    for m in models:
        g = rows[rows["model"] == m].sort_values("temperature")
        ax.plot(g["temperature"], 100 * g["miou"], marker="o", label=model_title(m), linestyle=_LINESTYLES[models.index(m) % 6])
    ax.set_xscale("log", base=2), ax.set_xlabel("T (class)"), ax.set_ylabel("mIoU (%)"), ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def map_runs(df: pd.DataFrame, results_path: str | Path, dataset: str) -> dict[str, list[str]]:
    """``{model: [run_id, ...]}``: each model's runs that stored maps of ``dataset``, latest first."""
    _check(df)
    maps = Path(results_path).parent / "maps"
    if "run_id" not in df:
        return {}
    out: dict[str, list[str]] = {}
    for run, model in df[df["dataset"] == dataset][["run_id", "model"]].drop_duplicates().itertuples(index=False):
        if (maps / str(run) / dataset).is_dir():
            out.setdefault(model, []).insert(0, run)  # the store is in time order
    return {m: out[m] for m in _order(out)}


def best_scores(df: pd.DataFrame) -> dict[str, list[str]]:
    """``{model: [score, ...]}``: each model's post-hoc score with the highest mean AuPRC over the
    benchmarks (T = 1), then its learned scores; what the qualitative grid shows by default."""
    rows = anomaly_rows(df)
    out = {}
    for model in _order(rows["model"].unique()):
        mine = rows[rows["model"] == model]
        mean = mine[~mine["score"].map(is_learned)].groupby("score", sort=False)["auprc"].mean()
        out[model] = ([mean.idxmax()] if mean.notna().any() else []) + list(dict.fromkeys(s for s in mine["score"] if is_learned(s)))
    return out


def qualitative_samples(df: pd.DataFrame, results_path: str | Path, dataset: str, frames: int = 2,
                        scores: Sequence[str] | None = None) -> list[dict]:
    """The first ``frames`` stored frames of ``dataset`` as ``plots.score_maps_figure`` samples: image
    and ground truth, and one map per method keyed by its ``label``.

    ``scores=None`` shows each model's ``best_scores``; a list shows those scores of every model.
    Each map comes from the latest run of its model that stored it (a later temperature sweep may
    have stored fewer scores)."""
    runs = map_runs(df, results_path, dataset)
    wanted = best_scores(df) if scores is None else {m: list(scores) for m in runs}
    loaded: dict[str, dict] = {}

    def stored(run):
        if run not in loaded:
            loaded[run] = load_maps(results_path, run, dataset)
        return loaded[run]

    columns = []  # (label, run, score)
    for model, model_runs in runs.items():
        for s in wanted.get(model, []):
            run = next((r for r in model_runs if any(s in f["maps"] for f in stored(r).values())), None)
            if run is not None:
                columns.append((label(model, s), run, s))
    if not columns:
        return []
    first = stored(columns[0][1])
    stems = [st for st in first if all(st in stored(r) for _, r, _ in columns)][: max(int(frames), 0)]
    samples = []
    for st in stems:
        f = first[st]
        image = f["image"] if f["image"] is not None else np.zeros((3,) + f["label"].shape, np.uint8)
        samples.append(dict(image=image, label=f["label"], stem=f"{DATASET_TITLES.get(dataset, dataset)} · {st}",
                            maps={lab: stored(r)[st]["maps"][s] for lab, r, s in columns}))
    return samples


def qualitative_grid(df: pd.DataFrame, results_path: str | Path, datasets: Sequence[str] | None = None,
                     frames: int = 2, scores: Sequence[str] | None = None):
    """Rows of frames (``frames`` per benchmark), columns image | ground truth | each method's score
    map, from the stored maps (see ``qualitative_samples``). None when no maps are stored."""
    samples = []
    for d in datasets or DATASET_ORDER:
        samples += qualitative_samples(df, results_path, d, frames, scores)
    if not samples:
        return None
    # A method absent on one benchmark leaves a blank panel there rather than dropping its column.
    columns = list(dict.fromkeys(k for s in samples for k in s["maps"]))
    for s in samples:
        s["maps"] = {k: s["maps"].get(k, np.full(s["label"].shape, np.nan, np.float32)) for k in columns}
    return score_maps_figure(samples, columns, cell=1.5)


# ----------------------------------------------------------------------------- what is missing
def _names(titles) -> str:
    titles = list(titles)
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def missing_report(df: pd.DataFrame, models: Sequence[str] | None = None) -> str:
    """Plain words on what the store lacks for the full comparison: models, benchmarks, scores,
    temperature sweeps and mIoU rows, each with the notebook that writes it. ``models`` limits the
    check to those models (``None``: every expected one)."""
    _check(df)
    if not len(df):
        return ("The results store is empty: nothing to compare yet. Run notebooks 01 to 05 "
                "(or `anomalyseg run-all`) to fill it, then run this notebook again.")
    expected = {m: e for m, e in EXPECTED_MODELS.items() if models is None or m in models}
    anomaly = anomaly_rows(df)
    lines = []
    for m, e in expected.items():
        mine = anomaly[anomaly["model"] == m]
        if not (df["model"] == m).any():
            lines.append(f"- {model_title(m)}: no rows yet (notebook {e['notebook']}).")
            continue
        if not len(mine):
            lines.append(f"- {model_title(m)}: no benchmark rows at T = 1 yet (notebook {e['notebook']}).")
        else:
            absent = [d for d in DATASET_ORDER if d not in set(mine["dataset"])]
            if absent:
                lines.append(f"- {model_title(m)}: no rows on {_names(DATASET_TITLES[d] for d in absent)}.")
            scores = [s for s in e["scores"] if s not in set(mine["score"])]
            if scores:
                lines.append(f"- {model_title(m)}: no {_names(score_title(s) for s in scores)} rows.")
        for t_on in e["sweeps"]:
            swept = temperature_sweeps(df[df["model"] == m], t_on)
            if not len(swept):
                lines.append(f"- {model_title(m)}: no {t_on}-temperature sweep (notebook 03_temperature_scaling).")
            if not ((df["model"] == m) & (df["score"] == "calibration") & (df["temperature_on"] == t_on)).any():
                lines.append(f"- {model_title(m)}: no calibration (ECE, fitted T) on the {t_on} temperature "
                             "(notebook 03_temperature_scaling).")
        if not len(miou_rows(df[df["model"] == m])):
            lines.append(f"- {model_title(m)}: no Cityscapes-val mIoU at T = 1 (notebook {e['notebook']}).")
        miou = df[(df["model"] == m) & (df["score"] == "miou") & (df["temperature_on"] == "class")]
        if "class" in e["sweeps"] and miou["temperature"].nunique() < 2:
            lines.append(f"- {model_title(m)}: no mIoU over class temperatures (notebook 03_temperature_scaling).")
    if "eomt" in expected:
        lines += [f"- {method_title('eomt', s)}: no rows yet (notebook {nb})."
                  for s, nb in EXPECTED_LEARNED.items() if s not in set(anomaly["score"])]
    if not lines:
        return "Nothing missing: every expected model, benchmark, score, temperature sweep, calibration and mIoU has rows."
    return "Missing from the results store (the report shows what exists):\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- everything at once
def save_all(df: pd.DataFrame, results_path: str | Path, figures_dir: str | Path, frames: int = 2,
             protocol: str = "course") -> list[Path]:
    """Write the comparison table (markdown, LaTeX) and every figure that has rows (PNG and PDF)
    into ``figures_dir``; returns the paths written. The table holds the rows evaluated under
    ``protocol``; the figures, the ``course`` protocol's."""
    written = []
    table = comparison_table(df, protocol=protocol)
    if not table.empty:
        written += save_tables(table, figures_dir)
    figures = {
        "bars_auprc": lambda: bar_chart(df, "auprc"),
        "bars_fpr_at_95_tpr": lambda: bar_chart(df, "fpr_at_95_tpr"),
        "pr_curves": lambda: curves_figure(df, results_path, "pr"),
        "roc_curves": lambda: curves_figure(df, results_path, "roc"),
        "temperature_pixel": lambda: temperature_figure(df, "pixel"),
        "temperature_class": lambda: temperature_figure(df, "class"),
        "miou_temperature": lambda: miou_temperature_figure(df),
        "qualitative": lambda: qualitative_grid(df, results_path, frames=frames),
    }
    for name, make in figures.items():
        fig = make()
        if fig is None:
            continue
        png = save_figure(fig, figures_dir, name)
        plt.close(fig)  # a notebook would otherwise show every saved figure again
        written += [png, png.with_suffix(".pdf")]
    return written


# ----------------------------------------------------------------------------- conventions side by side
def conventions_table(df: pd.DataFrame, model: str | None = None, metrics: Sequence[str] = ("auprc", "fpr_at_95_tpr"),
                      temperature: float = 1.0) -> pd.DataFrame:
    """One model under every protocol it was evaluated with, side by side: rows (benchmark, score)
    plus the Cityscapes-val mIoU, one column per protocol (``course`` first), cells ``AuPRC / FPR95``
    (or mIoU) in percent, latest row of each. ``model=None``: the store must hold only one model
    with rows under more than one protocol. Rows without a recorded protocol count as ``legacy``.
    Explains a gap between two reports of the same checkpoint (``convention_settings`` lists what
    each protocol does)."""
    from .protocol import PROTOCOLS, UNRECORDED_PROTOCOL

    _check(df)
    df = df.assign(protocol=df["protocol"].astype(object).fillna(UNRECORDED_PROTOCOL).replace("", UNRECORDED_PROTOCOL)
                   if "protocol" in df else UNRECORDED_PROTOCOL)
    rows = df[(df["dataset"].isin(DATASET_ORDER) | (df["score"] == "miou"))
              & (df["temperature"].isna() | np.isclose(df["temperature"].astype(float), temperature))]
    if model is None:
        multi = sorted(m for m, g in rows.groupby("model") if g["protocol"].nunique() > 1)
        if len(multi) != 1:
            raise ValueError(f"conventions_table needs model=: models with rows under several protocols: {multi or 'none'}.")
        model = multi[0]
    rows = latest(rows[rows["model"] == model], keys=("dataset", "score", "protocol"))
    if not len(rows):
        return pd.DataFrame()
    known = [p for p in PROTOCOLS if p in set(rows["protocol"])]
    order = known + sorted(set(rows["protocol"]) - set(known))
    cell = [(_pct(r["miou"]) if r["score"] == "miou" else " / ".join(_pct(r[m]) for m in metrics)) for _, r in rows.iterrows()]
    rows = rows.assign(cell=cell, dataset=rows["dataset"].map(lambda d: DATASET_TITLES.get(d, "Cityscapes val" if d == MIOU_DATASET else d)),
                       score=[("mIoU" if s == "miou" else score_title(s)) for s in rows["score"]])
    table = rows.pivot_table(index=["dataset", "score"], columns="protocol", values="cell", aggfunc="last", sort=False)
    table = table.reindex(columns=order).fillna("–")
    table.columns.name = f"{model_title(model)}: " + " / ".join(METRIC_TITLES[m] for m in metrics) + " (%)"
    return table


def convention_settings(protocols: Sequence[str] | None = None) -> pd.DataFrame:
    """What each protocol sets (rows: input resize, skip rule, scoring, pooling, FPR95, mIoU
    channels, logits dtype, MSP formula; columns: protocols), for reading a ``conventions_table``."""
    from dataclasses import fields

    from .protocol import PROTOCOLS, get_protocol

    ps = [get_protocol(p) for p in (protocols or PROTOCOLS)]
    names = [f.name for f in fields(ps[0]) if f.name not in ("name", "description")]
    return pd.DataFrame({p.name: [getattr(p, n) for n in names] for p in ps}, index=pd.Index(names, name="setting"))
