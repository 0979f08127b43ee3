"""The stochastic DDIM sampler as a policy: σ_t, the step's mean and its Gaussian log-probability against hand
computations, and the trajectory log-probs recomputed from a stored trajectory equal those recorded at sampling
(the images' analogue of "π_t at rollout equals π_θ before the update")."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lightning.diffusion import (check_ddim_eta, ddim_sigma, ddim_step, gaussian_log_prob, sample_trajectory,
                                      trajectory_log_probs)
from rlhf_lightning.errors import RecipeError


def test_sigma_and_mean_by_hand():
    a_t, a_prev, eta = torch.tensor(0.5), torch.tensor(0.8), 0.7
    sigma = eta * math.sqrt((1 - 0.8) / (1 - 0.5)) * math.sqrt(1 - 0.5 / 0.8)
    assert ddim_sigma(a_t, a_prev, eta).item() == pytest.approx(sigma)
    x_t, eps = torch.tensor([[1.5, -0.5]]), torch.tensor([[0.2, 0.4]])
    mean, std = ddim_step(x_t, eps, a_t, a_prev, eta)
    for i, (x, e) in enumerate(((1.5, 0.2), (-0.5, 0.4))):
        x0 = (x - math.sqrt(0.5) * e) / math.sqrt(0.5)
        expected = math.sqrt(0.8) * x0 + math.sqrt(1 - 0.8 - sigma ** 2) * e
        assert mean[0, i].item() == pytest.approx(expected, rel=1e-6)
    assert std.item() == pytest.approx(sigma)


def test_eta_one_is_the_ddpm_posterior_variance():
    a_t, a_prev = torch.tensor(0.3), torch.tensor(0.6)
    beta_tilde = (1 - 0.6) / (1 - 0.3) * (1 - 0.3 / 0.6)  # DDPM's posterior variance for the step t → prev
    assert ddim_sigma(a_t, a_prev, 1.0).item() ** 2 == pytest.approx(beta_tilde)


def test_gaussian_log_prob_by_hand_and_against_torch():
    x = torch.tensor([[0.3, -1.2], [2.0, 0.0]])
    mean = torch.tensor([[0.0, -1.0], [1.0, 0.5]])
    std = torch.tensor(0.4)
    by_hand = [sum(-(xi - mi) ** 2 / (2 * 0.16) - math.log(0.4) - 0.5 * math.log(2 * math.pi)
                   for xi, mi in zip(row_x, row_m)) for row_x, row_m in zip(x.tolist(), mean.tolist())]
    assert gaussian_log_prob(x, mean, std).tolist() == pytest.approx(by_hand)
    normal = torch.distributions.Normal(mean, std).log_prob(x).sum(dim=1)
    assert torch.allclose(gaussian_log_prob(x, mean, std), normal)


class TinyDenoiser(torch.nn.Module):
    """ε_θ(x, t, c): a convolution of the latent plus an embedding of the timestep and the class."""

    def __init__(self, channels: int = 2, steps: int = 100, classes: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.time = torch.nn.Embedding(steps, channels)
        self.label = torch.nn.Embedding(classes, channels)

    def forward(self, x, t, condition):
        return self.conv(x) + (self.time(t) + self.label(condition))[:, :, None, None]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyDenoiser()
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100), dim=0)
    return model, alphas_cumprod, [99, 74, 49, 24]


def test_recomputed_trajectory_log_probs_equal_the_recorded_ones_and_carry_gradients():
    model, alphas_cumprod, timesteps = _setup()
    condition = torch.tensor([0, 2, 1])
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    trajectory = sample_trajectory(model, noise, condition, timesteps, alphas_cumprod, 1.0,
                                   generator=torch.Generator().manual_seed(2))
    assert trajectory.latents.shape == (3, 5, 2, 4, 4) and trajectory.log_probs.shape == (3, 4)
    assert trajectory.prev_timesteps == [74, 49, 24, -1]
    assert torch.isfinite(trajectory.log_probs).all()
    recomputed = trajectory_log_probs(model, trajectory, condition, alphas_cumprod, 1.0)
    assert torch.allclose(recomputed, trajectory.log_probs, atol=1e-4)
    recomputed.sum().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0
    # after an update the policy's log-probs of the same trajectory change: π_θ ≠ π_t
    with torch.no_grad():
        model.conv.weight.add_(0.05)
    moved = trajectory_log_probs(model, trajectory, condition, alphas_cumprod, 1.0)
    assert not torch.allclose(moved, trajectory.log_probs, atol=1e-3)


def test_sampling_is_reproducible_with_a_generator_and_noisy_without_one():
    model, alphas_cumprod, timesteps = _setup()
    noise, condition = torch.zeros(2, 2, 4, 4), torch.tensor([0, 1])
    first = sample_trajectory(model, noise, condition, timesteps, alphas_cumprod, 0.5, torch.Generator().manual_seed(3))
    again = sample_trajectory(model, noise, condition, timesteps, alphas_cumprod, 0.5, torch.Generator().manual_seed(3))
    other = sample_trajectory(model, noise, condition, timesteps, alphas_cumprod, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(first.latents, again.latents) and not torch.equal(first.latents, other.latents)


@pytest.mark.parametrize("eta", [0.0, -1.0, float("nan"), float("inf")])
def test_a_sampler_with_no_stochasticity_is_refused(eta):
    with pytest.raises(RecipeError, match="eta") as error:
        check_ddim_eta(eta)
    assert "deterministic" in str(error.value)
    model, alphas_cumprod, timesteps = _setup()
    with pytest.raises(RecipeError, match="eta"):
        sample_trajectory(model, torch.zeros(1, 2, 4, 4), torch.tensor([0]), timesteps, alphas_cumprod, eta)


@pytest.mark.parametrize("timesteps", [[], [24, 49], [99, 99, 10], [99, 0], [100, 50]])
def test_bad_timesteps_are_refused(timesteps):
    model, alphas_cumprod, _ = _setup()
    with pytest.raises(RecipeError, match="timesteps"):
        sample_trajectory(model, torch.zeros(1, 2, 4, 4), torch.tensor([0]), timesteps, alphas_cumprod, 1.0)


# ------------------------------------------------------------------------------------------------ objectives
def test_rebel_consumes_trajectory_log_probs_unchanged():
    """REBEL's Eq. 1 on a pair of trajectories per prompt: (1/η)·(Σ_k Δ ln π of y − Σ_k Δ ln π of y′) − (r − r′)."""
    from rlhf_lightning.diffusion import trajectory_rollout
    from rlhf_lightning.objectives import REBEL

    model, alphas_cumprod, timesteps = _setup()
    condition = torch.tensor([0, 0, 1, 1])  # two prompts, two samples each
    trajectory = sample_trajectory(model, torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(5)),
                                   condition, timesteps, alphas_cumprod, 1.0, torch.Generator().manual_seed(6))
    rewards = torch.tensor([0.9, 0.1, -0.2, 0.4])
    rollout = trajectory_rollout(trajectory, rewards, group_size=2)
    with torch.no_grad():
        model.conv.weight.mul_(1.1)
    current = trajectory_log_probs(model, trajectory, condition, alphas_cumprod, 1.0)
    eta = 0.5
    loss, _ = REBEL(eta=eta).loss(current, rollout)
    ratio = (current - trajectory.log_probs).sum(dim=1)  # [4] ln π_θ(τ) − ln π_t(τ)
    by_hand = ((((ratio[0] - ratio[1]) / eta) - (0.9 - 0.1)) ** 2 + (((ratio[2] - ratio[3]) / eta) - (-0.2 - 0.4)) ** 2) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    loss.backward()
    assert model.conv.weight.grad.abs().sum() > 0
    # at the sampling policy the log-ratios vanish and the loss is the mean squared reward gap
    at_start, _ = REBEL(eta=eta).loss(trajectory.log_probs, rollout)
    assert at_start.item() == pytest.approx(((0.8 ** 2) + (0.6 ** 2)) / 2)


def test_trajectory_rewards_of_the_wrong_shape_or_not_finite_are_refused():
    from rlhf_lightning.diffusion import trajectory_rollout

    model, alphas_cumprod, timesteps = _setup()
    trajectory = sample_trajectory(model, torch.zeros(2, 2, 4, 4), torch.tensor([0, 0]), timesteps, alphas_cumprod, 1.0)
    with pytest.raises(ValueError, match="shape"):
        trajectory_rollout(trajectory, torch.zeros(2, 1), group_size=2)
    with pytest.raises(ValueError, match="finite"):
        trajectory_rollout(trajectory, torch.tensor([0.0, float("nan")]), group_size=2)
