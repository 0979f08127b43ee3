"""REBEL (Gao et al., 2024, Eq. 1) against a hand computation in plain Python floats.

    L(θ) = 1/M Σ_pairs ( 1/η · [ (ln π_θ(y|x) − ln π_t(y|x)) − (ln π_θ(y′|x) − ln π_t(y′|x)) ]
                          − (r̃(x, y) − r̃(x, y′)) )²

with sequence log-probs summed over the real (unmasked) response tokens and r̃ the shaped rewards.
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.rebel import REBEL
from rlhf_lightning.rollout import Rollout

GARBAGE = 100.0  # written at masked response positions: must never reach the loss

P = 3  # prompt block width
# rows 0,1: prompt 0 (one left-pad column); rows 2,3: prompt 1 (no padding)
PROMPT_MASK = [[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]
RESPONSE_MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
POLICY = [[-0.5, -1.0, -0.25, None], [-2.0, -0.75, None, None],
          [-0.1, -0.2, -0.3, -0.4], [-3.0, None, None, None]]
OLD = [[-0.75, -1.5, -0.5, None], [-1.0, -1.0, None, None],
       [-0.2, -0.2, -0.2, -0.2], [-2.5, None, None, None]]
SHAPED = [0.8, -0.3, 0.1, 0.6]  # r̃
RAW = [50.0, -50.0, 70.0, -70.0]  # raw r: must not be used by the loss


def tensor_with_garbage(rows, garbage=GARBAGE):
    return torch.tensor([[garbage if v is None else v for v in row] for row in rows])


def make_rollout(old=OLD, shaped=SHAPED, group_size=2, rows=None) -> Rollout:
    rows = list(range(len(PROMPT_MASK))) if rows is None else rows
    mask = torch.tensor([PROMPT_MASK[i] + RESPONSE_MASK[i] for i in rows])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0))
    input_ids = input_ids.masked_fill(mask == 0, 0)
    return Rollout(
        input_ids=input_ids,
        attention_mask=mask,
        prompt_length=P,
        old_logprobs=tensor_with_garbage([old[i] for i in rows], garbage=-57.0),
        ref_logprobs=tensor_with_garbage([old[i] for i in rows], garbage=13.0),
        rewards=torch.tensor([RAW[i] for i in rows]),
        shaped_rewards=torch.tensor([shaped[i] for i in rows]),
        group_size=group_size,
    )


def policy_tensor(rows=POLICY) -> torch.Tensor:
    return tensor_with_garbage(rows).requires_grad_(True)


def seq_log_ratio(policy, old, mask) -> float:
    """ln π_θ(y|x) − ln π_t(y|x) = Σ over real response tokens of (ln π_θ − ln π_t)."""
    return sum(p - o for p, o, m in zip(policy, old, mask) if m)


def hand_residuals(policy=POLICY, old=OLD, shaped=SHAPED, eta=1.0) -> list[float]:
    """δ_g = 1/η·(Δ log-ratio of the pair) − (r̃(y) − r̃(y′)) for pairs (0,1), (2,3)."""
    ratios = [seq_log_ratio(policy[i], old[i], RESPONSE_MASK[i]) for i in range(4)]
    return [(ratios[2 * g] - ratios[2 * g + 1]) / eta - (shaped[2 * g] - shaped[2 * g + 1]) for g in range(2)]


def hand_loss(policy=POLICY, old=OLD, shaped=SHAPED, eta=1.0) -> float:
    residuals = hand_residuals(policy, old, shaped, eta)
    return sum(d * d for d in residuals) / len(residuals)


# ---------------------------------------------------------------------------- loss value
@pytest.mark.parametrize("eta", [1.0, 0.5, 3.0])
def test_rebel_loss_matches_eq1_by_hand(eta):
    """REBEL Eq. 1: mean over pairs of (1/η·Δ log-ratio − Δ r̃)², sums over real tokens only."""
    loss, _ = REBEL(eta=eta).loss(policy_tensor(), make_rollout())
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_loss(eta=eta), rel=1e-6, abs=1e-6)


def test_rebel_hand_value_is_not_trivial():
    """Guard the fixtures: the hand loss at η=1 is a known non-zero number."""
    # pair 0: ratios 1.0 and −0.75 → 1.75 − 1.1 = 0.65; pair 1: ratios −0.2 and −0.5 → 0.3 + 0.5 = 0.8
    assert hand_residuals() == pytest.approx([0.65, 0.8])
    assert hand_loss() == pytest.approx((0.65 ** 2 + 0.8 ** 2) / 2)


def test_rebel_ignores_masked_garbage_and_raw_rewards():
    """Values at masked positions (policy, old, ref) and the raw rewards do not change the loss."""
    objective = REBEL(eta=1.0)
    base = objective.loss(policy_tensor(), make_rollout())[0].item()
    other_policy = tensor_with_garbage(POLICY, garbage=-1e4)
    other = make_rollout()
    other.old_logprobs = tensor_with_garbage(OLD, garbage=1e4)
    other.ref_logprobs = torch.zeros_like(other.ref_logprobs)
    other.rewards = torch.zeros_like(other.rewards)
    assert objective.loss(other_policy, other)[0].item() == pytest.approx(base, rel=1e-6)


def test_rebel_uses_shaped_rewards():
    """Changing r̃ changes the loss exactly as the hand formula says."""
    shaped = [0.0, 2.0, -1.0, 1.0]
    loss, _ = REBEL().loss(policy_tensor(), make_rollout(shaped=shaped))
    assert loss.item() == pytest.approx(hand_loss(shaped=shaped), rel=1e-6)


def test_rebel_loss_is_zero_at_the_regression_solution():
    """When Δ log-ratio = η·Δr̃ for every pair the loss and its gradient vanish."""
    eta = 2.0
    policy = [row[:] for row in POLICY]
    for g in range(2):  # move the first real token of y so that the pair satisfies the regression exactly
        residual = hand_residuals(policy, eta=eta)[g]
        policy[2 * g][0] -= eta * residual
    assert hand_residuals(policy, eta=eta) == pytest.approx([0.0, 0.0], abs=1e-9)
    lp = policy_tensor(policy)
    loss, _ = REBEL(eta=eta).loss(lp, make_rollout())
    (grad,) = torch.autograd.grad(loss, lp)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-5)


# ---------------------------------------------------------------------------- gradient
@pytest.mark.parametrize("eta", [1.0, 0.5, 3.0])
def test_rebel_gradient_matches_analytic(eta):
    """∂L/∂lp_{i,t} = mask_{i,t} · (2/M) · δ_pair · (±1/η): + for y (first of the pair), − for y′, 0 on padding."""
    lp = policy_tensor()
    loss, _ = REBEL(eta=eta).loss(lp, make_rollout())
    (grad,) = torch.autograd.grad(loss, lp)
    residuals = hand_residuals(eta=eta)
    M = len(residuals)
    for i in range(4):
        sign = 1.0 if i % 2 == 0 else -1.0
        for t in range(4):
            expected = RESPONSE_MASK[i][t] * (2.0 / M) * residuals[i // 2] * sign / eta
            assert grad[i, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7), (i, t)
    masked = torch.tensor(RESPONSE_MASK) == 0
    assert torch.equal(grad[masked], torch.zeros(int(masked.sum())))


def test_rebel_gradient_does_not_flow_into_rollout_tensors():
    """π_t (old log-probs) and r̃ are constants of the regression: only the policy log-probs get grad."""
    rollout = make_rollout()
    rollout.old_logprobs.requires_grad_(False)
    lp = policy_tensor()
    loss, _ = REBEL().loss(lp, rollout)
    loss.backward()
    assert lp.grad is not None and rollout.old_logprobs.grad is None


@pytest.mark.parametrize("eta", [0.5, 1.0, 4.0])
def test_rebel_at_pi_t_pushes_toward_the_higher_reward_response(eta):
    """At θ = π_t (logprobs = old) δ = −Δr̃, so a descent step raises ln π of the better response and lowers
    the worse one, and the new log-ratio difference moves toward η·Δr̃."""
    shaped = [1.0, -1.0, -0.5, 0.5]  # pair 0: y better; pair 1: y′ better
    at_pi_t = policy_tensor(OLD)
    rollout = make_rollout(shaped=shaped)
    objective = REBEL(eta=eta)
    loss, _ = objective.loss(at_pi_t, rollout)
    (grad,) = torch.autograd.grad(loss, at_pi_t)
    mask = torch.tensor(RESPONSE_MASK).bool()
    better = {0: 0, 1: 3}
    for g, best in better.items():
        worse = 2 * g + 1 - (best - 2 * g)
        assert bool((grad[best][mask[best]] < 0).all()), g  # descent increases ln π(better)
        assert bool((grad[worse][mask[worse]] > 0).all()), g  # and decreases ln π(worse)
    stepped = (at_pi_t - 0.01 * grad).detach().requires_grad_(True)
    assert objective.loss(stepped, rollout)[0].item() < loss.item()


# ---------------------------------------------------------------------------- metrics and configuration
def test_rebel_metrics_are_finite_detached_scalars_with_expected_values():
    lp = policy_tensor()
    loss, metrics = REBEL(eta=2.0).loss(lp, make_rollout())
    assert "loss/rebel" in metrics
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
        assert math.isfinite(float(value)), key
    ratios = [seq_log_ratio(POLICY[i], OLD[i], RESPONSE_MASK[i]) for i in range(4)]
    predicted = [(ratios[0] - ratios[1]) / 2.0, (ratios[2] - ratios[3]) / 2.0]
    target = [SHAPED[0] - SHAPED[1], SHAPED[2] - SHAPED[3]]
    assert float(metrics["loss/rebel"]) == pytest.approx(loss.item())
    assert float(metrics["rebel/predicted_diff"]) == pytest.approx(sum(map(abs, predicted)) / 2)
    assert float(metrics["rebel/target_diff"]) == pytest.approx(sum(map(abs, target)) / 2)
    assert float(metrics["rebel/log_ratio"]) == pytest.approx(sum(ratios) / 4)


def test_rebel_declares_pairs_and_validates_eta():
    assert REBEL.needs.samples_per_prompt == 2
    assert REBEL().eta == 1.0 and REBEL().inner_epochs == 4
    for bad in (0.0, -1.0):
        with pytest.raises(RecipeError, match="eta"):
            REBEL(eta=bad)


def test_rebel_rejects_an_odd_number_of_rows():
    """Three rows cannot form pairs: the loss must raise rather than return a number."""
    rollout = make_rollout(rows=[0, 1, 2])
    with pytest.raises((ValueError, RuntimeError)):
        REBEL().loss(policy_tensor([POLICY[i] for i in range(3)]), rollout)


@pytest.mark.parametrize("group_size", [1, 3])
def test_rebel_rejects_rollouts_whose_groups_are_not_pairs(group_size):
    """REBEL pairs two samples of the SAME prompt. With group_size 1 (four prompts) or 3 (two prompts of
    three rows) pairing consecutive rows mixes prompts, so the loss must refuse such a rollout.

    Library bug: REBEL.loss ignores ``rollout.group_size`` and pairs rows with ``view(-1, 2)``, silently
    regressing across different prompts (returns a finite loss instead of raising).
    """
    if group_size == 1:
        rows = [0, 1, 2, 3]
    else:
        rows = [0, 1, 1, 2, 3, 3]
    rollout = make_rollout(rows=rows, group_size=group_size)
    lp = policy_tensor([POLICY[i] for i in rows])
    try:
        loss, _ = REBEL().loss(lp, rollout)
    except (ValueError, RuntimeError):
        return
    pytest.fail(f"REBEL.loss accepted a rollout with group_size={group_size} and paired rows across prompts "
                f"(loss={loss.item():.4f}); it should raise for group_size != 2")
