"""Outlier Exposure by pasting: put one COCO object into a Cityscapes training frame (REFERENCE §6).

``MixOOD`` runs after the usual train transforms (``anomalyseg.data.transforms.train_transforms``:
colour jitter, flip, scale jitter, crop), so objects keep their own colours and sizes. It returns
the frame, the semantic target and an ``outlier_mask``:

    outlier_mask[h, w] = 1    pasted object pixel (outlier)
                         0    inlier
                         255  void (target == ignore_index), never pasted over

Pasted pixels are taken away from every inlier class: the semantic target holds
``OOD_OBJECT_VALUE`` (254) there. Contract: every semantic loss and metric treats values >= 19 as
ignore. EoMT's target -> (class, mask) conversion must build masks only for ids below the class
count (so no inlier mask covers a pasted pixel), and ERFNet's cross-entropy must see them as
``ignore_index``: call ``inlier_target`` before ``CrossEntropyLoss(ignore_index=255)``, because
254 is not 255 and would otherwise be an out-of-range class.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch.utils.data import Dataset, get_worker_info
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..labels import IGNORE_INDEX, NUM_CLASSES, OOD_OBJECT_VALUE, ROAD, SIDEWALK


def inlier_target(
    target: torch.Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Semantic target ``[..., H, W]`` with every value >= ``num_classes`` (pasted 254, void 255)
    set to ``ignore_index``, ready for a cross-entropy with that ``ignore_index``."""
    return target.masked_fill(target >= num_classes, ignore_index)


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator))


class MixOOD:
    """Paste one object into a frame with probability ``ood_prob``.

    Args:
        objects: sequence of ``(image uint8 [3, h, w], mask bool [h, w])``, cropped tightly to the
            object (``anomalyseg.data.coco.OODObjects``).
        ood_prob: probability that a frame gets an object.
        road_only: accept a position only if at least half of the pixels under the object are
            road or sidewalk (``road_ids``).
        perspective_scale: resize the object by ``0.3 + 0.9 * y / H`` for its top-left row ``y``,
            so objects near the horizon are small.
        max_tries: random positions tried before the frame is left without an object. A position
            is rejected if the object does not fit, if any pixel under it is void, or (road_only)
            if it lies mostly off the road.
        seed: None draws from torch's global generator (reproducible under ``torch.manual_seed``,
            like the train transforms); an int gives this instance its own generator, re-seeded
            per DataLoader worker so that workers do not repeat each other's draws.

    Call: ``mix(image, target, generator=None) -> (image, target, outlier_mask)`` with
    ``image`` ``tv_tensors.Image`` uint8 ``[3, H, W]``, ``target`` ``tv_tensors.Mask`` int64
    ``[H, W]`` (train ids, ``ignore_index`` = void) and ``outlier_mask`` ``tv_tensors.Mask`` uint8
    ``[H, W]`` in {0, 1, 255}. Inputs are not modified. ``generator`` overrides the instance's.
    """

    def __init__(
        self,
        objects: Sequence,
        ood_prob: float = 0.2,
        road_only: bool = False,
        perspective_scale: bool = False,
        max_tries: int = 30,
        road_ids: Sequence[int] = (ROAD, SIDEWALK),
        ignore_index: int = IGNORE_INDEX,
        seed: int | None = None,
    ):
        if not 0.0 <= float(ood_prob) <= 1.0:
            raise ValueError(
                "MixOOD: ood_prob is a probability per frame and must lie in [0, 1], got "
                f"{ood_prob!r}."
            )
        if not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"MixOOD: max_tries must be a positive integer, got {max_tries!r}.")
        if ood_prob > 0 and len(objects) == 0:
            raise ValueError(
                "MixOOD: the objects data set is empty but ood_prob > 0. Prepare COCO objects "
                "with `anomalyseg prepare-coco` (anomalyseg.data.coco.prepare_coco_ood) and pass "
                "OODObjects(coco_root)."
            )
        self.objects = objects
        self.ood_prob = float(ood_prob)
        self.road_only = bool(road_only)
        self.perspective_scale = bool(perspective_scale)
        self.max_tries = max_tries
        self.road_ids = torch.tensor(list(road_ids), dtype=torch.int64)
        self.ignore_index = ignore_index
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._generator_owner: object = None

    def __getstate__(self):
        # A Generator does not travel to spawned workers; each process re-creates its own.
        return {**self.__dict__, "_generator": None, "_generator_owner": None}

    def generator(self) -> torch.Generator | None:
        """The generator for this process: None (global RNG) without a seed."""
        if self.seed is None:
            return None
        worker = get_worker_info()
        owner = None if worker is None else (worker.id, worker.seed)
        if self._generator is None or self._generator_owner != owner:
            # worker.seed changes every epoch and follows torch.manual_seed in the main process.
            seed = self.seed if worker is None else (self.seed * 1_000_003 + worker.seed) % 2**63
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_owner = owner
        return self._generator

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ):
        image, target = self._check(image, target)
        g = generator if generator is not None else self.generator()
        void = target == self.ignore_index
        outlier_mask = void.to(torch.uint8) * 255
        image, target = image.clone(), target.clone()
        if self.ood_prob > 0 and float(torch.rand((), generator=g)) < self.ood_prob:
            obj_image, obj_mask = self._object(_randint(len(self.objects), g))
            placed = self._place(obj_image, obj_mask, target, g)
            if placed is not None:
                y, x, obj_image, obj_mask = placed
                h, w = obj_mask.shape
                window = image[:, y : y + h, x : x + w]
                window[:, obj_mask] = obj_image[:, obj_mask]
                target[y : y + h, x : x + w][obj_mask] = OOD_OBJECT_VALUE
                outlier_mask[y : y + h, x : x + w][obj_mask] = 1
        return tv_tensors.Image(image), tv_tensors.Mask(target), tv_tensors.Mask(outlier_mask)

    def _place(self, obj_image, obj_mask, target, g):
        """Top-left ``(y, x)`` and the (resized) object for the first accepted position, or None."""
        H, W = target.shape
        h, w = obj_mask.shape
        for _ in range(self.max_tries):
            if self.perspective_scale:
                y = _randint(H, g)
                scale = 0.3 + 0.9 * y / H
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                if y + size[0] > H or size[1] > W:
                    continue
                x = _randint(W - size[1] + 1, g)
                mask = TF.resize(
                    obj_mask[None].to(torch.uint8),
                    list(size),
                    interpolation=TF.InterpolationMode.NEAREST,
                )[0].bool()
            else:
                if h > H or w > W:
                    return None  # every position would be rejected the same way
                size, mask = (h, w), obj_mask
                y, x = _randint(H - h + 1, g), _randint(W - w + 1, g)
            under = target[y : y + size[0], x : x + size[1]][mask]
            if under.numel() == 0 or (under == self.ignore_index).any():
                continue
            if self.road_only and torch.isin(under, self.road_ids).float().mean() < 0.5:
                continue
            if size != (h, w):
                obj_image = TF.resize(obj_image, list(size), antialias=True)
            return y, x, obj_image, mask
        return None

    def _object(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        obj_image, obj_mask = self.objects[index]
        obj_image, obj_mask = torch.as_tensor(obj_image), torch.as_tensor(obj_mask)
        if (
            obj_image.dtype != torch.uint8
            or obj_image.ndim != 3
            or obj_image.shape[0] != 3
            or obj_mask.shape != obj_image.shape[1:]
        ):
            raise ValueError(
                f"MixOOD: object {index} is an image {tuple(obj_image.shape)} {obj_image.dtype} "
                f"with a mask {tuple(obj_mask.shape)}; expected (image uint8 [3, h, w], mask bool "
                "[h, w]) as OODObjects gives."
            )
        return obj_image.as_subclass(torch.Tensor), obj_mask.bool()

    @staticmethod
    def _check(image, target) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = torch.as_tensor(image), torch.as_tensor(target)
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                "MixOOD: expected the frame as uint8 [3, H, W] (tv_tensors.Image), got "
                f"{tuple(image.shape)} {image.dtype}. Apply it after the train transforms but "
                "before any conversion to float / normalisation."
            )
        if target.ndim != 2 or target.shape != image.shape[1:] or target.dtype.is_floating_point:
            raise ValueError(
                "MixOOD: expected the target as integer train ids [H, W] = "
                f"{tuple(image.shape[1:])} (tv_tensors.Mask), got {tuple(target.shape)} "
                f"{target.dtype}."
            )
        return image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor).long()


class ScaledObjects(Dataset):
    """The objects of ``OODObjects`` resized by ``scale`` (image bilinear with antialiasing, mask by
    area coverage >= 1/2), so that they keep their size relative to the street scene when the
    frames are shown to the model at another resolution than they are stored."""

    def __init__(self, objects: Dataset, scale: float):
        if not scale > 0:
            raise ValueError(f"ScaledObjects: scale must be > 0, got {scale!r}.")
        self.objects, self.scale = objects, float(scale)

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.objects[index]
        if self.scale == 1.0:
            return image, mask
        h, w = mask.shape
        size = [max(1, round(h * self.scale)), max(1, round(w * self.scale))]
        image = TF.resize(torch.as_tensor(image), size, antialias=True)
        small = TF.resize(torch.as_tensor(mask)[None].float(), size, antialias=True)[0] >= 0.5
        if not small.any():  # a sliver thinner than a pixel at this scale: keep its nearest pixels
            small = TF.resize(
                torch.as_tensor(mask)[None].to(torch.uint8),
                size,
                interpolation=TF.InterpolationMode.NEAREST,
            )[0].bool()
        return image, small


class PasteOutliers:
    """The one pasting ``sample_transform`` of the project (Outlier Exposure and the anomaly head
    both train with it): ``item -> item`` with ``image`` and ``target`` replaced by ``mix``'s
    output and ``outlier_mask`` added (uint8 ``[H, W]``, 0 / 1 / 255). Build it with
    ``paste_outliers``, which also scales the objects with the frames."""

    def __init__(self, mix: MixOOD):
        self.mix = mix

    def __call__(self, item: dict) -> dict:
        item = dict(item)
        item["image"], item["target"], item["outlier_mask"] = self.mix(
            item["image"], item["target"]
        )
        return item

    def __repr__(self) -> str:
        m = self.mix
        return (
            f"PasteOutliers(objects={len(m.objects)}, ood_prob={m.ood_prob}, "
            f"road_only={m.road_only}, perspective_scale={m.perspective_scale})"
        )


def paste_outliers(
    coco_root: str | os.PathLike | None,
    object_scale: float = 1.0,
    coco_split: str = "train",
    ood_prob: float = 0.2,
    road_only: bool = False,
    perspective_scale: bool = False,
) -> PasteOutliers:
    """The pasting ``sample_transform``: objects of ``OODObjects(coco_root, coco_split)`` resized
    by ``object_scale`` (``ScaledObjects``), pasted by ``MixOOD`` with the given placement
    settings. ``coco_root=None`` pastes nothing (every item still gets its outlier mask, 0 with
    255 on void). ``object_scale`` should be the scale at which the training sees the frames
    (``training.eomt.eval_scale``), so that an object keeps its size relative to the scene."""
    if coco_root is None:
        return PasteOutliers(MixOOD([], ood_prob=0.0))
    from .coco import OODObjects

    objects = ScaledObjects(OODObjects(coco_root, split=coco_split), object_scale)
    return PasteOutliers(
        MixOOD(objects, ood_prob=ood_prob, road_only=road_only, perspective_scale=perspective_scale)
    )
