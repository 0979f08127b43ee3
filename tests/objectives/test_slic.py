"""SLiC hinge loss (Zhao et al., 2023) against hand computations in Python floats.

    h = [ln π_θ(y_w) − ln π_ref(y_w)] − [ln π_θ(y_l) − ln π_ref(y_l)]     (no π_ref if reference-free)
    L = 1/G Σ_g max(0, 1 − βh_g)  −  λ·1/G Σ_g ln π_θ(y_w,g)

Fixture: the shared pairs of test_dpo (margins 2.0, 0.5, −1.2).
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.dpo import DPO
from rlhf_lightning.objectives.slic import SLiC
from test_dpo import (OPTIONS, POLICY, RESPONSE_MASK, assert_chunks_exact, hand_margins, hand_options, length,
                      make_batch, policy_tensor, seq)


def hand_hinge(beta, **options):
    return sum(max(0.0, 1 - beta * h) for h in hand_margins(**options)) / 3


def hand_sft():
    return -sum(seq(POLICY, i) for i in (0, 2, 4)) / 3


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("beta", [0.1, 0.75, 3.0])
def test_hinge_matches_hand_values(beta, options):
    loss, _ = SLiC(beta=beta, **options).loss(policy_tensor(), make_batch())
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_hinge(beta, **hand_options(options)), rel=1e-6)


def test_known_numbers():
    # β = 0.75: margins 2.0, 0.5, −1.2 → max(0, −0.5), 0.625, 1.9
    loss, metrics = SLiC(beta=0.75).loss(policy_tensor(), make_batch())
    assert loss.item() == pytest.approx((0.0 + 0.625 + 1.9) / 3)
    assert "slic/hinge" not in metrics and float(metrics["loss/slic"]) == pytest.approx(loss.item())
    assert isinstance(SLiC(), DPO) and not SLiC(reference_free=True).needs.reference


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_gradient_matches_analytic(sft_weight, options):
    """∂L/∂lp_{i,t} = mask_{i,t}·(±(−β)·[βh < 1]/G (/|y_i| if length-normalised) − λ/G·[i chosen]).

    The regulariser is a plain sequence sum, so it is not divided by |y| even when h is."""
    beta = 0.75
    lp = policy_tensor()
    loss, _ = SLiC(beta=beta, sft_weight=sft_weight, **options).loss(lp, make_batch())
    (grad,) = torch.autograd.grad(loss, lp)
    normalize = options.get("length_normalized", False)
    margins = hand_margins(**hand_options(options))
    for i in range(6):
        side = 1 if i % 2 == 0 else -1
        hinge = side * (-beta if beta * margins[i // 2] < 1 else 0.0) / 3 / (length(i) if normalize else 1)
        sft = -sft_weight / 3 if side == 1 else 0.0
        for t in range(4):
            expected = RESPONSE_MASK[i][t] * (hinge + sft)
            assert grad[i, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7), (i, t)
    if not options and not sft_weight:
        assert torch.equal(grad[0:2], torch.zeros(2, 4))  # pair 0: βh = 1.5 ≥ 1, the hinge is flat


def test_sft_regulariser():
    lp = policy_tensor()
    loss, metrics = SLiC(beta=0.75, sft_weight=0.5).loss(lp, make_batch())
    assert loss.item() == pytest.approx(hand_hinge(0.75) + 0.5 * hand_sft(), rel=1e-6)
    assert float(metrics["loss/slic"]) == pytest.approx(loss.item())
    assert float(metrics["slic/hinge"]) == pytest.approx(hand_hinge(0.75))
    assert float(metrics["slic/sft"]) == pytest.approx(hand_sft())


def test_reference_free_is_the_papers_calibration_loss_times_beta():
    """max(0, 1 − β·d) = β·max(0, δ − d), δ = 1/β, d = ln π_θ(y_w) − ln π_θ(y_l) (SLiC-HF Eq. 1)."""
    delta = 4.0
    loss, _ = SLiC(beta=1 / delta, reference_free=True).loss(policy_tensor(), make_batch(with_ref=False))
    paper = sum(max(0.0, delta - h) for h in hand_margins(reference_free=True)) / 3
    assert loss.item() == pytest.approx(paper / delta, rel=1e-6)


def test_large_margins_are_finite():
    lp = (policy_tensor() * 1e4).detach().requires_grad_(True)
    loss, metrics = SLiC(beta=0.5, sft_weight=0.1).loss(lp, make_batch())
    (grad,) = torch.autograd.grad(loss, lp)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    assert all(math.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("sft_weight", [0.0, 0.3])
@pytest.mark.parametrize("options", OPTIONS)
def test_chunk_weights_are_exact(options, sft_weight):
    assert_chunks_exact(SLiC(beta=0.75, sft_weight=sft_weight, **options), make_batch())


def test_defaults_and_validation():
    objective = SLiC()
    assert (objective.beta, objective.sft_weight, objective.length_normalized, objective.reference_free) == (
        0.1, 0.0, False, False)
    with pytest.raises(RecipeError, match="model.init_args.objective.init_args.beta"):
        SLiC(beta=0.0)
    with pytest.raises(RecipeError, match="model.init_args.objective.init_args.sft_weight"):
        SLiC(sft_weight=-0.1)
    with pytest.raises(RecipeError) as info:  # every problem at once
        SLiC(beta=-1.0, sft_weight=float("nan"), reference_free=None)
    for key in ("beta", "sft_weight", "reference_free"):
        assert f"init_args.{key}" in str(info.value)
