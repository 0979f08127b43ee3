"""GRPO (Shao et al., 2024) and Dr. GRPO (Liu et al., 2025) against a hand computation in plain Python floats.

    A_i     = (r_i − mean_group r) / (std_group r + δ)      (raw rewards; Dr. GRPO: r_i − mean)
    ρ_{i,t} = exp(ln π_θ − ln π_t)
    ℓ_{i,t} = max(−A_i·ρ, −A_i·clip(ρ, 1−ε, 1+ε)) + β·k3,   k3 = e^{ln π_ref − ln π_θ} − 1 − (ln π_ref − ln π_θ)
    L       = mean_i mean_t ℓ (sequence_mean) | Σ ℓ / #tokens (token_mean) | Σ ℓ / (N·C) (constant)

    ∂ℓ_{i,t}/∂ln π_θ = −A_i·ρ·[token not clipped] + β·(1 − e^{ln π_ref − ln π_θ})
"""

import math
import statistics

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.grpo import ADVANTAGE_EPS, GRPO
from rlhf_lightning.rollout import Rollout

GARBAGE = 100.0
EPS = 0.2  # clip ratio ε

P = 2
G = 3  # two prompts × three samples
PROMPT_MASK = [[0, 1]] * 3 + [[1, 1]] * 3
RESPONSE_MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1],
                 [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
POLICY = [[-0.5, -1.5, -0.2, None], [-2.0, -0.4, None, None], [-0.3, -0.3, -0.3, -0.3],
          [-1.0, None, None, None], [-0.7, -0.9, -1.1, None], [-0.05, -2.5, None, None]]
OLD = [[-1.0, -1.0, -0.3, None], [-1.5, -0.5, None, None], [-0.2, -0.6, -0.3, -0.1],
       [-1.4, None, None, None], [-0.4, -0.9, -1.3, None], [-0.05, -2.0, None, None]]
REF = [[-0.6, -1.2, -0.2, None], [-1.8, -0.6, None, None], [-0.5, -0.1, -0.3, -0.4],
       [-0.9, None, None, None], [-0.8, -1.0, -0.9, None], [-0.1, -2.2, None, None]]
RAW = [1.0, 0.0, 0.5, 0.2, 0.8, 0.8]  # raw r
SHAPED = [9.0, -9.0, 9.0, -9.0, 9.0, -9.0]  # r̃: GRPO must not use it
N, R = len(RESPONSE_MASK), len(RESPONSE_MASK[0])


def tensor_with_garbage(rows, garbage=GARBAGE):
    return torch.tensor([[garbage if v is None else v for v in row] for row in rows])


def make_rollout(raw=RAW, policy_as_old=False, kl_coef=0.0, garbage=(-57.0, 13.0)) -> Rollout:
    mask = torch.tensor([PROMPT_MASK[i] + RESPONSE_MASK[i] for i in range(N)])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return Rollout(input_ids=input_ids, attention_mask=mask, prompt_length=P,
                   old_logprobs=tensor_with_garbage(POLICY if policy_as_old else OLD, garbage=garbage[0]),
                   ref_logprobs=tensor_with_garbage(REF, garbage=garbage[1]),
                   rewards=torch.tensor(raw), shaped_rewards=torch.tensor(SHAPED), group_size=G, kl_coef=kl_coef)


def policy_tensor(garbage=GARBAGE) -> torch.Tensor:
    return tensor_with_garbage(POLICY, garbage).requires_grad_(True)


def identity(t):
    return t


def prepared(objective: GRPO, **kwargs) -> Rollout:
    return objective.prepare(make_rollout(**kwargs), identity)


# ---------------------------------------------------------------------------- hand maths
def hand_advantages(raw=RAW, scale=True) -> list[float]:
    out = []
    for i, r in enumerate(raw):
        group = raw[(i // G) * G:(i // G + 1) * G]
        centred = r - statistics.fmean(group)
        out.append(centred / (statistics.stdev(group) + ADVANTAGE_EPS) if scale else centred)
    return out


def hand_tokens(advantages, beta=0.04, estimator="k3", old=OLD):
    """Per real token: the loss terms, whether the clipped branch is used, and ∂ℓ/∂ln π_θ."""
    rows = []
    for i in range(N):
        tokens = []
        for t in range(R):
            if not RESPONSE_MASK[i][t]:
                continue
            p, o, ref, a = POLICY[i][t], old[i][t], REF[i][t], advantages[i]
            rho = math.exp(p - o)
            unclipped = -a * rho
            clipped_term = -a * min(max(rho, 1 - EPS), 1 + EPS)
            log_ratio = ref - p  # ln ρ_ref = ln π_ref − ln π_θ
            kl = {"k1": -log_ratio, "k2": 0.5 * log_ratio ** 2, "k3": math.exp(log_ratio) - 1 - log_ratio}[estimator]
            dkl = {"k1": 1.0, "k2": -log_ratio, "k3": 1 - math.exp(log_ratio)}[estimator]
            clipped = clipped_term > unclipped
            tokens.append(dict(t=t, policy=max(unclipped, clipped_term), kl=kl, total=max(unclipped, clipped_term) + beta * kl,
                               clipped=clipped, rho=rho, grad=(0.0 if clipped else -a * rho) + beta * dkl))
        rows.append(tokens)
    return rows


def hand_reduce(rows, key, reduction, constant=None) -> float:
    if reduction == "sequence_mean":
        return statistics.fmean(statistics.fmean(tok[key] for tok in row) for row in rows)
    total = sum(tok[key] for row in rows for tok in row)
    if reduction == "token_mean":
        return total / sum(len(row) for row in rows)
    return total / (N * (constant or R))


def hand_normaliser(rows, i, reduction, constant=None) -> float:
    """The number ∂ℓ_{i,t}/∂lp is divided by in ∂L/∂lp_{i,t}."""
    if reduction == "sequence_mean":
        return N * len(rows[i])
    if reduction == "token_mean":
        return sum(len(row) for row in rows)
    return N * (constant or R)


REDUCTIONS = [("sequence_mean", None), ("token_mean", None), ("constant", None), ("constant", 10)]


# ---------------------------------------------------------------------------- advantages
def test_advantages_are_group_z_scores_of_the_raw_rewards():
    rollout = prepared(GRPO(group_size=G))
    advantages = hand_advantages()
    # group 0: r = 1, 0, 0.5 → mean 0.5, std 0.5; group 1: 0.2, 0.8, 0.8 → mean 0.6, std √0.12
    assert advantages[:3] == pytest.approx([0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4), 0.0])
    assert advantages[3] == pytest.approx(-0.4 / (math.sqrt(0.12) + 1e-4))
    assert rollout.extras["advantages"].tolist() == pytest.approx(advantages, rel=1e-6)
    assert rollout.metrics["grpo/advantage_std"] == pytest.approx(statistics.stdev(advantages), rel=1e-5)
    assert rollout.metrics["grpo/zero_std_groups"] == 0.0


def test_dr_grpo_does_not_divide_by_the_std():
    rollout = prepared(GRPO(group_size=G, scale_rewards=False))
    assert rollout.extras["advantages"].tolist() == pytest.approx([0.5, -0.5, 0.0, -0.4, 0.2, 0.2], abs=1e-6)


@pytest.mark.parametrize("scale_rewards", [True, False])
def test_equal_rewards_in_a_group_give_zero_advantage_and_no_policy_gradient(scale_rewards):
    raw = [1.0, 0.0, 0.5, 0.3, 0.3, 0.3]
    objective = GRPO(group_size=G, beta=0.0, scale_rewards=scale_rewards)
    rollout = prepared(objective, raw=raw)
    advantages = rollout.extras["advantages"]
    assert torch.equal(advantages[3:], torch.zeros(3)) and torch.isfinite(advantages).all()
    assert rollout.metrics["grpo/zero_std_groups"] == 0.5
    lp = policy_tensor()
    (grad,) = torch.autograd.grad(objective.loss(lp, rollout)[0], lp)
    assert torch.equal(grad[3:], torch.zeros(3, R))
    assert grad[0, 2].item() != 0.0  # the other group still learns


# ---------------------------------------------------------------------------- loss value and gradient
@pytest.mark.parametrize("reduction, constant", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.0, 0.04, 0.5])
def test_loss_matches_hand_computation(reduction, constant, beta):
    objective = GRPO(group_size=G, clip_ratio=EPS, beta=beta, loss_reduction=reduction, constant_length=constant)
    loss, metrics = objective.loss(policy_tensor(), prepared(objective))
    rows = hand_tokens(hand_advantages(), beta)
    assert loss.item() == pytest.approx(hand_reduce(rows, "total", reduction, constant), rel=1e-5, abs=1e-7)
    assert float(metrics["loss/policy"]) == pytest.approx(hand_reduce(rows, "policy", reduction, constant), rel=1e-5)
    assert float(metrics["grpo/kl"]) == pytest.approx(hand_reduce(rows, "kl", reduction, constant), rel=1e-5)
    assert float(metrics["loss/kl"]) == pytest.approx(beta * hand_reduce(rows, "kl", reduction, constant), rel=1e-5,
                                                      abs=1e-9)


def test_the_three_reductions_differ_as_documented():
    """Guard the fixture: rows have 3, 2, 4, 1, 3, 2 tokens, so the three normalisations give three numbers."""
    rows = hand_tokens(hand_advantages())
    values = {(r, c): hand_reduce(rows, "total", r, c) for r, c in REDUCTIONS}
    assert len({round(v, 9) for v in values.values()}) == 4
    assert values[("constant", None)] == pytest.approx(values[("token_mean", None)] * 15 / (6 * 4))
    assert values[("constant", 10)] == pytest.approx(values[("constant", None)] * 4 / 10)


@pytest.mark.parametrize("reduction, constant", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.0, 0.04, 0.5])
def test_gradient_matches_analytic(reduction, constant, beta):
    """∂L/∂lp_{i,t} = (−A_i·ρ_{i,t}·[not clipped] + β·(1 − e^{ref − lp})) / normaliser, 0 on padding."""
    objective = GRPO(group_size=G, clip_ratio=EPS, beta=beta, loss_reduction=reduction, constant_length=constant)
    lp = policy_tensor()
    (grad,) = torch.autograd.grad(objective.loss(lp, prepared(objective))[0], lp)
    rows = hand_tokens(hand_advantages(), beta)
    expected = [[0.0] * R for _ in range(N)]
    for i, row in enumerate(rows):
        for tok in row:
            expected[i][tok["t"]] = tok["grad"] / hand_normaliser(rows, i, reduction, constant)
    torch.testing.assert_close(grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_clipped_tokens_give_zero_policy_gradient():
    objective = GRPO(group_size=G, clip_ratio=EPS, beta=0.0)
    lp = policy_tensor()
    loss, metrics = objective.loss(lp, prepared(objective))
    (grad,) = torch.autograd.grad(loss, lp)
    rows = hand_tokens(hand_advantages(), beta=0.0)
    clipped = [(i, tok["t"]) for i, row in enumerate(rows) for tok in row if tok["clipped"]]
    # row 0 (A > 0): ρ = e^0.5 > 1.2; row 1 (A < 0): ρ = e^−0.5 < 0.8; row 3 (A < 0): ρ = e^0.4 > 1.2 is NOT clipped
    # (min picks the unclipped, more pessimistic term), row 4 (A > 0): e^0.2 > 1.2
    assert clipped == [(0, 0), (1, 0), (4, 2)]
    for i, t in clipped:
        assert grad[i, t].item() == 0.0
    assert grad[3, 0].item() == pytest.approx(hand_advantages()[3] * -math.exp(0.4) / (N * 1), rel=1e-5)
    assert float(metrics["grpo/clip_fraction"]) == pytest.approx(3 / 15)
    rhos = [tok["rho"] for row in rows for tok in row]
    assert float(metrics["grpo/ratio"]) == pytest.approx(sum(rhos) / len(rhos), rel=1e-6)


def test_at_pi_t_the_surrogate_is_the_policy_gradient():
    """With π_θ = π_t every ratio is 1: nothing is clipped and ∂L/∂lp = −A/normaliser (β = 0)."""
    objective = GRPO(group_size=G, beta=0.0)
    rollout = prepared(objective, policy_as_old=True)
    lp = policy_tensor()
    loss, metrics = objective.loss(lp, rollout)
    (grad,) = torch.autograd.grad(loss, lp)
    advantages = hand_advantages()
    assert float(metrics["grpo/clip_fraction"]) == 0.0
    assert loss.item() == pytest.approx(-statistics.fmean(advantages), abs=1e-7)
    for i in range(N):
        length = sum(RESPONSE_MASK[i])
        for t in range(R):
            assert grad[i, t].item() == pytest.approx(-advantages[i] * RESPONSE_MASK[i][t] / (N * length), abs=1e-7)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_follow_pi_theta_as_the_sampler(estimator):
    """k1 = lp − ref, k2 = ½(ref − lp)², k3 = e^{ref−lp} − 1 − (ref − lp); the k3 term pushes lp toward ref."""
    objective = GRPO(group_size=G, beta=0.5, kl_estimator=estimator)
    rollout = prepared(objective, raw=[0.3] * N)  # all advantages 0: only the KL term is left
    lp = policy_tensor()
    loss, _ = objective.loss(lp, rollout)
    (grad,) = torch.autograd.grad(loss, lp)
    rows = hand_tokens([0.0] * N, beta=0.5, estimator=estimator)
    assert loss.item() == pytest.approx(0.5 * hand_reduce(rows, "kl", "sequence_mean"), rel=1e-5)
    for i, row in enumerate(rows):
        for tok in row:
            assert grad[i, tok["t"]].item() == pytest.approx(tok["grad"] / (N * len(row)), rel=1e-5, abs=1e-8)
    if estimator == "k3":
        assert all(tok["kl"] >= 0 for row in rows for tok in row)
        assert grad[0, 0].item() > 0  # lp = −0.5 > ref = −0.6: descent lowers lp toward ref
        assert grad[0, 1].item() < 0  # lp = −1.5 < ref = −1.2: descent raises it


def test_masked_garbage_and_shaped_rewards_do_not_matter():
    """Even garbage that would overflow exp() at padded positions leaves the loss and gradient unchanged."""
    objective = GRPO(group_size=G, beta=0.1)
    lp = policy_tensor()
    loss, _ = objective.loss(lp, prepared(objective))
    (grad,) = torch.autograd.grad(loss, lp)
    wild = policy_tensor(garbage=1e4)
    rollout = prepared(objective, garbage=(-1e4, 1e4))
    rollout.shaped_rewards = torch.zeros(N)
    wild_loss, metrics = objective.loss(wild, rollout)
    (wild_grad,) = torch.autograd.grad(wild_loss, wild)
    assert wild_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(wild_grad, grad)
    assert all(math.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("reduction, constant", [("sequence_mean", None), ("constant", None), ("constant", 10)])
def test_micro_batches_of_whole_groups_add_up_to_the_full_batch(reduction, constant):
    """RLHFModule splits a minibatch into micro-batches of whole prompts and weights each loss by its rows."""
    objective = GRPO(group_size=G, beta=0.04, loss_reduction=reduction, constant_length=constant)
    rollout = prepared(objective)
    lp = policy_tensor()
    (full,) = torch.autograd.grad(objective.loss(lp, rollout)[0], lp)
    total = 0.0
    for rows, chunk in zip(([0, 1, 2], [3, 4, 5]), rollout.split(G)):
        part = lp[rows]
        total = total + objective.loss(part, chunk)[0] * len(chunk) / len(rollout)
    (accumulated,) = torch.autograd.grad(total, lp)
    torch.testing.assert_close(accumulated, full)


# ---------------------------------------------------------------------------- metrics, warnings, configuration
def test_metrics_are_detached_finite_scalars():
    objective = GRPO(group_size=G)
    _, metrics = objective.loss(policy_tensor(), prepared(objective))
    assert {"loss/total", "loss/policy", "loss/kl", "grpo/kl", "grpo/clip_fraction", "grpo/ratio"} <= set(metrics)
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
        assert math.isfinite(float(value)), key
    assert float(metrics["loss/total"]) == pytest.approx(float(metrics["loss/policy"]) + float(metrics["loss/kl"]),
                                                         rel=1e-5)


def test_declares_the_kl_in_its_loss_so_the_rollout_must_not_shape_rewards():
    # the Rollout callback refuses a non-zero γ for it before training (tests/test_rollout_config.py)
    assert GRPO.needs.kl_in_reward is False and GRPO(group_size=8).needs.kl_in_reward is False


def test_rollout_without_groups_is_refused():
    rollout = make_rollout()
    rollout.group_size = 1
    with pytest.raises(ValueError, match="same prompt"):
        GRPO().prepare(rollout, identity)
    with pytest.raises(RuntimeError, match="prepare"):
        GRPO().loss(policy_tensor(), make_rollout())


def test_declares_groups_and_defaults():
    objective = GRPO()
    assert objective.needs.samples_per_prompt == 4 and GRPO(group_size=8).needs.samples_per_prompt == 8
    assert (objective.clip_ratio, objective.beta, objective.kl_estimator, objective.scale_rewards,
            objective.loss_reduction, objective.constant_length) == (0.2, 0.04, "k3", True, "sequence_mean", None)
    assert objective.needs.reference and not objective.needs.critic


@pytest.mark.parametrize("kwargs, key", [
    (dict(group_size=1), "group_size"),
    (dict(clip_ratio=0.0), "clip_ratio"),
    (dict(beta=-0.1), "beta"),
    (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(loss_reduction="sum"), "loss_reduction"),
    (dict(loss_reduction="constant", constant_length=0), "constant_length"),
    (dict(constant_length=64), "constant_length"),  # only meaningful with loss_reduction: constant
    (dict(num_minibatches=0), "num_minibatches"),
])
def test_bad_arguments_name_their_key(kwargs, key):
    with pytest.raises(RecipeError) as info:
        GRPO(**kwargs)
    assert info.value.field == f"model.init_args.objective.init_args.{key}"


def test_every_problem_is_listed_at_once():
    with pytest.raises(RecipeError) as info:
        GRPO(group_size=1, beta=-1.0, inner_epochs=0)
    for key in ("group_size", "beta", "inner_epochs"):
        assert f"model.init_args.objective.init_args.{key}" in str(info.value)
