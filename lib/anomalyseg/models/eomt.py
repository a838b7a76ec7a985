"""EoMT (Kerssies et al., CVPR 2025) through transformers: loading, per-pixel logits, windowed
inference.

The network is transformers' ``EomtForUniversalSegmentation``; nothing of it is re-implemented
here. This module adds what the evaluation needs around it:

- ``build_eomt`` / ``load_eomt``: a model from a hub id, a ``save_pretrained`` folder, an
  ``EomtConfig`` (``small_eomt_config`` trains on CPU in minutes) or an upstream tue-mps/eomt
  checkpoint (``.ckpt`` / ``pytorch_model.bin``) through an explicit key map.
- ``per_pixel_logits``: mask classification to a per-pixel class map ``L`` (REFERENCE §3).
- windowed inference exactly as upstream (REFERENCE §2): scale the frame so its short side is the
  window size ``S``, cut ``ceil(long / S)`` square windows with even overlap, average per-pixel
  logits where windows overlap, resize back.
- ``EomtSegmenter``: the ``Segmenter`` of ``models/base.py``. Its raw outputs are the per-window
  mask and class logits, so a sweep over class temperatures never repeats a forward pass.

Masked attention: transformers applies it at inference whenever ``model.attn_mask_probs[i] > 0``
and the buffer starts at ones, while upstream evaluates with it annealed away. Every loader here
therefore zeroes the buffer before evaluation, and so does ``EomtSegmenter`` for a model loaded
elsewhere (``EomtForUniversalSegmentation.from_pretrained``, as transformers' docs do).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import EomtConfig, EomtForUniversalSegmentation
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..labels import NUM_CLASSES
from ..protocol import resize_image
from .base import resize_map
from .checkpoints import CheckpointError, LoadReport, fit_state_dict, load_state_dict_file

DEFAULT_CHECKPOINT = "tue-mps/cityscapes_semantic_eomt_large_1024"
_CHECKPOINT_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".safetensors")


# ----------------------------------------------------------------------------- configs
def small_eomt_config(
    num_labels: int = NUM_CLASSES,
    image_size: int = 128,
    patch_size: int = 8,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_blocks: int = 2,
    num_queries: int = 24,
    num_register_tokens: int = 0,
    **overrides,
) -> EomtConfig:
    """A small EoMT that learns the embedded 256x512 road scenes on a CPU in minutes.

    Windows are ``image_size`` squares (the position embeddings fix the input size). The mask
    head upsamples the patch grid ``log2(patch_size) - 2`` times, as upstream does, so masks are
    always at stride 4. ``train_num_points`` (points sampled per mask for the loss) is set to the
    number of mask pixels, since the upstream 112x112 points would oversample a 32x32 mask.
    """
    mask_side = image_size // 4
    defaults = dict(
        num_labels=num_labels,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_blocks=num_blocks,
        num_queries=num_queries,
        num_register_tokens=num_register_tokens,
        num_upscale_blocks=max(1, int(math.log2(patch_size)) - 2),
        train_num_points=mask_side * mask_side,
    )
    defaults.update(overrides)
    return EomtConfig(**defaults)


# ----------------------------------------------------------------------------- upstream checkpoints
# tue-mps/eomt names (a timm DINOv2 ViT under ``network.encoder.backbone``) -> transformers names.
# Applied in order, first match wins; ``None`` drops a key that transformers' EoMT has no use for.
UPSTREAM_KEY_MAP: tuple[tuple[str, str | None], ...] = (
    (r"network\.encoder\.backbone\.cls_token", "embeddings.cls_token"),
    (r"network\.encoder\.backbone\.reg_token", "embeddings.register_tokens"),
    (r"network\.encoder\.backbone\.pos_embed", "embeddings.position_embeddings.weight"),
    (
        r"network\.encoder\.backbone\.patch_embed\.proj\.(weight|bias)",
        r"embeddings.patch_embeddings.projection.\1",
    ),
    (
        r"network\.encoder\.backbone\.blocks\.(\d+)\.norm([12])\.(weight|bias)",
        r"layers.\1.norm\2.\3",
    ),
    # the fused qkv projection is split into q/k/v before renaming (see _split_qkv)
    (
        r"network\.encoder\.backbone\.blocks\.(\d+)\.attn\.([qkv])\.(weight|bias)",
        r"layers.\1.attention.\2_proj.\3",
    ),
    (
        r"network\.encoder\.backbone\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
        r"layers.\1.attention.out_proj.\2",
    ),
    (
        r"network\.encoder\.backbone\.blocks\.(\d+)\.ls([12])\.gamma",
        r"layers.\1.layer_scale\2.lambda1",
    ),
    (
        r"network\.encoder\.backbone\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)",
        r"layers.\1.mlp.\2.\3",
    ),
    (r"network\.encoder\.backbone\.norm\.(weight|bias)", r"layernorm.\1"),
    (r"network\.q\.weight", "query.weight"),
    (r"network\.class_head\.(weight|bias)", r"class_predictor.\1"),
    (r"network\.mask_head\.0\.(weight|bias)", r"mask_head.fc1.\1"),
    (r"network\.mask_head\.2\.(weight|bias)", r"mask_head.fc2.\1"),
    (r"network\.mask_head\.4\.(weight|bias)", r"mask_head.fc3.\1"),
    (r"network\.upscale\.(\d+)\.conv([12])\.(weight|bias)", r"upscale_block.block.\1.conv\2.\3"),
    (r"network\.upscale\.(\d+)\.norm\.(weight|bias)", r"upscale_block.block.\1.layernorm2d.\2"),
    (r"network\.attn_mask_probs", "attn_mask_probs"),
    (r"criterion\.empty_weight", "criterion.empty_weight"),
    # upstream normalises inside the network; here preprocessing does (checked in
    # _check_pixel_stats)
    (r"network\.encoder\.pixel_(mean|std)", None),
)
_UPSTREAM_RULES = [(re.compile(pattern + r"$"), repl) for pattern, repl in UPSTREAM_KEY_MAP]
# DINOv2 widths -> heads; the head count leaves no trace in the weights' shapes.
_DINOV2_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}


def upstream_key_map(name: str) -> str | None:
    """Rename one tue-mps/eomt key to transformers' name; ``None`` drops it; an unknown key is
    returned unchanged so that ``fit_state_dict`` reports it as not in the model."""
    for pattern, repl in _UPSTREAM_RULES:
        if pattern.match(name):
            return None if repl is None else pattern.sub(repl, name)
    return name


def is_upstream_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True for tue-mps/eomt checkpoints (keys under ``network.``)."""
    return any(k.startswith("network.") for k in state)


def _split_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split timm's fused ``attn.qkv`` ``[3D, ...]`` into ``attn.q/k/v`` (transformers keeps three
    projections) and drop the batch axis of ``pos_embed`` ``[1, N, D] -> [N, D]``."""
    out = {}
    for key, value in state.items():
        if key.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[key.replace(".qkv.", f".{name}.")] = part
        elif key.endswith("backbone.pos_embed") and value.ndim == 3:
            out[key] = value[0]
        else:
            out[key] = value
    return out


def _check_pixel_stats(state: dict[str, torch.Tensor], source) -> None:
    for key, expected in (
        ("network.encoder.pixel_mean", IMAGENET_DEFAULT_MEAN),
        ("network.encoder.pixel_std", IMAGENET_DEFAULT_STD),
    ):
        if key in state and not torch.allclose(
            state[key].flatten().float(), torch.tensor(expected), atol=1e-4
        ):
            raise CheckpointError(
                f"checkpoint {str(source)!r} normalises inputs with {key} = "
                f"{state[key].flatten().tolist()}, but this loader feeds /255 then ImageNet "
                f"mean/std {list(expected)} as upstream EoMT and transformers do; a backbone "
                "trained with other statistics would see shifted inputs."
            )


def config_from_state_dict(state: dict[str, torch.Tensor], **overrides) -> EomtConfig:
    """Infer an ``EomtConfig`` from the shapes of a transformers-named EoMT state dict.

    Everything is read from shapes except the head count (DINOv2's 6/12/16/24 for widths
    384/768/1024/1536, else width / 64) and, when the checkpoint lacks ``attn_mask_probs``,
    ``num_blocks``; pass them in ``overrides`` when they differ.
    """
    need = (
        "embeddings.cls_token",
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.position_embeddings.weight",
        "query.weight",
        "class_predictor.weight",
    )
    absent = [k for k in need if k not in state]
    if absent:
        raise CheckpointError(
            f"cannot infer an EoMT config: the state dict lacks {absent}. Expected an EoMT "
            "checkpoint (tue-mps/eomt or transformers names); pass config=EomtConfig(...) to "
            "build_eomt otherwise."
        )
    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = math.isqrt(state["embeddings.position_embeddings.weight"].shape[0])
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    upscale = len(
        {m.group(1) for k in state if (m := re.match(r"upscale_block\.block\.(\d+)\.", k))}
    )
    fc1 = state.get("layers.0.mlp.fc1.weight")
    values = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=_DINOV2_HEADS.get(hidden, max(1, hidden // 64)),
        patch_size=patch,
        image_size=grid * patch,
        num_queries=state["query.weight"].shape[0],
        num_labels=state["class_predictor.weight"].shape[0] - 1,
        num_register_tokens=state["embeddings.register_tokens"].shape[1]
        if "embeddings.register_tokens" in state
        else 0,
        num_upscale_blocks=upscale,
        mlp_ratio=fc1.shape[0] // hidden if fc1 is not None else 4,
    )
    if "attn_mask_probs" in state:
        values["num_blocks"] = state["attn_mask_probs"].shape[0]
    values.update(overrides)
    if "num_blocks" not in values:
        raise CheckpointError(
            "cannot infer num_blocks (how many final ViT blocks also process the queries): the "
            "checkpoint has no attn_mask_probs. Pass num_blocks=... (upstream EoMT uses 4) or "
            "config=EomtConfig(...)."
        )
    return EomtConfig(**values)


def load_upstream_state_dict(
    model: EomtForUniversalSegmentation,
    state: dict[str, torch.Tensor],
    strict: bool = True,
    source=None,
) -> LoadReport:
    """Load a tue-mps/eomt state dict (``network.*`` keys) into a transformers EoMT through
    ``UPSTREAM_KEY_MAP``; with ``strict`` anything unmapped, missing or mis-shaped is refused."""
    _check_pixel_stats(state, source)
    state = _split_qkv(state)
    # Derived buffers a bare network state dict may lack: the no-object weight comes from the
    # config and the annealing probabilities are zeroed for evaluation anyway.
    own = model.state_dict()
    state.setdefault("criterion.empty_weight", own["criterion.empty_weight"])
    state.setdefault("network.attn_mask_probs", torch.zeros_like(own["attn_mask_probs"]))
    return fit_state_dict(model, state, key_map=upstream_key_map, strict=strict, source=source)


# ----------------------------------------------------------------------------- building
def zero_attn_mask_probs(model: EomtForUniversalSegmentation) -> EomtForUniversalSegmentation:
    """Switch masked attention off for inference, as upstream evaluates (REFERENCE §2)."""
    with torch.no_grad():
        model.attn_mask_probs.zero_()
    return model


def build_eomt(
    source: str | Path | EomtConfig = DEFAULT_CHECKPOINT,
    *,
    config: EomtConfig | None = None,
    strict: bool = True,
    for_eval: bool = True,
    local_files_only: bool | None = None,
    **config_overrides,
) -> EomtForUniversalSegmentation:
    """Build a transformers ``EomtForUniversalSegmentation``.

    ``source`` is one of: an ``EomtConfig`` (random init, e.g. ``small_eomt_config()``); a
    ``save_pretrained`` folder; a checkpoint file (``.ckpt``/``.bin``/``.pt``/``.pth``/
    ``.safetensors``) with tue-mps/eomt or transformers key names, whose config is inferred from
    its shapes unless ``config`` is given (``config_overrides`` adjust it, e.g.
    ``num_attention_heads``); or a hub id (default: the official Cityscapes EoMT-L at 1024).
    With ``for_eval`` the model is put in eval mode with masked attention off.
    """
    if isinstance(source, EomtConfig):
        model = EomtForUniversalSegmentation(source)
    else:
        path = Path(source)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"{path} is a folder without config.json; expected a folder written by "
                    "model.save_pretrained(...) / export_eomt(...) (config.json + "
                    "model.safetensors)."
                )
            model = _from_folder(path)
        elif path.suffix in _CHECKPOINT_SUFFIXES or path.exists():
            model = _from_checkpoint_file(path, config, strict, config_overrides)
        else:
            model = _from_hub(str(source), local_files_only)
    if for_eval:
        zero_attn_mask_probs(model.eval())
    return model


def _from_folder(path: Path) -> EomtForUniversalSegmentation:
    try:
        return EomtForUniversalSegmentation.from_pretrained(path)
    except Exception as e:  # transformers and safetensors raise several types for a damaged file
        files = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise CheckpointError(
            f"could not load the EoMT save_pretrained folder {str(path)!r} (it holds {files}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. A truncated or "
            "partly copied model.safetensors / config.json looks like this; copy the folder again "
            "(or export it again with export_eomt / save_pretrained)."
        ) from e


def _from_checkpoint_file(path: Path, config: EomtConfig | None, strict: bool, overrides: dict):
    state = load_state_dict_file(path)  # refuses missing files and pickled code
    if is_upstream_state_dict(state):
        renamed = {
            upstream_key_map(k): v for k, v in _split_qkv(state).items() if upstream_key_map(k)
        }
    else:
        renamed = {k.removeprefix("model."): v for k, v in state.items()}
    if config is None:
        config = config_from_state_dict(renamed, **overrides)
    elif overrides:
        config = EomtConfig(**{**config.to_dict(), **overrides})
    model = EomtForUniversalSegmentation(config)
    if is_upstream_state_dict(state):
        load_upstream_state_dict(model, state, strict=strict, source=path)
    else:
        fit_state_dict(model, state, strict=strict, source=path)
    return model


def _from_hub(repo_id: str, local_files_only: bool | None) -> EomtForUniversalSegmentation:
    try:
        kwargs = {} if local_files_only is None else {"local_files_only": local_files_only}
        return EomtForUniversalSegmentation.from_pretrained(repo_id, **kwargs)
    except (OSError, ValueError) as e:
        raise OSError(
            f"could not load EoMT {repo_id!r}: it is not a local folder or checkpoint file, and "
            "the Hugging Face hub did not provide it (no network here, or not in the local "
            f"cache). Download it where there is network (`huggingface-cli download {repo_id} "
            "--local-dir <folder>`) and pass that folder, or pass an upstream .ckpt/.bin file. "
            f"Detail: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


# ----------------------------------------------------------------------------- per-pixel logits
def per_pixel_logits(
    mask_logits: torch.Tensor, class_logits: torch.Tensor, class_temperature: float = 1.0
) -> torch.Tensor:
    """Mask classification to a per-pixel class map (REFERENCE §3).

    ``L[b, c] = sum_q softmax(class_logits[b, q] / T)[c] * sigmoid(mask_logits[b, q])`` over the
    real classes (the no-object column is dropped after the softmax).
    ``mask_logits`` ``[B, Q, H, W]``, ``class_logits`` ``[B, Q, C+1]`` -> ``[B, C, H, W]`` float32.
    """
    if (
        mask_logits.ndim != 4
        or class_logits.ndim != 3
        or mask_logits.shape[:2] != class_logits.shape[:2]
    ):
        raise ValueError(
            "per_pixel_logits expects mask_logits [B, Q, H, W] and class_logits [B, Q, C+1] with "
            f"the same B and Q, got {tuple(mask_logits.shape)} and {tuple(class_logits.shape)}"
        )
    if class_temperature <= 0:
        raise ValueError(f"class_temperature must be > 0, got {class_temperature}")
    return fuse_masks(mask_logits.float().sigmoid(), class_logits, class_temperature)


def fuse_masks(
    mask_probs: torch.Tensor, class_logits: torch.Tensor, class_temperature: float = 1.0
) -> torch.Tensor:
    """``per_pixel_logits`` from mask probabilities ``[B, Q, H, W]`` (already sigmoid) ->
    ``[B, C, H, W]``."""
    probs = torch.softmax(class_logits.float() / class_temperature, dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_probs)


# ----------------------------------------------------------------------------- windows
def scaled_size(frame_size: tuple[int, int], window_size: int) -> tuple[int, int]:
    """Frame size after scaling by ``max(S/h, S/w)``, rounded as upstream (short side = S)."""
    h, w = frame_size
    factor = max(window_size / h, window_size / w)
    return round(h * factor), round(w * factor)


def window_offsets(resized_size: tuple[int, int], window_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of ``ceil(long / S)`` windows along the long side, evenly overlapping."""
    long_side = max(resized_size)
    n = math.ceil(long_side / window_size)
    overlap = (n * window_size - long_side) / (n - 1) if n > 1 else 0
    return [
        (int(i * (window_size - overlap)), int(i * (window_size - overlap)) + window_size)
        for i in range(n)
    ]


def _along_long_side(
    x: torch.Tensor, resized_size: tuple[int, int], start: int, end: int
) -> torch.Tensor:
    return x[..., start:end, :] if resized_size[0] > resized_size[1] else x[..., :, start:end]


def split_windows(
    image: torch.Tensor, window_size: int, input_resize: str = "pil"
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Cut a frame into square windows as upstream EoMT does.

    ``image`` uint8 ``[3, H, W]`` -> windows uint8 ``[N, 3, S, S]``, offsets int64 ``[N, 2]``
    (start, end along the long side of the resized frame) and the resized frame size.
    ``input_resize``: ``"pil"`` (upstream) or ``"tensor"`` (``protocol.resize_image``).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB frame [3, H, W], got shape {tuple(image.shape)}")
    resized_size = scaled_size(tuple(image.shape[-2:]), window_size)
    # Upstream's window_imgs_semantic resizes a PIL image with Image.BILINEAR (so does the slow
    # EomtImageProcessor); torchvision's antialiased tensor resize differs by up to 2 grey levels.
    resized = resize_image(torch.as_tensor(image), resized_size, input_resize)
    offsets = window_offsets(resized_size, window_size)
    windows = torch.stack([_along_long_side(resized, resized_size, s, e) for s, e in offsets])
    return windows, torch.tensor(offsets, dtype=torch.int64), resized_size


def stitch_windows(
    window_maps: torch.Tensor,
    offsets: torch.Tensor,
    resized_size: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """Average per-window maps ``[N, C, S, S]`` where windows overlap on the resized frame, then
    resize bilinearly to ``size``: ``[C, *size]`` (upstream's ``revert_window_logits_semantic``)."""
    c = window_maps.shape[1]
    total = window_maps.new_zeros((c, *resized_size))
    count = window_maps.new_zeros((1, *resized_size))
    for window, (start, end) in zip(window_maps, offsets.tolist()):
        _along_long_side(total, resized_size, start, end).add_(window)
        _along_long_side(count, resized_size, start, end).add_(1)
    return resize_map(total / count, tuple(size))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float: /255 then ImageNet mean/std, as ``EomtImageProcessor``
    (transformers' EoMT takes normalised pixels; upstream normalises inside its network)."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def patch_features(
    model: EomtForUniversalSegmentation, last_hidden_state: torch.Tensor
) -> torch.Tensor:
    """Final (layer-normed) patch tokens as a map: ``[B, Q + prefix + N, D] -> [B, D, g, g]``."""
    start = model.config.num_queries + model.embeddings.num_prefix_tokens
    tokens = last_hidden_state[:, start:, :]
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *model.grid_size)


# ----------------------------------------------------------------------------- segmenter
class EomtSegmenter:
    """Windowed EoMT inference as a ``Segmenter`` (``models/base.py``).

    ``raw_outputs`` runs one forward over the batch of windows of a frame and keeps per window
    ``mask_logits`` (float16 ``[N, Q, S/4, S/4]``), ``class_logits`` (float32 ``[N, Q, C+1]``),
    ``offsets`` ``[N, 2]``, ``frame_size`` and ``resized_size``; ``class_map`` rebuilds the class
    map ``[19, H, W]`` from them for any class temperature.

    Hooks for learned anomaly scores: with ``keep_features`` the raw outputs also hold the final
    patch features ``features`` ``[N, D, g, g]`` (float16); with a ``head`` module,
    ``head(outputs)``
    is called on the per-window outputs (``mask_logits`` and ``class_logits`` upsampled to the
    window, ``features`` when kept) and must return ``[N, 1, S, S]`` anomaly logits, which are
    stitched like class maps and returned by ``extra_scores`` under ``head_name``.

    Masked attention is switched off (``attn_mask_probs`` zeroed in place), as upstream evaluates,
    unless ``masked_attention=True`` (validation during training, which follows the annealing).
    A model whose ``num_labels`` is not the 19 Cityscapes classes is refused (ValueError).
    """

    supports_class_temperature = True

    def __init__(
        self,
        model: EomtForUniversalSegmentation,
        checkpoint: str,
        window_size: int | None = None,
        device: str | torch.device = "cpu",
        name: str = "eomt",
        keep_features: bool = False,
        head: nn.Module | None = None,
        head_name: str = "anomaly_head",
        masked_attention: bool = False,
        input_resize: str = "pil",
    ):
        if model.config.num_labels != NUM_CLASSES:
            raise ValueError(
                f"EomtSegmenter: the model {checkpoint!r} predicts {model.config.num_labels} "
                "classes, but the evaluation scores and the mIoU read its class map as the "
                f"{NUM_CLASSES} Cityscapes train-id classes in order. Use a Cityscapes EoMT (e.g. "
                "tue-mps/cityscapes_semantic_eomt_large_1024); a model of another label set "
                "(ADE20K, COCO) would be evaluated on the wrong classes."
            )
        image_size = model.config.image_size
        window_size = image_size if window_size is None else window_size
        if window_size != image_size:
            raise ValueError(
                f"window_size={window_size} does not match the model's "
                f"config.image_size={image_size}: transformers' EoMT has fixed position "
                "embeddings, so windows must be image_size squares. Leave window_size unset or "
                "pass the model's image_size."
            )
        self.model = model.to(device).eval()
        if not masked_attention:
            # Evaluated as upstream evaluates, whoever built the model (transformers'
            # from_pretrained
            # keeps the buffer at ones). Validation during training passes masked_attention=True.
            zero_attn_mask_probs(self.model)
        self.head = head.to(device).eval() if head is not None else None
        self.checkpoint, self.window_size, self.device, self.name = (
            str(checkpoint),
            window_size,
            torch.device(device),
            name,
        )
        self.keep_features, self.head_name = keep_features, head_name
        self.num_channels = model.config.num_labels
        self.input_resize = (
            input_resize  # "pil" as upstream; the evaluation sets it from its EvalProtocol
        )

    @property
    def cache_tag(self) -> str:
        """The settings that change the cached outputs, then what the zoo appends (a weight-file
        fingerprint)."""
        return f"S{self.window_size}|{self.input_resize}" + getattr(self, "_tag_extra", "")

    @cache_tag.setter
    def cache_tag(self, value: str) -> None:
        self._tag_extra = (
            value.split(self.cache_tag, 1)[1] if value.startswith(self.cache_tag) else f"|{value}"
        )

    def eval_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """Scores are compared at the frame's own resolution, as upstream evaluates."""
        return tuple(frame_size)

    @torch.no_grad()
    def forward_windows(
        self, windows: torch.Tensor, keep_features: bool = False
    ) -> dict[str, torch.Tensor]:
        """One forward over uint8 windows ``[N, 3, S, S]`` -> ``mask_logits`` ``[N, Q, S/4, S/4]``,
        ``class_logits`` ``[N, Q, C+1]`` (and ``features`` ``[N, D, g, g]``) on the model's
        device."""
        outputs = self.model(pixel_values=normalize(windows.to(self.device)))
        out = {
            "mask_logits": outputs.masks_queries_logits,
            "class_logits": outputs.class_queries_logits,
        }
        if keep_features or self.head is not None:
            out["features"] = patch_features(self.model, outputs.last_hidden_state)
        return out

    @torch.no_grad()
    def raw_outputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` uint8 ``[3, H, W]`` -> per-window CPU tensors to cache (see the class
        docstring)."""
        windows, offsets, resized_size = split_windows(
            torch.as_tensor(image), self.window_size, self.input_resize
        )
        out = self.forward_windows(windows, keep_features=self.keep_features)
        raw = {
            "mask_logits": out["mask_logits"].half().cpu(),
            "class_logits": out["class_logits"].float().cpu(),
            "offsets": offsets,
            "frame_size": torch.tensor(image.shape[-2:], dtype=torch.int64),
            "resized_size": torch.tensor(resized_size, dtype=torch.int64),
        }
        if self.keep_features:
            raw["features"] = out["features"].half().cpu()
        if self.head is not None:
            raw["head_logits"] = self.head(self._window_inputs(out)).float().cpu()
        return raw

    def _window_inputs(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.window_size
        return dict(
            out, mask_logits=F.interpolate(out["mask_logits"].float(), size=(s, s), mode="bilinear")
        )

    @torch.no_grad()
    def predict(
        self,
        image: torch.Tensor,
        class_temperature: float = 1.0,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Class map ``[C, H, W]`` of a uint8 frame ``[3, H, W]``, computed on the model's device
        without the float16 cache (training-time validation, notebooks)."""
        windows, offsets, resized_size = split_windows(
            torch.as_tensor(image), self.window_size, self.input_resize
        )
        out = self.forward_windows(windows)
        raw = dict(
            out,
            offsets=offsets,
            resized_size=torch.tensor(resized_size),
            frame_size=torch.tensor(image.shape[-2:]),
        )
        return self.class_map(raw, size, class_temperature)

    def window_class_maps(
        self, raw: dict[str, torch.Tensor], class_temperature: float = 1.0
    ) -> torch.Tensor:
        """Per-window class maps ``[N, C, S, S]``: mask logits upsampled to the window first, then
        ``per_pixel_logits``, as upstream and transformers' post-processing do."""
        s = self.window_size
        maps = [
            per_pixel_logits(
                F.interpolate(m[None].float(), size=(s, s), mode="bilinear"),
                c[None],
                class_temperature,
            )
            for m, c in zip(
                raw["mask_logits"], raw["class_logits"]
            )  # one window at a time bounds memory
        ]
        return torch.cat(maps)

    def class_map(
        self,
        raw: dict[str, torch.Tensor],
        size: tuple[int, int] | None = None,
        class_temperature: float = 1.0,
    ) -> torch.Tensor:
        """Per-pixel class map ``[C, H, W]`` float32 at ``size`` (default: the frame size)."""
        size = tuple(raw["frame_size"].tolist()) if size is None else tuple(size)
        maps = self.window_class_maps(raw, class_temperature)
        return stitch_windows(maps, raw["offsets"], tuple(raw["resized_size"].tolist()), size)

    def class_maps(
        self,
        raw: dict[str, torch.Tensor],
        size: tuple[int, int],
        class_temperatures: Sequence[float],
    ) -> Iterator[torch.Tensor]:
        """``class_map(raw, size, T)`` for each T in turn, upsampling the masks of the windows
        only once (a class temperature changes the fusion, not the masks)."""
        s = self.window_size
        masks = [
            F.interpolate(m[None].float(), size=(s, s), mode="bilinear").sigmoid_()
            for m in raw["mask_logits"]
        ]
        for t in class_temperatures:
            maps = torch.cat(
                [fuse_masks(m, c[None], t) for m, c in zip(masks, raw["class_logits"])]
            )
            yield stitch_windows(
                maps, raw["offsets"], tuple(raw["resized_size"].tolist()), tuple(size)
            )

    def extra_scores(
        self, raw: dict[str, torch.Tensor], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """``{head_name: [H, W]}`` anomaly logits of the head when one is attached, else ``{}``."""
        if "head_logits" not in raw:
            return {}
        stitched = stitch_windows(
            raw["head_logits"], raw["offsets"], tuple(raw["resized_size"].tolist()), tuple(size)
        )
        return {self.head_name: stitched[0]}


def load_eomt(
    source: str | Path | EomtConfig = DEFAULT_CHECKPOINT,
    device: str | torch.device = "cpu",
    name: str = "eomt",
    window_size: int | None = None,
    **build_kwargs,
) -> EomtSegmenter:
    """``build_eomt(source, **build_kwargs)`` ready for evaluation (eval mode, masked attention
    off) wrapped in an ``EomtSegmenter``; the checkpoint recorded with results is
    ``str(source)``."""
    model = build_eomt(source, for_eval=True, **build_kwargs)
    checkpoint = "random-init" if isinstance(source, EomtConfig) else str(source)
    return EomtSegmenter(
        model, checkpoint=checkpoint, window_size=window_size, device=device, name=name
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or those with ``requires_grad``)."""
    params: Iterable[nn.Parameter] = model.parameters()
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)
