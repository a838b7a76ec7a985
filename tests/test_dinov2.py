"""EoMT started from a timm DINOv2 ViT (``models.dinov2``): timm's own forward is the reference.

No download: the timm models are randomly initialised (small widths and depths through timm's
keyword arguments), and every tensor is re-drawn so that layer scale, tokens and position
embeddings all move the output.
"""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from anomalyseg.models.checkpoints import CheckpointError
from anomalyseg.models.dinov2 import eomt_from_dinov2, eomt_from_timm, parse_dinov2_spec

SMALL = {
    "pretrained": False,
    "depth": 4,
    "embed_dim": 64,
    "num_heads": 4,
    "img_size": 56,
    "patch_size": 8,
    "num_classes": 0,
}


def random_vit(name: str, seed: int = 0, **kwargs):
    """A timm ViT with every parameter drawn at random (timm starts layer scale at 1e-5 and the
    register tokens at 0, which would hide a mis-mapped tensor)."""
    torch.manual_seed(seed)
    vit = timm.create_model(name, **{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.3)
    return vit


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_small_patch14_dinov2"])
def test_mapped_backbone_equals_timm(name):
    """Tokens before the first query block (captured in EoMT's own forward) equal timm's blocks up
    to there, and the whole backbone without queries equals timm's forward_features; with
    registers (upstream's) and without (the class token's position embedding folded into it)."""
    vit = random_vit(name)
    blocks = 2
    model = eomt_from_timm(vit, num_queries=5, num_blocks=blocks).eval()
    layers = len(vit.blocks)
    x = torch.randn(2, 3, 56, 56)
    captured = {}
    hook = model.layers[layers - blocks].register_forward_pre_hook(
        lambda _m, args: captured.setdefault("tokens", args[0])
    )
    with torch.no_grad():
        model.attn_mask_probs.zero_()
        model(pixel_values=x)
        hook.remove()
        patches, prefix = vit.forward_intermediates(
            x,
            indices=[layers - blocks - 1],
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        )[0]
        before_queries = torch.cat([prefix, patches], dim=1)  # [B, 1 + R + N, D]
        reference = vit.forward_features(x)
        tokens = model.embeddings(x)
        for layer in model.layers:
            tokens = layer(tokens)
        backbone = model.layernorm(tokens)
    queries = captured["tokens"][:, :5]
    assert torch.equal(
        queries, model.query.weight[None].expand(2, -1, -1)
    )  # the queries enter here
    assert before_queries.shape == (2, 1 + vit.num_reg_tokens + 49, 64)
    torch.testing.assert_close(captured["tokens"][:, 5:], before_queries, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone, reference, rtol=1e-5, atol=1e-5)
    assert model.config.num_register_tokens == vit.num_reg_tokens and model.config.image_size == 56


def test_a_layout_eomt_cannot_reproduce_is_refused():
    """A supervised ViT (no layer scale) and the SwiGLU giant DINOv2 are refused with the reason,
    not loaded half-way."""
    with pytest.raises(ValueError, match="without layer scale"):
        eomt_from_timm(
            timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=0)
        )
    giant = timm.create_model(
        "vit_giant_patch14_dinov2",
        pretrained=False,
        depth=1,
        embed_dim=96,
        num_heads=4,
        img_size=56,
        num_classes=0,
    )
    with pytest.raises(ValueError, match="SwiGLU"):
        eomt_from_timm(giant)
    with pytest.raises(ValueError, match="num_blocks"):
        eomt_from_timm(random_vit("vit_small_patch14_dinov2"), num_blocks=9)


def test_start_from_a_local_dinov2_file_resamples_as_upstream(tmp_path):
    """``dinov2:<name>@<file>``: timm reads the file, resamples the 14-pixel patch projection and
    the 518-pixel position grid to upstream's patch 16 (here at 112); blocks arrive unchanged."""
    torch.manual_seed(1)
    vit = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0
    )  # the file's layout
    stored = {k: v.clone() for k, v in vit.state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(stored, str(path))
    model = eomt_from_dinov2(
        f"dinov2:vit_small_patch14_reg4_dinov2@{path}", image_size=112, num_blocks=1, num_queries=7
    )
    d = 384
    assert (
        model.config.patch_size == 16
        and model.config.image_size == 112
        and model.config.num_labels == 19
    )
    assert model.embeddings.patch_embeddings.projection.weight.shape == (d, 3, 16, 16)
    assert model.embeddings.position_embeddings.weight.shape == (7 * 7, d)
    qkv = stored["blocks.1.attn.qkv.weight"]
    assert torch.equal(model.layers[1].attention.q_proj.weight, qkv[:d])
    assert torch.equal(model.layers[1].attention.v_proj.weight, qkv[2 * d :])
    assert torch.equal(model.layers[0].layer_scale2.lambda1, stored["blocks.0.ls2.gamma"])
    assert torch.equal(model.embeddings.register_tokens, stored["reg_token"])
    assert torch.equal(model.layernorm.weight, stored["norm.weight"])


def test_train_eomt_names_a_bad_dinov2_start(tmp_path):
    """train_eomt's start-from hook: an unknown timm name, a missing weight file and a bare prefix
    are one message naming the setting, before any data is read."""
    from anomalyseg.training.eomt import train_eomt
    from anomalyseg.training.settings import TrainSettings

    one_step = TrainSettings(max_steps=1)
    with pytest.raises(ValueError, match="timm has no model 'vit_nonexistent'"):
        train_eomt("dinov2:vit_nonexistent", tmp_path / "cityscapes", tmp_path / "out", one_step)
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        train_eomt(
            f"dinov2:vit_small_patch14_dinov2@{tmp_path / 'missing.safetensors'}",
            tmp_path / "cityscapes",
            tmp_path / "out",
            one_step,
        )
    with pytest.raises(ValueError, match="expected 'dinov2:<timm model name>'"):
        parse_dinov2_spec("dinov2:")
