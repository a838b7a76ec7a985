"""Outlier Exposure losses (REFERENCE §6): seed 000's outlier loss and the anomaly head's BCE.

Both read an ``outlier_mask`` ``[B, H, W]`` as ``MixOOD`` writes it: 1 = pasted outlier pixel,
0 = inlier, 255 = void. Void pixels never contribute.

The outlier loss follows seed 000's ``MaskClassificationLoss.outlier_loss`` (itself adapted from
RbA), with its names: an ``outlier_loss_target`` score ``s`` of the per-pixel class map ``L``
(``rba``, which seed 000 calls ``nls``; ``energy``; ``softmax_entropy``; and Mask2Anomaly's
``max_logit``),
shaped by an ``outlier_loss_func`` (``squared_hinge`` or ``binary_cross_entropy``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .labels import NUM_CLASSES
from .scores import max_entropy, max_logit, rba

OUTLIER_LOSS_FUNCS = ("squared_hinge", "binary_cross_entropy")
# Seed 000 calls the first one ``nls`` (negative logit sum); with score_norm="tanh" it is RbA, and
# ``rba`` is its only name here: ``OEConfig`` reads seed 000's ``nls`` from a config as ``rba``.
OUTLIER_TARGETS = ("rba", "energy", "softmax_entropy", "max_logit")
SCORE_NORMS = ("tanh", "sigmoid", "none")


def _check_target(target: str, score_norm: str, where: str) -> str:
    if target not in OUTLIER_TARGETS:
        raise ValueError(
            f"{where}: unknown outlier_loss_target {target!r}; expected one of "
            f"{list(OUTLIER_TARGETS)}"
            + (
                " (seed 000's 'nls' is 'rba'; OEConfig reads 'nls' from a config as 'rba')."
                if target == "nls"
                else "."
            )
        )
    if score_norm not in SCORE_NORMS:
        raise ValueError(
            f"{where}: unknown score_norm {score_norm!r}; expected one of {list(SCORE_NORMS)} "
            "(RbA: 'tanh')."
        )
    return target


def _check_mask(outlier_mask: torch.Tensor, batch: int, where: str) -> torch.Tensor:
    if outlier_mask.ndim != 3 or outlier_mask.shape[0] != batch:
        raise ValueError(
            f"{where}: outlier_mask must be [B, H, W] with B = {batch} (the logits' batch), got "
            f"{tuple(outlier_mask.shape)}."
        )
    bad = (outlier_mask != 0) & (outlier_mask != 1) & (outlier_mask != 255)
    if bad.any():
        found = sorted(outlier_mask[bad].unique().tolist())[:8]
        raise ValueError(
            f"{where}: outlier_mask holds values {found}; expected only 0 (inlier), 1 (outlier) "
            "and 255 (void), as MixOOD returns it. A semantic target (train ids, 254 for pasted "
            "pixels) is not an outlier mask."
        )
    return outlier_mask


def _to_label_size(
    s: torch.Tensor, size: tuple[int, int], align_corners: bool = False
) -> torch.Tensor:
    """Bilinear resize of a score map ``[B, h, w]`` to ``[B, H, W]``."""
    if tuple(s.shape[-2:]) == tuple(size):
        return s
    return F.interpolate(s[:, None], size=size, mode="bilinear", align_corners=align_corners)[:, 0]


def _mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``keep``; 0 (still in the graph) when ``keep`` is empty. ``where``, not a
    product, so that a non-finite value at an excluded pixel cannot leak in."""
    return torch.where(keep, x, 0.0).sum() / keep.sum().clamp(min=1)


def outlier_score(
    per_pixel_logits: torch.Tensor, target: str = "rba", score_norm: str = "tanh"
) -> torch.Tensor:
    """The score ``s`` the outlier loss shapes, ``[B, h, w]`` from ``L`` ``[B, C, h, w]``; higher
    means more anomalous for every target (seed 000's ``outlier_loss``):

    - ``rba`` (seed 000 calls it ``nls``): ``-sum_c norm(L_c)`` with ``score_norm`` ``tanh`` (RbA,
      Nayal et al. 2023), ``sigmoid`` or ``none`` (the plain negative sum);
    - ``energy``: ``-logsumexp_c L_c`` (Liu et al. 2020 at T = 1);
    - ``softmax_entropy``: ``-sum_c p_c log p_c``, ``p = softmax_c L``;
    - ``max_logit``: ``-max_c L_c`` (Mask2Anomaly's margin loss).

    ``score_norm`` only applies to ``rba``. ``outlier_score_range`` gives each target's values.
    """
    target = _check_target(target, score_norm, "outlier_score")
    x = per_pixel_logits.float()
    if target == "rba":
        if score_norm == "tanh":
            return rba(x)
        return -(torch.sigmoid(x) if score_norm == "sigmoid" else x).sum(dim=-3)
    if target == "energy":
        return -torch.logsumexp(x, dim=-3)
    if target == "softmax_entropy":
        return max_entropy(x)
    return max_logit(x)


def outlier_score_range(
    target: str, score_norm: str = "tanh", num_classes: int = NUM_CLASSES
) -> tuple[float, float]:
    """``(low, high)``: the values ``outlier_score`` can take on a class map with every ``L_c >= 0``
    (EoMT's fused map, REFERENCE §3; ``L_c`` has no fixed upper bound, since several queries may
    claim one class, so most targets are unbounded below). A squared-hinge threshold outside this
    interval can never be met: the hinge then never reaches zero (or a term is always zero).

    With ``C = num_classes``: ``rba`` + ``tanh`` ``[-C, 0]`` (``[-C tanh 1, 0]`` while no ``L_c``
    exceeds 1, the usual case of one query per class); ``rba`` + ``sigmoid`` ``[-C, -C/2]``;
    ``rba`` + ``none`` ``(-inf, 0]``; ``energy`` ``(-inf, -log C]``; ``softmax_entropy``
    ``[0, log C]``; ``max_logit`` ``(-inf, 0]``. Bounds are inclusive here; ``-C`` is approached,
    not reached.
    """
    target = _check_target(target, score_norm, "outlier_score_range")
    c = float(num_classes)
    if target == "rba":
        return {"tanh": (-c, 0.0), "sigmoid": (-c, -c / 2), "none": (-math.inf, 0.0)}[score_norm]
    if target == "energy":
        return (-math.inf, -math.log(c))
    if target == "softmax_entropy":
        return (0.0, math.log(c))
    return (-math.inf, 0.0)


def outlier_score_landmarks(
    target: str, score_norm: str = "tanh", num_classes: int = NUM_CLASSES
) -> dict[str, float]:
    """The score of two reference pixels, to place thresholds between: ``claimed`` (one class at
    ``L_c = 1``, the others 0: a pixel one query claims with full confidence) and ``unclaimed``
    (every ``L_c = 0``). E.g. ``rba``+``tanh``: -0.762 / 0 (seed 000's -0.75 / -0.10 sit inside);
    ``energy``: -3.031 / -2.944 for 19 classes."""
    claimed = torch.zeros(1, num_classes, 1, 1)
    claimed[0, 0] = 1.0
    s = (
        outlier_score(torch.cat([claimed, torch.zeros_like(claimed)]), target, score_norm)
        .flatten()
        .tolist()
    )
    return {"claimed": s[0] + 0.0, "unclaimed": s[1] + 0.0}  # + 0.0: no "-0" in messages


def outlier_loss(
    per_pixel_logits: torch.Tensor,
    outlier_mask: torch.Tensor,
    outlier_loss_func: str = "squared_hinge",
    inlier_upper_threshold: float = -0.75,
    outlier_lower_threshold: float = -0.10,
    outlier_loss_target: str = "rba",
    score_norm: str = "tanh",
    margin: float = 1.0,
) -> torch.Tensor:
    """Outlier Exposure loss on a per-pixel class map (seed 000's ``outlier_loss``); returns a
    scalar.

    Args:
        per_pixel_logits: ``[B, C, h, w]``, EoMT's fused map ``L`` (REFERENCE §3).
        outlier_mask: ``[B, H, W]`` in {0, 1, 255}; the score ``s = outlier_score(L,
            outlier_loss_target, score_norm)`` is resized to ``H, W`` bilinearly with
            ``align_corners=True``, as seed 000 does.
        outlier_loss_func:
            ``squared_hinge``: ``0.5 * (mean_in relu(s - t_in)^2 + mean_out relu(t_out - s)^2)``
            with ``t_in = inlier_upper_threshold``, ``t_out = outlier_lower_threshold``; when the
            batch holds no pasted pixel, only ``mean_in relu(s - t_in)^2``, not halved (seed
            000's rule). The thresholds must lie in ``outlier_score_range`` of the target to be
            reachable (``OEConfig`` checks). With ``max_logit`` it is Mask2Anomaly's margin form
            ``0.5 * (mean_in s^2 + mean_out relu(margin - s)^2)`` (thresholds unused), with
            the same rule for a batch without pasted pixels.
            ``binary_cross_entropy``: ``0.5 * mean BCE-with-logits(s, outlier)`` (thresholds
            unused). Seed 000 averages it over every pixel; here void pixels are left out.
        Void pixels are excluded everywhere; an empty inlier group contributes 0.

    Raises ``ValueError`` for an unknown setting or a mask that is not a ``[B, H, W]`` outlier mask.
    """
    if outlier_loss_func not in OUTLIER_LOSS_FUNCS:
        raise ValueError(
            f"outlier_loss: unknown outlier_loss_func {outlier_loss_func!r}; expected one of "
            f"{list(OUTLIER_LOSS_FUNCS)}."
        )
    if per_pixel_logits.ndim != 4:
        raise ValueError(
            "outlier_loss: per_pixel_logits must be [B, C, h, w], got "
            f"{tuple(per_pixel_logits.shape)}."
        )
    target = _check_target(outlier_loss_target, score_norm, "outlier_loss")
    s = outlier_score(per_pixel_logits, target, score_norm)
    mask = _check_mask(outlier_mask, per_pixel_logits.shape[0], "outlier_loss")
    s = _to_label_size(s, tuple(mask.shape[-2:]), align_corners=True)
    inlier, outlier = mask == 0, mask == 1

    if outlier_loss_func == "binary_cross_entropy":
        bce = F.binary_cross_entropy_with_logits(s, outlier.to(s.dtype), reduction="none")
        return 0.5 * _mean(bce, inlier | outlier)
    if target == "max_logit":
        inlier_term, outlier_term = (
            _mean(s.pow(2), inlier),
            _mean(F.relu(margin - s).pow(2), outlier),
        )
    else:
        inlier_term = _mean(F.relu(s - inlier_upper_threshold).pow(2), inlier)
        outlier_term = _mean(F.relu(outlier_lower_threshold - s).pow(2), outlier)
    if not outlier.any():
        return inlier_term
    return 0.5 * (inlier_term + outlier_term)


def anomaly_head_loss(
    logits: torch.Tensor, outlier_mask: torch.Tensor, pos_weight: float = 10.0
) -> torch.Tensor:
    """BCE-with-logits for the pixel-wise anomaly head (seed 001), void pixels masked out.

    Args:
        logits: ``[B, 1, H, W]`` or ``[B, H, W]`` head outputs (resized bilinearly to the mask
        when smaller).
        outlier_mask: ``[B, H, W]`` in {0, 1, 255}.
        pos_weight: weight of the rare outlier pixels (seed 001: 10).
    Returns the mean over non-void pixels (0 when every pixel is void).
    """
    if logits.ndim == 4:
        if logits.shape[1] != 1:
            raise ValueError(
                "anomaly_head_loss: logits must be [B, 1, H, W] or [B, H, W], got "
                f"{tuple(logits.shape)}."
            )
        logits = logits[:, 0]
    if logits.ndim != 3:
        raise ValueError(
            "anomaly_head_loss: logits must be [B, 1, H, W] or [B, H, W], got "
            f"{tuple(logits.shape)}."
        )
    mask = _check_mask(outlier_mask, logits.shape[0], "anomaly_head_loss")
    logits = _to_label_size(logits.float(), tuple(mask.shape[-2:]))
    weight = torch.tensor(float(pos_weight), device=logits.device)
    bce = F.binary_cross_entropy_with_logits(
        logits, (mask == 1).float(), pos_weight=weight, reduction="none"
    )
    return _mean(bce, mask != 255)
