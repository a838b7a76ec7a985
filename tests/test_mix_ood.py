"""MixOOD pasting on hand-made tiny frames."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

import anomalyseg.data.mix_ood as mix_ood_module
from anomalyseg.data.mix_ood import MixOOD, PasteOutliers, inlier_target, paste_outliers

VEGETATION, BUILDING, ROAD = 8, 2, 0


def frame(h=20, w=30, fill=VEGETATION, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    return image, tv_tensors.Mask(torch.full((h, w), fill, dtype=torch.int64))


def l_object(h=5, w=4):
    """An L-shaped object in its tight box, pixels unlike any frame value pattern."""
    image = (torch.arange(3 * h * w) % 251).reshape(3, h, w).to(torch.uint8)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[:, 0] = True
    mask[-1, :] = True
    return image, mask


def rect_object(h, w, value=7):
    return torch.full((3, h, w), value, dtype=torch.uint8), torch.ones(h, w, dtype=torch.bool)


def box_of(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def test_pasted_pixels_are_exactly_the_object_mask():
    obj_image, obj_mask = l_object()
    mix = MixOOD([l_object()], ood_prob=1.0, seed=0)
    for i in range(5):
        image, target = frame(seed=i)
        before = image.clone(), target.clone()
        out_image, out_target, outlier = mix(image, target)
        assert isinstance(out_image, tv_tensors.Image) and isinstance(out_target, tv_tensors.Mask)
        assert outlier.dtype == torch.uint8 and set(outlier.unique().tolist()) == {0, 1}
        y0, x0, y1, x1 = box_of(outlier == 1)
        assert (y1 - y0, x1 - x0) == tuple(obj_mask.shape)
        pasted = torch.zeros_like(outlier, dtype=torch.bool)
        pasted[y0:y1, x0:x1] = obj_mask
        assert torch.equal(outlier == 1, pasted)
        assert torch.equal(out_image[:, y0:y1, x0:x1][:, obj_mask], obj_image[:, obj_mask])
        assert torch.equal(out_image[:, ~pasted], before[0][:, ~pasted])
        # Pasted pixels leave every inlier class; the rest of the target is untouched.
        assert (out_target[pasted] == 254).all() and torch.equal(
            out_target[~pasted], before[1][~pasted]
        )
        assert torch.equal(image, before[0]) and torch.equal(
            target, before[1]
        )  # inputs not modified


def test_void_is_never_pasted_over():
    image, target = frame(h=24, w=24)
    target[:, ::3] = 255  # void every third column: a 2-wide object fits only between them
    mix = MixOOD([rect_object(4, 2)], ood_prob=1.0, seed=1)
    pastes = 0
    for _ in range(20):
        _, out_target, outlier = mix(image, target)
        assert torch.equal(outlier == 255, target == 255)
        assert not (outlier == 1)[target == 255].any()
        pastes += int((outlier == 1).any())
    assert pastes > 0

    # Void under every possible position: nothing is pasted and the mask is still right.
    target[:, ::2] = 255
    _, out_target, outlier = MixOOD([rect_object(4, 2)], ood_prob=1.0, seed=1)(image, target)
    assert torch.equal(outlier, (target == 255).to(torch.uint8) * 255)
    assert torch.equal(out_target, target)


def test_road_only_rejects_positions_off_the_road():
    image, target = frame(h=40, w=40, fill=BUILDING)
    target[28:, 28:] = ROAD  # road only in the bottom-right corner
    obj = [rect_object(6, 6)]
    road_fractions = []
    for seed in range(15):
        for road_only in (True, False):
            _, _, outlier = MixOOD(obj, ood_prob=1.0, road_only=road_only, seed=seed)(image, target)
            pasted = outlier == 1
            if pasted.any():
                fraction = float((target[pasted] == ROAD).float().mean())
                road_fractions.append((road_only, fraction))
    on = [f for r, f in road_fractions if r]
    off = [f for r, f in road_fractions if not r]
    assert on and all(f >= 0.5 for f in on)
    assert any(f < 0.5 for f in off)  # without the option most positions are off-road


def test_perspective_scale_follows_the_formula():
    image, target = frame(h=100, w=200, fill=ROAD)
    mix = MixOOD([rect_object(10, 20)], ood_prob=1.0, perspective_scale=True, seed=2)
    heights = set()
    for _ in range(12):
        _, _, outlier = mix(image, target)
        y0, x0, y1, x1 = box_of(outlier == 1)
        scale = 0.3 + 0.9 * y0 / 100
        assert (y1 - y0, x1 - x0) == (round(10 * scale), round(20 * scale))
        assert y1 <= 100 and x1 <= 200
        heights.add(y1 - y0)
    assert len(heights) > 2


def test_frames_without_a_paste_still_get_an_outlier_mask():
    image, target = frame()
    target[0, :] = 255
    for mix in (
        MixOOD([l_object()], ood_prob=0.0),
        MixOOD([rect_object(50, 50)], ood_prob=1.0, seed=0),
    ):
        out_image, out_target, outlier = mix(image, target)
        expected = torch.zeros_like(target, dtype=torch.uint8)
        expected[0, :] = 255
        assert torch.equal(outlier, expected)
        assert torch.equal(out_image, image) and torch.equal(out_target, target)


def test_inlier_target_makes_pasted_pixels_ignored_by_cross_entropy():
    torch.manual_seed(0)
    image, target = frame(h=8, w=8, fill=3)
    target[0, 0] = 255
    _, mixed, _ = MixOOD([rect_object(2, 3)], ood_prob=1.0, seed=0)(image, target)
    clean = inlier_target(mixed)
    assert torch.equal(clean == 255, mixed >= 19) and torch.equal(
        clean[mixed < 19], mixed[mixed < 19]
    )
    logits = torch.randn(1, 19, 8, 8)
    keep = mixed < 19
    by_hand = -torch.log_softmax(logits, 1)[0, 3][keep].mean()
    assert torch.allclose(F.cross_entropy(logits, clean[None], ignore_index=255), by_hand)


def test_determinism_under_a_seed_and_a_generator():
    objects = [l_object(), rect_object(3, 3), rect_object(6, 2, value=200)]

    def run(mix, **kw):
        outs = []
        for i in range(6):
            outs.append(mix(*frame(seed=i), **kw))
        return outs

    def same(a, b):
        return all(torch.equal(x, y) for oa, ob in zip(a, b) for x, y in zip(oa, ob))

    assert same(
        run(MixOOD(objects, ood_prob=0.5, seed=7)), run(MixOOD(objects, ood_prob=0.5, seed=7))
    )
    assert not same(
        run(MixOOD(objects, ood_prob=0.5, seed=7)), run(MixOOD(objects, ood_prob=0.5, seed=8))
    )
    mix = MixOOD(objects, ood_prob=0.5)
    assert same(
        run(mix, generator=torch.Generator().manual_seed(3)),
        run(mix, generator=torch.Generator().manual_seed(3)),
    )
    torch.manual_seed(4)
    first = run(mix)
    torch.manual_seed(4)
    assert same(first, run(mix))


def test_workers_draw_different_sequences(monkeypatch):
    mix = MixOOD([l_object()], ood_prob=1.0, seed=0)

    def draws(worker):
        monkeypatch.setattr(mix_ood_module, "get_worker_info", lambda: worker)
        mix._generator = None
        return torch.rand(4, generator=mix.generator())

    w0, w1 = SimpleNamespace(id=0, seed=100), SimpleNamespace(id=1, seed=101)
    assert torch.equal(draws(w0), draws(w0))
    assert not torch.equal(draws(w0), draws(w1))


def test_paste_outliers_adds_the_outlier_mask():
    image, target = frame()
    paste = PasteOutliers(MixOOD([l_object()], ood_prob=1.0, seed=0))
    original = {"image": image, "target": target, "stem": "a"}
    item = paste(original)
    assert item["stem"] == "a" and set(original) == {
        "image",
        "target",
        "stem",
    }  # the input item is not changed
    assert (
        torch.equal(item["outlier_mask"] == 1, item["target"] == 254)
        and (item["outlier_mask"] == 1).any()
    )
    # without COCO objects: nothing pasted, but the mask is there (0, 255 on void)
    item = paste_outliers(None)(original)
    assert not (item["outlier_mask"] == 1).any() and torch.equal(
        item["outlier_mask"] == 255, target == 255
    )


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match=r"ood_prob .* \[0, 1\]"):
        MixOOD([l_object()], ood_prob=1.5)
    with pytest.raises(ValueError, match="prepare-coco"):
        MixOOD([], ood_prob=0.2)
    with pytest.raises(ValueError, match="max_tries"):
        MixOOD([l_object()], max_tries=0)
    image, target = frame()
    mix = MixOOD([l_object()], ood_prob=1.0)
    with pytest.raises(ValueError, match=r"uint8 \[3, H, W\].*before any conversion to float"):
        mix(image.float() / 255, target)
    with pytest.raises(ValueError, match=r"train ids \[H, W\]"):
        mix(image, target[:5])
    bad = MixOOD([(torch.zeros(3, 4, 4), torch.ones(4, 4, dtype=torch.bool))], ood_prob=1.0)
    with pytest.raises(ValueError, match="object 0"):
        bad(image, target)
