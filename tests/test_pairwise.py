"""Pairwise-preference losses on a margin h, against hand computations in plain Python floats.

    sigmoid: −(1−ε)·ln σ(βh) − ε·ln σ(−βh)      ipo: (h − 1/(2τ))²      hinge: max(0, 1 − βh)
"""

import math

import pytest
import torch

from rlhf_lightning.pairwise import hinge_loss, ipo_loss, sigmoid_loss

H = [2.0, -1.0, 0.0, 30.0, -0.5]


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_sigmoid_loss_matches_hand_values(beta, eps):
    loss = sigmoid_loss(torch.tensor(H), beta, eps)
    expected = [-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in H]
    assert loss.shape == (len(H),)
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_sigmoid_loss_known_numbers():
    # h = 0: ln 2 whatever ε; βh = ln 3: −ln(3/4) = ln(4/3)
    assert sigmoid_loss(torch.tensor([0.0]), 1.0, 0.2).item() == pytest.approx(math.log(2))
    assert sigmoid_loss(torch.tensor([math.log(3)]), 1.0).item() == pytest.approx(math.log(4 / 3))
    # with ε = 0.25 at βh = ln 3: 0.75·ln(4/3) + 0.25·ln 4
    assert sigmoid_loss(torch.tensor([math.log(3)]), 1.0, 0.25).item() == pytest.approx(
        0.75 * math.log(4 / 3) + 0.25 * math.log(4))


def test_sigmoid_loss_is_stable_for_large_margins():
    h = torch.tensor([1e4, -1e4], requires_grad=True)
    loss = sigmoid_loss(h, 1.0)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6) and loss[1].item() == pytest.approx(1e4)
    (grad,) = torch.autograd.grad(loss.sum(), h)
    torch.testing.assert_close(grad, torch.tensor([0.0, -1.0]))  # dℓ/dh = −β·σ(−βh)


@pytest.mark.parametrize("beta,eps", [(0.5, 0.0), (2.0, 0.2)])
def test_sigmoid_loss_gradient(beta, eps):
    """dℓ/dh = −β·[(1−ε)·σ(−βh) − ε·σ(βh)]."""
    h = torch.tensor(H, requires_grad=True)
    (grad,) = torch.autograd.grad(sigmoid_loss(h, beta, eps).sum(), h)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = [-beta * ((1 - eps) * sig(-beta * v) - eps * sig(beta * v)) for v in H]
    torch.testing.assert_close(grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_loss_matches_hand_values(tau):
    loss = ipo_loss(torch.tensor(H), tau)
    torch.testing.assert_close(loss, torch.tensor([(h - 1 / (2 * tau)) ** 2 for h in H]))
    assert ipo_loss(torch.tensor([1 / (2 * tau)]), tau).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_hinge_loss_matches_hand_values(beta):
    h = torch.tensor(H, requires_grad=True)
    loss = hinge_loss(h, beta)
    torch.testing.assert_close(loss, torch.tensor([max(0.0, 1 - beta * v) for v in H]).detach())
    (grad,) = torch.autograd.grad(loss.sum(), h)
    torch.testing.assert_close(grad, torch.tensor([-beta if 1 - beta * v > 0 else 0.0 for v in H]))


def test_losses_are_unreduced_and_decrease_with_the_margin():
    h = torch.linspace(-3, 3, 7)
    for loss in (sigmoid_loss(h, 0.5), hinge_loss(h, 0.5)):
        assert loss.shape == h.shape
        assert bool((loss[1:] <= loss[:-1]).all())
