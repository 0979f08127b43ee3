"""Online (iterative) DPO (REBEL paper, App. F.1.3, Eq. 21) against hand computations in Python floats.

For each pair (y, y′) of a prompt, y_w is the one with the higher shaped reward r̃, and

    h = [ln π_θ(y_w) − ln π_t(y_w)] − [ln π_θ(y_l) − ln π_t(y_l)]
    L = 1/|D| Σ_{g ∈ D} −(1−ε)·ln σ(βh_g) − ε·ln σ(−βh_g),   D = pairs whose r̃ differ

with sequence log-probs summed over real response tokens only.
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.online_dpo import OnlineDPO
from rlhf_lightning.rollout import Rollout

GARBAGE = 100.0
P = 2
# three prompts, two responses each; the first prompt is left-padded
PROMPT_MASK = [[0, 1], [0, 1], [1, 1], [1, 1], [1, 1], [1, 1]]
RESPONSE_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
POLICY = [[-0.5, -1.0, -0.25], [-2.0, -0.75, None], [-0.1, None, None],
          [-3.0, -0.5, -0.2], [-1.0, -1.0, None], [-0.3, -0.3, -0.3]]
OLD = [[-0.75, -1.5, -0.5], [-1.0, -1.0, None], [-0.4, None, None],
       [-2.5, -0.5, -0.5], [-0.5, -0.5, None], [-0.3, -0.6, -0.3]]
SHAPED = [0.8, -0.3, -0.5, 0.6, 0.2, 0.2]  # pair 0: y wins; pair 1: y′ wins; pair 2: tie
RAW = [-9.0, 9.0, 9.0, -9.0, 3.0, -3.0]  # raw r ranks the other way: must not be used


def with_garbage(rows, garbage=GARBAGE):
    return torch.tensor([[garbage if v is None else v for v in row] for row in rows])


def make_rollout(shaped=SHAPED, group_size=2) -> Rollout:
    mask = torch.tensor([p + r for p, r in zip(PROMPT_MASK, RESPONSE_MASK)])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return Rollout(input_ids=input_ids, attention_mask=mask, prompt_length=P,
                   old_logprobs=with_garbage(OLD, -57.0), ref_logprobs=with_garbage(OLD, 13.0),
                   rewards=torch.tensor(RAW), shaped_rewards=torch.tensor(shaped), group_size=group_size)


def policy_tensor(rows=POLICY, garbage=GARBAGE):
    return with_garbage(rows, garbage).requires_grad_(True)


def ratio(i, policy=POLICY):
    return sum(p - o for p, o, m in zip(policy[i], OLD[i], RESPONSE_MASK[i]) if m)


def hand_margins(shaped=SHAPED, policy=POLICY):
    """(h_g, sign_g) per pair: h = sign·(ratio(y) − ratio(y′)), sign = sgn(r̃(y) − r̃(y′))."""
    out = []
    for g in range(3):
        d = shaped[2 * g] - shaped[2 * g + 1]
        sign = (d > 0) - (d < 0)
        out.append((sign * (ratio(2 * g, policy) - ratio(2 * g + 1, policy)), sign))
    return out


def log_sigmoid(z):
    return -math.log1p(math.exp(-z))


def hand_loss(beta, eps=0.0, shaped=SHAPED):
    terms = [-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
             for h, sign in hand_margins(shaped) if sign != 0]
    return sum(terms) / len(terms)


def test_fixture_margins_are_what_the_comment_says():
    # ratios: 1.0, −0.75 | 0.3, −0.2 | −1.0, 0.3
    assert [ratio(i) for i in range(6)] == pytest.approx([1.0, -0.75, 0.3, -0.2, -1.0, 0.3])
    assert hand_margins() == [(pytest.approx(1.75), 1), (pytest.approx(-0.5), -1), (pytest.approx(0.0), 0)]


@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_online_dpo_loss_matches_eq21_by_hand(beta, eps):
    loss, _ = OnlineDPO(beta=beta, label_smoothing=eps).loss(policy_tensor(), make_rollout())
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_loss(beta, eps), rel=1e-6)


def test_online_dpo_ignores_padding_garbage_ref_logprobs_and_raw_rewards():
    objective = OnlineDPO(beta=0.5)
    base = objective.loss(policy_tensor(), make_rollout())[0].item()
    other = make_rollout()
    other.old_logprobs = with_garbage(OLD, 1e4)
    other.ref_logprobs = torch.zeros_like(other.ref_logprobs)
    other.rewards = -other.rewards
    assert objective.loss(policy_tensor(garbage=-1e4), other)[0].item() == pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("beta", [0.05, 1.0])
def test_online_dpo_gradient_matches_analytic(beta):
    """∂L/∂lp_{i,t} = −β·σ(−βh_g)·sign_g·(±1)/|D|·mask_{i,t}: + for y, − for y′; 0 for ties and padding."""
    lp = policy_tensor()
    loss, _ = OnlineDPO(beta=beta).loss(lp, make_rollout())
    (grad,) = torch.autograd.grad(loss, lp)
    margins = hand_margins()
    decided = sum(1 for _, s in margins if s != 0)
    for i in range(6):
        h, sign = margins[i // 2]
        side = 1.0 if i % 2 == 0 else -1.0
        coefficient = -beta * (1 / (1 + math.exp(beta * h))) * sign * side / decided
        for t in range(3):
            expected = RESPONSE_MASK[i][t] * coefficient
            assert grad[i, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-8), (i, t)
    assert torch.equal(grad[4:], torch.zeros(2, 3))  # the tied pair


def test_a_descent_step_raises_the_winner_and_lowers_the_loser():
    lp = policy_tensor(OLD)  # θ = π_t: h = 0 everywhere
    rollout = make_rollout()
    objective = OnlineDPO(beta=1.0)
    loss, _ = objective.loss(lp, rollout)
    assert loss.item() == pytest.approx(math.log(2))
    (grad,) = torch.autograd.grad(loss, lp)
    mask = torch.tensor(RESPONSE_MASK).bool()
    for winner, loser in [(0, 1), (3, 2)]:
        assert bool((grad[winner][mask[winner]] < 0).all()) and bool((grad[loser][mask[loser]] > 0).all())
    assert objective.loss((lp - 0.1 * grad).detach(), rollout)[0].item() < loss.item()


def test_all_ties_give_zero_loss_with_a_graph():
    lp = policy_tensor()
    loss, metrics = OnlineDPO().loss(lp, make_rollout(shaped=[0.5] * 6))
    assert loss.item() == 0.0 and loss.requires_grad
    (grad,) = torch.autograd.grad(loss, lp)
    assert torch.equal(grad, torch.zeros_like(grad))
    assert float(metrics["dpo/tie_share"]) == 1.0
    assert float(metrics["dpo/accuracy"]) == 0.0 and float(metrics["dpo/margin"]) == 0.0


def test_metrics():
    _, metrics = OnlineDPO(beta=0.5).loss(policy_tensor(), make_rollout())
    for key in ("loss/online_dpo", "dpo/margin", "dpo/accuracy", "dpo/tie_share"):
        value = metrics[key]
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
    assert float(metrics["loss/online_dpo"]) == pytest.approx(hand_loss(0.5))
    assert float(metrics["dpo/margin"]) == pytest.approx((1.75 - 0.5) / 2)  # over the two decided pairs
    assert float(metrics["dpo/accuracy"]) == pytest.approx(0.5)  # pair 0 right, pair 1 wrong
    assert float(metrics["dpo/tie_share"]) == pytest.approx(1 / 3)


def test_defaults_and_validation():
    objective = OnlineDPO()
    assert OnlineDPO.needs.samples_per_prompt == 2
    assert (objective.beta, objective.label_smoothing, objective.inner_epochs, objective.num_minibatches) == (
        0.05, 0.0, 4, 1)
    with pytest.raises(RecipeError, match="beta"):
        OnlineDPO(beta=0.0)
    with pytest.raises(RecipeError, match="label_smoothing"):
        OnlineDPO(label_smoothing=0.5)
    with pytest.raises(RecipeError) as info:  # every problem at once
        OnlineDPO(beta=-1.0, label_smoothing=-0.1)
    assert "beta" in str(info.value) and "label_smoothing" in str(info.value)


def test_rejects_groups_that_are_not_pairs():
    rollout = make_rollout(group_size=3)
    with pytest.raises(ValueError, match="pairs"):
        OnlineDPO().loss(policy_tensor(), rollout)
