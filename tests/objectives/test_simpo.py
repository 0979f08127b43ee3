"""SimPO (Meng et al., 2024, Eq. 6) against hand computations in Python floats, written in the
paper's form (γ an absolute margin in reward units, not divided by β):

    L = 1/G Σ_g −(1−ε)·ln σ(z_g) − ε·ln σ(−z_g)
    z = (β/|y_w|)·ln π_θ(y_w) − (β/|y_l|)·ln π_θ(y_l) − γ

No reference model. Fixture: the shared pairs of test_dpo.
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.dpo import DPO
from rlhf_lightning.objectives.simpo import SimPO
from test_dpo import (POLICY, assert_chunks_exact, assert_grad_is, log_sigmoid, make_batch, policy_tensor, seq,
                      sigmoid)


def hand_z(beta, gamma, policy=POLICY):
    return [beta * seq(policy, 2 * g, normalize=True) - beta * seq(policy, 2 * g + 1, normalize=True) - gamma
            for g in range(3)]


def hand_simpo_loss(beta, gamma, eps=0.0, policy=POLICY):
    return sum(-(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z) for z in hand_z(beta, gamma, policy)) / 3


def test_fixture_average_logprobs():
    # mean token log-probs: −0.625, −1.375 | −0.1, −1.2333 | −0.8, −0.3
    assert [seq(POLICY, i, normalize=True) for i in range(6)] == pytest.approx(
        [-0.625, -1.375, -0.1, -3.7 / 3, -0.8, -0.3])


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.6])
@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_simpo_loss_matches_the_papers_formula(beta, gamma, eps):
    loss, _ = SimPO(beta=beta, gamma=gamma, label_smoothing=eps).loss(policy_tensor(), make_batch(with_ref=False))
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_simpo_loss(beta, gamma, eps), rel=1e-6)


def test_gamma_is_in_reward_units():
    """γ is subtracted after β (z = βΔ − γ), not read as the authors' code's ratio γ/β (z = β(Δ − γ))."""
    batch = make_batch(with_ref=False)
    one_pair = batch.select_prompts(torch.tensor([0]))  # Δ = −0.625 + 1.375 = 0.75
    loss, _ = SimPO(beta=2.0, gamma=1.0).loss(policy_tensor(POLICY[:2]), one_pair)
    assert loss.item() == pytest.approx(-log_sigmoid(2.0 * 0.75 - 1.0))  # z = 0.5
    assert loss.item() != pytest.approx(-log_sigmoid(2.0 * (0.75 - 1.0)))  # z = −0.5 under the ratio reading
    # with γ = 0 SimPO is reference-free, length-normalised DPO
    dpo, _ = DPO(beta=2.0, length_normalized=True, reference_free=True).loss(policy_tensor(), batch)
    assert SimPO(beta=2.0, gamma=0.0).loss(policy_tensor(), batch)[0].item() == pytest.approx(dpo.item())


def test_needs_no_reference_and_ignores_one():
    objective = SimPO()
    assert not objective.needs.reference and objective.needs.rollout is False
    assert objective.length_normalized and objective.reference_free
    without, _ = objective.loss(policy_tensor(), make_batch(with_ref=False))
    with_ref, _ = objective.loss(policy_tensor(), make_batch())
    assert without.item() == pytest.approx(with_ref.item())


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("gamma", [0.0, 0.8])
def test_gradient_matches_analytic(gamma, eps):
    """∂L/∂lp_{i,t} = ±β·[ε·σ(z) − (1−ε)·σ(−z)]/G · mask_{i,t}/|y_i|: + for y_w, − for y_l."""
    beta = 2.5
    lp = policy_tensor()
    loss, _ = SimPO(beta=beta, gamma=gamma, label_smoothing=eps).loss(lp, make_batch(with_ref=False))
    (grad,) = torch.autograd.grad(loss, lp)
    zs = hand_z(beta, gamma)
    coefficients = []
    for i in range(6):
        z = zs[i // 2]
        dl_dz = beta * (eps * sigmoid(z) - (1 - eps) * sigmoid(-z)) / 3
        coefficients.append(dl_dz if i % 2 == 0 else -dl_dz)
    assert_grad_is(grad, coefficients, normalize=True)


def test_large_margins_and_garbage_are_stable():
    for scale in (1e4, -1e4):
        rows = [[None if v is None else (v * abs(scale) if i % 2 == (scale > 0) else v) for v in row]
                for i, row in enumerate(POLICY)]
        for garbage in (float("nan"), float("-inf")):
            lp = policy_tensor(rows, garbage=garbage)
            loss, metrics = SimPO(beta=10.0, gamma=1.0, label_smoothing=0.1).loss(lp, make_batch(with_ref=False))
            (grad,) = torch.autograd.grad(loss, lp)
            assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
            assert all(math.isfinite(float(v)) for v in metrics.values())
            assert loss.item() == pytest.approx(hand_simpo_loss(10.0, 1.0, 0.1, rows), rel=1e-5)


def test_metrics():
    beta = 2.0
    _, metrics = SimPO(beta=beta, gamma=0.5).loss(policy_tensor(), make_batch(with_ref=False))
    avg = [seq(POLICY, i, normalize=True) for i in range(6)]
    margins = [avg[0] - avg[1], avg[2] - avg[3], avg[4] - avg[5]]  # 0.75, 1.1333, −0.5
    assert float(metrics["loss/simpo"]) == pytest.approx(hand_simpo_loss(beta, 0.5))
    assert float(metrics["simpo/margin"]) == pytest.approx(sum(margins) / 3)
    assert float(metrics["simpo/accuracy"]) == pytest.approx(2 / 3)
    assert float(metrics["simpo/chosen_reward"]) == pytest.approx(beta * (avg[0] + avg[2] + avg[4]) / 3)
    assert float(metrics["simpo/rejected_reward"]) == pytest.approx(beta * (avg[1] + avg[3] + avg[5]) / 3)


def test_chunk_weights_are_exact():
    assert_chunks_exact(SimPO(beta=2.0, gamma=0.5, label_smoothing=0.1), make_batch(with_ref=False))


def test_defaults_and_validation():
    objective = SimPO()
    assert (objective.beta, objective.gamma, objective.label_smoothing) == (2.0, 0.5, 0.0)
    for kwargs, key in [(dict(beta=0.0), "beta"), (dict(gamma=-0.1), "gamma"), (dict(gamma=float("nan")), "gamma"),
                        (dict(label_smoothing=0.5), "label_smoothing")]:
        with pytest.raises(RecipeError, match=f"model.init_args.objective.init_args.{key}"):
            SimPO(**kwargs)
    with pytest.raises(RecipeError) as info:  # every problem at once
        SimPO(beta=-2.0, gamma=-1.0, label_smoothing=1.0)
    for key in ("beta", "gamma", "label_smoothing"):
        assert f"init_args.{key}" in str(info.value)
