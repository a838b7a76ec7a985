"""Shared training transforms: alignment of image and mask, nearest masks, padding, determinism."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from anomalyseg.data.transforms import eval_transforms, train_transforms

LABELS = torch.tensor([0, 4, 10, 18, 255])


def _palette(label: torch.Tensor) -> torch.Tensor:
    """A colour per label, far apart so that each decodes unambiguously: ``[H, W] -> [3, H, W]``."""
    idx = torch.bucketize(label, LABELS)
    colours = torch.tensor(
        [[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30], [120, 120, 120]]
    )
    return colours[idx].permute(2, 0, 1).to(torch.uint8)


def _decode(image: torch.Tensor) -> torch.Tensor:
    colours = _palette(LABELS[None]).squeeze(1).T.float()  # [5, 3]
    d = ((image.permute(1, 2, 0).float()[..., None, :] - colours) ** 2).sum(-1)
    return LABELS[d.argmin(-1)]


@pytest.fixture
def sample():
    g = torch.Generator().manual_seed(0)
    blocks = LABELS[torch.randint(0, len(LABELS), (4, 8), generator=g)]
    label = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)  # [64, 128], 16x16 cells
    return tv_tensors.Image(_palette(label)), tv_tensors.Mask(label.to(torch.int64))


def _interior(mask: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood holds one label: there bilinear colours are exact."""
    m = mask.float()[None, None]
    hi = torch.nn.functional.max_pool2d(m, 2 * r + 1, 1, r)
    lo = -torch.nn.functional.max_pool2d(-m, 2 * r + 1, 1, r)
    return (hi == lo)[0, 0]


@pytest.mark.parametrize("seed", range(6))
def test_image_and_mask_stay_aligned(sample, seed):
    image, mask = sample
    t = train_transforms(crop_size=(48, 96), scale_range=(0.5, 2.0), color_jitter=False)
    torch.manual_seed(seed)
    out_img, out_mask = t(image, mask)
    assert isinstance(out_img, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert out_img.shape == (3, 48, 96) and out_mask.shape == (48, 96)
    assert out_img.dtype == torch.uint8 and out_mask.dtype == torch.int64
    # Nearest neighbour: no value between two labels ever appears.
    assert set(out_mask.unique().tolist()) <= set(LABELS.tolist())
    # Crop padding (scale < 1) is black in the image and void in the mask; no palette colour is
    # black.
    padding = (out_img == 0).all(0)
    assert (out_mask[padding] == 255).all()
    inner = _interior(out_mask) & ~padding
    assert inner.sum() > 100
    assert torch.equal(_decode(out_img)[inner], out_mask[inner])


def test_padding_fills_image_0_and_mask_ignore(sample):
    image, mask = sample
    small_img, small_mask = image[:, :32, :48], mask[:32, :48]
    t = train_transforms(
        crop_size=(64, 128),
        scale_range=(1.0, 1.0),
        hflip=False,
        color_jitter=False,
        ignore_index=250,
    )
    torch.manual_seed(0)
    out_img, out_mask = t(tv_tensors.Image(small_img), tv_tensors.Mask(small_mask))
    assert out_mask.shape == (64, 128)
    padded = out_mask == 250  # the sample itself holds no 250
    assert (out_img[:, padded] == 0).all()
    rows, cols = torch.nonzero(~padded, as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    assert (
        (~padded).sum() == 32 * 48 and int(rows.max()) == top + 31 and int(cols.max()) == left + 47
    )
    assert torch.equal(out_mask[top : top + 32, left : left + 48], small_mask)
    assert torch.equal(out_img[:, top : top + 32, left : left + 48], small_img)


def test_deterministic_under_manual_seed(sample):
    t = train_transforms(crop_size=(48, 96))
    torch.manual_seed(3)
    a = t(*sample)
    torch.manual_seed(3)
    b = t(*sample)
    torch.manual_seed(4)
    c = t(*sample)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_color_jitter_changes_image_only(sample):
    geometry_only = train_transforms(crop_size=(48, 96), color_jitter=False)
    jittered = train_transforms(crop_size=(48, 96), color_jitter=True)
    torch.manual_seed(5)
    img_a, mask_a = geometry_only(*sample)
    torch.manual_seed(5)
    img_b, mask_b = jittered(*sample)
    assert torch.equal(mask_a, mask_b)
    assert not torch.equal(img_a, img_b)


def test_flip_happens_and_flips_both(sample):
    image, mask = sample
    t = train_transforms(crop_size=(64, 128), scale_range=(1.0, 1.0), color_jitter=False)
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out_img, out_mask = t(image, mask)
        if torch.equal(out_mask, mask.flip(-1)):
            flipped += 1
            assert torch.equal(out_img, image.flip(-1))
        else:
            assert torch.equal(out_mask, mask) and torch.equal(out_img, image)
    assert 0 < flipped < 8


def test_base_size_scales_relative_to_it(sample):
    t = train_transforms(
        crop_size=(32, 64),
        scale_range=(1.0, 1.0),
        base_size=(32, 64),
        hflip=False,
        color_jitter=False,
    )
    out_img, out_mask = t(*sample)
    # Downscaling by exactly 2 with nearest keeps each 16x16 cell as an 8x8 block.
    assert torch.equal(out_mask[::8, ::8], sample[1][::16, ::16])
    assert out_img.shape == (3, 32, 64)


def test_eval_transforms(sample):
    image, mask = sample
    out_img, out_mask = eval_transforms((32, 64))(image, mask)
    assert out_img.shape == (3, 32, 64) and out_mask.shape == (32, 64)
    assert set(out_mask.unique().tolist()) <= set(LABELS.tolist())
    same_img, same_mask = eval_transforms()(image, mask)
    assert torch.equal(same_img, image) and torch.equal(same_mask, mask)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"crop_size": (0, 64)}, "crop_size"),
        ({"crop_size": 64}, "crop_size"),
        ({"scale_range": (2.0, 1.0)}, "scale_range"),
        ({"base_size": (10,)}, "base_size"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_transforms(**kwargs)
