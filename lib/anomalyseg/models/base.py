"""What the evaluation needs from a model: one forward per frame, then class maps on demand.

A ``Segmenter`` splits inference in two so that sweeps never repeat a forward:
``raw_outputs`` runs the network once and returns tensors worth caching (compact dtypes welcome);
``class_map`` turns them into a per-pixel class map at the evaluation size, optionally with a
temperature on the class logits (mask-classification models only). ``extra_scores`` returns
learned anomaly maps (the anomaly head) that are scores in their own right.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class Segmenter(Protocol):
    name: str  # row label in the results store, e.g. "erfnet", "eomt", "eomt_oe"
    checkpoint: str  # path, hub id or "random-init"; recorded with every result row
    num_channels: int  # channels of class_map: 19, or 20 for ERFNet's void channel
    supports_class_temperature: bool  # True for mask classification (EoMT)

    def eval_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """Resolution ``(H, W)`` at which scores and labels are compared for a frame of
        ``frame_size``; labels are resized to it with nearest neighbour (course convention)."""
        ...

    @torch.no_grad()
    def raw_outputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass. ``image``: uint8 ``[3, H, W]`` RGB. Returns CPU tensors to cache."""
        ...

    def class_map(
        self, raw: dict[str, torch.Tensor], size: tuple[int, int], class_temperature: float = 1.0
    ) -> torch.Tensor:
        """Per-pixel class map ``[num_channels, H, W]`` (float32) at ``size``."""
        ...

    def extra_scores(
        self, raw: dict[str, torch.Tensor], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """Learned anomaly scores ``{name: [H, W]}`` at ``size`` (higher = more anomalous); may be
        empty."""
        ...


def resize_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[C, H, W]`` or ``[B, C, H, W]`` to ``size``; a no-op when it already
    fits."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    squeeze = x.ndim == 3
    y = F.interpolate(x[None] if squeeze else x, size=size, mode="bilinear", align_corners=False)
    return y[0] if squeeze else y
