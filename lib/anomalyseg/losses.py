"""Outlier Exposure losses (REFERENCE §6): RbA's outlier loss and the anomaly head's BCE.

Both read an ``outlier_mask`` ``[B, H, W]`` as ``MixOOD`` writes it: 1 = pasted outlier pixel,
0 = inlier, 255 = void. Void pixels never contribute, and a group without pixels contributes 0,
so frames without a pasted object still train the inlier side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .scores import max_logit, rba

LOSS_TYPES = ("squared_hinge", "binary_cross_entropy")
OUTLIER_SCORES = ("nls", "max_logit")


def _check_mask(outlier_mask: torch.Tensor, batch: int, where: str) -> torch.Tensor:
    if outlier_mask.ndim != 3 or outlier_mask.shape[0] != batch:
        raise ValueError(
            f"{where}: outlier_mask must be [B, H, W] with B = {batch} (the logits' batch), got {tuple(outlier_mask.shape)}."
        )
    bad = (outlier_mask != 0) & (outlier_mask != 1) & (outlier_mask != 255)
    if bad.any():
        found = sorted(outlier_mask[bad].unique().tolist())[:8]
        raise ValueError(
            f"{where}: outlier_mask holds values {found}; expected only 0 (inlier), 1 (outlier) and 255 (void), "
            "as MixOOD returns it. A semantic target (train ids, 254 for pasted pixels) is not an outlier mask."
        )
    return outlier_mask


def _to_label_size(s: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a score map ``[B, h, w]`` to ``[B, H, W]``."""
    if tuple(s.shape[-2:]) == tuple(size):
        return s
    return F.interpolate(s[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``keep``; 0 (still in the graph) when ``keep`` is empty. ``where``, not a
    product, so that a non-finite value at an excluded pixel cannot leak in."""
    return torch.where(keep, x, 0.0).sum() / keep.sum().clamp(min=1)


def outlier_score(per_pixel_logits: torch.Tensor, score: str = "nls") -> torch.Tensor:
    """The score the outlier loss shapes, ``[B, h, w]`` from ``[B, C, h, w]``: ``nls`` is RbA's
    negative logit sum ``-sum_c tanh(L_c)``, ``max_logit`` is ``-max_c L_c``."""
    if score == "nls":
        return rba(per_pixel_logits)
    if score == "max_logit":
        return max_logit(per_pixel_logits)
    raise ValueError(f"outlier_loss: unknown score {score!r}; expected one of {list(OUTLIER_SCORES)}.")


def outlier_loss(
    per_pixel_logits: torch.Tensor,
    outlier_mask: torch.Tensor,
    loss_type: str = "squared_hinge",
    inlier_upper_threshold: float = -0.75,
    outlier_lower_threshold: float = -0.10,
    score: str = "nls",
    margin: float = 1.0,
) -> torch.Tensor:
    """Outlier Exposure loss on a per-pixel class map; returns a scalar.

    Args:
        per_pixel_logits: ``[B, C, h, w]``, EoMT's fused map ``L`` (REFERENCE §3).
        outlier_mask: ``[B, H, W]`` in {0, 1, 255}; the score is resized bilinearly to ``H, W``.
        loss_type / score:
            ``squared_hinge`` + ``nls`` (seed 000's default, RbA):
            ``0.5 * (mean_in relu(s - t_in)^2 + mean_out relu(t_out - s)^2)`` with
            ``s = -sum_c tanh(L_c)``, ``t_in = inlier_upper_threshold``, ``t_out = outlier_lower_threshold``.
            Since ``L >= 0``, s lies in ``[-C tanh(1), 0]``: thresholds outside cannot be met.
            ``squared_hinge`` + ``max_logit`` (Mask2Anomaly's margin form):
            ``0.5 * (mean_in s^2 + mean_out relu(margin - s)^2)`` with ``s = -max_c L_c``; the
            thresholds are unused.
            ``binary_cross_entropy``: BCE-with-logits of ``s`` against the outlier mask.
        Void pixels are excluded; an empty inlier or outlier group contributes 0.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"outlier_loss: unknown loss_type {loss_type!r}; expected one of {list(LOSS_TYPES)}.")
    if per_pixel_logits.ndim != 4:
        raise ValueError(f"outlier_loss: per_pixel_logits must be [B, C, h, w], got {tuple(per_pixel_logits.shape)}.")
    s = outlier_score(per_pixel_logits, score)
    mask = _check_mask(outlier_mask, per_pixel_logits.shape[0], "outlier_loss")
    s = _to_label_size(s, tuple(mask.shape[-2:]))
    inlier, outlier = mask == 0, mask == 1

    if loss_type == "binary_cross_entropy":
        bce = F.binary_cross_entropy_with_logits(s, outlier.to(s.dtype), reduction="none")
        return _mean(bce, inlier | outlier)
    if score == "max_logit":
        return 0.5 * (_mean(s.pow(2), inlier) + _mean(F.relu(margin - s).pow(2), outlier))
    return 0.5 * (
        _mean(F.relu(s - inlier_upper_threshold).pow(2), inlier)
        + _mean(F.relu(outlier_lower_threshold - s).pow(2), outlier)
    )


def anomaly_head_loss(logits: torch.Tensor, outlier_mask: torch.Tensor, pos_weight: float = 10.0) -> torch.Tensor:
    """BCE-with-logits for the pixel-wise anomaly head (seed 001), void pixels masked out.

    Args:
        logits: ``[B, 1, H, W]`` or ``[B, H, W]`` head outputs (resized bilinearly to the mask when smaller).
        outlier_mask: ``[B, H, W]`` in {0, 1, 255}.
        pos_weight: weight of the rare outlier pixels (seed 001: 10).
    Returns the mean over non-void pixels (0 when every pixel is void).
    """
    if logits.ndim == 4:
        if logits.shape[1] != 1:
            raise ValueError(f"anomaly_head_loss: logits must be [B, 1, H, W] or [B, H, W], got {tuple(logits.shape)}.")
        logits = logits[:, 0]
    if logits.ndim != 3:
        raise ValueError(f"anomaly_head_loss: logits must be [B, 1, H, W] or [B, H, W], got {tuple(logits.shape)}.")
    mask = _check_mask(outlier_mask, logits.shape[0], "anomaly_head_loss")
    logits = _to_label_size(logits.float(), tuple(mask.shape[-2:]))
    weight = torch.tensor(float(pos_weight), device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, (mask == 1).float(), pos_weight=weight, reduction="none")
    return _mean(bce, mask != 255)
