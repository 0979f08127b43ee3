"""RLOO (Kool et al., 2019) against a hand computation in plain Python floats.

    A_i  = r̃_i − 1/(k−1) · Σ_{j≠i} r̃_j          (within the k samples of a prompt)
    L(θ) = −1/N Σ_i A_i · Σ_t mask_{i,t} · ln π_θ(y_{i,t})
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.rloo import RLOO
from rlhf_lightning.rollout import Rollout

# the hand-checked 2 prompts × 2 samples fixture of the REBEL tests (left-padded prompt 0, garbage in padding)
from test_rebel import (GARBAGE, OLD, P, POLICY, PROMPT_MASK, RAW, RESPONSE_MASK, SHAPED,  # noqa: E402
                        tensor_with_garbage)


def make_rollout(group_size=2, shaped=SHAPED) -> Rollout:
    if group_size == 4:  # one prompt: every row gets the same (left-padded) prompt
        prompt = [[0, 1, 1]] * 4
    else:
        prompt = PROMPT_MASK
    mask = torch.tensor([prompt[i] + RESPONSE_MASK[i] for i in range(4)])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return Rollout(input_ids=input_ids, attention_mask=mask, prompt_length=P,
                   old_logprobs=tensor_with_garbage(OLD, garbage=-57.0),
                   ref_logprobs=tensor_with_garbage(OLD, garbage=13.0),
                   rewards=torch.tensor(RAW), shaped_rewards=torch.tensor(shaped), group_size=group_size)


def policy_tensor(garbage=GARBAGE) -> torch.Tensor:
    return tensor_with_garbage(POLICY, garbage).requires_grad_(True)


def identity(t):
    return t


def seq_logprob(i) -> float:
    return sum(v for v, m in zip(POLICY[i], RESPONSE_MASK[i]) if m)


def hand_advantages(shaped, k) -> list[float]:
    out = []
    for i, r in enumerate(shaped):
        group = shaped[(i // k) * k:(i // k + 1) * k]
        out.append(r - (sum(group) - r) / (k - 1))
    return out


def hand_loss(advantages) -> float:
    return -sum(a * seq_logprob(i) for i, a in enumerate(advantages)) / len(advantages)


# ---------------------------------------------------------------------------- advantages and loss
def test_k2_advantage_is_plus_minus_the_reward_difference():
    """k = 2: the other sample is the whole baseline, A = ±(r̃_0 − r̃_1)."""
    objective = RLOO(k=2)
    rollout = objective.prepare(make_rollout(group_size=2), identity)
    assert rollout.extras["advantages"].tolist() == pytest.approx([1.1, -1.1, -0.5, 0.5])
    loss, metrics = objective.loss(policy_tensor(), rollout)
    # sequence sums −1.75, −2.75, −1.0, −3.0
    expected = -(1.1 * -1.75 - 1.1 * -2.75 - 0.5 * -1.0 + 0.5 * -3.0) / 4
    assert hand_loss([1.1, -1.1, -0.5, 0.5]) == pytest.approx(expected)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert float(metrics["loss/policy"]) == pytest.approx(expected, rel=1e-6)


def test_k4_leave_one_out_baseline():
    objective = RLOO(k=4)
    assert objective.needs.samples_per_prompt == 4
    rollout = objective.prepare(make_rollout(group_size=4), identity)
    advantages = hand_advantages(SHAPED, 4)
    assert advantages[0] == pytest.approx(0.8 - (-0.3 + 0.1 + 0.6) / 3)
    assert rollout.extras["advantages"].tolist() == pytest.approx(advantages)
    assert sum(advantages) == pytest.approx(0.0, abs=1e-12)  # a leave-one-out baseline centres each group
    loss, _ = objective.loss(policy_tensor(), rollout)
    assert loss.item() == pytest.approx(hand_loss(advantages), rel=1e-6)


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_is_minus_advantage_over_n_on_real_tokens(k):
    """∂L/∂lp_{i,t} = −A_i · mask_{i,t} / N."""
    objective = RLOO(k=k)
    rollout = objective.prepare(make_rollout(group_size=k), identity)
    advantages = hand_advantages(SHAPED, k)
    lp = policy_tensor()
    (grad,) = torch.autograd.grad(objective.loss(lp, rollout)[0], lp)
    for i in range(4):
        for t in range(4):
            assert grad[i, t].item() == pytest.approx(-advantages[i] * RESPONSE_MASK[i][t] / 4, abs=1e-7), (i, t)


def test_uses_shaped_rewards_and_ignores_masked_garbage():
    objective = RLOO(k=2)
    rollout = objective.prepare(make_rollout(), identity)
    base = objective.loss(policy_tensor(), rollout)[0].item()
    rollout.old_logprobs = tensor_with_garbage(OLD, garbage=1e4)
    rollout.ref_logprobs = torch.zeros_like(rollout.ref_logprobs)
    rollout.rewards = torch.zeros_like(rollout.rewards)  # raw r is not what RLOO uses
    assert objective.loss(policy_tensor(garbage=-1e4), rollout)[0].item() == pytest.approx(base, rel=1e-6)
    shaped = [0.0, 2.0, -1.0, 1.0]
    other = objective.prepare(make_rollout(shaped=shaped), identity)
    assert objective.loss(policy_tensor(), other)[0].item() == pytest.approx(hand_loss(hand_advantages(shaped, 2)))


def test_equal_rewards_give_no_gradient():
    objective = RLOO(k=2)
    rollout = objective.prepare(make_rollout(shaped=[0.4, 0.4, 0.4, 0.4]), identity)
    lp = policy_tensor()
    (grad,) = torch.autograd.grad(objective.loss(lp, rollout)[0], lp)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_metrics_and_prepare_requirements():
    objective = RLOO(k=2)
    with pytest.raises(RuntimeError, match="prepare"):
        objective.loss(policy_tensor(), make_rollout())
    rollout = objective.prepare(make_rollout(), identity)
    _, metrics = objective.loss(policy_tensor(), rollout)
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
        assert math.isfinite(float(value)), key
    assert rollout.metrics["rloo/advantage_abs"] == pytest.approx((1.1 + 1.1 + 0.5 + 0.5) / 4)
    single = make_rollout(group_size=1)
    with pytest.raises(ValueError, match="at least 2"):
        objective.prepare(single, identity)


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("k", [1, 0, -2])
def test_k_below_two_is_a_recipe_error_naming_k(k):
    with pytest.raises(RecipeError) as info:
        RLOO(k=k)
    assert info.value.field == "model.init_args.objective.init_args.k"
    assert "≥ 2" in str(info.value)


def test_samples_per_prompt_follows_k_per_instance():
    assert RLOO().needs.samples_per_prompt == 2 and RLOO(k=4).needs.samples_per_prompt == 4
    assert RLOO(k=3).needs.samples_per_prompt == 3 and RLOO().needs.samples_per_prompt == 2  # no leak between instances
    assert RLOO().inner_epochs == 1 and RLOO().num_minibatches == 1
