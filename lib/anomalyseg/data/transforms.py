"""Training and evaluation transforms shared by ERFNet and EoMT training.

Pipelines are torchvision ``transforms.v2`` and are called as ``transform(image, target)`` with a
``tv_tensors.Image`` (uint8 ``[3, H, W]``) and a ``tv_tensors.Mask`` (int64 ``[H, W]`` train ids):
v2 resizes masks with nearest neighbour and leaves them out of photometric changes by type, so
geometry stays aligned and label values stay in the train-id set. Randomness comes from torch's
global generator only, so ``torch.manual_seed`` makes a pipeline reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import query_size

from ..labels import IGNORE_INDEX


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range``, relative to ``base_size`` when
    given (e.g. Cityscapes' 1024x2048 trained at 512x1024) and to the frame's own size otherwise.
    Images are resized bilinearly (antialiased); masks with nearest neighbour."""

    def __init__(self, scale_range: tuple[float, float], base_size: tuple[int, int] | None = None):
        super().__init__()
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.base_size = base_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = self.base_size or query_size(flat_inputs)
        lo, hi = self.scale_range
        s = lo + (hi - lo) * torch.rand(()).item()
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


def _check_size(value: Any, setting: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
        assert h > 0 and w > 0
    except Exception:
        raise ValueError(
            f"{setting}={value!r}: expected a pair of positive integers (height, width), e.g. "
            "(512, 1024)."
        ) from None
    return h, w


def train_transforms(
    crop_size: tuple[int, int] = (512, 1024),
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: bool = True,
    ignore_index: int = IGNORE_INDEX,
    base_size: tuple[int, int] | None = None,
) -> v2.Compose:
    """Scale jitter, random crop, horizontal flip and photometric jitter (image only).

    The crop pads where the scaled frame is smaller than ``crop_size``: the image with 0, the mask
    with ``ignore_index`` so that padding never counts as a class. Jitter runs after the crop,
    where it costs least. ``scale_range=(1, 1)`` disables scaling.
    """
    crop_size = _check_size(crop_size, "crop_size")
    if base_size is not None:
        base_size = _check_size(base_size, "base_size")
    try:
        lo, hi = (float(s) for s in scale_range)
        assert 0 < lo <= hi
    except Exception:
        raise ValueError(
            f"scale_range={scale_range!r}: expected (min, max) resize factors with 0 < min <= max, "
            "e.g. (0.5, 2.0)."
        ) from None
    steps: list[v2.Transform] = []
    if (lo, hi) != (1.0, 1.0) or base_size is not None:
        steps.append(RandomScale((lo, hi), base_size))
    steps.append(
        v2.RandomCrop(
            crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
        )
    )
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter:
        # Strengths of mmseg's PhotoMetricDistortion, used by upstream EoMT (hue 18 degrees).
        steps.append(
            v2.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360)
        )
    return v2.Compose(steps)


def eval_transforms(size: tuple[int, int] | None = None) -> v2.Compose:
    """Resize to ``size`` (image bilinear, mask nearest), or nothing when ``size`` is None."""
    if size is None:
        return v2.Compose([v2.Identity()])
    return v2.Compose([v2.Resize(_check_size(size, "size"), antialias=True)])
