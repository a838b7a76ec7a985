"""An ipywidgets explorer of the stored score maps: threshold one frame's map and see what it
catches.

Everything it shows comes from the results store and the maps that ``evaluate_anomaly`` stored
beside it (``<results dir>/maps/<run_id>/<dataset>/<stem>.npz``); no model runs. The numbers are
plain functions (``threshold_view``, ``tpr_threshold``) so they can be checked by hand; the widget
only wires dropdowns and a slider to them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..results import DATASET_ORDER, DATASET_TITLES, load_maps, read_results
from ..scores import score_title
from .figures import label_overlay
from .names import model_title
from .selection import stored_map_runs

# Overlay colours: caught anomaly, false alarm, missed anomaly, correctly quiet, void.
OVERLAY_COLORS = {
    "tp": (0, 190, 80),
    "fp": (230, 40, 40),
    "fn": (40, 110, 255),
    "tn": (70, 70, 70),
    "void": (0, 0, 0),
}


def _arrays(score_map, label) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(score_map, dtype=np.float32)
    lab = np.asarray(label)
    if m.shape != lab.shape:
        raise ValueError(
            f"score map and label must have the same shape [H, W], got {m.shape} and {lab.shape}; "
            "the stored maps are at evaluation size, so compare them with the stored label."
        )
    return m, lab


def threshold_view(score_map, label, threshold: float) -> dict:
    """Predict "anomaly" where ``score_map >= threshold`` and compare with ``label`` (1 anomaly,
    0 in-distribution, anything else void and ignored).

    Returns ``dict(precision, recall, tp, fp, fn, overlay)``: pixel counts over valid pixels,
    precision = tp / (tp + fp) and recall = tp / (tp + fn) (NaN when the denominator is 0), and
    ``overlay`` an RGB ``[H, W, 3]`` uint8 image coloured by ``OVERLAY_COLORS``.
    """
    m, lab = _arrays(score_map, label)
    pred = m >= threshold
    pos, neg = lab == 1, lab == 0
    tp, fp, fn = int((pred & pos).sum()), int((pred & neg).sum()), int((~pred & pos).sum())
    overlay = np.empty(m.shape + (3,), np.uint8)
    overlay[...] = OVERLAY_COLORS["void"]
    for key, where in (
        ("tn", ~pred & neg),
        ("tp", pred & pos),
        ("fp", pred & neg),
        ("fn", ~pred & pos),
    ):
        overlay[where] = OVERLAY_COLORS[key]
    return dict(
        precision=tp / (tp + fp) if tp + fp else float("nan"),
        recall=tp / (tp + fn) if tp + fn else float("nan"),
        tp=tp,
        fp=fp,
        fn=fn,
        overlay=overlay,
    )


def tpr_threshold(score_map, label, tpr: float = 0.95) -> float:
    """The highest threshold whose recall on this frame reaches ``tpr``: the k-th highest anomaly
    score, k = ceil(tpr * #anomaly pixels). Without anomaly pixels, the map's maximum."""
    m, lab = _arrays(score_map, label)
    pos = np.sort(m[lab == 1])[::-1]
    if not len(pos):
        valid = m[(lab == 0) | (lab == 1)]
        return float(valid.max() if len(valid) else m.max())
    k = max(
        1, int(np.ceil(round(tpr * len(pos), 9)))
    )  # round: 0.95 * 20 must give 19, not 19.000000000000004
    return float(pos[k - 1])


def stored_runs(results_path: str | Path) -> dict[str, dict[str, str]]:
    """``{dataset: {run_id: model}}`` of every run that stored maps, latest run first."""
    out: dict[str, dict[str, str]] = {}
    for dataset, run, model in stored_map_runs(read_results(results_path), results_path):
        out.setdefault(dataset, {})[run] = model
    order = [d for d in DATASET_ORDER if d in out] + sorted(set(out) - set(DATASET_ORDER))
    return {d: dict(reversed(list(out[d].items()))) for d in order}


def render(frame: dict, score: str, threshold: float, width: float = 10.0) -> tuple[bytes, dict]:
    """PNG of image | score map | TP/FP/FN overlay for one stored frame, and the
    ``threshold_view``."""
    from matplotlib.figure import Figure

    m, lab = frame["maps"][score], frame["label"]
    view = threshold_view(m, lab, threshold)
    image = (
        frame["image"].transpose(1, 2, 0) if frame.get("image") is not None else label_overlay(lab)
    )
    h, w = lab.shape
    fig = Figure(figsize=(width, width / 3 * h / w + 0.5))
    axes = fig.subplots(1, 3)
    axes[0].imshow(image), axes[0].set_title("image", fontsize=9)
    im = axes[1].imshow(m, cmap="inferno")
    axes[1].contour(m >= threshold, levels=[0.5], colors="cyan", linewidths=0.7)
    axes[1].set_title(f"{score_title(score)} (cyan: >= threshold)", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.03)
    axes[2].imshow(view["overlay"], interpolation="nearest")
    axes[2].set_title("green TP · red FP · blue FN", fontsize=9)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=90, bbox_inches="tight"
    )  # a bare Figure: nothing leaks into the notebook
    return buf.getvalue(), view


def _fmt(x: float) -> str:
    return "–" if np.isnan(x) else f"{100 * x:.1f}%"


def explore(results_path: str | Path = "results/results.csv"):
    """The explorer widget: benchmark, frame, model run and score dropdowns, a threshold slider
    (score units, spanning the map's values, starting at 95% TPR on the frame), the rendered frame
    and its precision and recall. Returns the widget (an ``ipywidgets.VBox``); display it in a
    notebook."""
    import ipywidgets as W

    runs = stored_runs(results_path)
    if not runs:
        return W.HTML(
            f"<i>No stored score maps next to {results_path}: run an evaluation (notebooks 01 to "
            "05) first; "
            "evaluate_anomaly stores the maps of the first frames of each benchmark.</i>"
        )
    dataset = W.Dropdown(
        description="benchmark", options=[(DATASET_TITLES.get(d, d), d) for d in runs]
    )
    run = W.Dropdown(description="model (run)")
    frame = W.Dropdown(description="frame")
    score = W.Dropdown(description="score")
    threshold = W.FloatSlider(
        description="threshold",
        continuous_update=False,
        readout_format=".4g",
        layout=W.Layout(width="60%"),
    )
    picture, numbers = W.Image(format="png"), W.HTML()
    state: dict = {"busy": False}

    # Filling a dropdown fires its own observer; each step below sets the next one explicitly, so
    # observers only react to the user (``busy`` is set while the code itself moves widgets).
    def user(step):
        def handler(_change=None):
            if state["busy"]:
                return
            state["busy"] = True
            try:
                step()
            finally:
                state["busy"] = False

        return handler

    def fill(dropdown, options, keep=None):
        # A dropdown filled from empty selects nothing; select explicitly (keep the user's pick if
        # offered).
        dropdown.options = options
        values = [o[1] if isinstance(o, tuple) else o for o in options]
        dropdown.value = keep if keep in values else values[0]

    def on_dataset():
        fill(run, [(f"{model_title(m)} ({r})", r) for r, m in runs[dataset.value].items()])
        on_run()

    def on_run():
        state["frames"] = load_maps(results_path, run.value, dataset.value)
        fill(frame, list(state["frames"]), keep=frame.value)
        on_frame()

    def on_frame():
        maps = state["frames"][frame.value]["maps"]
        fill(score, [(score_title(s), s) for s in maps], keep=score.value)
        on_score()

    def on_score():
        f = state["frames"][frame.value]
        m = f["maps"][score.value]
        lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
        hi = max(hi, lo + 1e-6)  # a constant map still needs a slider
        with (
            threshold.hold_trait_notifications()
        ):  # min, max and value are validated together at the end
            threshold.min, threshold.max, threshold.step = lo, hi, (hi - lo) / 500
            threshold.value = min(max(tpr_threshold(m, f["label"]), lo), hi)
        draw()

    def draw():
        png, v = render(state["frames"][frame.value], score.value, threshold.value)
        picture.value = png
        state["view"] = v
        numbers.value = (
            f"<b>precision</b> {_fmt(v['precision'])} &nbsp; <b>recall</b> {_fmt(v['recall'])} "
            "&nbsp; "
            f"TP {v['tp']} · FP {v['fp']} · FN {v['fn']} pixels (threshold {threshold.value:.4g})"
        )

    for widget, step in (
        (dataset, on_dataset),
        (run, on_run),
        (frame, on_frame),
        (score, on_score),
        (threshold, draw),
    ):
        widget.observe(user(step), names="value")
    user(on_dataset)()
    box = W.VBox([W.HBox([dataset, run]), W.HBox([frame, score]), threshold, numbers, picture])
    box.state = (
        state  # the loaded frames and the current threshold_view, for tests and curious users
    )
    return box
