"""EoMT through transformers: loading, per-pixel logits, windowed inference.

Each result is checked against an independent reference: transformers' own
``EomtImageProcessor`` (window cutting, stitching, semantic post-processing), hand-computed
cases, or the original model before a save/convert round trip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EomtForUniversalSegmentation, EomtImageProcessor

from anomalyseg.data.io import read_rgb
from anomalyseg.models.base import Segmenter
from anomalyseg.models.checkpoints import CheckpointError
from anomalyseg.models.eomt import (
    EomtSegmenter,
    build_eomt,
    load_eomt,
    normalize,
    per_pixel_logits,
    scaled_size,
    split_windows,
    stitch_windows,
    window_offsets,
)
from helpers import tiny_eomt_config


def tiny_config(**kw):
    return tiny_eomt_config(**{"image_size": 64, "num_register_tokens": 2, **kw})


@pytest.fixture(scope="module")
def tiny_model() -> EomtForUniversalSegmentation:
    torch.manual_seed(0)
    return build_eomt(tiny_config())


def hf_pipeline(model, image: torch.Tensor, window: int) -> torch.Tensor:
    """transformers' own windowed semantic inference: processor split -> model -> post-process."""
    proc = EomtImageProcessor(
        do_split_image=True, size={"shortest_edge": window, "longest_edge": None}
    )
    inputs = proc(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], patch_offsets=inputs["patch_offsets"])
    res = proc.post_process_semantic_segmentation(
        out,
        target_sizes=[tuple(image.shape[-2:])],
        size={"shortest_edge": window, "longest_edge": None},
        return_segmentation_scores=True,
    )
    return res[0].segmentation_scores


# ----------------------------------------------------------------------------- per-pixel logits
def test_per_pixel_logits_hand_computed():
    # two queries, two classes (+ no-object), one pixel row of two pixels
    class_logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]]])
    mask_logits = torch.tensor([[[[0.0, 2.0]], [[-1.0, 1.0]]]])
    for t in (1.0, 2.0):
        p = [[math.exp(v / t) for v in q] for q in class_logits[0].tolist()]
        p = [[v / sum(q) for v in q] for q in p]
        sig = [[1 / (1 + math.exp(-v)) for v in row[0]] for row in mask_logits[0].tolist()]
        expected = [[p[0][c] * sig[0][x] + p[1][c] * sig[1][x] for x in range(2)] for c in range(2)]
        got = per_pixel_logits(mask_logits, class_logits, class_temperature=t)
        assert got.shape == (1, 2, 1, 2)
        torch.testing.assert_close(got[0, :, 0], torch.tensor(expected))


def test_per_pixel_logits_matches_transformers_post_processing(tiny_model):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = tiny_model(pixel_values=pixels)
    proc = EomtImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    ref = proc.post_process_semantic_segmentation(
        out, target_sizes=[(64, 64)] * 2, return_segmentation_scores=True
    )
    ours = per_pixel_logits(
        F.interpolate(out.masks_queries_logits, size=(64, 64), mode="bilinear"),
        out.class_queries_logits,
    )
    for i in range(2):
        assert torch.equal(ours[i].argmax(0), ref[i].segmentation)
        torch.testing.assert_close(ours[i], ref[i].segmentation_scores)


def test_per_pixel_logits_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, Q, H, W\]"):
        per_pixel_logits(torch.zeros(2, 5, 4, 4), torch.zeros(2, 6, 20))
    with pytest.raises(ValueError, match="class_temperature"):
        per_pixel_logits(torch.zeros(1, 5, 4, 4), torch.zeros(1, 5, 20), class_temperature=0)


# ----------------------------------------------------------------------------- windows
def test_scaled_size_rounds_like_upstream():
    # 720x1280 with S=128: factor 128/720, long side 227.56 -> upstream rounds to 228
    assert scaled_size((720, 1280), 128) == (128, 228)
    assert scaled_size((1024, 2048), 1024) == (1024, 2048)  # Cityscapes at 1024: no resize
    assert window_offsets((1024, 2048), 1024) == [(0, 1024), (1024, 2048)]
    assert window_offsets((128, 228), 128) == [(0, 128), (100, 228)]
    assert window_offsets((300, 100), 100) == [
        (0, 100),
        (100, 200),
        (200, 300),
    ]  # portrait: along height


@pytest.mark.parametrize("crop,window", [((720, 1280), 144), ((333, 517), 64)])
def test_windows_match_transformers_processor(realdata, crop, window):
    """Windows and offsets equal ``EomtImageProcessor(do_split_image=True)``'s on a real photo
    (the full 1280x720 frame and an odd-size non-square crop of it); the processor resizes the
    tensor with torchvision, our ``input_resize="tensor"``."""
    image = torch.from_numpy(read_rgb(realdata / "images" / "tractor.png")).permute(2, 0, 1)
    image = image[:, : crop[0], : crop[1]].contiguous()
    windows, offsets, resized = split_windows(image, window, input_resize="tensor")
    proc = EomtImageProcessor(
        do_split_image=True, size={"shortest_edge": window, "longest_edge": None}
    )
    ref = proc(images=[image], return_tensors="pt")
    assert [tuple(o.tolist()[1:]) for o in ref["patch_offsets"]] == [
        tuple(o) for o in offsets.tolist()
    ]
    assert len(offsets) == math.ceil(max(resized) / window) >= 2
    torch.testing.assert_close(normalize(windows), ref["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("crop,window", [((720, 1280), 144), ((333, 517), 64)])
def test_default_windows_are_upstreams_pil_resize(realdata, crop, window):
    """By default the frame is resized as upstream's ``window_imgs_semantic`` does: a PIL image,
    ``resize((new_w, new_h), Image.BILINEAR)`` with new size ``round(s * max(S/h, S/w))``, then
    windows cut along the long side (re-derived here from that description)."""
    from PIL import Image

    image = torch.from_numpy(read_rgb(realdata / "images" / "tractor.png")).permute(2, 0, 1)
    image = image[:, : crop[0], : crop[1]].contiguous()
    h, w = crop
    factor = max(window / h, window / w)
    new_h, new_w = round(h * factor), round(w * factor)
    ref = np.array(
        Image.fromarray(image.permute(1, 2, 0).numpy()).resize((new_w, new_h), Image.BILINEAR)
    )
    ref = torch.from_numpy(ref).permute(2, 0, 1)
    windows, offsets, resized = split_windows(image, window)
    assert resized == (new_h, new_w)
    for win, (start, end) in zip(windows, offsets.tolist()):
        expected = ref[:, start:end, :] if new_h > new_w else ref[:, :, start:end]
        assert torch.equal(win, expected)
    # torchvision's antialiased tensor resize is close to PIL but not equal (the old default)
    tensor_windows = split_windows(image, window, input_resize="tensor")[0]
    diff = (tensor_windows.int() - windows.int()).abs()
    assert 0 < diff.max() <= 2


def test_stitching_matches_transformers_merge(realdata):
    frame, window = (333, 517), 64
    resized = scaled_size(frame, window)
    offsets = torch.tensor(window_offsets(resized, window))
    maps = torch.randn(len(offsets), 4, window, window)
    ours = stitch_windows(maps, offsets, resized, frame)
    proc = EomtImageProcessor()
    ref = proc.merge_image_patches(
        maps,
        [(0, s, e) for s, e in offsets.tolist()],
        [frame],
        {"shortest_edge": window, "longest_edge": None},
    )[0]
    torch.testing.assert_close(ours, ref)
    # overlap is averaged, not summed: constant windows stitch to the same constant
    flat = stitch_windows(
        torch.full((len(offsets), 1, window, window), 3.0), offsets, resized, resized
    )
    torch.testing.assert_close(flat, torch.full((1, *resized), 3.0))


@pytest.mark.parametrize("crop,window", [((720, 1280), 144), ((333, 517), 64)])
def test_segmenter_matches_transformers_pipeline(realdata, crop, window):
    """Whole windowed inference on a real photo (full 1280x720 frame, and an odd-size crop)
    against transformers' processor + model + semantic post-processing."""
    torch.manual_seed(5)
    model = build_eomt(tiny_config(image_size=window))
    image = torch.from_numpy(read_rgb(realdata / "images" / "phone_box.png")).permute(2, 0, 1)
    image = image[:, : crop[0], : crop[1]].contiguous()
    seg = EomtSegmenter(model, checkpoint="random-init")
    assert isinstance(seg, Segmenter)
    raw = seg.raw_outputs(image)
    assert raw["mask_logits"].dtype == torch.float16 and raw["class_logits"].dtype == torch.float32
    assert raw["mask_logits"].shape == (2, 6, window // 4, window // 4)
    assert raw["frame_size"].tolist() == list(crop)
    ours = seg.class_map(raw, size=crop)
    ref = hf_pipeline(model, image, window)
    assert ours.shape == (19, *crop) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=0)  # float16 cache of the mask logits
    assert (ours.argmax(0) == ref.argmax(0)).float().mean() > 0.999


def test_class_temperature_recomputed_from_cache(tiny_model):
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8)
    seg = EomtSegmenter(tiny_model, checkpoint="random-init")
    raw = seg.raw_outputs(image)
    default, t2 = seg.class_map(raw, (50, 90)), seg.class_map(raw, (50, 90), class_temperature=2.0)
    assert not torch.allclose(default, t2)
    # the temperature enters only through the class softmax: same as dividing cached class logits
    scaled = dict(raw, class_logits=raw["class_logits"] / 2.0)
    torch.testing.assert_close(t2, seg.class_map(scaled, (50, 90)))
    assert seg.extra_scores(raw, (50, 90)) == {}
    assert seg.eval_size((50, 90)) == (50, 90)


def test_class_maps_share_the_masks_and_equal_class_map(tiny_model):
    from anomalyseg.evaluate import class_argmax, class_maps

    torch.manual_seed(3)
    seg = EomtSegmenter(tiny_model, checkpoint="random-init")
    raw = seg.raw_outputs(torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8))
    temps = (0.5, 1.0, 2.0)
    for t, m in zip(temps, class_maps(seg, raw, (50, 90), temps)):
        torch.testing.assert_close(m, seg.class_map(raw, (50, 90), class_temperature=t))
        assert torch.equal(class_argmax(m), m.argmax(0))


def test_features_and_head_hook(tiny_model):
    class MassHead(
        nn.Module
    ):  # anomaly logit = -total class mass; linear, so stitching commutes with it
        def forward(self, out):
            maps = per_pixel_logits(out["mask_logits"], out["class_logits"])
            assert out["features"].shape[1:] == (32, 4, 4)
            return -maps.sum(1, keepdim=True)

    image = torch.randint(0, 256, (3, 40, 100), dtype=torch.uint8)
    seg = EomtSegmenter(tiny_model, checkpoint="random-init", keep_features=True, head=MassHead())
    raw = seg.raw_outputs(image)
    assert raw["features"].shape == (len(raw["offsets"]), 32, 4, 4)
    score = seg.extra_scores(raw, (40, 100))["anomaly_head"]
    # the head map is stitched exactly like the class map it was computed from
    torch.testing.assert_close(
        score, -seg.class_map(raw, (40, 100)).sum(0), atol=1e-2, rtol=0
    )  # head saw float32


def test_window_size_must_match_model(tiny_model):
    with pytest.raises(ValueError, match="image_size=64"):
        EomtSegmenter(tiny_model, checkpoint="x", window_size=128)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        split_windows(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 64)


# ----------------------------------------------------------------------------- masked attention
def test_masked_attention_is_off_after_loading(tmp_path):
    torch.manual_seed(3)
    model = EomtForUniversalSegmentation(tiny_config()).eval()
    assert model.attn_mask_probs.tolist() == [1.0, 1.0]  # transformers' initial value
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        masked = model(pixel_values=pixels).class_queries_logits
        model.attn_mask_probs.zero_()
        unmasked = model(pixel_values=pixels).class_queries_logits
        model.attn_mask_probs.fill_(1.0)
    assert not torch.allclose(masked, unmasked, atol=1e-4)  # the buffer really switches attention

    model.save_pretrained(tmp_path / "folder")  # saved with probs = 1
    loaded = build_eomt(tmp_path / "folder")
    assert loaded.attn_mask_probs.tolist() == [0.0, 0.0] and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).class_queries_logits, unmasked)
    assert load_eomt(tmp_path / "folder").model.attn_mask_probs.tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------- loading
def test_local_folder_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    seg = load_eomt(tmp_path / "m", name="eomt_tiny")
    assert (
        seg.checkpoint == str(tmp_path / "m") and seg.name == "eomt_tiny" and seg.window_size == 64
    )
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            seg.model(pixel_values=pixels).masks_queries_logits,
            tiny_model(pixel_values=pixels).masks_queries_logits,
        )


def test_unreachable_hub_and_bad_folder_errors(tmp_path):
    with pytest.raises(OSError, match="huggingface-cli download tue-mps/no-such-eomt"):
        build_eomt("tue-mps/no-such-eomt", local_files_only=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_eomt(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_eomt(tmp_path / "missing.ckpt")


def to_upstream(model: EomtForUniversalSegmentation) -> dict[str, torch.Tensor]:
    """A tue-mps/eomt state dict written by hand from upstream's module names (timm DINOv2 under
    ``network.encoder.backbone``, fused qkv, ``pos_embed`` with a batch axis), independent of the
    loader's key table."""
    sd, cfg = model.state_dict(), model.config
    bb = "network.encoder.backbone"
    up = {
        f"{bb}.cls_token": sd["embeddings.cls_token"],
        f"{bb}.reg_token": sd["embeddings.register_tokens"],
        f"{bb}.pos_embed": sd["embeddings.position_embeddings.weight"][None],
        f"{bb}.patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        f"{bb}.patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        f"{bb}.norm.weight": sd["layernorm.weight"],
        f"{bb}.norm.bias": sd["layernorm.bias"],
        "network.q.weight": sd["query.weight"],
        "network.class_head.weight": sd["class_predictor.weight"],
        "network.class_head.bias": sd["class_predictor.bias"],
        "network.attn_mask_probs": torch.ones(cfg.num_blocks),
        "network.encoder.pixel_mean": torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        "network.encoder.pixel_std": torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
        "criterion.empty_weight": sd["criterion.empty_weight"],
    }
    for i in range(cfg.num_hidden_layers):
        hf, ub = f"layers.{i}", f"{bb}.blocks.{i}"
        for p in ("weight", "bias"):
            up[f"{ub}.norm1.{p}"], up[f"{ub}.norm2.{p}"] = (
                sd[f"{hf}.norm1.{p}"],
                sd[f"{hf}.norm2.{p}"],
            )
            up[f"{ub}.attn.qkv.{p}"] = torch.cat(
                [sd[f"{hf}.attention.{n}_proj.{p}"] for n in "qkv"]
            )
            up[f"{ub}.attn.proj.{p}"] = sd[f"{hf}.attention.out_proj.{p}"]
            up[f"{ub}.mlp.fc1.{p}"], up[f"{ub}.mlp.fc2.{p}"] = (
                sd[f"{hf}.mlp.fc1.{p}"],
                sd[f"{hf}.mlp.fc2.{p}"],
            )
        up[f"{ub}.ls1.gamma"], up[f"{ub}.ls2.gamma"] = (
            sd[f"{hf}.layer_scale1.lambda1"],
            sd[f"{hf}.layer_scale2.lambda1"],
        )
    for j, k in enumerate((0, 2, 4)):
        for p in ("weight", "bias"):
            up[f"network.mask_head.{k}.{p}"] = sd[f"mask_head.fc{j + 1}.{p}"]
    for i in range(cfg.num_upscale_blocks):
        hf = f"upscale_block.block.{i}"
        up[f"network.upscale.{i}.conv1.weight"], up[f"network.upscale.{i}.conv1.bias"] = (
            sd[f"{hf}.conv1.weight"],
            sd[f"{hf}.conv1.bias"],
        )
        up[f"network.upscale.{i}.conv2.weight"] = sd[f"{hf}.conv2.weight"]
        up[f"network.upscale.{i}.norm.weight"], up[f"network.upscale.{i}.norm.bias"] = (
            sd[f"{hf}.layernorm2d.weight"],
            sd[f"{hf}.layernorm2d.bias"],
        )
    assert (
        len(up) == len(sd) - 3 * cfg.num_hidden_layers * 2 + 2 * cfg.num_hidden_layers + 2
    )  # qkv fused, pixel stats added
    return {k: v.clone() for k, v in up.items()}


@pytest.mark.parametrize("patch_size,heads", [(16, 2), (8, 4)])
def test_upstream_checkpoint_maps_every_key(tmp_path, patch_size, heads):
    torch.manual_seed(4)
    ref = EomtForUniversalSegmentation(
        tiny_config(patch_size=patch_size, num_attention_heads=heads)
    ).eval()
    ref.attn_mask_probs.zero_()
    up = to_upstream(ref)
    torch.save({"state_dict": up, "epoch": 3}, tmp_path / "last.ckpt")  # Lightning layout
    torch.save(up, tmp_path / "pytorch_model.bin")  # hub layout
    pixels = torch.randn(1, 3, 64, 64)
    for name in ("last.ckpt", "pytorch_model.bin"):
        model = build_eomt(
            tmp_path / name, num_attention_heads=heads
        )  # config inferred from shapes
        assert model.config.patch_size == patch_size and model.config.num_queries == 6
        assert model.config.num_register_tokens == 2 and model.config.num_blocks == 2
        assert model.config.num_upscale_blocks == ref.config.num_upscale_blocks
        assert model.attn_mask_probs.tolist() == [
            0.0,
            0.0,
        ]  # checkpoint said 1: zeroed for evaluation
        with torch.no_grad():
            a, b = model(pixel_values=pixels), ref(pixel_values=pixels)
        torch.testing.assert_close(a.masks_queries_logits, b.masks_queries_logits)
        torch.testing.assert_close(a.class_queries_logits, b.class_queries_logits)


def test_upstream_checkpoint_reports_what_did_not_map(tmp_path):
    ref = EomtForUniversalSegmentation(tiny_config())
    up = to_upstream(ref)
    up["network.encoder.backbone.blocks.0.attn.q_norm.weight"] = torch.ones(
        16
    )  # a key with no rule
    torch.save(up, tmp_path / "extra.bin")
    with pytest.raises(
        CheckpointError,
        match=r"not in model: 1 \(network\.encoder\.backbone\.blocks\.0\.attn\.q_norm",
    ):
        build_eomt(tmp_path / "extra.bin", num_attention_heads=2)

    up = to_upstream(ref)
    del up["network.mask_head.4.weight"]
    torch.save(up, tmp_path / "missing.bin")
    with pytest.raises(
        CheckpointError, match=r"missing from checkpoint: 1 \(mask_head\.fc3\.weight"
    ):
        build_eomt(tmp_path / "missing.bin", num_attention_heads=2)

    up = to_upstream(ref)
    up["network.encoder.pixel_std"] = torch.ones(1, 3, 1, 1)
    torch.save(up, tmp_path / "stats.bin")
    with pytest.raises(CheckpointError, match="pixel_std"):
        build_eomt(tmp_path / "stats.bin", num_attention_heads=2)


def test_transformers_named_weight_file(tmp_path, tiny_model):
    """A bare model.safetensors (transformers names, no config.json): config read from its
    shapes."""
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tiny_model.state_dict().items()},
        tmp_path / "model.safetensors",
    )
    model = build_eomt(tmp_path / "model.safetensors", num_attention_heads=2)
    assert (
        model.config.num_hidden_layers == 3
        and model.config.num_blocks == 2
        and model.config.image_size == 64
    )
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=pixels).class_queries_logits,
            tiny_model(pixel_values=pixels).class_queries_logits,
        )


def test_predict_equals_cached_class_map(tiny_model):
    image = torch.randint(0, 256, (3, 70, 150), dtype=torch.uint8)
    seg = EomtSegmenter(tiny_model, checkpoint="random-init")
    direct = seg.predict(image, class_temperature=1.5)
    assert direct.shape == (19, 70, 150)
    torch.testing.assert_close(
        direct, seg.class_map(seg.raw_outputs(image), class_temperature=1.5), atol=2e-3, rtol=0
    )
