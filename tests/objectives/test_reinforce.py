"""REINFORCE with a moving-average baseline against a hand computation in plain Python floats.

    A_i  = r̃_i − b            (b: the moving average from BEFORE this batch; 0 before the first batch)
    L(θ) = −1/N Σ_i A_i · Σ_t mask_{i,t} · ln π_θ(y_{i,t})
    b    ← m (first batch) or decay·b + (1 − decay)·m,   m = mean r̃ of the batch (all processes)
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.models import ModelConfig
from rlhf_lightning.module import RLHFModule
from rlhf_lightning.objectives.reinforce import REINFORCE
from rlhf_lightning.rollout import Rollout

GARBAGE = 100.0  # written at masked response positions: must never reach the loss

P = 3  # prompt block width
PROMPT_MASK = [[0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 1, 1]]  # four prompts (group_size 1), some left-padded
RESPONSE_MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
POLICY = [[-0.5, -1.0, -0.25, None], [-2.0, -0.75, None, None],
          [-0.1, -0.2, -0.3, -0.4], [-3.0, None, None, None]]
OLD = [[-0.75, -1.5, -0.5, None], [-1.0, -1.0, None, None],
       [-0.2, -0.2, -0.2, -0.2], [-2.5, None, None, None]]
SHAPED = [0.8, -0.3, 0.1, 0.6]  # r̃, mean 0.3
SHAPED_2 = [1.0, 0.5, -0.5, 2.0]  # a second rollout batch, mean 0.75
RAW = [50.0, -50.0, 70.0, -70.0]  # raw r: must not be used


def tensor_with_garbage(rows, garbage=GARBAGE):
    return torch.tensor([[garbage if v is None else v for v in row] for row in rows])


def make_rollout(shaped=SHAPED, rows=None) -> Rollout:
    rows = list(range(4)) if rows is None else rows
    mask = torch.tensor([PROMPT_MASK[i] + RESPONSE_MASK[i] for i in rows])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return Rollout(input_ids=input_ids, attention_mask=mask, prompt_length=P,
                   old_logprobs=tensor_with_garbage([OLD[i] for i in rows], garbage=-57.0),
                   ref_logprobs=tensor_with_garbage([OLD[i] for i in rows], garbage=13.0),
                   rewards=torch.tensor([RAW[i] for i in rows]),
                   shaped_rewards=torch.tensor([shaped[i] for i in rows]), group_size=1, kl_coef=0.05)


def policy_tensor(rows=POLICY, garbage=GARBAGE) -> torch.Tensor:
    return tensor_with_garbage(rows, garbage).requires_grad_(True)


def identity(t):
    return t


def seq_logprob(i, policy=POLICY) -> float:
    return sum(v for v, m in zip(policy[i], RESPONSE_MASK[i]) if m)


def hand_loss(advantages, policy=POLICY) -> float:
    return -sum(a * seq_logprob(i, policy) for i, a in enumerate(advantages)) / len(advantages)


def mean(values) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------------------- loss and baseline
def test_first_batch_has_no_baseline_and_sets_it_to_the_batch_mean():
    objective = REINFORCE(baseline_decay=0.9)
    rollout = objective.prepare(make_rollout(), identity)
    assert rollout.extras["advantages"].tolist() == pytest.approx(SHAPED)  # b = 0 before any batch
    loss, metrics = objective.loss(policy_tensor(), rollout)
    assert loss.item() == pytest.approx(hand_loss(SHAPED), rel=1e-6)
    # row sums: −1.75, −2.75, −1.0, −3.0 → L = −(0.8·−1.75 − 0.3·−2.75 + 0.1·−1.0 + 0.6·−3.0)/4
    assert hand_loss(SHAPED) == pytest.approx(-(-1.4 + 0.825 - 0.1 - 1.8) / 4)
    assert float(objective.baseline) == pytest.approx(mean(SHAPED))  # b = m, no decay toward the 0 start
    assert int(objective.baseline_updates) == 1
    assert rollout.metrics["reinforce/baseline"] == 0.0
    assert float(metrics["loss/policy"]) == pytest.approx(loss.item())


@pytest.mark.parametrize("decay", [0.9, 0.5, 0.0])
def test_second_batch_uses_the_baseline_from_before_it_then_updates_it(decay):
    objective = REINFORCE(baseline_decay=decay)
    objective.prepare(make_rollout(), identity)
    b1 = mean(SHAPED)
    rollout = objective.prepare(make_rollout(shaped=SHAPED_2), identity)
    expected_advantages = [r - b1 for r in SHAPED_2]  # the batch's own rewards are not in its baseline
    assert rollout.extras["advantages"].tolist() == pytest.approx(expected_advantages)
    assert rollout.metrics["reinforce/baseline"] == pytest.approx(b1)
    loss, _ = objective.loss(policy_tensor(), rollout)
    assert loss.item() == pytest.approx(hand_loss(expected_advantages), rel=1e-6)
    assert float(objective.baseline) == pytest.approx(decay * b1 + (1 - decay) * mean(SHAPED_2))
    assert int(objective.baseline_updates) == 2


def test_gradient_is_minus_advantage_over_n_on_real_tokens():
    """∂L/∂lp_{i,t} = −A_i · mask_{i,t} / N."""
    objective = REINFORCE()
    objective.prepare(make_rollout(), identity)
    rollout = objective.prepare(make_rollout(shaped=SHAPED_2), identity)
    advantages = [r - mean(SHAPED) for r in SHAPED_2]
    lp = policy_tensor()
    (grad,) = torch.autograd.grad(objective.loss(lp, rollout)[0], lp)
    for i in range(4):
        for t in range(4):
            expected = -advantages[i] * RESPONSE_MASK[i][t] / 4
            assert grad[i, t].item() == pytest.approx(expected, abs=1e-7), (i, t)


def test_masked_garbage_raw_rewards_and_reference_do_not_matter():
    objective = REINFORCE()
    rollout = objective.prepare(make_rollout(), identity)
    base = objective.loss(policy_tensor(), rollout)[0].item()
    rollout.old_logprobs = tensor_with_garbage(OLD, garbage=1e4)
    rollout.ref_logprobs = torch.zeros_like(rollout.ref_logprobs)
    rollout.rewards = torch.zeros_like(rollout.rewards)
    assert objective.loss(policy_tensor(garbage=-1e4), rollout)[0].item() == pytest.approx(base, rel=1e-6)


def test_whitened_advantages_are_global_over_processes():
    """With whitening, A = (r̃ − b − mean)/std over ALL rows; two processes (reduce_sum adds the other's
    statistics) give the same rows and the same baseline as one process holding the whole batch."""
    objective = REINFORCE(whiten_advantages=True)
    full = objective.prepare(make_rollout(), identity).extras["advantages"]
    centred = [r - mean(SHAPED) for r in SHAPED]
    std = math.sqrt(sum(c * c for c in centred) / 3)  # unbiased, as torch.std
    assert full.tolist() == pytest.approx([c / std for c in centred], rel=1e-5)

    # the second process (rows 2, 3) records what it would contribute to each reduce_sum call
    recorded = []
    REINFORCE(whiten_advantages=True).prepare(make_rollout(rows=[2, 3]), lambda t: recorded.append(t) or t)
    first = REINFORCE(whiten_advantages=True)
    part = first.prepare(make_rollout(rows=[0, 1]), lambda t: t + recorded.pop(0)).extras["advantages"]
    torch.testing.assert_close(part, full[:2])
    assert float(first.baseline) == pytest.approx(mean(SHAPED))  # global mean, not the mean of rows 0, 1
    assert not recorded


def test_baseline_is_a_buffer_carried_by_state_dicts():
    objective = REINFORCE(baseline_decay=0.5)
    objective.prepare(make_rollout(), identity)
    objective.prepare(make_rollout(shaped=SHAPED_2), identity)
    state = objective.state_dict()
    assert set(state) == {"baseline", "baseline_updates"}
    restored = REINFORCE(baseline_decay=0.5)
    restored.load_state_dict(state)
    assert float(restored.baseline) == pytest.approx(0.5 * mean(SHAPED) + 0.5 * mean(SHAPED_2))
    next_batch = make_rollout(shaped=[0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(restored.prepare(next_batch, identity).extras["advantages"],
                               objective.prepare(make_rollout(shaped=[0.0, 0.0, 1.0, 1.0]), identity).extras["advantages"])
    module = RLHFModule(policy=ModelConfig(path="unused"), objective=REINFORCE())  # models load later
    assert {"objective.baseline", "objective.baseline_updates"} <= set(module.state_dict())


# ---------------------------------------------------------------------------- metrics and configuration
def test_metrics_are_detached_finite_scalars():
    objective = REINFORCE()
    rollout = objective.prepare(make_rollout(), identity)
    _, metrics = objective.loss(policy_tensor(), rollout)
    assert {"loss/policy", "reinforce/logprob"} <= set(metrics)
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
        assert math.isfinite(float(value)), key
    assert float(metrics["reinforce/logprob"]) == pytest.approx(mean([seq_logprob(i) for i in range(4)]))
    assert rollout.metrics["reinforce/advantage_mean"] == pytest.approx(mean(SHAPED))


def test_loss_without_prepare_says_what_to_do():
    with pytest.raises(RuntimeError, match="prepare"):
        REINFORCE().loss(policy_tensor(), make_rollout())


def test_declares_one_sample_and_validates_arguments():
    assert REINFORCE.needs.samples_per_prompt == 1 and REINFORCE().needs.samples_per_prompt == 1
    objective = REINFORCE()
    assert objective.baseline_decay == 0.9 and objective.inner_epochs == 1 and not objective.whiten_advantages
    for bad in (1.0, -0.1, 2.0):
        with pytest.raises(RecipeError, match=r"model\.init_args\.objective\.init_args\.baseline_decay"):
            REINFORCE(baseline_decay=bad)
    with pytest.raises(RecipeError) as info:  # every problem in one error
        REINFORCE(baseline_decay=1.5, inner_epochs=0)
    assert "baseline_decay" in str(info.value) and "inner_epochs" in str(info.value)
