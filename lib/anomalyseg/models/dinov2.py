"""EoMT that starts from DINOv2 weights through timm, as upstream tue-mps/eomt trains it.

Upstream's encoder is ``timm.create_model("vit_large_patch14_reg4_dinov2", pretrained=True,
img_size=1024, patch_size=16, num_classes=0)`` (timm resamples the 14-pixel patch projection and
the position embeddings to the 16-pixel grid), and its ``.ckpt`` files store that ViT's own timm
keys under ``network.encoder.backbone.``. So a timm ViT's state dict, put under that prefix, is
exactly what ``models.eomt.UPSTREAM_KEY_MAP`` already maps into transformers'
``EomtForUniversalSegmentation``: this module adds no second key map.

- ``eomt_from_timm(vit)``: an EoMT whose backbone (embeddings, every ViT block, final norm) holds
  the weights of a timm ViT; the queries and heads keep their random initialisation.
- ``timm_dinov2(name)``: the timm ViT as upstream builds it (pretrained by default; a local weight
  file for machines without internet).
- ``eomt_from_dinov2("dinov2:<timm model name>[@<weight file>]")``: both, with upstream's
  Cityscapes semantic recipe (1024 windows, patch 16, 200 queries, 4 query blocks, 19 classes).
  This is what ``training.eomt.train_eomt("dinov2:...", ...)`` starts from.

The hub checkpoint (``models.eomt.DEFAULT_CHECKPOINT``) stays the default for evaluation and
Outlier Exposure; this is only the start of a training from scratch on real Cityscapes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import EomtConfig, EomtForUniversalSegmentation

from ..labels import NUM_CLASSES
from .checkpoints import CheckpointError, fit_state_dict
from .eomt import _split_qkv, upstream_key_map

DINOV2_PREFIX = "dinov2:"
DEFAULT_DINOV2 = "vit_large_patch14_reg4_dinov2"  # upstream EoMT-L's backbone
# Where upstream's checkpoints keep the timm ViT: its keys are the timm keys under this prefix.
UPSTREAM_BACKBONE_PREFIX = "network.encoder.backbone."
# Upstream's configs/dinov2/cityscapes/semantic/eomt_large_1024.yaml.
UPSTREAM_CITYSCAPES = {"image_size": 1024, "patch_size": 16, "num_queries": 200, "num_blocks": 4}
# The parts of EoMT that hold the ViT; every one of their tensors must come from the timm model.
_BACKBONE_PREFIXES = ("embeddings.", "layers.", "layernorm.")
# timm classifier parts that forward_features never uses (present when num_classes > 0).
_CLASSIFIER_PREFIXES = ("head.", "fc_norm.", "head_drop.")


def _refuse(vit: nn.Module, what: str) -> None:
    raise ValueError(
        f"eomt_from_timm: the timm model {type(vit).__name__} "
        f"({getattr(vit, 'pretrained_cfg', {}).get('architecture', '?')}) {what}. Expected a "
        "DINOv2-style timm VisionTransformer as upstream EoMT uses (e.g. "
        "vit_large_patch14_reg4_dinov2, or vit_small/base_patch14_dinov2): a class token, layer "
        "scale, a GELU MLP and a square input size."
    )


def _check_structure(vit: nn.Module) -> None:
    """Refuse the timm ViTs whose computation transformers' EoMT does not reproduce."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer):
        _refuse(vit, "is not a timm VisionTransformer")
    if vit.cls_token is None:
        _refuse(vit, "has no class token")
    if getattr(vit, "dynamic_img_size", False):
        _refuse(vit, "was built with dynamic_img_size=True; EoMT's position embeddings are fixed")
    if not isinstance(vit.norm_pre, nn.Identity):
        _refuse(vit, "normalises before the blocks (norm_pre)")
    size, patch = tuple(vit.patch_embed.img_size), tuple(vit.patch_embed.patch_size)
    if size[0] != size[1] or patch[0] != patch[1]:
        _refuse(vit, f"has a non-square input {size} or patch {patch} (img_size / patch_size)")
    for block in vit.blocks:
        if type(block.mlp).__name__ != "Mlp" or not isinstance(block.mlp.act, nn.GELU):
            _refuse(
                vit, f"has a {type(block.mlp).__name__} MLP (giant DINOv2 uses SwiGLU, not mapped)"
            )
        if not hasattr(block.ls1, "gamma") or not isinstance(block.attn.q_norm, nn.Identity):
            _refuse(vit, "has blocks without layer scale or with q/k normalisation")


def eomt_from_timm(
    vit: nn.Module,
    *,
    num_labels: int = NUM_CLASSES,
    num_queries: int = UPSTREAM_CITYSCAPES["num_queries"],
    num_blocks: int = UPSTREAM_CITYSCAPES["num_blocks"],
    **config_overrides,
) -> EomtForUniversalSegmentation:
    """transformers' EoMT whose backbone holds the weights of the timm ViT ``vit``.

    The ViT (width ``D``, ``L`` blocks, patch ``P``, square input ``S``, ``R`` register tokens)
    gives the ``EomtConfig``: ``hidden_size=D``, ``num_hidden_layers=L``, ``patch_size=P``,
    ``image_size=S``, heads, MLP ratio and LayerNorm eps read from its modules; ``num_blocks`` of
    the L blocks also process ``num_queries`` queries (upstream: the last 4 of 24, 200 queries)
    and ``num_labels`` classes are predicted; ``config_overrides`` set any other ``EomtConfig``
    field. Its state dict, under ``UPSTREAM_BACKBONE_PREFIX``, is loaded through the upstream key
    map (fused ``qkv`` ``[3D, D]`` split into q/k/v; ``pos_embed`` ``[1, (S/P)^2, D]`` ->
    ``[(S/P)^2, D]``). The queries, class head, mask head and upscaling stay randomly initialised.

    Then EoMT's tokens before the first query block, ``[B, 1 + R + (S/P)^2, D]`` for pixels
    ``[B, 3, S, S]`` normalised with ImageNet mean/std (``models.eomt.normalize``), are those of
    timm's ``vit.blocks[:L - num_blocks]``, and its backbone run without queries equals
    ``vit.forward_features``. The model is returned in train mode with masked attention on
    (``attn_mask_probs`` at 1, where upstream's annealing starts).

    A ViT whose class token also gets a position embedding (DINOv2 without registers) has that
    embedding added into the class token, which is the same computation.

    Raises ValueError for a timm model transformers' EoMT cannot reproduce (no class token,
    SwiGLU MLP, no layer scale, non-square input, dynamic size) and
    ``CheckpointError`` when a backbone tensor found no place (the report names them).
    """
    _check_structure(vit)
    width = vit.embed_dim
    patch = int(vit.patch_embed.patch_size[0])
    values = {
        "hidden_size": width,
        "num_hidden_layers": len(vit.blocks),
        "num_attention_heads": vit.blocks[0].attn.num_heads,
        "patch_size": patch,
        "image_size": int(vit.patch_embed.img_size[0]),
        "num_register_tokens": int(vit.num_reg_tokens),
        "mlp_ratio": vit.blocks[0].mlp.fc1.out_features // width,
        "layer_norm_eps": vit.norm.eps,
        "num_labels": num_labels,
        "num_queries": num_queries,
        "num_blocks": num_blocks,
        # masks at stride 4, as upstream: log2(16) - 2 = 2 upscaling blocks
        "num_upscale_blocks": max(1, int(math.log2(patch)) - 2),
    }
    if not 1 <= num_blocks <= values["num_hidden_layers"]:
        raise ValueError(
            f"eomt_from_timm: num_blocks={num_blocks}, but the ViT has "
            f"{values['num_hidden_layers']} "
            "blocks; num_blocks (the last blocks that also process the queries) must be 1..that."
        )
    model = EomtForUniversalSegmentation(EomtConfig(**{**values, **config_overrides}))
    own = {
        k: v.detach().clone()
        for k, v in vit.state_dict().items()
        if not k.startswith(_CLASSIFIER_PREFIXES)
    }
    if not vit.no_embed_class:
        # DINOv2 without registers adds a position embedding to the class token too; transformers'
        # EoMT adds them to the patches only, so that one moves into the (constant) class token.
        own["cls_token"] = own["cls_token"] + own["pos_embed"][:, :1]
        own["pos_embed"] = own["pos_embed"][:, 1:]
    state = {UPSTREAM_BACKBONE_PREFIX + k: v for k, v in own.items()}
    report = fit_state_dict(
        model,
        _split_qkv(state),
        key_map=upstream_key_map,
        strict=False,
        source=f"timm {vit.pretrained_cfg.get('architecture', type(vit).__name__)}",
    )
    expected = model.state_dict()
    unloaded = [
        k for k in report.missing if k.startswith(_BACKBONE_PREFIXES) and expected[k].numel()
    ]
    if report.unexpected or report.shape_mismatch or unloaded:
        raise CheckpointError(
            f"eomt_from_timm: the weights of the timm ViT do not fill EoMT's backbone: {report}; "
            f"backbone tensors left at random: {unloaded[:5]}. The timm model's layout differs "
            "from upstream EoMT's DINOv2 (compare the names and shapes above)."
        )
    return model.train()


def timm_dinov2(
    name: str = DEFAULT_DINOV2,
    *,
    image_size: int = UPSTREAM_CITYSCAPES["image_size"],
    patch_size: int = UPSTREAM_CITYSCAPES["patch_size"],
    pretrained: bool = True,
    weights: str | Path | None = None,
    **timm_kwargs,
) -> nn.Module:
    """``timm.create_model(name, pretrained, img_size=image_size, patch_size=patch_size,
    num_classes=0, **timm_kwargs)``, upstream EoMT's encoder; timm resamples pretrained patch and
    position embeddings to the new sizes. ``weights``: a local weight file (``.safetensors`` /
    ``.pth`` as timm's hub folder holds it) read instead of downloading. A name timm does not know,
    a missing file or a failed download raise ``ValueError`` / ``CheckpointError`` naming them."""
    import timm

    if not timm.is_model(name):
        known = ", ".join(timm.list_models("*dinov2*")) or "none"
        raise ValueError(
            f"{DINOV2_PREFIX}{name}: timm has no model {name!r}. Its DINOv2 models: {known}."
        )
    kwargs = {"img_size": image_size, "patch_size": patch_size, "num_classes": 0, **timm_kwargs}
    if weights is not None:
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise CheckpointError(
                f"{DINOV2_PREFIX}{name}@{weights}: the weight file {str(weights)!r} does not "
                f"exist. Expected the timm weights of {name} (model.safetensors of the hub "
                f"repository timm/{name}.*)."
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # hub, network and file errors of several types
        where = f"from {weights}" if weights is not None else "from the Hugging Face hub"
        raise CheckpointError(
            f"{DINOV2_PREFIX}{name}: timm could not load the pretrained weights {where} (a file "
            f"of another model gives missing keys or mis-shaped tensors; {type(e).__name__}: "
            f"{' '.join(str(e).split())[:400]}). Without internet, download timm/{name}'s "
            "model.safetensors elsewhere and start from "
            f"{DINOV2_PREFIX}{name}@/path/to/model.safetensors."
        ) from e


def parse_dinov2_spec(spec: str) -> tuple[str, Path | None]:
    """``"dinov2:<timm name>[@<weight file>]"`` -> ``(name, file or None)``; else ValueError."""
    if (
        not isinstance(spec, str)
        or not spec.startswith(DINOV2_PREFIX)
        or not spec[len(DINOV2_PREFIX) :].strip()
    ):
        raise ValueError(
            f"start-from {spec!r} is not a DINOv2 start: expected "
            f"'{DINOV2_PREFIX}<timm model name>' (e.g. '{DINOV2_PREFIX}{DEFAULT_DINOV2}', upstream "
            "EoMT-L's backbone), optionally '@<local weight file>'."
        )
    name, _, weights = spec[len(DINOV2_PREFIX) :].partition("@")
    return name.strip(), (Path(weights) if weights else None)


def eomt_from_dinov2(
    spec: str = DINOV2_PREFIX + DEFAULT_DINOV2, *, num_labels: int = NUM_CLASSES, **recipe
) -> EomtForUniversalSegmentation:
    """EoMT on DINOv2 weights as upstream starts a Cityscapes training: ``spec`` is
    ``"dinov2:<timm model name>"`` (downloaded by timm) or ``"dinov2:<name>@<weight file>"``;
    ``recipe`` overrides ``UPSTREAM_CITYSCAPES`` (``image_size``, ``patch_size``, ``num_queries``,
    ``num_blocks``). Returns ``eomt_from_timm(timm_dinov2(...))`` (train mode)."""
    name, weights = parse_dinov2_spec(spec)
    unknown = sorted(set(recipe) - set(UPSTREAM_CITYSCAPES))
    if unknown:
        raise ValueError(
            f"eomt_from_dinov2: unknown settings {unknown}; expected {sorted(UPSTREAM_CITYSCAPES)}."
        )
    r = {**UPSTREAM_CITYSCAPES, **recipe}
    vit = timm_dinov2(name, image_size=r["image_size"], patch_size=r["patch_size"], weights=weights)
    with torch.no_grad():
        return eomt_from_timm(
            vit, num_labels=num_labels, num_queries=r["num_queries"], num_blocks=r["num_blocks"]
        )
