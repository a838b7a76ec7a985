"""ERFNet (Romera et al., T-ITS 2018): the course's real-time Cityscapes baseline.

Module and attribute names follow the original ``erfnet.py`` exactly (``encoder.initial_block``,
``encoder.layers.N.conv3x1_1`` ...), so the course's ``erfnet_pretrained.pth`` loads without any
renaming once DataParallel's ``module.`` prefix is stripped. The network predicts 20 channels:
the 19 Cityscapes train classes and a void class (channel 19) trained with weight 0.

``ErfnetSegmenter`` wraps it for evaluation with the course preprocessing (REFERENCE §2): RGB,
PIL bilinear resize to 512x1024, scaled to [0, 1], no mean/std normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import NUM_CLASSES
from ..protocol import resize_image
from .base import resize_map
from .checkpoints import fit_state_dict, load_state_dict_file

VOID_CHANNEL = 19
_STRIDE = 8  # three stride-2 downsamplers


class DownsamplerBlock(nn.Module):
    """Stride-2 3x3 conv (``noutput - ninput`` maps) concatenated with a 2x2 max-pool of the
    input."""

    def __init__(self, ninput: int, noutput: int):
        super().__init__()
        self.conv = nn.Conv2d(ninput, noutput - ninput, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ninput, H, W] -> [B, noutput, H/2, W/2]``."""
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class non_bottleneck_1d(nn.Module):  # noqa: N801 - the original name, kept for checkpoint fidelity
    """Factorised residual block: 3x1, 1x3, BN, then dilated 3x1, 1x3, BN, dropout, residual
    ReLU."""

    def __init__(self, chann: int, dropprob: float, dilated: int):
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(chann, chann, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(chann, chann, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(chann, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(
            chann, chann, (3, 1), padding=(dilated, 0), dilation=(dilated, 1), bias=True
        )
        self.conv1x3_2 = nn.Conv2d(
            chann, chann, (1, 3), padding=(0, dilated), dilation=(1, dilated), bias=True
        )
        self.bn2 = nn.BatchNorm2d(chann, eps=1e-3)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        y = F.relu(self.conv3x1_1(x))
        y = F.relu(self.bn1(self.conv1x3_1(y)))
        y = F.relu(self.conv3x1_2(y))
        y = self.bn2(self.conv1x3_2(y))
        if self.dropout.p != 0:
            y = self.dropout(y)
        return F.relu(y + x)


class UpsamplerBlock(nn.Module):
    """3x3 stride-2 transposed conv, BN, ReLU: ``[B, ninput, H, W] -> [B, noutput, 2H, 2W]``."""

    def __init__(self, ninput: int, noutput: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            ninput, noutput, 3, stride=2, padding=1, output_padding=1, bias=True
        )
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Encoder(nn.Module):
    """``[B, 3, H, W] -> [B, 128, H/8, W/8]``. ``output_conv`` is used only when the encoder is
    pre-trained on its own (the original two-stage schedule); it is kept so checkpoints fit."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.initial_block = DownsamplerBlock(3, 16)
        self.layers = nn.ModuleList([DownsamplerBlock(16, 64)])
        self.layers.extend(non_bottleneck_1d(64, 0.03, 1) for _ in range(5))
        self.layers.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            self.layers.extend(non_bottleneck_1d(128, 0.3, d) for d in (2, 4, 8, 16))
        self.output_conv = nn.Conv2d(128, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor, predict: bool = False) -> torch.Tensor:
        x = self.initial_block(x)
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x) if predict else x


class Decoder(nn.Module):
    """``[B, 128, H/8, W/8] -> [B, num_classes, H, W]``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [UpsamplerBlock(128, 64), non_bottleneck_1d(64, 0, 1), non_bottleneck_1d(64, 0, 1),
             UpsamplerBlock(64, 16), non_bottleneck_1d(16, 0, 1), non_bottleneck_1d(16, 0, 1)]
        )  # fmt: skip
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


class ERFNet(nn.Module):
    """Efficient Residual Factorized ConvNet. 20 classes: 2,066,836 parameters.

    ``forward``: images ``[B, 3, H, W]`` in [0, 1] (no mean/std) with H and W divisible by 8 ->
    logits ``[B, num_classes, H, W]``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES + 1):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = Encoder(num_classes)
        self.decoder = Decoder(num_classes)

    def forward(self, x: torch.Tensor, only_encode: bool = False) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ERFNet expects images of shape [B, 3, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % _STRIDE or w % _STRIDE:
            raise ValueError(
                f"ERFNet needs an input height and width divisible by {_STRIDE} (three stride-2 "
                f"downsamplers), got {h}x{w}; resize to e.g. {_round8(h)}x{_round8(w)} "
                "(the course uses 512x1024)."
            )
        if only_encode:
            return self.encoder(x, predict=True)
        return self.decoder(self.encoder(x))


def load_erfnet(path: str | Path, num_classes: int = 20, strict: bool = True) -> ERFNet:
    """Build an ``ERFNet(num_classes)`` and load weights from ``path`` (the course's
    ``erfnet_pretrained.pth``, a Lightning checkpoint of ours, or an exported safetensors file),
    in eval mode. Raises ``CheckpointError`` (``models.checkpoints``) when the file is unreadable,
    unsafe or does not fit (with ``strict``)."""
    model = ERFNet(num_classes=num_classes)
    fit_state_dict(model, load_state_dict_file(path), strict=strict, source=path)
    return model.eval()


def _round8(n: int) -> int:
    return max(_STRIDE, int(n / _STRIDE + 0.5) * _STRIDE)


class ErfnetSegmenter:
    """``Segmenter`` for ERFNet with the course preprocessing (REFERENCE §2).

    ``model`` is an ``ERFNet`` or a path to its weights (loaded with ``load_erfnet``). Frames are
    resized bilinearly to ``input_size`` and scored there: ``eval_size`` returns ``input_size``, so
    labels are resized to it with PIL's nearest neighbour, as in the course.
    ``use_void`` keeps the void channel in ``class_map`` (20 channels, for the ``void_prob`` score
    and the course's mIoU). ``input_resize``: ``"pil"`` resizes the frame as a PIL image with PIL's
    bilinear filter, as the course's ``Resize((512, 1024), Image.BILINEAR)`` on the opened image;
    ``"tensor"`` with torchvision's antialiased bilinear (``protocol.resize_image``).
    ``logits_dtype``: dtype of the cached logits (float32: the course's digits; float16: half the
    cache). The evaluation sets both from its ``EvalProtocol``.
    """

    name = "erfnet"
    supports_class_temperature = False

    def __init__(
        self,
        model: nn.Module | str | Path,
        checkpoint: str | None = None,
        input_size: tuple[int, int] = (512, 1024),
        use_void: bool = False,
        device: str | torch.device = "cpu",
        input_resize: str = "pil",
        logits_dtype: torch.dtype = torch.float32,
    ):
        if isinstance(model, (str, Path)):
            checkpoint = checkpoint or str(model)
            model = load_erfnet(model)
        input_size = (int(input_size[0]), int(input_size[1]))
        if min(input_size) <= 0 or input_size[0] % _STRIDE or input_size[1] % _STRIDE:
            raise ValueError(
                f"ErfnetSegmenter input_size={input_size}: ERFNet needs H and W > 0 and divisible "
                f"by {_STRIDE}; use e.g. ({_round8(input_size[0])}, {_round8(input_size[1])}) (the "
                "course uses (512, 1024))."
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.checkpoint = checkpoint or "in-memory"
        self.input_size = input_size
        self.use_void = use_void
        self.input_resize, self.logits_dtype = input_resize, logits_dtype

    @property
    def num_channels(self) -> int:
        return NUM_CLASSES + 1 if self.use_void else NUM_CLASSES

    @property
    def cache_tag(self) -> str:
        """Everything besides the weights that changes the cached logits (settings, then what the
        zoo appends, e.g. a weight-file fingerprint)."""
        dtype = str(self.logits_dtype).removeprefix("torch.")
        settings = f"{self.input_size[0]}x{self.input_size[1]}|{self.input_resize}|{dtype}"
        return settings + getattr(self, "_tag_extra", "")

    @cache_tag.setter
    def cache_tag(self, value: str) -> None:
        self._tag_extra = (
            value.split(self.cache_tag, 1)[1] if value.startswith(self.cache_tag) else f"|{value}"
        )

    def eval_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        return self.input_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``[B, 3, H, W]`` -> float ``[B, 3, h, w]`` in [0, 1] at ``input_size``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"ErfnetSegmenter expects uint8 RGB images [B, 3, H, W], got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        x = torch.stack([resize_image(im, self.input_size, self.input_resize) for im in images])
        return x.to(self.device).float() / 255.0

    @torch.no_grad()
    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> logits ``[B, 20, h, w]`` (float32, on ``device``) at
        ``input_size``."""
        return self.model(self.preprocess(images))

    @torch.no_grad()
    def raw_outputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 ``[3, H, W]`` -> ``{"logits": [20, h, w]}`` (``logits_dtype``) on the CPU."""
        return {"logits": self.forward_batch(image[None])[0].to(self.logits_dtype).cpu()}

    def class_map(
        self, raw: dict[str, torch.Tensor], size: tuple[int, int], class_temperature: float = 1.0
    ) -> torch.Tensor:
        """Logits ``[19, H, W]`` (``[20, H, W]`` with ``use_void``) as float32 at ``size``."""
        if class_temperature != 1.0:
            raise ValueError(
                "ERFNet has no class logits separate from its per-pixel logits: class_temperature "
                "must be 1.0 (apply temperature to the score instead, e.g. msp(x, temperature=T))."
            )
        return resize_map(raw["logits"][: self.num_channels].float(), size)

    def extra_scores(
        self, raw: dict[str, torch.Tensor], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        return {}
