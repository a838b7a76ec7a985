"""Named evaluation protocols: every convention that moves a benchmark figure, in one record.

Two reports of the same checkpoint can differ by several AuPRC points for reasons nobody names:
which frames are dropped, how the frame is resized, over which channels mIoU takes its argmax,
how FPR95 reads the ROC curve, at which resolution pixels are pooled. An ``EvalProtocol`` fixes
all of them; its name is stored in every result row (column ``protocol``) and printed with every
table, and ``PROTOCOLS`` holds the named ones (REFERENCE §1, §2, §5):

- ``course`` (default): what the course's ``evalAnomaly.py`` / ``eval_iou.py`` / ``iouEval`` do.
  The frame is resized as a PIL image (``Image.resize(..., BILINEAR)``, as torchvision's
  ``Resize`` does on a PIL image; upstream EoMT's ``window_imgs_semantic`` resizes with PIL too),
  the mask with PIL nearest; a frame is dropped when its mask holds no anomaly pixel AFTER the
  resize to the evaluation size; every valid pixel of a data set is pooled; FPR95 as the
  ``ood-metrics`` package; mIoU takes the argmax over all 20 ERFNet channels (a pixel won by
  the void channel is a miss of its true class); ERFNet logits are kept as float32; MSP is
  ``1 - max softmax`` in float32.
- ``smiyc``: ``course`` with SegmentMeIfYouCan's FPR95 (FPR at the first threshold with TPR >=
  0.95).
- ``blocks2x2``: seed 000's scoring: the score map is averaged over 2x2 blocks and the label takes
  the block's maximum (0 < 1 < 255, so a block touching void is void and one touching an anomaly
  is an anomaly unless it also touches void).
- ``full_resolution``: scores compared at the frame's own resolution (the class map is resized
  bilinearly to it, the label is not resized; ERFNet still runs at its input size).
- ``per_image``: the mean over frames of each frame's AuPRC / FPR95 / AUROC instead of pooling.
- ``legacy``: what this package did before protocols existed (tensor resize with torchvision's
  antialiasing, frames dropped on the full-resolution mask, mIoU argmax over 19 channels, float16
  ERFNet logits, MSP as ``-expm1(max log p)``). Result rows stored without a ``protocol`` column
  were made this way.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image

# torch is imported where a frame or map is resized: the protocols' names and settings serve the
# report (``report.selection``), which reads the store and never needs torch.
if TYPE_CHECKING:
    import torch

INPUT_RESIZES = ("pil", "tensor")
SCORINGS = ("eval_size", "full_resolution", "blocks2x2")
POOLINGS = ("pixels", "per_image")


@dataclass(frozen=True)
class EvalProtocol:
    """Every convention of an anomaly / mIoU evaluation that can change a reported digit.

    Attributes:
        name: stored in the ``protocol`` column of every result row and shown with every table.
        input_resize: ``"pil"``: the frame is resized as a PIL image with PIL's bilinear filter
            (the course, upstream EoMT); ``"tensor"``: torchvision's antialiased bilinear on a
            uint8 tensor (up to 2 grey levels apart from PIL on downscaled frames).
        skip_after_resize: True: a frame whose label holds no anomaly pixel at the scored
            resolution is dropped (the course); False: only frames without an anomaly pixel at
            full resolution are dropped, and a frame whose anomaly vanishes in the resize adds
            inlier pixels only.
        miou_void_channel: True: mIoU's argmax runs over every channel the model has, ERFNet's
            void channel included, so a void win is a miss (the course's ``iouEval``); False:
            over the 19 classes only.
        logits_dtype: dtype of cached per-pixel logits (ERFNet): ``"float32"`` (the course's
            figures to the last digit) or ``"float16"`` (half the cache; moves metrics by ~0.002
            points).
        fpr_convention: ``"course"`` (ood-metrics) or ``"smiyc"`` (``metrics.fpr_at_95_tpr``).
        scoring: ``"eval_size"`` (the segmenter's evaluation size: 512x1024 for ERFNet, the frame
            for EoMT), ``"full_resolution"`` or ``"blocks2x2"`` (seed 000).
        pooling: ``"pixels"`` (every valid pixel of a data set pooled) or ``"per_image"``.
        msp_form: ``"course"``: MSP as ``1 - max softmax`` in float32, as the course computes it;
            ``"expm1"``: ``-expm1(max log_softmax)``, exact near p = 1 (``scores.softmax_scores``).
        description: one line for tables and ``compare_conventions``.
    """

    name: str
    input_resize: str = "pil"
    skip_after_resize: bool = True
    miou_void_channel: bool = True
    logits_dtype: str = "float32"
    fpr_convention: str = "course"
    scoring: str = "eval_size"
    pooling: str = "pixels"
    msp_form: str = "course"
    description: str = ""

    def __post_init__(self):
        checks = {
            "input_resize": INPUT_RESIZES,
            "scoring": SCORINGS,
            "pooling": POOLINGS,
            "fpr_convention": ("course", "smiyc"),
            "logits_dtype": ("float32", "float16"),
            "msp_form": ("course", "expm1"),
        }
        for field, allowed in checks.items():
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"EvalProtocol {self.name!r}: {field}={getattr(self, field)!r}; expected one "
                    f"of {allowed}."
                )

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return torch.float32 if self.logits_dtype == "float32" else torch.float16

    def differences(self, other: "EvalProtocol") -> dict[str, tuple]:
        """``{field: (self's value, other's value)}`` for every convention the two set
        differently."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name not in ("name", "description")
            and getattr(self, f.name) != getattr(other, f.name)
        }


_COURSE = EvalProtocol(
    "course",
    description="the course's evalAnomaly.py / eval_iou.py: PIL resize, skip after resize, pooled "
    "pixels, ood-metrics FPR95, mIoU argmax over 20 channels, float32 logits",
)
PROTOCOLS: dict[str, EvalProtocol] = {
    "course": _COURSE,
    "smiyc": replace(
        _COURSE,
        name="smiyc",
        fpr_convention="smiyc",
        description="course, with SMIYC's FPR95 (first threshold reaching TPR 0.95)",
    ),
    "blocks2x2": replace(
        _COURSE,
        name="blocks2x2",
        scoring="blocks2x2",
        description="course, scored on 2x2 blocks (mean score, max label: a block touching void "
        "is void), seed 000",
    ),
    "full_resolution": replace(
        _COURSE,
        name="full_resolution",
        scoring="full_resolution",
        description="course, scored at each frame's own resolution (class map resized bilinearly)",
    ),
    "per_image": replace(
        _COURSE,
        name="per_image",
        pooling="per_image",
        description="course, metrics averaged over frames instead of pooled over pixels",
    ),
    "legacy": EvalProtocol(
        "legacy",
        input_resize="tensor",
        skip_after_resize=False,
        miou_void_channel=False,
        logits_dtype="float16",
        msp_form="expm1",
        description="anomalyseg before protocols: torchvision tensor resize, skip on the "
        "full-resolution mask, mIoU argmax over 19 channels, float16 ERFNet logits, MSP as "
        "-expm1",
    ),
}
DEFAULT_PROTOCOL = "course"
# Rows stored before the ``protocol`` column existed were made by the pre-protocol evaluation.
UNRECORDED_PROTOCOL = "legacy"


def get_protocol(protocol: str | EvalProtocol | None = None) -> EvalProtocol:
    """The ``EvalProtocol`` named ``protocol`` (None: ``course``); an ``EvalProtocol`` is returned
    as is."""
    if protocol is None:
        return PROTOCOLS[DEFAULT_PROTOCOL]
    if isinstance(protocol, EvalProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown evaluation protocol {protocol!r}; the named ones are {list(PROTOCOLS)} "
            "(see anomalyseg.protocol)."
        )
    return PROTOCOLS[protocol]


def describe(protocol: str | EvalProtocol | None = None) -> str:
    """``"<name>: <description>"``, the line tables print under themselves."""
    p = get_protocol(protocol)
    return f"protocol `{p.name}`: {p.description}"


# ----------------------------------------------------------------------------- resizing
def resize_image(image: torch.Tensor, size: tuple[int, int], how: str = "pil") -> torch.Tensor:
    """Bilinear resize of a uint8 RGB frame ``[3, H, W]`` to ``size = (h, w)``, uint8 ``[3, h, w]``.

    ``how="pil"``: through a PIL image with ``Image.BILINEAR`` (PIL's filter widens with the
    scale, and it rounds in fixed point), exactly as torchvision's ``Resize`` on the PIL image the
    course opens and as upstream EoMT's ``window_imgs_semantic``. ``how="tensor"``: torchvision's
    antialiased bilinear on the tensor (close to PIL, up to 2 grey levels apart)."""
    import torch

    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    if how == "tensor":
        from torchvision.transforms.v2 import functional as TF

        return TF.resize(image, list(size), antialias=True)
    if how != "pil":
        raise ValueError(f"input resize must be one of {INPUT_RESIZES}, got {how!r}.")
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous().to(image.device)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map ``[H, W]`` with PIL's ``NEAREST``, as the course's
    ``Resize(NEAREST)`` on the PIL mask (samples at pixel centres). Same dtype as ``label``."""
    import torch

    size = (int(size[0]), int(size[1]))
    if tuple(label.shape) == size:
        return label
    arr = label.cpu().numpy()
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise ValueError(f"resize_label takes label values 0..255, got {arr.min()}..{arr.max()}.")
    out = np.asarray(
        Image.fromarray(arr.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST)
    )
    return torch.from_numpy(out.copy()).to(label.dtype)


def block_scores(scores: torch.Tensor) -> torch.Tensor:
    """Mean of each 2x2 block of a score map ``[H, W]`` -> ``[H // 2, W // 2]`` (seed 000; a last
    odd
    row or column is dropped, as ``avg_pool2d(2)``)."""
    h, w = (scores.shape[-2] // 2) * 2, (scores.shape[-1] // 2) * 2
    s = scores[..., :h, :w].float()
    return (s[..., 0::2, 0::2] + s[..., 0::2, 1::2] + s[..., 1::2, 0::2] + s[..., 1::2, 1::2]) / 4


def block_labels(label: torch.Tensor) -> torch.Tensor:
    """Maximum of each 2x2 block of a 0 / 1 / 255 label ``[H, W]`` -> ``[H // 2, W // 2]``: a block
    touching void (255) is void, one touching an anomaly (and no void) is an anomaly (seed 000)."""
    import torch

    h, w = (label.shape[-2] // 2) * 2, (label.shape[-1] // 2) * 2
    x = label[..., :h, :w]
    return torch.maximum(
        torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
        torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]),
    )


def scored_label(label: torch.Tensor, protocol: EvalProtocol) -> torch.Tensor:
    """The label as the protocol compares it with a score map at the same size."""
    return block_labels(label) if protocol.scoring == "blocks2x2" else label


def scored_map(scores: torch.Tensor, protocol: EvalProtocol) -> torch.Tensor:
    """A score map ``[H, W]`` as the protocol compares it (2x2 block means for ``blocks2x2``)."""
    return block_scores(scores) if protocol.scoring == "blocks2x2" else scores


# ----------------------------------------------------------------------------- segmenters
def _segmenters(segmenter, seen: set | None = None) -> Iterator[object]:
    """The segmenter and every segmenter it wraps (``HeadSegmenter.base`` and its forward copy)."""
    import torch

    seen = set() if seen is None else seen
    if id(segmenter) in seen:
        return
    seen.add(id(segmenter))
    yield segmenter
    for v in vars(segmenter).values():
        if (
            hasattr(v, "raw_outputs")
            and hasattr(v, "__dict__")
            and not isinstance(v, torch.nn.Module)
        ):
            yield from _segmenters(v, seen)


@contextmanager
def applied(segmenter, protocol: EvalProtocol, miou: bool = False):
    """Set the protocol's input resize and logits dtype (and, for ``miou``, ERFNet's void channel)
    on ``segmenter`` and the segmenters it wraps for the duration of an evaluation, then restore
    them. Segmenters without such a setting (a test's toy model) are left alone. Both settings
    enter the output cache key (``cache_tag``), so outputs of one protocol never serve another."""
    wanted = {"input_resize": protocol.input_resize, "logits_dtype": protocol.torch_dtype}
    if miou:
        wanted["use_void"] = protocol.miou_void_channel
    saved = []
    try:
        for seg in _segmenters(segmenter):
            for attr, value in wanted.items():
                if attr in vars(seg) or hasattr(type(seg), attr):
                    saved.append((seg, attr, getattr(seg, attr)))
                    setattr(seg, attr, value)
        yield segmenter
    finally:
        for seg, attr, value in reversed(saved):
            setattr(seg, attr, value)
