"""Outlier loss and anomaly head loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from anomalyseg.losses import (
    anomaly_head_loss,
    outlier_loss,
    outlier_score,
    outlier_score_landmarks,
    outlier_score_range,
)


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


def test_squared_hinge_on_rba_matches_hand_computation():
    loss = outlier_loss(logits_from_tanh(TANH), MASK)
    assert loss.item() == pytest.approx(0.5 * ((0 + 0.5625) / 2 + 0.81 / 1), abs=1e-6)
    # The other thresholds move the hinge: t_in = -0.6, t_out = -0.2 (seed 000's notebook run).
    loss = outlier_loss(
        logits_from_tanh(TANH), MASK, inlier_upper_threshold=-0.6, outlier_lower_threshold=-0.2
    )
    assert loss.item() == pytest.approx(0.5 * ((0 + 0.36) / 2 + 0.64), abs=1e-6)


def test_score_is_upsampled_bilinearly_with_aligned_corners_to_the_label_size():
    # s = (-1, 0) on a 1x2 map; bilinear with align_corners=True (seed 000) to 1x4 gives
    # (-1, -2/3, -1/3, 0). All inliers, no pasted pixel: the inlier term alone, not halved.
    logits = logits_from_tanh([[[0.5, 0.0]], [[0.5, 0.0]]])
    mask = torch.zeros(1, 1, 4, dtype=torch.uint8)
    expected = (0 + (0.75 - 2 / 3) ** 2 + (0.75 - 1 / 3) ** 2 + 0.75**2) / 4
    assert outlier_loss(logits, mask).item() == pytest.approx(expected, abs=1e-6)


def test_binary_cross_entropy_matches_hand_computation():
    def bce(s, y):
        p = 1 / (1 + math.exp(-s))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    loss = outlier_loss(logits_from_tanh(TANH), MASK, outlier_loss_func="binary_cross_entropy")
    assert loss.item() == pytest.approx(
        0.5 * (bce(-0.75, 0) + bce(0.0, 0) + bce(-1.0, 1)) / 3, abs=1e-6
    )
    # without a pasted pixel it is the same mean over the inliers (seed 000 halves it either way)
    only_inliers = torch.tensor([[[0, 0], [255, 255]]], dtype=torch.uint8)
    loss = outlier_loss(
        logits_from_tanh(TANH), only_inliers, outlier_loss_func="binary_cross_entropy"
    )
    assert loss.item() == pytest.approx(0.5 * (bce(-0.75, 0) + bce(0.0, 0)) / 2, abs=1e-6)


def test_max_logit_margin_variant_matches_hand_computation():
    # s = -max_c L: p00 L (1, 3) -> -3 inlier: 9; p01 L (0.5, 0) -> -0.5 inlier: 0.25;
    # p10 L (2, 0.2) -> -2 outlier: relu(1 + 2)^2 = 9; p11 void.
    L = torch.tensor([[[[1.0, 0.5], [2.0, 7.0]], [[3.0, 0.0], [0.2, 7.0]]]])
    loss = outlier_loss(L, MASK, outlier_loss_target="max_logit")
    assert loss.item() == pytest.approx(0.5 * ((9 + 0.25) / 2 + 9), abs=1e-6)
    assert outlier_loss(
        L, MASK, outlier_loss_target="max_logit", margin=-1.5
    ).item() == pytest.approx(0.5 * ((9 + 0.25) / 2 + 0.25), abs=1e-6)


def test_empty_groups_contribute_zero_and_a_batch_without_pasted_pixels_gets_inlier_term_alone():
    logits = logits_from_tanh(TANH)
    only_inliers = torch.tensor([[[0, 0], [255, 255]]], dtype=torch.uint8)
    assert outlier_loss(logits, only_inliers).item() == pytest.approx(0.5625 / 2, abs=1e-6)
    only_outliers = torch.tensor([[[255, 255], [1, 255]]], dtype=torch.uint8)
    assert outlier_loss(logits, only_outliers).item() == pytest.approx(0.5 * 0.81, abs=1e-6)
    logits.requires_grad_(True)
    loss = outlier_loss(logits, torch.full((1, 2, 2), 255, dtype=torch.uint8))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"outlier_loss_func": "binary_cross_entropy"},
        {"outlier_loss_target": "max_logit"},
        {"outlier_loss_target": "energy"},
        {"outlier_loss_target": "softmax_entropy"},
        {"score_norm": "sigmoid"},
        {"score_norm": "none"},
    ],
)
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
        (math.log(2) + math.log(1 + math.exp(2))) / 2, rel=1e-6
    )
    loss.backward()
    assert logits.grad[0, 0, 0, 2] == 0 and logits.grad[0, 0, 0, :2].abs().min() > 0
    changed = logits.detach().clone()
    changed[0, 0, 0, 2] = float("nan")
    assert anomaly_head_loss(changed, mask).item() == pytest.approx(expected, rel=1e-6)


def test_bad_settings_and_masks_give_clear_errors():
    logits = logits_from_tanh(TANH)
    with pytest.raises(ValueError, match=r"unknown outlier_loss_func 'hinge'.*squared_hinge"):
        outlier_loss(logits, MASK, outlier_loss_func="hinge")
    with pytest.raises(ValueError, match=r"unknown outlier_loss_target 'msp'.*'rba'"):
        outlier_loss(logits, MASK, outlier_loss_target="msp")
    # RbA is ``rba`` in the package; seed 000's ``nls`` is read only from a config (OEConfig)
    with pytest.raises(ValueError, match=r"target 'nls'.*'nls' is 'rba'.*OEConfig"):
        outlier_score(logits, "nls")
    with pytest.raises(ValueError, match=r"unknown score_norm 'relu'.*tanh"):
        outlier_loss(logits, MASK, score_norm="relu")
    with pytest.raises(ValueError, match=r"values \[254\]; expected only 0 .*semantic target"):
        outlier_loss(logits, torch.tensor([[[0, 1], [254, 255]]]))
    with pytest.raises(ValueError, match=r"\[B, H, W\] with B = 1"):
        outlier_loss(logits, MASK[0])
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        outlier_loss(logits[0], MASK)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\] or \[B, H, W\]"):
        anomaly_head_loss(torch.zeros(1, 2, 2, 2), MASK)


# ------------------------------------------------------------------------- seed 000's other targets
# Two classes, three pixels (1x3) with L chosen so that each score has a closed form:
# p0 L = (0, 0), p1 L = (ln 3, 0), p2 L = (ln 7, 0).
L3 = torch.tensor([[[[0.0, math.log(3), math.log(7)]], [[0.0, 0.0, 0.0]]]])


def _entropy(*p):
    return -sum(q * math.log(q) for q in p)


@pytest.mark.parametrize(
    "target, norm, expected",
    [
        ("rba", "tanh", [0.0, -0.8, -0.96]),  # tanh(ln a) = (a^2 - 1) / (a^2 + 1)
        ("rba", "sigmoid", [-1.0, -1.25, -1.375]),  # sigmoid(ln a) = a / (a + 1), sigmoid(0) = 1/2
        ("rba", "none", [0.0, -math.log(3), -math.log(7)]),
        ("energy", "tanh", [-math.log(2), -math.log(4), -math.log(8)]),  # -log(a + 1)
        ("softmax_entropy", "tanh", [math.log(2), _entropy(0.75, 0.25), _entropy(7 / 8, 1 / 8)]),
        ("max_logit", "tanh", [0.0, -math.log(3), -math.log(7)]),
    ],
)
def test_each_target_scores_as_derived_by_hand(target, norm, expected):
    assert outlier_score(L3, target, norm)[0, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_squared_hinge_on_energy_and_softmax_entropy_matches_hand_computation():
    mask = torch.tensor([[[0, 0, 1]]], dtype=torch.uint8)
    # energy: s = (-ln 2, -ln 4, -ln 8); t_in = -1: inliers pay (1 - ln 2)^2 and 0;
    # t_out = -0.5: the outlier pays (ln 8 - 0.5)^2.
    loss = outlier_loss(
        L3,
        mask,
        outlier_loss_target="energy",
        inlier_upper_threshold=-1.0,
        outlier_lower_threshold=-0.5,
    )
    assert loss.item() == pytest.approx(
        0.5 * ((1 - math.log(2)) ** 2 / 2 + (math.log(8) - 0.5) ** 2), abs=1e-6
    )
    # softmax entropy: s = (ln 2, H(3/4, 1/4), H(7/8, 1/8)); t_in = 0.6, t_out = 0.65.
    loss = outlier_loss(
        L3,
        mask,
        outlier_loss_target="softmax_entropy",
        inlier_upper_threshold=0.6,
        outlier_lower_threshold=0.65,
    )
    h1, h2 = _entropy(0.75, 0.25), _entropy(7 / 8, 1 / 8)
    expected = 0.5 * (((math.log(2) - 0.6) ** 2 + max(h1 - 0.6, 0) ** 2) / 2 + (0.65 - h2) ** 2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # sigmoid-normalised negative sum: s = (-1, -1.25, -1.375); t_in = -1.2, t_out = -1.3.
    loss = outlier_loss(
        L3, mask, score_norm="sigmoid", inlier_upper_threshold=-1.2, outlier_lower_threshold=-1.3
    )
    assert loss.item() == pytest.approx(0.5 * (0.2**2 / 2 + 0.075**2), abs=1e-6)


def test_the_no_pasted_pixel_rule_holds_for_the_batch_not_per_image():
    # Two images: the first all inlier (s = 0 each, (0 + 0.75)^2 per pixel), the second void
    # except, in the second call, one outlier pixel at s = 0 (past t_out, pays 0).
    logits = torch.zeros(2, 19, 1, 2)
    no_paste = torch.tensor([[[0, 0]], [[255, 255]]], dtype=torch.uint8)
    assert outlier_loss(logits, no_paste).item() == pytest.approx(0.5625, abs=1e-6)
    one_paste = torch.tensor([[[0, 0]], [[1, 255]]], dtype=torch.uint8)
    assert outlier_loss(logits, one_paste).item() == pytest.approx(0.5 * 0.5625, abs=1e-6)


def test_score_ranges_and_landmarks():
    c = 19
    assert outlier_score_range("rba") == (-c, 0.0)
    assert outlier_score_range("rba", "sigmoid") == (-c, -c / 2)
    assert outlier_score_range("rba", "none") == (-math.inf, 0.0)
    assert outlier_score_range("energy") == (-math.inf, -math.log(c))
    assert outlier_score_range("softmax_entropy") == (0.0, math.log(c))
    # landmarks: one class at L = 1, the other 18 at 0, and all at 0
    e = math.e
    assert outlier_score_landmarks("rba") == pytest.approx(
        {"claimed": -math.tanh(1), "unclaimed": 0.0}
    )
    assert outlier_score_landmarks("energy") == pytest.approx(
        {"claimed": -math.log(e + 18), "unclaimed": -math.log(19)}
    )
    p, q = e / (e + 18), 1 / (e + 18)
    assert outlier_score_landmarks("softmax_entropy") == pytest.approx(
        {"claimed": -(p * math.log(p) + 18 * q * math.log(q)), "unclaimed": math.log(19)}
    )
    # every score of a non-negative class map, large values included, stays inside its range
    torch.manual_seed(0)
    L = torch.cat([torch.rand(4, c, 3, 3), 30 * torch.rand(4, c, 3, 3), torch.zeros(1, c, 3, 3)])
    for target, norm in [
        ("rba", "tanh"),
        ("rba", "sigmoid"),
        ("rba", "none"),
        ("energy", "tanh"),
        ("softmax_entropy", "tanh"),
        ("max_logit", "tanh"),
    ]:
        lo, hi = outlier_score_range(target, norm)
        s = outlier_score(L, target, norm)
        assert s.min() >= lo - 1e-5 and s.max() <= hi + 1e-5, (target, norm)
