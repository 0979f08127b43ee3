"""ORPO (Hong et al., 2024, Eqs. 6–7) against hand computations in Python floats.

    m(y) = (1/|y|)·Σ_t ln π_θ(y_t|…)          P = exp(m)          ln odds(y) = ln(P/(1 − P))
    h    = ln odds(y_w) − ln odds(y_l)
    L    = 1/G Σ_g [ −m(y_w,g) − λ·ln σ(h_g) ]      (per-token NLL of y_w, then mean over pairs)

No reference model. Fixture: the shared pairs of test_dpo.
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.orpo import ORPO, log_odds
from test_dpo import (POLICY, RESPONSE_MASK, assert_chunks_exact, length, log_sigmoid, make_batch, policy_tensor,
                      seq, sigmoid)


def hand_log_odds(m):
    p = math.exp(m)
    return math.log(p / (1 - p))


def mean_logprobs(policy=POLICY):
    return [seq(policy, i, normalize=True) for i in range(6)]


def hand_orpo(lam, policy=POLICY):
    m = mean_logprobs(policy)
    sft = -sum(m[0::2]) / 3
    h = [hand_log_odds(m[2 * g]) - hand_log_odds(m[2 * g + 1]) for g in range(3)]
    odds_ratio = sum(-log_sigmoid(x) for x in h) / 3
    return sft + lam * odds_ratio, sft, odds_ratio, h


@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
def test_orpo_loss_matches_hand_values(lam):
    loss, metrics = ORPO(lam=lam).loss(policy_tensor(), make_batch(with_ref=False))
    total, sft, odds_ratio, h = hand_orpo(lam)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(total, rel=1e-6)
    assert float(metrics["loss/orpo"]) == pytest.approx(total, rel=1e-6)
    assert float(metrics["orpo/sft"]) == pytest.approx(sft, rel=1e-6)
    assert float(metrics["orpo/odds_ratio_loss"]) == pytest.approx(odds_ratio, rel=1e-6)
    assert float(metrics["orpo/log_odds_ratio"]) == pytest.approx(sum(h) / 3, rel=1e-6)
    assert float(metrics["orpo/accuracy"]) == pytest.approx(2 / 3)  # pair 2: m_w = −0.8 < m_l = −0.3
    m = mean_logprobs()
    assert float(metrics["orpo/chosen_mean_logprob"]) == pytest.approx(sum(m[0::2]) / 3)
    assert float(metrics["orpo/rejected_mean_logprob"]) == pytest.approx(sum(m[1::2]) / 3)


def test_sft_term_is_a_per_token_mean_of_each_chosen_response():
    # chosen rows 0, 2, 4 have 4, 1, 3 tokens: (2.5/4 + 0.1/1 + 2.4/3)/3, not (2.5 + 0.1 + 2.4)/8
    _, metrics = ORPO().loss(policy_tensor(), make_batch(with_ref=False))
    assert float(metrics["orpo/sft"]) == pytest.approx((2.5 / 4 + 0.1 + 2.4 / 3) / 3)


def test_needs_no_reference_and_ignores_one_and_garbage():
    objective = ORPO()
    assert not objective.needs.reference and objective.needs.rollout is False
    base = objective.loss(policy_tensor(), make_batch(with_ref=False))[0].item()
    for garbage in (float("nan"), float("inf"), 0.0):
        lp = policy_tensor(garbage=garbage)
        loss, _ = objective.loss(lp, make_batch())
        (grad,) = torch.autograd.grad(loss, lp)
        assert loss.item() == pytest.approx(base, rel=1e-6) and torch.isfinite(grad).all()


@pytest.mark.parametrize("lam", [0.0, 0.1, 2.0])
def test_gradient_matches_analytic(lam):
    """With s = σ(−h) and P = exp(m):
    ∂L/∂lp_{w,t} = mask/|y_w| · (−1 − λ·s/(1 − P_w)) / G
    ∂L/∂lp_{l,t} = mask/|y_l| · λ·s/(1 − P_l) / G"""
    lp = policy_tensor()
    loss, _ = ORPO(lam=lam).loss(lp, make_batch(with_ref=False))
    (grad,) = torch.autograd.grad(loss, lp)
    m = mean_logprobs()
    _, _, _, h = hand_orpo(lam)
    for i in range(6):
        s = sigmoid(-h[i // 2])
        if i % 2 == 0:
            coefficient = (-1 - lam * s / (1 - math.exp(m[i]))) / 3
        else:
            coefficient = lam * s / (1 - math.exp(m[i])) / 3
        for t in range(4):
            expected = RESPONSE_MASK[i][t] * coefficient / length(i)
            assert grad[i, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7), (i, t)


def test_log_odds_against_double_precision():
    ms = [-30.0, -5.0, -0.7, -0.69, -0.1, -1e-2, -1e-3, -1e-4, -1e-5]
    got = log_odds(torch.tensor(ms))
    assert got.dtype == torch.float32
    for value, m in zip(got.tolist(), ms):
        expected = m - math.log(-math.expm1(m))  # exact ln(P/(1 − P)) in double
        assert value == pytest.approx(expected, rel=1e-5), m
    assert got.tolist()[2] == pytest.approx(hand_log_odds(-0.7), rel=1e-5)


def test_log_odds_near_p_one_and_p_zero():
    # P → 1: ln odds ≈ −ln(−m) grows without bound; m = 0 (P = 1) is capped at m = −1e-6, finite
    m = torch.tensor([-1e-6, -1e-7, 0.0, -300.0, -1e4, -1e30], requires_grad=True)
    values = log_odds(m)
    assert torch.isfinite(values).all()
    assert values[0].item() == pytest.approx(-1e-6 - math.log(1e-6), rel=1e-5)  # ≈ 13.8155
    assert values[1].item() == values[2].item() == values[0].item()  # capped
    # P → 0: ln odds → m (1 − P → 1)
    torch.testing.assert_close(values[3:], torch.tensor([-300.0, -1e4, -1e30]))
    (grad,) = torch.autograd.grad(values.sum(), m)
    assert torch.isfinite(grad).all()
    assert grad[0].item() == pytest.approx(1 / -math.expm1(-1e-6), rel=1e-3)  # d ln odds/dm = 1/(1 − P)
    assert grad[1].item() == grad[2].item() == 0.0  # past the cap
    torch.testing.assert_close(grad[3:], torch.ones(3))


def test_extreme_policies_are_stable():
    """A chosen response the policy is certain of (all tokens log-prob 0) and a rejected one it
    never produces (−1e4 per token), and the reverse: finite loss, metrics and gradient."""
    certain = [[None if v is None else (0.0 if i % 2 == 0 else -1e4) for v in row] for i, row in enumerate(POLICY)]
    reverse = [[None if v is None else (-1e4 if i % 2 == 0 else 0.0) for v in row] for i, row in enumerate(POLICY)]
    for rows in (certain, reverse):
        lp = policy_tensor(rows)
        loss, metrics = ORPO(lam=0.5).loss(lp, make_batch(with_ref=False))
        (grad,) = torch.autograd.grad(loss, lp)
        assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
        assert all(math.isfinite(float(v)) for v in metrics.values())
    # reverse: h ≈ −1e4 − 13.8, so −ln σ(h) ≈ 1e4 + 13.8; SFT term 1e4
    assert loss.item() == pytest.approx(1e4 + 0.5 * (1e4 + 13.8155), rel=1e-5)


def test_chunk_weights_are_exact():
    """Every term is a mean over pairs, so the default row share is exact."""
    objective = ORPO(lam=0.3)
    batch = make_batch(with_ref=False)
    assert objective.chunk_weight(batch.split(4)[1], batch) == pytest.approx(1 / 3)
    assert_chunks_exact(objective, batch)


def test_defaults_and_validation():
    assert ORPO().lam == 0.1
    for lam in (-0.1, float("nan"), "0.1", None):
        with pytest.raises(RecipeError, match="model.init_args.objective.init_args.lam"):
            ORPO(lam=lam)


def test_rejects_groups_that_are_not_pairs():
    with pytest.raises(ValueError, match="chosen and a rejected"):
        ORPO().loss(policy_tensor(), make_batch(group_size=3))
