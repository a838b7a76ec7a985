"""The pixel-wise anomaly head (seed 001; REFERENCE §6): a small learned score on a frozen EoMT.

EoMT fuses its queries into a per-pixel class map ``L`` (REFERENCE §3). The head reads four
statistics of ``L`` at every pixel (``pixel_statistics``) and maps them to one anomaly logit with
a per-pixel MLP (1x1 convolutions). The hybrid variant also reads the backbone's final patch
features, projected to 32 channels and resized to the map, so that it can see *what* a region
looks like and not only how uncertain the class map is there.

- ``StatsAnomalyHead``: 4 statistics -> 64 -> 32 -> 1 (ReLU, dropout 0.1).
- ``HybridAnomalyHead(feature_dim)``: 4 statistics + 32 projected features = 36 -> 64 -> 32 -> 1.
- ``HeadSegmenter(eomt_segmenter, heads)``: the frozen EoMT as a ``Segmenter`` whose learned maps
  are scores in their own right (``extra_score_names``), computed per window and stitched like the
  class maps, exactly as EoMT's windowed inference treats its per-pixel logits.
- ``save_anomaly_head`` / ``load_anomaly_head``: weights as safetensors, with the variant and the
  feature width in the file's metadata.

Every head maps ``(class_map [B, C, H, W], features [B, D, g, g] | None) -> logits [B, 1, H, W]``
(higher = more anomalous) and says through ``needs_features`` whether it reads the features.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, fit_state_dict, load_state_dict_file
from .eomt import EomtSegmenter, per_pixel_logits, stitch_windows

NUM_STATISTICS = 4
STATISTIC_NAMES = ("max", "entropy", "sum", "one_minus_max")
PROJECTED_FEATURES = 32
ENTROPY_EPS = 1e-7
# Score names of the variants, as the results store, the report and the plots spell them.
VARIANT_SCORES = {"stats": "anomaly_head", "hybrid": "anomaly_head_hybrid"}
_FORMAT = "anomalyseg.anomaly_head/1"


def pixel_statistics(class_map: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """The head's four inputs per pixel: ``[B, C, H, W] -> [B, 4, H, W]`` (float32), in the order

    ``max_c L``, ``-sum_c L_c log(max(L_c, eps))``, ``sum_c L``, ``1 - max_c L``.

    ``L`` is read as EoMT fuses it, **not normalised over classes first**. Upstream EoMT and seed
    001 treat the fused map ``sum_q p_q(c) sigmoid(m_q)`` itself as the class probabilities (its
    "max probability", "MSP" and "entropy" features are read straight off it), and the third
    statistic, ``sum_c L``, is only informative because ``L`` is left as it is: normalised, it
    would be 1 at every pixel. Unnormalised, the mass ``sum_c L`` (how strongly any query claims
    the pixel; low on things no query was trained for) and the spread over classes both reach the
    MLP. The clamp at ``eps`` keeps ``log 0`` out of the entropy (``0 log 0`` counts as 0).
    """
    if class_map.ndim != 4:
        raise ValueError(
            "pixel_statistics expects a class map [B, C, H, W], got shape "
            f"{tuple(class_map.shape)}."
        )
    L = class_map.float()
    top = L.amax(dim=1, keepdim=True)
    entropy = -(L * L.clamp_min(eps).log()).sum(dim=1, keepdim=True)
    return torch.cat([top, entropy, L.sum(dim=1, keepdim=True), 1.0 - top], dim=1)


def _mlp(in_channels: int, dropout: float) -> nn.Sequential:
    """The per-pixel MLP ``in -> 64 -> 32 -> 1`` as 1x1 convolutions with ReLU and dropout."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Conv2d(64, 32, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Conv2d(32, 1, 1),
    )  # fmt: skip


class StatsAnomalyHead(nn.Module):
    """Anomaly logit from the class map's statistics alone (seed 001's stats-only head).

    ``forward(class_map [B, C, H, W], features=None) -> [B, 1, H, W]`` anomaly logits; the
    features are ignored. 4 -> 64 -> 32 -> 1 per pixel, ReLU, dropout ``dropout`` (0.1).
    """

    variant = "stats"
    needs_features = False

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.mlp = _mlp(NUM_STATISTICS, dropout)

    def config(self) -> dict:
        return {"variant": self.variant}

    def forward(
        self, class_map: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.mlp(pixel_statistics(class_map))


class HybridAnomalyHead(nn.Module):
    """Anomaly logit from the statistics plus the backbone's patch features (seed 001's hybrid).

    ``features`` ``[B, D, g, g]`` (EoMT's final layer-normed patch tokens, ``patch_features``) go
    through a 1x1 convolution ``D -> 32`` and are resized bilinearly to the class map's ``H, W``
    (projecting first is cheaper and equal: a 1x1 convolution commutes with bilinear resizing);
    concatenated after the 4 statistics they give 36 inputs to the MLP 36 -> 64 -> 32 -> 1.
    ``forward(class_map [B, C, H, W], features [B, D, g, g]) -> [B, 1, H, W]``.
    """

    variant = "hybrid"
    needs_features = True

    def __init__(self, feature_dim: int, dropout: float = 0.1):
        super().__init__()
        if int(feature_dim) < 1:
            raise ValueError(
                "HybridAnomalyHead: feature_dim is the backbone's hidden size D and must be >= 1, "
                f"got {feature_dim}."
            )
        self.feature_dim = int(feature_dim)
        self.project = nn.Conv2d(self.feature_dim, PROJECTED_FEATURES, 1)
        self.mlp = _mlp(NUM_STATISTICS + PROJECTED_FEATURES, dropout)

    def config(self) -> dict:
        return {"variant": self.variant, "feature_dim": self.feature_dim}

    def forward(
        self, class_map: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features is None:
            raise ValueError(
                "HybridAnomalyHead needs the backbone's patch features [B, D, g, g] besides the "
                "class map; run EoMT with keep_features=True (HeadSegmenter does so for a hybrid "
                "head)."
            )
        if (
            features.ndim != 4
            or features.shape[0] != class_map.shape[0]
            or features.shape[1] != self.feature_dim
        ):
            raise ValueError(
                f"HybridAnomalyHead(feature_dim={self.feature_dim}) expects features [B, "
                f"{self.feature_dim}, g, g] with B = {class_map.shape[0]} (the class map's batch), "
                f"got {tuple(features.shape)}. A head trained on one backbone does not fit another "
                "of a different width."
            )
        projected = self.project(features.to(self.project.weight.dtype))
        projected = F.interpolate(
            projected, size=class_map.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.mlp(torch.cat([pixel_statistics(class_map), projected], dim=1))


def build_anomaly_head(
    variant: str, feature_dim: int | None = None, dropout: float = 0.1
) -> nn.Module:
    """``"stats"`` -> ``StatsAnomalyHead()``, ``"hybrid"`` -> ``HybridAnomalyHead(feature_dim)``."""
    if variant == "stats":
        return StatsAnomalyHead(dropout)
    if variant == "hybrid":
        if feature_dim is None:
            raise ValueError(
                "build_anomaly_head('hybrid') needs feature_dim, the backbone's hidden size (EoMT "
                "config.hidden_size)."
            )
        return HybridAnomalyHead(feature_dim, dropout)
    raise ValueError(
        f"Unknown anomaly head variant {variant!r}; expected one of {list(VARIANT_SCORES)}."
    )


# ----------------------------------------------------------------------------- weights
def save_anomaly_head(head: nn.Module, path: str | Path) -> Path:
    """Write the head's weights to ``path`` (safetensors, written atomically), with its variant and
    feature width in the metadata so that ``load_anomaly_head(path)`` rebuilds it alone."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": _FORMAT, "config": json.dumps(head.config())})
    tmp.replace(path)
    return path


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # unreadable files are reported by load_state_dict_file below
        return {}
    return json.loads(meta["config"]) if meta.get("format") == _FORMAT and "config" in meta else {}


def load_anomaly_head(
    path: str | Path,
    variant: str | None = None,
    feature_dim: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build the head saved at ``path`` (by ``save_anomaly_head``) and load its weights, in eval
    mode.

    The variant and feature width come from the file's metadata; ``variant`` / ``feature_dim``
    are needed only for a bare safetensors file without it, and must agree with it otherwise.
    Weights whose names or shapes do not fit the head are refused as a whole (``CheckpointError``
    naming the missing, unexpected and mis-shaped tensors).
    """
    path = Path(path)
    state = load_state_dict_file(path)  # refuses missing and unreadable files
    config = _metadata(path)
    for key, given in (("variant", variant), ("feature_dim", feature_dim)):
        if given is not None and key in config and config[key] != given:
            raise CheckpointError(
                f"anomaly head {str(path)!r} was saved as {key}={config[key]!r}, but "
                f"{key}={given!r} was asked for. Leave the argument out to use the file's own, or "
                "pass the file of the head you mean."
            )
    variant = config.get("variant", variant)
    if variant is None:
        raise CheckpointError(
            f"{str(path)!r} carries no anomaly-head metadata (not written by save_anomaly_head); "
            "pass variant='stats' or variant='hybrid' (and feature_dim for a hybrid head)."
        )
    if (
        variant == "hybrid"
        and feature_dim is None
        and "feature_dim" not in config
        and "project.weight" in state
    ):
        feature_dim = int(state["project.weight"].shape[1])
    head = build_anomaly_head(variant, config.get("feature_dim", feature_dim))
    try:
        fit_state_dict(head, state, strict=True, source=path)
    except CheckpointError as e:
        raise CheckpointError(
            f"{e} For an anomaly head: the file must hold the weights of a {type(head).__name__} "
            f"({sorted(head.state_dict())[:4]}...), as save_anomaly_head / train_anomaly_head "
            "write them."
        ) from None
    return head.to(device).eval()


# ----------------------------------------------------------------------------- segmenter
class HeadSegmenter:
    """A frozen ``EomtSegmenter`` with learned anomaly heads as extra scores (``models/base.py``).

    Args:
        eomt_segmenter: the ``EomtSegmenter`` the heads were trained on (its name and checkpoint
            label the result rows, so the heads' rows sit beside its post-hoc scores).
        heads: ``{score name: head}``, e.g. ``{"anomaly_head": StatsAnomalyHead(),
            "anomaly_head_hybrid": HybridAnomalyHead(D)}``; any name works, the report knows these.

    ``raw_outputs`` and ``class_map`` are EoMT's (same forward, same caching); when a head reads
    features the raw outputs also keep the patch features ``[N, D, g, g]`` (float16), and
    ``cache_tag`` differs from the plain segmenter's so that the two never share cache files.
    Heads are not part of the raw outputs: retraining a head reuses the cached forward passes.

    ``extra_scores(raw, size)`` runs each head on every window's class map ``[N, C, S, S]`` (mask
    logits upsampled to the window, then fused; EoMT's ``window_class_maps``), stitches the
    per-window logits ``[N, 1, S, S]`` with EoMT's ``stitch_windows`` (average where windows
    overlap, resize to ``size``) and returns ``{name: [H, W]}``: logits, or probabilities with
    ``output="sigmoid"`` (the same ranking, so the same AuPRC and FPR95).
    """

    supports_class_temperature = True

    def __init__(
        self, eomt_segmenter: EomtSegmenter, heads: Mapping[str, nn.Module], output: str = "logit"
    ):
        if not isinstance(eomt_segmenter, EomtSegmenter):
            raise TypeError(
                "HeadSegmenter wraps an EomtSegmenter (anomalyseg.models.eomt), got "
                f"{type(eomt_segmenter).__name__}; the heads read EoMT's fused class map and patch "
                "features."
            )
        if not heads:
            raise ValueError("HeadSegmenter needs at least one head: {'anomaly_head': head, ...}.")
        if output not in ("logit", "sigmoid"):
            raise ValueError(f"HeadSegmenter output={output!r}; expected 'logit' or 'sigmoid'.")
        hidden = eomt_segmenter.model.config.hidden_size
        for name, head in heads.items():
            if (
                getattr(head, "needs_features", False)
                and getattr(head, "feature_dim", hidden) != hidden
            ):
                raise ValueError(
                    f"head {name!r} reads {head.feature_dim}-dimensional features, but this EoMT's "
                    f"patch features have {hidden} (config.hidden_size): it was trained on another "
                    "backbone."
                )
        self.base = eomt_segmenter
        self.heads = {name: head.to(eomt_segmenter.device).eval() for name, head in heads.items()}
        self.extra_score_names = tuple(self.heads)
        self.output = output
        self.needs_features = any(getattr(h, "needs_features", False) for h in self.heads.values())
        if self.needs_features and not eomt_segmenter.keep_features:
            self._forward = copy.copy(eomt_segmenter)  # same model, raw outputs with features
            self._forward.keep_features = True
        else:
            self._forward = eomt_segmenter
        self.name, self.checkpoint = eomt_segmenter.name, eomt_segmenter.checkpoint
        self.num_channels = eomt_segmenter.num_channels
        self.device, self.window_size = eomt_segmenter.device, eomt_segmenter.window_size

    @property
    def cache_tag(self) -> str:
        return self._forward.cache_tag + ("+features" if self._forward.keep_features else "")

    def eval_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        return self.base.eval_size(frame_size)

    @torch.no_grad()
    def raw_outputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """EoMT's per-window raw outputs of a uint8 frame ``[3, H, W]`` (with ``features`` when a
        head needs them)."""
        return self._forward.raw_outputs(image)

    def class_map(
        self,
        raw: dict[str, torch.Tensor],
        size: tuple[int, int] | None = None,
        class_temperature: float = 1.0,
    ) -> torch.Tensor:
        """EoMT's class map ``[C, H, W]``."""
        return self.base.class_map(raw, size, class_temperature)

    def class_maps(self, raw: dict[str, torch.Tensor], size: tuple[int, int], class_temperatures):
        """EoMT's class maps for each class temperature in turn (``EomtSegmenter.class_maps``)."""
        return self.base.class_maps(raw, size, class_temperatures)

    @torch.no_grad()
    def window_head_logits(self, raw: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """One head's logits per window ``[N, 1, S, S]`` on the segmenter's device."""
        head, s = self.heads[name], self.window_size
        if head.needs_features and "features" not in raw:
            raise KeyError(
                f"head {name!r} needs patch features, but these raw outputs have none (keys "
                f"{sorted(raw)}): they were computed without keep_features, e.g. cached by a plain "
                "EomtSegmenter. Use HeadSegmenter.raw_outputs."
            )
        out = []
        for i in range(
            raw["mask_logits"].shape[0]
        ):  # one window at a time bounds memory, as class_map does
            masks = F.interpolate(
                raw["mask_logits"][i : i + 1].to(self.device).float(), size=(s, s), mode="bilinear"
            )
            class_map = per_pixel_logits(masks, raw["class_logits"][i : i + 1].to(self.device))
            features = (
                raw["features"][i : i + 1].to(self.device).float() if head.needs_features else None
            )
            out.append(head(class_map, features))
        return torch.cat(out)

    @torch.no_grad()
    def extra_scores(
        self, raw: dict[str, torch.Tensor], size: tuple[int, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{name: [H, W]}`` float32 on the CPU for every head (higher = more anomalous)."""
        size = tuple(raw["frame_size"].tolist()) if size is None else tuple(size)
        offsets, resized = raw["offsets"], tuple(raw["resized_size"].tolist())
        maps = {}
        for name in self.heads:
            logits = stitch_windows(self.window_head_logits(raw, name), offsets, resized, size)[0]
            maps[name] = (logits.sigmoid() if self.output == "sigmoid" else logits).float().cpu()
        return maps
