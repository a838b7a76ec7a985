"""Temperature scaling: fit T by the NLL of the true class, ECE and reliability diagrams.

The probabilities are those the softmax scores read (REFERENCE §3-4): ``p = softmax(x / T)``
over the 19 classes, where ``x`` is the segmenter's per-pixel class map (ERFNet's logits ``z``,
EoMT's fused map ``L``).

- ``temperature_on="pixel"`` divides ``x`` by T.
- ``temperature_on="class"`` (EoMT only) divides the class logits by T before the
  mask-classification fusion, ``x = L(T)``, and reads ``p = softmax(L(T))``.

For EoMT, ``L_c = sum_q p_q(c) sigmoid(m_q)`` is a mass of masks, mostly in [0, 1], not a logit:
``softmax(L)`` at T = 1 is close to uniform (about e / (e + 18) = 0.13 when one class holds a mass
of 1), so the fitted pixel temperature is far below 1, and no class temperature can make
``softmax(L(T))`` confident, since it only moves mass between classes and L stays that small.

Everything runs on cached outputs (``evaluate.collect_outputs(..., label_key="target")`` on
Cityscapes val): fitting costs one class-map pass per tried class temperature, and one pass in
all for a pixel temperature.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar

from .labels import NUM_CLASSES
from .metrics import CalibrationAccumulator

DEFAULT_BOUNDS = (0.01, 100.0)


def _check_mode(segmenter, temperature_on: str) -> None:
    if temperature_on not in ("pixel", "class"):
        raise ValueError(
            "temperature_on must be 'pixel' (divide the per-pixel class map) or 'class' (divide "
            f"the class logits, EoMT), got {temperature_on!r}."
        )
    if temperature_on == "class" and not getattr(segmenter, "supports_class_temperature", False):
        raise ValueError(
            f"{getattr(segmenter, 'name', 'this segmenter')} has no class logits to scale; use "
            "temperature_on='pixel'."
        )


def _check_frames(frames) -> None:
    if not len(frames):
        raise ValueError(
            "no frames: pass the Cityscapes val frames from collect_outputs(..., "
            "label_key='target')."
        )
    label = frames[0].label
    if label.dtype == torch.uint8 and set(torch.unique(label).tolist()) <= {0, 1, 255}:
        raise ValueError(
            "these frames carry anomaly masks (0/1/255), not class ids: collect the Cityscapes "
            "val frames with collect_outputs(segmenter, val, 'cityscapes_val', cache, "
            "label_key='target')."
        )


def _valid(label: torch.Tensor) -> torch.Tensor:
    """Pixels with a real class id (void 255, and anything >= 19, excluded)."""
    return (label >= 0) & (label < NUM_CLASSES)


def sample_pixels(frames, max_pixels: int | None = 500_000, seed: int = 0) -> list[torch.Tensor]:
    """Flat indices of the valid pixels to use in each frame: all of them when they are at most
    ``max_pixels`` (or ``max_pixels`` is None), else a uniform sample without replacement of
    ``max_pixels`` over all frames, drawn from a generator seeded by ``seed`` (deterministic)."""
    valid = [torch.nonzero(_valid(f.label).reshape(-1)).squeeze(1) for f in frames]
    total = sum(len(v) for v in valid)
    if total == 0:
        raise ValueError(
            "no valid pixel (class id 0..18) in the frames' labels: nothing to calibrate on."
        )
    if max_pixels is None or total <= max_pixels:
        return valid
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive pixel count or None, got {max_pixels}.")
    chosen = (
        torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: int(max_pixels)]
        .sort()
        .values
    )
    picks, start = [], 0
    for v in valid:
        inside = chosen[(chosen >= start) & (chosen < start + len(v))] - start
        picks.append(v[inside])
        start += len(v)
    return picks


def gather_logits(
    segmenter, frames, picks, class_temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-map values ``[N, 19]`` and true classes ``[N]`` at the picked pixels."""
    xs, ys = [], []
    for f, idx in zip(frames, picks):
        x = segmenter.class_map(f.raw, f.size, class_temperature=class_temperature)[:NUM_CLASSES]
        xs.append(x.reshape(NUM_CLASSES, -1)[:, idx].T)
        ys.append(f.label.reshape(-1)[idx].long())
    return torch.cat(xs).double(), torch.cat(ys)


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits / T)``."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, targets))


def frame_subset(frames, max_frames: int | None):
    """``max_frames`` frames evenly spaced over ``frames`` (all of them when None or fewer)."""
    if max_frames is None or len(frames) <= max_frames:
        return list(frames)
    if max_frames < 1:
        raise ValueError(f"max_frames must be a positive frame count or None, got {max_frames}.")
    return [
        frames[i]
        for i in sorted(
            set(np.linspace(0, len(frames) - 1, int(max_frames)).round().astype(int).tolist())
        )
    ]


def temperature_nll(
    segmenter,
    frames,
    temperatures: Sequence[float],
    temperature_on: str = "pixel",
    max_pixels: int | None = 500_000,
    seed: int = 0,
    max_frames: int | None = 16,
) -> np.ndarray:
    """NLL of the true class at each temperature (for a plot of the curve ``fit_temperature``
    minimises), on the same frames and pixel sample."""
    _check_mode(segmenter, temperature_on)
    _check_frames(frames)
    if temperature_on == "class":
        frames = frame_subset(frames, max_frames)
    picks = sample_pixels(frames, max_pixels, seed)
    if temperature_on == "pixel":
        x, y = gather_logits(segmenter, frames, picks)
        return np.array([nll(x, y, t) for t in temperatures])
    return np.array([nll(*gather_logits(segmenter, frames, picks, t)) for t in temperatures])


def fit_temperature(
    segmenter,
    frames,
    temperature_on: str = "pixel",
    max_pixels: int | None = 500_000,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    grid: int = 9,
    seed: int = 0,
    max_frames: int | None = 16,
) -> float:
    """The temperature minimising the NLL of the true class over valid pixels of ``frames``.

    ``frames``: Cityscapes val frames from ``collect_outputs(..., label_key="target")``.
    ``max_pixels`` valid pixels are sampled deterministically (``sample_pixels``). The search
    runs over log T within ``bounds``: ``grid`` log-spaced temperatures bracket the minimum,
    then a bounded Brent search refines it between the grid neighbours of the best one (to 0.1%
    of T for a pixel temperature, 1% for a class temperature). With a pixel temperature the NLL
    is convex in 1/T, so this finds the global minimum; a result on a bound is returned with a
    warning (the NLL still falls beyond it).

    A pixel temperature needs the class maps once. A class temperature recomputes them at every
    tried T, so its fit uses ``max_frames`` evenly spaced frames (``frame_subset``; None: all).
    """
    _check_mode(segmenter, temperature_on)
    _check_frames(frames)
    lo, hi = (float(b) for b in bounds)
    if not 0 < lo < hi:
        raise ValueError(f"bounds must be 0 < low < high, got {bounds!r}.")
    if temperature_on == "class":
        frames = frame_subset(frames, max_frames)
    picks = sample_pixels(frames, max_pixels, seed)
    if temperature_on == "pixel":
        x, y = gather_logits(segmenter, frames, picks)
        objective = lambda log_t: nll(x, y, math.exp(log_t))  # noqa: E731
    else:
        objective = lambda log_t: nll(*gather_logits(segmenter, frames, picks, math.exp(log_t)))  # noqa: E731
    logs = np.linspace(math.log(lo), math.log(hi), max(3, int(grid)))
    values = [objective(v) for v in logs]
    best = int(np.argmin(values))
    a, b = logs[max(best - 1, 0)], logs[min(best + 1, len(logs) - 1)]
    xatol = 1e-3 if temperature_on == "pixel" else 1e-2
    res = minimize_scalar(objective, bounds=(a, b), method="bounded", options={"xatol": xatol})
    log_t = float(res.x) if res.fun <= values[best] else float(logs[best])
    t = math.exp(log_t)
    if abs(log_t - math.log(lo)) < 1e-3 or abs(log_t - math.log(hi)) < 1e-3:
        warnings.warn(
            f"fit_temperature ({temperature_on}): the NLL is smallest at the bound T = {t:.4g} of "
            f"{bounds}; widen bounds to look further.",
            stacklevel=2,
        )
    return t


def calibration_curve(
    segmenter, frames, temperature: float = 1.0, temperature_on: str = "pixel", n_bins: int = 15
) -> dict:
    """Reliability of ``p = softmax(x / T)`` over every valid pixel of ``frames``.

    Confidence is ``max_c p_c``, a pixel is correct when that class is the true one.
    Returns ``ece`` (``n_bins`` equal-width bins, REFERENCE §5), ``nll`` (mean over valid
    pixels), the per-bin ``confidence``, ``accuracy`` (NaN in empty bins), ``count`` and
    ``edges``, and the ``temperature`` / ``temperature_on`` used.
    """
    _check_mode(segmenter, temperature_on)
    _check_frames(frames)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    acc = CalibrationAccumulator(n_bins)
    class_t, pixel_t = (temperature, 1.0) if temperature_on == "class" else (1.0, temperature)
    nll_sum, n = 0.0, 0
    for f in frames:
        x = segmenter.class_map(f.raw, f.size, class_temperature=class_t)[:NUM_CLASSES].float()
        logp = torch.log_softmax(x / pixel_t, dim=0)
        conf, pred = logp.max(dim=0)
        valid = _valid(f.label)
        target = torch.where(valid, f.label.long(), torch.zeros_like(f.label, dtype=torch.long))
        acc.update(conf.exp(), pred == target, valid)
        nll_sum -= float(logp.gather(0, target[None])[0][valid].double().sum())
        n += int(valid.sum())
    if n == 0:
        raise ValueError(
            "no valid pixel (class id 0..18) in the frames' labels: nothing to calibrate on."
        )
    return dict(
        ece=acc.ece(),
        nll=nll_sum / n,
        **acc.bins(),
        temperature=float(temperature),
        temperature_on=temperature_on,
    )


def calibrate(
    segmenter,
    frames,
    temperature_on: str = "pixel",
    max_pixels: int | None = 500_000,
    n_bins: int = 15,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    max_frames: int | None = 16,
) -> dict:
    """Fit T (``fit_temperature``) and measure calibration at T = 1 and at the fitted T:
    ``{"model", "temperature_on", "temperature", "before": curve, "after": curve}`` with curves
    from ``calibration_curve`` over every valid pixel of every frame."""
    t = fit_temperature(
        segmenter,
        frames,
        temperature_on,
        max_pixels=max_pixels,
        bounds=bounds,
        max_frames=max_frames,
    )
    return dict(
        model=getattr(segmenter, "name", ""),
        checkpoint=str(getattr(segmenter, "checkpoint", "")),
        temperature_on=temperature_on,
        temperature=t,
        frames=len(frames),
        before=calibration_curve(segmenter, frames, 1.0, temperature_on, n_bins),
        after=calibration_curve(segmenter, frames, t, temperature_on, n_bins),
    )


FITTED_NOTE = "NLL-fitted temperature"


def store_calibration(
    fits: Sequence[dict],
    results_path: str | Path,
    run_id: str | None = None,
    dataset: str = "cityscapes_val",
) -> pd.DataFrame:
    """Append two rows per ``calibrate`` result to the results store: ``score="calibration"`` with
    ``ece`` and ``nll`` at T = 1 and at the fitted T (``notes`` = ``FITTED_NOTE``), so that the
    report can show calibration next to the anomaly metrics without refitting. Returns the rows."""
    from . import results as _results

    run = _results.run_columns(run_id or _results.new_run_id("calibration"))
    rows = []
    for f in fits:
        for t, curve, note in ((1.0, f["before"], ""), (f["temperature"], f["after"], FITTED_NOTE)):
            rows.append(
                _results.result_row(
                    run,
                    f["model"],
                    f.get("checkpoint", ""),
                    dataset,
                    "calibration",
                    temperature=t,
                    temperature_on=f["temperature_on"],
                    ece=curve["ece"],
                    nll=curve["nll"],
                    frames_used=f.get("frames", ""),
                    notes=note,
                )
            )
    _results.append_rows(rows, results_path)
    return pd.DataFrame(rows, columns=_results.COLUMNS)
