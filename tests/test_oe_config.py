"""OEConfig: seed 000's defaults, dict round trip, validation."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from anomalyseg.data.mix_ood import MixOOD
from anomalyseg.losses import outlier_loss
from anomalyseg.training.oe_config import OEConfig

SEED_000 = dict(outlier_loss_enabled=True, outlier_weight=1.0, inlier_upper_threshold=-0.75,
                outlier_lower_threshold=-0.10, loss_type="squared_hinge", score="nls", oe_enabled=True,
                ood_prob=0.2, oe_road_only=False, oe_perspective_scale=False, trainable="heads")


def test_defaults_are_seed_000s_and_round_trip():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = OEConfig()
    assert {k: v for k, v in config.to_dict().items() if k in SEED_000} == SEED_000
    changed = dataclasses.replace(config, ood_prob=0.1, oe_road_only=True, inlier_upper_threshold=-0.6)
    assert OEConfig.from_dict(changed.to_dict()) == changed
    assert OEConfig.from_dict({"ood_prob": 1}).ood_prob == 1.0


def test_helpers_feed_the_loss_and_the_paster():
    config = OEConfig(inlier_upper_threshold=-0.6, outlier_lower_threshold=-0.2, oe_perspective_scale=True)
    logits, mask = torch.zeros(1, 19, 2, 2), torch.tensor([[[0, 1], [1, 255]]], dtype=torch.uint8)
    # L = 0 -> s = 0: inliers at 0 pay relu(0 + 0.6)^2 = 0.36, outliers at 0 are past t_out.
    assert outlier_loss(logits, mask, **config.outlier_loss_kwargs()).item() == pytest.approx(0.5 * 0.36)
    mix = MixOOD([(torch.zeros(3, 2, 2, dtype=torch.uint8), torch.ones(2, 2, dtype=torch.bool))], **config.mix_ood_kwargs())
    assert (mix.ood_prob, mix.road_only, mix.perspective_scale) == (0.2, False, True)


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['ood_probability'\].*'ood_prob'.*'trainable'"):
        OEConfig.from_dict({"ood_probability": 0.2})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"ood_prob": 1.5}, r"ood_prob=1.5 .*\[0, 1\]"),
        ({"loss_type": "hinge"}, r"loss_type='hinge'.*squared_hinge"),
        ({"score": "energy"}, r"score='energy'.*nls"),
        ({"trainable": "encoder"}, r"trainable='encoder'.*heads"),
        ({"oe_road_only": "yes"}, r"oe_road_only must be true or false"),
        ({"outlier_weight": -1}, r"outlier_weight=-1.0 must be >= 0"),
        ({"margin": float("nan")}, r"margin must be a finite number"),
    ],
)
def test_bad_values_give_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        OEConfig.from_dict(settings)


def test_unreachable_thresholds_warn_about_rbas_released_values():
    with pytest.warns(UserWarning, match=r"outlier_lower_threshold=5.0 lies outside \[-14.47, 0\].*0 / 5 cannot be met"):
        OEConfig(inlier_upper_threshold=0.0, outlier_lower_threshold=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OEConfig(outlier_lower_threshold=5.0, score="max_logit")  # thresholds unused there
