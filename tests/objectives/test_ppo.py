"""PPO (Schulman et al., 2017) in its RLHF form, against hand computations in plain Python floats.

prepare():  r_t = −β·(ln π_t − ln π_ref) (+ r(x, y) on the last real token),
            δ_t = r_t + γ·V_{t+1} − V_t (V after the last token = 0),
            Â_t = δ_t + γλ·Â_{t+1},  R_t = Â_t + V_t,
            Â whitened over all real tokens (of every process) when enabled.
loss():     L = mean_t max(−Â_t·ρ_t, −Â_t·clip(ρ_t, 1±ε))
              + c_v · mean_t ½·max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, ±ε_v) − R_t)²)
              − c_H · mean_t H_t,
means over the real response tokens only. Padding holds garbage that must never matter.
"""

from __future__ import annotations

import math
import statistics
import threading

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.ppo import PPO
from rlhf_lightning.rollout import Rollout

G = 37.0  # garbage written at masked response positions

P = 2  # prompt block width
PROMPT_MASK = [[0, 1], [1, 1], [1, 1]]
RESPONSE_MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
OLD = [[-1.0, -0.5, -2.0, G], [-0.3, -1.2, G, G], [-0.7, -0.9, -0.1, -1.5]]  # ln π_t
REF = [[-1.2, -0.5, -1.0, -G], [-0.4, -1.0, G, -G], [-0.7, -1.4, -0.3, -1.0]]  # ln π_ref
VALUES = [[0.5, 0.2, -0.1, G], [0.0, 0.3, -G, G], [1.0, 0.8, 0.4, 0.1]]  # V_t at rollout time
SCORE = [1.0, -0.5, 2.0]  # r(x, y)
BETA = 0.1


def garbage(rows, value=G) -> torch.Tensor:
    return torch.tensor([[value if v is None else v for v in row] for row in rows])


def make_rollout(rows=None, kl_coef=BETA, old=OLD, values=VALUES) -> Rollout:
    rows = list(range(len(RESPONSE_MASK))) if rows is None else rows
    mask = torch.tensor([PROMPT_MASK[i] + RESPONSE_MASK[i] for i in rows])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return Rollout(
        input_ids=input_ids, attention_mask=mask, prompt_length=P,
        old_logprobs=garbage([old[i] for i in rows]), ref_logprobs=garbage([REF[i] for i in rows]),
        rewards=torch.tensor([SCORE[i] for i in rows]),
        shaped_rewards=torch.full((len(rows),), 1e3),  # sequence-level r̃: PPO must not use it
        group_size=1, kl_coef=kl_coef, values=garbage([values[i] for i in rows]))


def real(row, i):
    """The real (unmasked) entries of row ``i`` of a nested list."""
    return [v for v, m in zip(row, RESPONSE_MASK[i]) if m]


# ---------------------------------------------------------------------------- hand GAE
def hand_gae(beta=BETA, gamma=1.0, lam=0.95, rows=(0, 1, 2)):
    """Per row: token rewards, advantages and returns over the real tokens, in plain floats."""
    out = {}
    for i in rows:
        old, ref, values = real(OLD[i], i), real(REF[i], i), real(VALUES[i], i)
        T = len(old)
        rewards = [-beta * (old[t] - ref[t]) for t in range(T)]
        rewards[T - 1] += SCORE[i]
        advantages = [0.0] * T
        next_adv, next_value = 0.0, 0.0
        for t in reversed(range(T)):
            delta = rewards[t] + gamma * next_value - values[t]
            next_adv = delta + gamma * lam * next_adv
            advantages[t] = next_adv
            next_value = values[t]
        out[i] = {"rewards": rewards, "advantages": advantages,
                  "returns": [a + v for a, v in zip(advantages, values)]}
    return out


def hand_whiten(per_row: dict[int, list[float]]) -> dict[int, list[float]]:
    flat = [a for row in per_row.values() for a in row]
    mean, std = statistics.mean(flat), statistics.stdev(flat)  # unbiased, as torch.var
    return {i: [(a - mean) / std for a in row] for i, row in per_row.items()}


def padded(per_row: dict[int, list[float]], rows=(0, 1, 2)) -> torch.Tensor:
    return torch.tensor([per_row[i] + [0.0] * (4 - len(per_row[i])) for i in rows])


def test_hand_gae_fixture_is_not_trivial():
    """Guard the fixture: row 1 by hand (β = 0.1, γ = 1, λ = 0.95)."""
    # r = [−0.1·(−0.3+0.4), −0.1·(−1.2+1.0) − 0.5] = [−0.01, −0.48]; V = [0.0, 0.3]
    # δ_1 = −0.48 − 0.3 = −0.78; δ_0 = −0.01 + 0.3 − 0.0 = 0.29; Â_0 = 0.29 + 0.95·(−0.78) = −0.451
    row = hand_gae()[1]
    assert row["rewards"] == pytest.approx([-0.01, -0.48])
    assert row["advantages"] == pytest.approx([-0.451, -0.78])
    assert row["returns"] == pytest.approx([-0.451, -0.48])


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_prepare_advantages_and_returns_match_hand_gae_without_whitening(gamma, lam):
    rollout = PPO(gamma=gamma, lam=lam, whiten_advantages=False).prepare(make_rollout(), lambda t: t)
    hand = hand_gae(gamma=gamma, lam=lam)
    torch.testing.assert_close(rollout.extras["advantages"], padded({i: h["advantages"] for i, h in hand.items()}))
    torch.testing.assert_close(rollout.extras["returns"], padded({i: h["returns"] for i, h in hand.items()}))


def test_prepare_uses_raw_score_and_kl_coef_not_shaped_reward():
    """β = 0 leaves only r(x, y) on the last real token; a larger β changes every token's advantage."""
    no_kl = PPO(whiten_advantages=False).prepare(make_rollout(kl_coef=0.0), lambda t: t)
    torch.testing.assert_close(no_kl.extras["advantages"],
                               padded({i: h["advantages"] for i, h in hand_gae(beta=0.0).items()}))
    strong = PPO(whiten_advantages=False).prepare(make_rollout(kl_coef=2.0), lambda t: t)
    torch.testing.assert_close(strong.extras["advantages"],
                               padded({i: h["advantages"] for i, h in hand_gae(beta=2.0).items()}))


def test_prepare_whitens_advantages_over_real_tokens_and_leaves_returns():
    rollout = PPO(whiten_advantages=True).prepare(make_rollout(), lambda t: t)
    hand = hand_gae()
    whitened = hand_whiten({i: h["advantages"] for i, h in hand.items()})
    torch.testing.assert_close(rollout.extras["advantages"], padded(whitened), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rollout.extras["returns"], padded({i: h["returns"] for i, h in hand.items()}))
    flat = [a for row in hand.values() for a in row["advantages"]]
    assert rollout.metrics["ppo/advantage_std"] == pytest.approx(statistics.stdev(flat), rel=1e-5)
    assert rollout.metrics["ppo/advantage_mean"] == pytest.approx(statistics.mean(flat), rel=1e-5)
    returns = [r for row in hand.values() for r in row["returns"]]
    assert rollout.metrics["ppo/return_mean"] == pytest.approx(statistics.mean(returns), rel=1e-5)


def test_prepare_ignores_padding_garbage():
    base = PPO().prepare(make_rollout(), lambda t: t)
    other = make_rollout()
    mask = other.response_mask.bool()
    for name in ("old_logprobs", "ref_logprobs", "values"):
        setattr(other, name, getattr(other, name).masked_fill(~mask, -1e4))
    other = PPO().prepare(other, lambda t: t)
    for key in ("advantages", "returns"):
        torch.testing.assert_close(other.extras[key], base.extras[key])
        assert torch.equal(other.extras[key][~mask], torch.zeros(int((~mask).sum())))


class FakeAllReduce:
    """``reduce_sum`` of ``world`` processes simulated with threads: every call blocks until all
    processes made theirs, then each gets the sum (an all-reduce)."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world
        self.lock = threading.Lock()

    def for_rank(self, rank: int):
        def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()  # everyone has read before the next call overwrites a slot
            return total
        return reduce_sum


def test_whitening_with_two_processes_equals_whitening_the_concatenated_batch():
    single = PPO().prepare(make_rollout(), lambda t: t)
    fake = FakeAllReduce(2)
    parts = {0: make_rollout(rows=[0, 1]), 1: make_rollout(rows=[2])}
    results, errors = {}, []

    def run(rank):
        try:
            results[rank] = PPO().prepare(parts[rank], fake.for_rank(rank))
        except Exception as error:  # pragma: no cover - surfaced below
            errors.append(error)
            fake.barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    joined = torch.cat([results[0].extras["advantages"], results[1].extras["advantages"]])
    torch.testing.assert_close(joined, single.extras["advantages"])
    for rank in (0, 1):  # global statistics in both processes' logs
        assert results[rank].metrics["ppo/advantage_std"] == pytest.approx(single.metrics["ppo/advantage_std"])
    # and not the per-process statistics: whitening each part alone gives different numbers
    alone = PPO().prepare(make_rollout(rows=[0, 1]), lambda t: t).extras["advantages"]
    assert not torch.allclose(alone, single.extras["advantages"][:2])


def test_prepare_requires_rollout_values():
    rollout = make_rollout()
    rollout.values = None
    with pytest.raises(ValueError, match="critic"):
        PPO().prepare(rollout, lambda t: t)


# ---------------------------------------------------------------------------- loss
EPS, VCLIP = 0.2, 0.2
# new ln π_θ − ln π_t per token, and the advantages given to the loss
DELTA = [[0.1, 0.5, -0.5, None], [0.5, -0.5, None, None], [0.0, 0.15, -0.15, 0.3]]
ADV = [[1.0, 1.0, 1.0, None], [-1.0, -1.0, None, None], [0.5, -2.0, 0.3, 2.0]]
# new critic values V_θ − V_t per token, and the returns
DV = [[0.1, 0.5, -0.5, None], [0.3, -0.05, None, None], [-0.3, 0.0, 0.25, -0.4]]
RET = [[0.9, 1.0, 0.0, None], [1.5, 0.1, None, None], [0.2, 0.8, -1.0, 0.5]]
ENT = [[1.0, 2.0, 0.5, None], [0.2, 0.4, None, None], [1.5, 1.0, 0.1, 0.3]]


def loss_inputs():
    """(logprobs, values, entropy) with grad, garbage on padding, and the rollout with extras set."""
    rollout = make_rollout()
    rollout.extras["advantages"] = garbage(ADV, -G)
    rollout.extras["returns"] = garbage(RET, G)
    lp = garbage([[o + d if d is not None else None for o, d in zip(OLD[i], DELTA[i])] for i in range(3)], 55.0)
    values = garbage([[v + d if d is not None else None for v, d in zip(VALUES[i], DV[i])] for i in range(3)], -80.0)
    entropy = garbage(ENT, 1e3)
    return lp.requires_grad_(True), values.requires_grad_(True), entropy.requires_grad_(True), rollout


def tokens():
    """(row, col) of every real response token."""
    return [(i, t) for i in range(3) for t in range(4) if RESPONSE_MASK[i][t]]


def clip(x, low, high):
    return min(max(x, low), high)


def hand_policy_terms():
    terms, clipped = {}, {}
    for i, t in tokens():
        rho, a = math.exp(DELTA[i][t]), ADV[i][t]
        unclipped, clipped_term = -a * rho, -a * clip(rho, 1 - EPS, 1 + EPS)
        terms[i, t] = max(unclipped, clipped_term)
        clipped[i, t] = clipped_term > unclipped
    return terms, clipped


def hand_value_terms():
    terms, clipped = {}, {}
    for i, t in tokens():
        v_old, v, r = VALUES[i][t], VALUES[i][t] + DV[i][t], RET[i][t]
        v_clip = v_old + clip(v - v_old, -VCLIP, VCLIP)
        terms[i, t] = 0.5 * max((v - r) ** 2, (v_clip - r) ** 2)
        clipped[i, t] = (v_clip - r) ** 2 > (v - r) ** 2
    return terms, clipped


def test_loss_fixtures_cover_every_branch():
    """Ratios inside and outside [1−ε, 1+ε] with both advantage signs; both value-loss branches."""
    _, policy_clipped = hand_policy_terms()
    assert sum(policy_clipped.values()) == 3  # (0,1): ρ>1+ε, Â>0 · (1,1): ρ<1−ε, Â<0 · (2,3): ρ>1+ε, Â>0
    assert not policy_clipped[1, 0] and math.exp(DELTA[1][0]) > 1 + EPS  # ρ>1+ε with Â<0: unclipped term
    assert not policy_clipped[0, 2] and math.exp(DELTA[0][2]) < 1 - EPS  # ρ<1−ε with Â>0: unclipped term
    _, value_clipped = hand_value_terms()
    outside = [(i, t) for i, t in tokens() if abs(DV[i][t]) > VCLIP]
    assert {k for k in outside if value_clipped[k]} and {k for k in outside if not value_clipped[k]}


@pytest.mark.parametrize("vf_coef,entropy_coef", [(0.1, 0.0), (0.5, 0.01), (0.0, 0.2)])
def test_loss_matches_hand_formula(vf_coef, entropy_coef):
    lp, values, entropy, rollout = loss_inputs()
    objective = PPO(clip_ratio=EPS, value_clip=VCLIP, vf_coef=vf_coef, entropy_coef=entropy_coef)
    outputs = {"values": values, **({"entropy": entropy} if objective.needs.entropy else {})}
    loss, metrics = objective.loss(lp, rollout, **outputs)
    n = len(tokens())
    policy_terms, policy_clipped = hand_policy_terms()
    value_terms, value_clipped = hand_value_terms()
    policy = sum(policy_terms.values()) / n
    value = sum(value_terms.values()) / n
    mean_entropy = sum(ENT[i][t] for i, t in tokens()) / n
    expected = policy + vf_coef * value - entropy_coef * mean_entropy
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(metrics["loss/policy"]) == pytest.approx(policy, rel=1e-5)
    assert float(metrics["loss/value"]) == pytest.approx(value, rel=1e-5)
    assert float(metrics["loss/total"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["ppo/clip_fraction"]) == pytest.approx(sum(policy_clipped.values()) / n)
    assert float(metrics["value/clip_fraction"]) == pytest.approx(sum(value_clipped.values()) / n)
    k3 = [math.exp(DELTA[i][t]) - 1 - DELTA[i][t] for i, t in tokens()]  # KL(π_t‖π_θ), ρ = π_θ/π_t
    assert float(metrics["ppo/approx_kl"]) == pytest.approx(sum(k3) / n, rel=1e-5)
    new_values = [VALUES[i][t] + DV[i][t] for i, t in tokens()]
    returns = [RET[i][t] for i, t in tokens()]
    explained = 1 - statistics.pvariance([r - v for r, v in zip(returns, new_values)]) / statistics.pvariance(returns)
    assert float(metrics["value/explained_variance"]) == pytest.approx(explained, rel=1e-5)
    assert float(metrics["value/mean"]) == pytest.approx(statistics.mean(new_values), rel=1e-5)
    if objective.needs.entropy:
        assert float(metrics["loss/entropy"]) == pytest.approx(mean_entropy, rel=1e-5)
    else:
        assert "loss/entropy" not in metrics
    for key, value_ in metrics.items():
        assert isinstance(value_, torch.Tensor) and value_.dim() == 0 and not value_.requires_grad, key


def test_loss_without_value_clipping_is_plain_squared_error():
    lp, values, _, rollout = loss_inputs()
    loss, metrics = PPO(value_clip=None, vf_coef=1.0).loss(lp, rollout, values=values)
    n = len(tokens())
    value = sum(0.5 * (VALUES[i][t] + DV[i][t] - RET[i][t]) ** 2 for i, t in tokens()) / n
    assert float(metrics["loss/value"]) == pytest.approx(value, rel=1e-5)


def test_gradients_match_analytic_values_and_vanish_on_padding():
    """∂L/∂lp = −Â·ρ/n on tokens using the unclipped term, 0 where the clipped term is used;
    ∂L/∂V = c_v·(V − R)/n where the unclipped value error is used, 0 where the clipped one is;
    ∂L/∂H = −c_H/n (the bonus raises entropy); all zero on padding."""
    vf_coef, entropy_coef = 0.5, 0.03
    lp, values, entropy, rollout = loss_inputs()
    loss, _ = PPO(clip_ratio=EPS, value_clip=VCLIP, vf_coef=vf_coef, entropy_coef=entropy_coef).loss(
        lp, rollout, values=values, entropy=entropy)
    grad_lp, grad_v, grad_h = torch.autograd.grad(loss, [lp, values, entropy])
    n = len(tokens())
    _, policy_clipped = hand_policy_terms()
    _, value_clipped = hand_value_terms()
    for i, t in tokens():
        rho = math.exp(DELTA[i][t])
        expected_lp = 0.0 if policy_clipped[i, t] else -ADV[i][t] * rho / n
        assert grad_lp[i, t].item() == pytest.approx(expected_lp, rel=1e-5, abs=1e-8), (i, t)
        v = VALUES[i][t] + DV[i][t]
        expected_v = 0.0 if value_clipped[i, t] else vf_coef * (v - RET[i][t]) / n
        assert grad_v[i, t].item() == pytest.approx(expected_v, rel=1e-5, abs=1e-8), (i, t)
        assert grad_h[i, t].item() == pytest.approx(-entropy_coef / n, rel=1e-5), (i, t)
    padding = torch.tensor(RESPONSE_MASK) == 0
    for grad in (grad_lp, grad_v, grad_h):
        assert torch.equal(grad[padding], torch.zeros(int(padding.sum())))


def test_loss_ignores_padding_garbage():
    lp, values, entropy, rollout = loss_inputs()
    objective = PPO(entropy_coef=0.1)
    base, _ = objective.loss(lp, rollout, values=values, entropy=entropy)
    padding = ~rollout.response_mask.bool()
    other = make_rollout()
    other.old_logprobs = other.old_logprobs.masked_fill(padding, -1e4)
    other.values = other.values.masked_fill(padding, float("inf"))
    other.extras = {"advantages": rollout.extras["advantages"].masked_fill(padding, 1e6),
                    "returns": rollout.extras["returns"].masked_fill(padding, -1e6)}
    loss, metrics = objective.loss(lp.detach().masked_fill(padding, 1e4), other,
                                   values=values.detach().masked_fill(padding, float("nan")),
                                   entropy=entropy.detach().masked_fill(padding, 1e9))
    assert loss.item() == pytest.approx(base.item(), rel=1e-6)
    assert all(math.isfinite(float(v)) for v in metrics.values())


def test_descent_step_at_pi_t_raises_logprob_of_positive_advantage_tokens():
    """At θ = π_t every ratio is 1 (nothing clipped) and ∂L/∂lp = −Â/n: descent follows the advantage."""
    rollout = PPO().prepare(make_rollout(), lambda t: t)
    lp = rollout.old_logprobs.clone().requires_grad_(True)
    values = rollout.values.clone().requires_grad_(True)
    loss, metrics = PPO().loss(lp, rollout, values=values)
    (grad,) = torch.autograd.grad(loss, lp)
    mask = rollout.response_mask.bool()
    n = int(mask.sum())
    torch.testing.assert_close(grad[mask], -rollout.extras["advantages"][mask] / n)
    assert float(metrics["ppo/clip_fraction"]) == 0.0 and float(metrics["ppo/approx_kl"]) == pytest.approx(0.0)
    # V = V_t: the value loss is ½·mean(Â_raw²) where Â_raw = R − V_t
    raw = PPO(whiten_advantages=False).prepare(make_rollout(), lambda t: t).extras["advantages"]
    assert float(metrics["loss/value"]) == pytest.approx(0.5 * float(raw[mask].pow(2).mean()), rel=1e-5)


# ---------------------------------------------------------------------------- configuration
def test_declares_critic_and_entropy_only_when_used():
    assert PPO.needs.critic and PPO().needs.critic
    assert PPO.needs.samples_per_prompt == 1
    assert PPO().needs.entropy is False
    assert PPO(entropy_coef=0.01).needs.entropy is True
    defaults = PPO()
    settings = (defaults.clip_ratio, defaults.value_clip, defaults.vf_coef, defaults.gamma, defaults.lam)
    assert settings == (0.2, 0.2, 0.1, 1.0, 0.95)
    assert (defaults.inner_epochs, defaults.num_minibatches, defaults.whiten_advantages) == (4, 1, True)
    assert defaults.ptx_coef == 0.0 and defaults.entropy_coef == 0.0


def test_entropy_coef_without_entropy_output_is_an_error():
    lp, values, _, rollout = loss_inputs()
    with pytest.raises(ValueError, match="entropy"):
        PPO(entropy_coef=0.1).loss(lp, rollout, values=values)


@pytest.mark.parametrize("key,value", [("clip_ratio", 0.0), ("value_clip", -0.1), ("vf_coef", -1.0),
                                       ("gamma", 1.5), ("lam", -0.1), ("entropy_coef", -0.01), ("ptx_coef", -1.0),
                                       ("inner_epochs", 0), ("num_minibatches", 0)])
def test_invalid_arguments_name_the_key(key, value):
    with pytest.raises(RecipeError, match=f"model.init_args.objective.init_args.{key}"):
        PPO(**{key: value})


def test_all_problems_are_reported_at_once():
    with pytest.raises(RecipeError) as info:
        PPO(clip_ratio=-1.0, lam=2.0, inner_epochs=0)
    message = str(info.value)
    for key in ("clip_ratio", "lam", "inner_epochs"):
        assert f"objective.init_args.{key}" in message
