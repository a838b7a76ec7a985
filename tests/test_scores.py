"""Anomaly scores against direct numpy formulas (REFERENCE §4)."""

import numpy as np
import pytest
import torch

from anomalyseg import scores


def _np_softmax(x, t=1.0):
    e = np.exp((x - x.max(0, keepdims=True)) / t)
    return e / e.sum(0, keepdims=True)


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return torch.randn(19, 5, 7, generator=g) * 3


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_softmax_scores_match_numpy(x, t):
    a = x.double().numpy()
    p = _np_softmax(a, t)
    np.testing.assert_allclose(scores.msp(x, t).numpy(), 1 - p.max(0), atol=1e-6)
    np.testing.assert_allclose(scores.max_entropy(x, t).numpy(), -(p * np.log(p)).sum(0), atol=1e-5)
    lse = np.log(np.exp(a / t).sum(0))
    np.testing.assert_allclose(scores.energy(x, t).numpy(), -t * lse, rtol=1e-5)


def test_max_logit_and_rba(x):
    np.testing.assert_allclose(scores.max_logit(x).numpy(), -x.numpy().max(0))
    L = torch.sigmoid(x)  # mask-classification maps live in [0, 1]
    np.testing.assert_allclose(scores.rba(L).numpy(), -np.tanh(L.numpy()).sum(0), rtol=1e-6)
    assert (scores.rba(L) <= 0).all() and (scores.rba(L) >= -19 * np.tanh(1) - 1e-5).all()


def test_batched_equals_per_frame(x):
    b = torch.stack([x, -x])
    for name in ("msp", "max_logit", "max_entropy", "energy", "rba"):
        f = scores.get_score(name)
        torch.testing.assert_close(f(b)[1], f(-x))


def test_higher_is_more_anomalous():
    confident = torch.zeros(19, 1, 1)
    confident[3] = 10.0
    flat = torch.zeros(19, 1, 1)
    for name in ("msp", "max_logit", "max_entropy", "energy"):
        f = scores.get_score(name)
        assert f(flat).item() > f(confident).item(), name


def test_void_prob_and_errors(x):
    z = torch.randn(20, 3, 3)
    np.testing.assert_allclose(
        scores.void_prob(z).numpy(), _np_softmax(z.double().numpy())[19], atol=1e-6
    )
    with pytest.raises(ValueError, match="20 channels"):
        scores.void_prob(x)
    with pytest.raises(ValueError, match="unknown anomaly score 'msq'"):
        scores.get_score("msq")
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        scores.msp(torch.zeros(19, 4))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_one_softmax_serves_all_three(x, t):
    a = x.double().numpy()
    p = _np_softmax(a, t)
    found = scores.softmax_scores(x, ("msp", "max_entropy", "energy"), t)
    np.testing.assert_allclose(found["msp"].numpy(), 1 - p.max(0), atol=1e-6)
    np.testing.assert_allclose(found["max_entropy"].numpy(), -(p * np.log(p)).sum(0), atol=1e-5)
    np.testing.assert_allclose(
        found["energy"].numpy(), -t * np.log(np.exp(a / t).sum(0)), rtol=1e-5
    )
    with pytest.raises(ValueError, match="not \\['rba'\\]"):
        scores.softmax_scores(x, ("msp", "rba"))


# ----------------------------------------------------------------------------- the score table
def test_score_table_lists_the_reference_scores_in_the_course_order():
    # REFERENCE §4's order, then the learned heads of models.anomaly_head
    from anomalyseg.models.anomaly_head import VARIANT_SCORES

    posthoc = ("msp", "max_logit", "max_entropy", "energy", "rba", "void_prob")
    assert scores.SCORE_ORDER[:6] == posthoc
    assert scores.LEARNED_SCORES == tuple(VARIANT_SCORES.values())
    assert scores.SCORE_ORDER == scores.SCORE_ORDER[:6] + scores.LEARNED_SCORES
    assert [scores.SCORE_TABLE[n].function for n in posthoc] == [
        scores.msp,
        scores.max_logit,
        scores.max_entropy,
        scores.energy,
        scores.rba,
        scores.void_prob,
    ]
    assert scores.score_title("rba") == "RbA" and scores.score_title("max_logit") == "MaxLogit"
    assert scores.score_title("my_head") == "my_head"


def test_default_scores_per_model():
    four = ("msp", "max_logit", "max_entropy", "energy")
    assert scores.default_scores("erfnet") == four
    assert scores.default_scores("eomt") == four + ("rba",)
    assert scores.default_scores() == four  # those of every model
    assert scores.baseline_scores() == ("msp", "max_logit")

    class Mask:
        supports_class_temperature = True

    class Pixel:
        supports_class_temperature = False

    assert scores.default_scores(Mask()) == four + ("rba",)
    assert scores.default_scores(Pixel()) == four
    assert scores.applies("rba", Mask()) and not scores.applies("rba", "erfnet")
    assert scores.applies("void_prob", "erfnet") and not scores.applies("void_prob", "eomt")
    assert scores.applies("some_other_head", "erfnet")  # not in the table: the segmenter decides
    with pytest.raises(ValueError, match=r"unknown model kind 'segformer'.*'erfnet', 'eomt'"):
        scores.default_scores("segformer")


def test_table_flags_match_what_the_functions_do(x):
    # temperature_sensitive: the ranking of the pixels changes with T (checked on the values);
    # softmax: softmax_scores gives the same map; needs_void: refuses 19 channels.
    void = torch.randn(1, 5, 7, generator=torch.Generator().manual_seed(1)) * 3
    z = torch.cat([x, void])  # 20 channels
    for name, spec in scores.SCORE_TABLE.items():
        if spec.learned:
            continue
        inp = z if spec.needs_void else x
        a, b = spec.function(inp, temperature=1.0), spec.function(inp, temperature=4.0)
        same_rank = torch.equal(a.flatten().argsort(), b.flatten().argsort())
        assert same_rank != spec.temperature_sensitive, name
        if spec.softmax:
            torch.testing.assert_close(scores.softmax_scores(x, (name,), 1.0)[name], a)
        if spec.needs_void:
            with pytest.raises(ValueError, match="20 channels"):
                spec.function(x)
