"""OEConfig: seed 000's defaults, dict round trip, validation."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from anomalyseg.data.mix_ood import MixOOD
from anomalyseg.losses import outlier_loss
from anomalyseg.training.oe_config import OE_RECIPES, OEConfig

# seed 000's eomt_base_640_oe.yaml (its nls is rba here), on RbA's heads-only recipe
SEED_000 = dict(
    outlier_loss_enabled=True,
    outlier_weight=1.0,
    inlier_upper_threshold=-0.75,
    outlier_lower_threshold=-0.10,
    outlier_loss_func="squared_hinge",
    outlier_loss_target="rba",
    score_norm="tanh",
    oe_enabled=True,
    ood_prob=0.2,
    oe_road_only=False,
    oe_perspective_scale=False,
    trainable="heads",
    attn_mask_annealing_enabled=False,
    weight_decay=0.05,
    coco_split="train",
)


def test_defaults_are_seed_000s_and_round_trip():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = OEConfig()
    assert {k: v for k, v in config.to_dict().items() if k in SEED_000} == SEED_000
    changed = dataclasses.replace(
        config, ood_prob=0.1, oe_road_only=True, inlier_upper_threshold=-0.6
    )
    assert OEConfig.from_dict(changed.to_dict()) == changed
    assert OEConfig.from_dict({"ood_prob": 1}).ood_prob == 1.0


def test_helpers_feed_the_loss_and_the_paster():
    config = OEConfig(
        inlier_upper_threshold=-0.6, outlier_lower_threshold=-0.2, oe_perspective_scale=True
    )
    logits, mask = torch.zeros(1, 19, 2, 2), torch.tensor([[[0, 1], [1, 255]]], dtype=torch.uint8)
    # L = 0 -> s = 0: inliers at 0 pay relu(0 + 0.6)^2 = 0.36, outliers at 0 are past t_out.
    assert outlier_loss(logits, mask, **config.outlier_loss_kwargs()).item() == pytest.approx(
        0.5 * 0.36
    )
    mix = MixOOD(
        [(torch.zeros(3, 2, 2, dtype=torch.uint8), torch.ones(2, 2, dtype=torch.bool))],
        **config.mix_ood_kwargs(),
    )
    assert (mix.ood_prob, mix.road_only, mix.perspective_scale) == (0.2, False, True)


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown setting\(s\) \['ood_probability'\].*'ood_prob'.*'trainable'"
    ):
        OEConfig.from_dict({"ood_probability": 0.2})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"ood_prob": 1.5}, r"ood_prob=1.5 .*\[0, 1\]"),
        ({"outlier_loss_func": "hinge"}, r"outlier_loss_func='hinge'.*squared_hinge"),
        (
            {"loss_type": "hinge"},
            r"outlier_loss_func='hinge'.*squared_hinge",
        ),  # an earlier version's name
        (
            {"outlier_loss_target": "msp"},
            r"outlier_loss_target='msp'.*'rba'.*'nls' is read as 'rba'",
        ),
        ({"score_norm": "relu"}, r"score_norm='relu'.*'sigmoid'"),
        (
            {
                "outlier_loss_target": "energy",
                "score_norm": "sigmoid",
                "inlier_upper_threshold": -4.0,
                "outlier_lower_threshold": -3.0,
            },
            r"score_norm='sigmoid' applies only to outlier_loss_target='rba'",
        ),
        ({"coco_split": "test"}, r"coco_split='test'.*'val'"),
        ({"weight_decay": -0.1}, r"weight_decay=-0.1 must be >= 0"),
        ({"attn_mask_annealing_start_steps": [1, 2]}, r"give both attn_mask_annealing_start_steps"),
        (
            {"attn_mask_annealing_start_steps": [1, 9], "attn_mask_annealing_end_steps": [5, 8]},
            r"every end >= its start",
        ),
        ({"trainable": "encoder"}, r"trainable='encoder'.*heads"),
        ({"oe_road_only": "yes"}, r"oe_road_only must be true or false"),
        ({"outlier_weight": -1}, r"outlier_weight=-1.0 must be >= 0"),
        ({"margin": float("nan")}, r"margin must be a finite number"),
    ],
)
def test_bad_values_give_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        OEConfig.from_dict(settings)


def test_seed_000s_nls_name_and_earlier_names_are_read():
    assert OEConfig(outlier_loss_target="nls").outlier_loss_target == "rba"
    old = {
        "loss_type": "binary_cross_entropy",
        "score": "nls",
        "ood_prob": 0.1,
    }  # a checkpoint of an earlier version
    assert OEConfig.from_dict(old) == OEConfig(
        outlier_loss_func="binary_cross_entropy", ood_prob=0.1
    )


@pytest.mark.parametrize(
    "target, norm, t_in, t_out, message",
    [
        # rba + tanh lies in [-19, 0] (-19 tanh 1 = -14.47 with one query per class): RbA's 0 / 5
        # is out
        (
            "nls",
            "tanh",
            0.0,
            5.0,
            r"outlier_lower_threshold=5.0 is out of range.*\[-19, 0\].*0 / 5",
        ),
        # sigmoid(L) >= 1/2 for L >= 0: the score lies in [-19, -9.5], seed 000's values are above
        # it
        (
            "rba",
            "sigmoid",
            -0.75,
            -0.10,
            r"inlier_upper_threshold=-0.75 and outlier_lower_threshold=-0.1 .*\[-19, -9.5\]",
        ),
        ("rba", "none", -0.5, 0.5, r"outlier_lower_threshold=0.5 .*\[-inf, 0\]"),
        # energy = -logsumexp L <= -log 19 = -2.944, unbounded below
        (
            "energy",
            "tanh",
            -0.75,
            -0.10,
            r"\[-inf, -2.944\].*claims fully \(L_c = 1\) scores -3.031",
        ),
        # softmax entropy lies in [0, log 19]
        ("softmax_entropy", "tanh", -0.75, 2.0, r"inlier_upper_threshold=-0.75 .*\[0, 2.944\]"),
        ("softmax_entropy", "tanh", 2.0, 3.0, r"outlier_lower_threshold=3.0 .*\[0, 2.944\]"),
    ],
)
def test_thresholds_out_of_their_targets_range_are_refused(target, norm, t_in, t_out, message):
    with pytest.raises(ValueError, match=message):
        OEConfig(
            outlier_loss_target=target,
            score_norm=norm,
            inlier_upper_threshold=t_in,
            outlier_lower_threshold=t_out,
        )


@pytest.mark.parametrize(
    "settings",
    [
        dict(
            outlier_loss_target="rba",
            score_norm="sigmoid",
            inlier_upper_threshold=-10.5,
            outlier_lower_threshold=-9.6,
        ),
        dict(
            outlier_loss_target="rba",
            score_norm="none",
            inlier_upper_threshold=-1.0,
            outlier_lower_threshold=-0.1,
        ),
        dict(
            outlier_loss_target="energy", inlier_upper_threshold=-3.2, outlier_lower_threshold=-2.95
        ),
        dict(
            outlier_loss_target="softmax_entropy",
            inlier_upper_threshold=2.5,
            outlier_lower_threshold=2.9,
        ),
        # thresholds unused: BCE and Mask2Anomaly's margin form read none
        dict(
            outlier_loss_func="binary_cross_entropy",
            inlier_upper_threshold=0.0,
            outlier_lower_threshold=5.0,
        ),
        dict(outlier_loss_target="max_logit", outlier_lower_threshold=5.0),
    ],
)
def test_thresholds_inside_their_targets_range_pass(settings):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = OEConfig(**settings)
    assert OEConfig.from_dict(config.to_dict()) == config


def test_rba_thresholds_below_one_claim_per_class_warn():
    with pytest.warns(UserWarning, match=r"-15.0 lies below -19 tanh\(1\) = -14.47"):
        OEConfig(inlier_upper_threshold=-15.0)


def test_recipes_rba_is_the_default_and_seed000_is_seed_000s_yaml():
    assert OEConfig.recipe("rba") == OEConfig()
    seed = OEConfig.recipe("seed000")
    assert (
        seed.trainable,
        seed.attn_mask_annealing_enabled,
        seed.weight_decay,
        seed.coco_split,
    ) == ("all", True, 0.05, "val")
    assert seed.attn_mask_annealing_start_steps == (1401, 3501, 5602)
    assert seed.attn_mask_annealing_end_steps == (2801, 4902, 7000)
    # its loss is the default's
    assert seed.outlier_loss_kwargs() == OEConfig().outlier_loss_kwargs()
    assert OEConfig.recipe("seed000", coco_split="train").coco_split == "train"
    assert OEConfig.from_dict(seed.to_dict()) == seed and seed.to_dict()[
        "attn_mask_annealing_end_steps"
    ] == [2801, 4902, 7000]
    with pytest.raises(ValueError, match=r"unknown recipe 'seed001'.*'seed000'"):
        OEConfig.recipe("seed001")
    assert set(OE_RECIPES) == {"rba", "seed000"}
