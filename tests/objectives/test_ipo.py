"""IPO (Azar et al., 2023, Eq. 17) against hand computations in Python floats.

    h = [ln π_θ(y_w) − ln π_ref(y_w)] − [ln π_θ(y_l) − ln π_ref(y_l)]     (sequence sums, the paper's form;
                                                                         per-token means if length-normalised)
    L = 1/G Σ_g (h_g − 1/(2τ))²

Fixture: the shared pairs of test_dpo (margins 2.0, 0.5, −1.2).
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.dpo import DPO
from rlhf_lightning.objectives.ipo import IPO
from test_dpo import (OPTIONS, REF, assert_chunks_exact, assert_grad_is, hand_margins, hand_options, make_batch,
                      policy_tensor)


def hand_ipo_loss(tau, **options):
    return sum((h - 1 / (2 * tau)) ** 2 for h in hand_margins(**options)) / 3


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0])
def test_ipo_loss_matches_hand_values(tau, options):
    loss, _ = IPO(tau=tau, **options).loss(policy_tensor(), make_batch())
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_ipo_loss(tau, **hand_options(options)), rel=1e-6)


def test_known_numbers_and_that_ipo_is_a_dpo():
    # τ = 0.5: target 1; margins 2.0, 0.5, −1.2 → (1 + 0.25 + 4.84)/3
    loss, _ = IPO(tau=0.5).loss(policy_tensor(), make_batch())
    assert loss.item() == pytest.approx((1.0 + 0.25 + 4.84) / 3)
    assert isinstance(IPO(), DPO) and IPO().needs.reference and not IPO(reference_free=True).needs.reference
    # π_θ = π_ref: h = 0, loss (1/(2τ))²
    assert IPO(tau=0.1).loss(policy_tensor(REF), make_batch())[0].item() == pytest.approx(25.0)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_ipo_gradient_matches_analytic(tau, options):
    """∂L/∂lp_{i,t} = ±2(h − 1/(2τ))/G · mask_{i,t} (/|y_i| if length-normalised)."""
    lp = policy_tensor()
    loss, _ = IPO(tau=tau, **options).loss(lp, make_batch())
    (grad,) = torch.autograd.grad(loss, lp)
    margins = hand_margins(**hand_options(options))
    coefficients = [(1 if i % 2 == 0 else -1) * 2 * (margins[i // 2] - 1 / (2 * tau)) / 3 for i in range(6)]
    assert_grad_is(grad, coefficients, normalize=options.get("length_normalized", False))


def test_minimum_is_at_the_target_not_beyond():
    """Unlike DPO, IPO pushes a pair whose margin is past 1/(2τ) back down."""
    lp = policy_tensor()
    loss, _ = IPO(tau=1.0).loss(lp, make_batch())  # target 0.5: pair 0 (h = 2) is past it, pair 1 on it
    (grad,) = torch.autograd.grad(loss, lp)
    assert bool((grad[0, :4] > 0).all())  # lower the winner of pair 0
    assert torch.equal(grad[2:4], torch.zeros(2, 4))  # pair 1 sits at the minimum


def test_large_margins_are_finite():
    lp = (policy_tensor() * 1e4).detach().requires_grad_(True)
    loss, metrics = IPO(tau=0.1).loss(lp, make_batch())
    (grad,) = torch.autograd.grad(loss, lp)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    assert all(math.isfinite(float(v)) for v in metrics.values())


def test_metrics_use_plain_log_ratios():
    _, metrics = IPO(tau=0.5).loss(policy_tensor(), make_batch())
    assert float(metrics["loss/ipo"]) == pytest.approx(hand_ipo_loss(0.5))
    assert float(metrics["ipo/margin"]) == pytest.approx((2.0 + 0.5 - 1.2) / 3)
    assert float(metrics["ipo/accuracy"]) == pytest.approx(2 / 3)
    assert float(metrics["ipo/chosen_reward"]) == pytest.approx((1.25 + 0.3 - 0.9) / 3)  # β = 1


@pytest.mark.parametrize("options", OPTIONS)
def test_chunk_weights_are_exact(options):
    assert_chunks_exact(IPO(tau=0.3, **options), make_batch())


def test_defaults_and_validation():
    objective = IPO()
    assert (objective.tau, objective.length_normalized, objective.reference_free) == (0.1, False, False)
    for tau in (0.0, -1.0, float("inf"), None):
        with pytest.raises(RecipeError, match="model.init_args.objective.init_args.tau"):
            IPO(tau=tau)
    with pytest.raises(RecipeError) as info:
        IPO(tau=-1.0, length_normalized="yes")
    assert "init_args.tau" in str(info.value) and "init_args.length_normalized" in str(info.value)
    assert "beta" not in str(info.value)
