"""ERFNet: architecture fidelity to the original (names, size, blocks) and the course
preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomalyseg.models.base import Segmenter
from anomalyseg.models.erfnet import DownsamplerBlock, ERFNet, ErfnetSegmenter, non_bottleneck_1d


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ERFNet(20).eval()


def test_parameter_count_and_original_names(model):
    assert sum(p.numel() for p in model.parameters()) == 2_066_836
    keys = set(model.state_dict())
    # Names as in the course checkpoint, minus DataParallel's "module." prefix.
    for key in (
        "encoder.initial_block.conv.weight",
        "encoder.initial_block.bn.running_var",
        "encoder.layers.0.conv.weight",  # DownsamplerBlock(16, 64)
        "encoder.layers.5.conv1x3_2.bias",  # last of the five 64-channel blocks
        "encoder.layers.6.bn.weight",  # DownsamplerBlock(64, 128)
        "encoder.layers.14.conv3x1_2.weight",
        "encoder.output_conv.weight",
        "decoder.layers.0.conv.weight",
        "decoder.layers.5.bn2.bias",
        "decoder.output_conv.weight",
    ):
        assert key in keys, key
    assert len(model.encoder.layers) == 15 and len(model.decoder.layers) == 6
    dilations = [layer.conv3x1_2.dilation[0] for layer in model.encoder.layers[7:]]
    assert dilations == [2, 4, 8, 16, 2, 4, 8, 16]
    assert model.decoder.output_conv.weight.shape == (16, 20, 2, 2)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_logits_at_input_resolution(model):
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 128)).shape == (2, 20, 64, 128)
        assert model(torch.rand(1, 3, 64, 128), only_encode=True).shape == (1, 20, 8, 16)


@pytest.mark.parametrize("shape", [(1, 3, 60, 128), (1, 3, 64, 130)])
def test_size_not_divisible_by_8_is_an_error(model, shape):
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(shape))


def test_wrong_channel_count_is_an_error(model):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 1, 64, 64))


def test_downsampler_concatenates_conv_then_pool():
    block = DownsamplerBlock(3, 16).eval()
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.bias.fill_(0.5)
    x = torch.rand(1, 3, 8, 8)
    y = block(x)
    # BN at init in eval mode divides by sqrt(1 + 1e-3).
    scale = (1 + 1e-3) ** -0.5
    torch.testing.assert_close(y[:, :13], torch.full((1, 13, 4, 4), 0.5 * scale))
    torch.testing.assert_close(y[:, 13:], F.max_pool2d(x, 2) * scale)


def test_non_bottleneck_matches_functional_reference():
    torch.manual_seed(1)
    block = non_bottleneck_1d(8, 0.3, 4).eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 20, 24)

    def conv(t, m, pad, dil):
        return F.conv2d(t, m.weight, m.bias, padding=pad, dilation=dil)

    def bn(t, m):
        return (t - m.running_mean[:, None, None]) / torch.sqrt(
            m.running_var[:, None, None] + 1e-3
        ) * m.weight[:, None, None] + m.bias[:, None, None]

    y = F.relu(conv(x, block.conv3x1_1, (1, 0), 1))
    y = F.relu(bn(conv(y, block.conv1x3_1, (0, 1), 1), block.bn1))
    y = F.relu(conv(y, block.conv3x1_2, (4, 0), (4, 1)))
    y = bn(conv(y, block.conv1x3_2, (0, 4), (1, 4)), block.bn2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(y + x))
    block.train()
    torch.manual_seed(0)
    a = block(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, block(x)), "dropout should act in training mode"


# --- the evaluation wrapper -----------------------------------------------------------------


@pytest.fixture(scope="module")
def frame():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 96, 200), dtype=torch.uint8, generator=g)


def test_segmenter_protocol_and_outputs(model, frame):
    seg = ErfnetSegmenter(model, checkpoint="random-init", input_size=(64, 128))
    assert isinstance(seg, Segmenter)
    assert seg.name == "erfnet" and seg.num_channels == 19 and not seg.supports_class_temperature
    assert seg.eval_size((96, 200)) == (64, 128)
    raw = seg.raw_outputs(frame)
    assert (
        set(raw) == {"logits"}
        and raw["logits"].dtype == torch.float32
        and raw["logits"].shape == (20, 64, 128)
    )
    half = ErfnetSegmenter(
        model, checkpoint="random-init", input_size=(64, 128), logits_dtype=torch.float16
    )
    assert (
        half.raw_outputs(frame)["logits"].dtype == torch.float16 and half.cache_tag != seg.cache_tag
    )
    half.cache_tag = f"{half.cache_tag}|weights-abc"  # the zoo appends a weight-file fingerprint
    assert half.cache_tag.endswith("|float16|weights-abc")
    half.input_resize = (
        "tensor"  # a protocol's setting still changes the tag under the appended part
    )
    assert half.cache_tag == "64x128|tensor|float16|weights-abc"
    cmap = seg.class_map(raw, (64, 128))
    assert cmap.dtype == torch.float32 and cmap.shape == (19, 64, 128)
    torch.testing.assert_close(cmap, raw["logits"][:19].float())
    assert seg.class_map(raw, (32, 64)).shape == (19, 32, 64)
    assert seg.extra_scores(raw, (64, 128)) == {}
    void = ErfnetSegmenter(model, input_size=(64, 128), use_void=True)
    assert void.num_channels == 20 and void.class_map(raw, (64, 128)).shape == (20, 64, 128)
    with pytest.raises(ValueError, match="class_temperature must be 1.0"):
        seg.class_map(raw, (64, 128), class_temperature=2.0)


def test_course_preprocessing_matches_pil(model, frame):
    """Course: PIL Resize((512, 1024), BILINEAR) then ToTensor (/255, no mean/std)."""
    seg = ErfnetSegmenter(model, input_size=(64, 128))
    pil = Image.fromarray(frame.permute(1, 2, 0).numpy()).resize((128, 64), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    got = seg.preprocess(frame[None])[0]
    assert got.shape == (3, 64, 128) and 0.0 <= got.min() and got.max() <= 1.0
    assert (got - expected).abs().max() <= 1.5 / 255  # PIL and torchvision round differently
    with torch.no_grad():
        ref = model(expected[None])[0]
    logits = seg.forward_batch(frame[None].expand(2, -1, -1, -1))
    assert logits.shape == (2, 20, 64, 128)
    assert torch.corrcoef(torch.stack([logits[0].flatten(), ref.flatten()]))[0, 1] > 0.99


def test_segmenter_from_checkpoint_path(tmp_path, model, frame):
    path = tmp_path / "erfnet_pretrained.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    seg = ErfnetSegmenter(path, input_size=(64, 128))
    assert seg.checkpoint == str(path)
    torch.testing.assert_close(
        seg.raw_outputs(frame)["logits"],
        ErfnetSegmenter(model, input_size=(64, 128)).raw_outputs(frame)["logits"],
    )


def test_segmenter_bad_settings(model):
    with pytest.raises(
        ValueError, match=r"input_size=\(500, 1000\).*divisible by 8.*\(504, 1000\)"
    ):
        ErfnetSegmenter(model, input_size=(500, 1000))
    seg = ErfnetSegmenter(model, input_size=(64, 128))
    with pytest.raises(ValueError, match="uint8 RGB"):
        seg.forward_batch(torch.rand(1, 3, 64, 128))
