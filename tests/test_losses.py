"""Outlier loss and anomaly head loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from anomalyseg.losses import anomaly_head_loss, outlier_loss


def logits_from_tanh(values) -> torch.Tensor:
    """``[1, C, h, w]`` map whose tanh is exactly ``values`` (given as ``[C, h, w]``)."""
    return torch.atanh(torch.tensor(values, dtype=torch.float64))[None].float()


# Four pixels (2x2), two classes, chosen by their tanh so that s = -sum tanh is known:
# p00 tanh (0.5, 0.25) -> s = -0.75, inlier:  relu(-0.75 + 0.75)^2 = 0
# p01 tanh (0, 0)      -> s =  0,    inlier:  relu(0 + 0.75)^2     = 0.5625
# p10 tanh (0.5, 0.5)  -> s = -1,    outlier: relu(-0.1 + 1)^2     = 0.81
# p11 tanh (0.9, 0.9)  -> void
TANH = [[[0.5, 0.0], [0.5, 0.9]], [[0.25, 0.0], [0.5, 0.9]]]
MASK = torch.tensor([[[0, 0], [1, 255]]], dtype=torch.uint8)


def test_squared_hinge_on_nls_matches_hand_computation():
    loss = outlier_loss(logits_from_tanh(TANH), MASK)
    assert loss.item() == pytest.approx(0.5 * ((0 + 0.5625) / 2 + 0.81 / 1), abs=1e-6)
    # The other thresholds move the hinge: t_in = -0.6, t_out = -0.2 (seed 000's notebook run).
    loss = outlier_loss(logits_from_tanh(TANH), MASK, inlier_upper_threshold=-0.6, outlier_lower_threshold=-0.2)
    assert loss.item() == pytest.approx(0.5 * ((0 + 0.36) / 2 + 0.64), abs=1e-6)


def test_score_is_upsampled_bilinearly_to_the_label_size():
    # s = (-1, 0) on a 1x2 map; bilinear (align_corners=False) to 1x4 gives (-1, -0.75, -0.25, 0).
    logits = logits_from_tanh([[[0.5, 0.0]], [[0.5, 0.0]]])
    mask = torch.zeros(1, 1, 4, dtype=torch.uint8)
    expected = 0.5 * (0 + 0 + 0.5**2 + 0.75**2) / 4
    assert outlier_loss(logits, mask).item() == pytest.approx(expected, abs=1e-6)


def test_binary_cross_entropy_matches_hand_computation():
    def bce(s, y):
        p = 1 / (1 + math.exp(-s))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    loss = outlier_loss(logits_from_tanh(TANH), MASK, loss_type="binary_cross_entropy")
    assert loss.item() == pytest.approx((bce(-0.75, 0) + bce(0.0, 0) + bce(-1.0, 1)) / 3, abs=1e-6)


def test_max_logit_margin_variant_matches_hand_computation():
    # s = -max_c L: p00 L (1, 3) -> -3 inlier: 9; p01 L (0.5, 0) -> -0.5 inlier: 0.25;
    # p10 L (2, 0.2) -> -2 outlier: relu(1 + 2)^2 = 9; p11 void.
    L = torch.tensor([[[[1.0, 0.5], [2.0, 7.0]], [[3.0, 0.0], [0.2, 7.0]]]])
    loss = outlier_loss(L, MASK, score="max_logit")
    assert loss.item() == pytest.approx(0.5 * ((9 + 0.25) / 2 + 9), abs=1e-6)
    assert outlier_loss(L, MASK, score="max_logit", margin=-1.5).item() == pytest.approx(
        0.5 * ((9 + 0.25) / 2 + 0.25), abs=1e-6)


def test_empty_groups_contribute_zero():
    logits = logits_from_tanh(TANH)
    only_inliers = torch.tensor([[[0, 0], [255, 255]]], dtype=torch.uint8)
    assert outlier_loss(logits, only_inliers).item() == pytest.approx(0.5 * 0.5625 / 2, abs=1e-6)
    only_outliers = torch.tensor([[[255, 255], [1, 255]]], dtype=torch.uint8)
    assert outlier_loss(logits, only_outliers).item() == pytest.approx(0.5 * 0.81, abs=1e-6)
    logits.requires_grad_(True)
    loss = outlier_loss(logits, torch.full((1, 2, 2), 255, dtype=torch.uint8))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("kwargs", [{}, {"loss_type": "binary_cross_entropy"}, {"score": "max_logit"}])
def test_gradients_flow_and_void_has_no_effect(kwargs):
    torch.manual_seed(0)
    logits = torch.rand(2, 19, 3, 4, requires_grad=True)
    mask = torch.randint(0, 2, (2, 3, 4), dtype=torch.uint8)
    mask[0, 1, 2] = mask[1, 0, 0] = 255
    loss = outlier_loss(logits, mask, **kwargs)
    loss.backward()
    void = (mask == 255)[:, None].expand_as(logits)
    assert logits.grad[~void].abs().sum() > 0
    assert torch.equal(logits.grad[void], torch.zeros_like(logits.grad[void]))
    changed = logits.detach().clone()
    changed[void] = torch.where(torch.rand_like(changed[void]) > 0.5, 50.0, float("nan"))
    assert outlier_loss(changed, mask, **kwargs).item() == pytest.approx(loss.item(), rel=1e-6)


def test_anomaly_head_loss_matches_hand_computation():
    # pos_weight 10: outlier at logit 0 -> 10 ln 2; inlier at logit 2 -> ln(1 + e^2); void ignored.
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]], requires_grad=True)
    mask = torch.tensor([[[1, 0, 255]]], dtype=torch.uint8)
    expected = (10 * math.log(2) + math.log(1 + math.exp(2))) / 2
    loss = anomaly_head_loss(logits, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert anomaly_head_loss(logits[:, 0], mask).item() == pytest.approx(expected, rel=1e-6)
    assert anomaly_head_loss(logits, mask, pos_weight=1.0).item() == pytest.approx(
        (math.log(2) + math.log(1 + math.exp(2))) / 2, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0, 0, 2] == 0 and logits.grad[0, 0, 0, :2].abs().min() > 0
    changed = logits.detach().clone()
    changed[0, 0, 0, 2] = float("nan")
    assert anomaly_head_loss(changed, mask).item() == pytest.approx(expected, rel=1e-6)


def test_bad_settings_and_masks_give_clear_errors():
    logits = logits_from_tanh(TANH)
    with pytest.raises(ValueError, match=r"unknown loss_type 'hinge'.*squared_hinge"):
        outlier_loss(logits, MASK, loss_type="hinge")
    with pytest.raises(ValueError, match=r"unknown score 'energy'.*nls"):
        outlier_loss(logits, MASK, score="energy")
    with pytest.raises(ValueError, match=r"values \[254\]; expected only 0 .*semantic target"):
        outlier_loss(logits, torch.tensor([[[0, 1], [254, 255]]]))
    with pytest.raises(ValueError, match=r"\[B, H, W\] with B = 1"):
        outlier_loss(logits, MASK[0])
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        outlier_loss(logits[0], MASK)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\] or \[B, H, W\]"):
        anomaly_head_loss(torch.zeros(1, 2, 2, 2), MASK)
