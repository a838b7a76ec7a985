"""Pixel anomaly scores. Higher means more anomalous, everywhere.

Every score takes a per-pixel class map ``x`` of shape ``[C, H, W]`` or ``[B, C, H, W]`` (ERFNet
logits ``z`` or EoMT's fused map ``L``, REFERENCE §3-4) and returns ``[H, W]`` or ``[B, H, W]``.
Scores built on a softmax take a ``temperature`` T: ``p = softmax(x / T)``.
"""

from __future__ import annotations

from typing import Callable

import torch

CLASS_DIM = -3


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a class map of shape [C, H, W] or [B, C, H, W], got {tuple(x.shape)}")
    return x.float()


def msp(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability, as an anomaly score: ``1 - max_c softmax(x / T)_c``."""
    return softmax_scores(x, ("msp",), temperature)["msp"]


def max_logit(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative maximum logit ``-max_c x_c``. The temperature does not change the ranking and is
    ignored, so that a sweep over T can call every score the same way."""
    return -_check(x).amax(dim=CLASS_DIM)


def max_entropy(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax entropy ``-sum_c p_c log p_c`` with ``p = softmax(x / T)``."""
    return softmax_scores(x, ("max_entropy",), temperature)["max_entropy"]


def energy(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``-T logsumexp(x / T)`` (Liu et al. 2020)."""
    return softmax_scores(x, ("energy",), temperature)["energy"]


def softmax_scores(x: torch.Tensor, names=("msp", "max_entropy", "energy"), temperature: float = 1.0,
                   msp_form: str = "expm1") -> dict[str, torch.Tensor]:
    """MSP, MaxEntropy and Energy from a single ``log_softmax(x / T)`` (the scores of a sweep).

    ``msp_form``: ``"expm1"`` computes MSP as ``-expm1(max_c log p_c)``, exact where p is near 1;
    ``"course"`` as the course does, ``1 - max_c softmax(x / T)_c`` in float32, which rounds
    confident pixels onto a grid of 6e-8 and so ties some of them (its FPR95 moves by ~1e-5).

    ``logsumexp(x / T) = x_c / T - log p_c`` for any class c, so with c the argmax,
    ``energy = -(max_c x_c - T max_c log p_c)``: one softmax per temperature serves all three.
    Returns ``{name: [H, W] or [B, H, W]}`` for the requested ``names``.
    """
    if msp_form not in ("expm1", "course"):
        raise ValueError(f"msp_form must be 'expm1' or 'course', got {msp_form!r}.")
    unknown = set(names) - SOFTMAX_SCORES
    if unknown:
        raise ValueError(f"softmax_scores computes {sorted(SOFTMAX_SCORES)}, not {sorted(unknown)}.")
    x = _check(x)
    logp = torch.log_softmax(x / temperature, dim=CLASS_DIM)
    out = {}
    if "msp" in names or "energy" in names:
        top = logp.amax(dim=CLASS_DIM)
        if "msp" in names and msp_form == "course":
            out["msp"] = 1.0 - torch.softmax(x / temperature, dim=CLASS_DIM).amax(dim=CLASS_DIM)
        elif "msp" in names:
            out["msp"] = -torch.expm1(top)
        if "energy" in names:
            out["energy"] = temperature * top - x.amax(dim=CLASS_DIM)
    if "max_entropy" in names:
        out["max_entropy"] = -(logp.exp() * logp).sum(dim=CLASS_DIM)
    return out


def rba(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Rejected by All (Nayal et al. 2023): ``-sum_c tanh(L_c)``, meant for mask-classification
    maps ``L`` in [0, 1]; high where no class claims the pixel. T is ignored (no softmax)."""
    return -torch.tanh(_check(x)).sum(dim=CLASS_DIM)


def void_prob(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ERFNet void classifier: softmax over all 20 channels, probability of the last (void) one."""
    z = _check(z)
    if z.shape[CLASS_DIM] != 20:
        raise ValueError(f"void_prob needs ERFNet's 20 channels (19 classes + void), got {z.shape[CLASS_DIM]}")
    return torch.softmax(z / temperature, dim=CLASS_DIM).select(CLASS_DIM, 19)


Score = Callable[..., torch.Tensor]
SCORES: dict[str, Score] = {
    "msp": msp,
    "max_logit": max_logit,
    "max_entropy": max_entropy,
    "energy": energy,
    "rba": rba,
    "void_prob": void_prob,
}
# Scores that one log-softmax serves (``softmax_scores``).
SOFTMAX_SCORES = frozenset({"msp", "max_entropy", "energy"})
# Scores whose value changes ranking with T; the others are evaluated once per sweep.
TEMPERATURE_SENSITIVE = frozenset({"msp", "max_entropy", "energy", "void_prob"})
# Scores read from all 20 ERFNet channels instead of the 19 classes.
NEEDS_VOID_CHANNEL = frozenset({"void_prob"})


def get_score(name: str) -> Score:
    """Look a score up by its field name (``msp``, ``max_logit``, ``max_entropy``, ``energy``, ``rba``)."""
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(f"unknown anomaly score {name!r}; expected one of {sorted(SCORES)}") from None
