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
    np.testing.assert_allclose(scores.void_prob(z).numpy(), _np_softmax(z.double().numpy())[19], atol=1e-6)
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
    np.testing.assert_allclose(found["energy"].numpy(), -t * np.log(np.exp(a / t).sum(0)), rtol=1e-5)
    with pytest.raises(ValueError, match="not \\['rba'\\]"):
        scores.softmax_scores(x, ("msp", "rba"))

