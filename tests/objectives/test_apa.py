"""APA (Zhu et al., 2023) against hand computations in plain Python floats, and a learning run on the tiny model.

prepare():  PPO's GAE on per-token KL-shaped rewards (the shared critic_advantages), whitened when enabled.
loss():     L = mean_t (ln π_θ,t − ln π_init,t − Â_t/λ)² + c_v · mean_t ½·(V_t − R_t)²
              (PPO's clipped value error when value_clip is set),
means over the real response tokens only. Padding holds garbage that must never matter.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives import APA, PPO
from rlhf_lightning.rollout import Rollout

G = 37.0  # garbage written at masked response positions
P = 2  # prompt block width
PROMPT_MASK = [[0, 1], [1, 1], [1, 1]]
RESPONSE_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0]]  # 3 tokens, 2 tokens + padding, a row of length 1
LP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, G], [-0.7, G, G]]  # ln π_θ (new)
OLD = [[-1.1, -0.4, -2.0], [-0.2, -1.0, G], [-0.9, G, G]]  # ln π_t
REF = [[-1.2, -0.5, -1.0], [-0.4, -1.0, -G], [-0.7, G, -G]]  # ln π_init
VALUES = [[0.5, 0.2, -0.1], [0.0, 0.3, -G], [1.0, G, G]]  # V_t at rollout time
ADV = [[1.0, -0.5, 0.2], [-1.0, 0.3, -G], [2.0, G, -G]]  # Â given to the loss
RET = [[0.9, 1.0, 0.0], [1.5, 0.1, G], [0.2, -G, G]]  # R given to the loss
DV = [[0.1, 0.5, -0.5], [0.3, -0.05, 0.0], [-0.3, 0.0, 0.0]]  # V_θ − V_t
SCORE = [1.0, -0.5, 2.0]  # r(x, y)
BETA = 0.1


def tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def make_rollout(rows=(0, 1, 2), kl_coef=BETA) -> Rollout:
    rows = list(rows)
    mask = torch.tensor([PROMPT_MASK[i] + RESPONSE_MASK[i] for i in rows])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return Rollout(input_ids=input_ids, attention_mask=mask, prompt_length=P,
                   old_logprobs=tensor([OLD[i] for i in rows]), ref_logprobs=tensor([REF[i] for i in rows]),
                   rewards=torch.tensor([SCORE[i] for i in rows]),
                   shaped_rewards=torch.full((len(rows),), 1e3),  # sequence-level r̃: APA must not use it
                   group_size=1, kl_coef=kl_coef, values=tensor([VALUES[i] for i in rows]))


def loss_inputs(rows=(0, 1, 2)):
    """(logprobs, values) with grad and garbage on padding, and the rollout with its extras set."""
    rows = list(rows)
    rollout = make_rollout(rows)
    rollout.extras["advantages"] = tensor([ADV[i] for i in rows])
    rollout.extras["returns"] = tensor([RET[i] for i in rows])
    lp = tensor([LP[i] for i in rows]).requires_grad_(True)
    values = tensor([[VALUES[i][t] + DV[i][t] for t in range(3)] for i in rows]).requires_grad_(True)
    return lp, values, rollout


def tokens(rows=(0, 1, 2)):
    """(row, col) of every real response token."""
    return [(i, t) for i in rows for t in range(3) if RESPONSE_MASK[i][t]]


def hand_apa(lam, rows=(0, 1, 2)):
    terms = [(LP[i][t] - REF[i][t] - ADV[i][t] / lam) ** 2 for i, t in tokens(rows)]
    return sum(terms) / len(terms)


def hand_value(value_clip=None, rows=(0, 1, 2)):
    terms = []
    for i, t in tokens(rows):
        v_old, v, r = VALUES[i][t], VALUES[i][t] + DV[i][t], RET[i][t]
        error = (v - r) ** 2
        if value_clip is not None:
            v_clip = v_old + min(max(v - v_old, -value_clip), value_clip)
            error = max(error, (v_clip - r) ** 2)
        terms.append(0.5 * error)
    return sum(terms) / len(terms)


# ---------------------------------------------------------------------------- loss
def test_hand_fixture_by_hand():
    """Row 2 (one token) and the whole batch at λ = 0.5, written out."""
    # row 2: ln π_θ − ln π_init − Â/λ = −0.7 − (−0.7) − 2.0/0.5 = −4 → 16
    assert hand_apa(0.5, rows=(2,)) == pytest.approx(16.0)
    # row 0: (0.2 − 2)² + (0 + 1)² + (−1 − 0.4)² = 3.24 + 1 + 1.96; row 1: (0.1 + 2)² + (−0.2 − 0.6)² = 4.41 + 0.64
    assert hand_apa(0.5) == pytest.approx((3.24 + 1.0 + 1.96 + 4.41 + 0.64 + 16.0) / 6)


@pytest.mark.parametrize("lam,vf_coef", [(0.1, 1.0), (0.5, 0.1), (2.0, 0.0)])
def test_loss_matches_hand_formula(lam, vf_coef):
    lp, values, rollout = loss_inputs()
    loss, metrics = APA(lam=lam, vf_coef=vf_coef).loss(lp, rollout, values=values)
    apa, value = hand_apa(lam), hand_value()
    assert loss.item() == pytest.approx(apa + vf_coef * value, rel=1e-5)
    assert float(metrics["loss/apa"]) == pytest.approx(apa, rel=1e-5)
    assert float(metrics["loss/value"]) == pytest.approx(value, rel=1e-5)
    assert float(metrics["loss/total"]) == pytest.approx(apa + vf_coef * value, rel=1e-5)
    n = len(tokens())
    assert float(metrics["apa/log_ratio"]) == pytest.approx(sum(LP[i][t] - REF[i][t] for i, t in tokens()) / n)
    assert float(metrics["apa/target"]) == pytest.approx(sum(abs(ADV[i][t]) / lam for i, t in tokens()) / n)
    new_values = [VALUES[i][t] + DV[i][t] for i, t in tokens()]
    returns = [RET[i][t] for i, t in tokens()]
    explained = 1 - statistics.pvariance([r - v for r, v in zip(returns, new_values)]) / statistics.pvariance(returns)
    assert float(metrics["value/explained_variance"]) == pytest.approx(explained, rel=1e-5)
    assert float(metrics["value/mean"]) == pytest.approx(statistics.mean(new_values), rel=1e-5)
    assert float(metrics["value/clip_fraction"]) == 0.0
    for key, value_ in metrics.items():
        assert isinstance(value_, torch.Tensor) and value_.dim() == 0 and not value_.requires_grad, key


def test_reference_is_the_initial_policy_not_the_sampling_policy():
    """ln π_t (old_logprobs) plays no part in the loss: only ln π_init (ref_logprobs) does."""
    lp, values, rollout = loss_inputs()
    base, _ = APA().loss(lp, rollout, values=values)
    rollout.old_logprobs = rollout.old_logprobs + 5.0
    moved, _ = APA().loss(lp, rollout, values=values)
    assert moved.item() == pytest.approx(base.item())
    rollout.ref_logprobs = rollout.ref_logprobs + 0.5
    assert APA().loss(lp, rollout, values=values)[0].item() != pytest.approx(base.item())


def test_value_clip_gives_ppos_clipped_value_loss():
    lp, values, rollout = loss_inputs()
    _, metrics = APA(value_clip=0.2).loss(lp, rollout, values=values)
    assert float(metrics["loss/value"]) == pytest.approx(hand_value(0.2), rel=1e-5)
    assert hand_value(0.2) > hand_value() and float(metrics["value/clip_fraction"]) > 0
    _, ppo = PPO(value_clip=0.2).loss(lp, rollout, values=values)  # the same shared value loss
    assert float(ppo["loss/value"]) == pytest.approx(float(metrics["loss/value"]), rel=1e-6)


def test_gradients_match_analytic_values_and_vanish_on_padding():
    """∂L/∂lp = 2·(ln π_θ − ln π_init − Â/λ)/n and ∂L/∂V = c_v·(V − R)/n on real tokens, 0 on padding."""
    lam, vf_coef = 0.5, 0.3
    lp, values, rollout = loss_inputs()
    loss, _ = APA(lam=lam, vf_coef=vf_coef).loss(lp, rollout, values=values)
    grad_lp, grad_v = torch.autograd.grad(loss, [lp, values])
    n = len(tokens())
    for i, t in tokens():
        expected = 2 * (LP[i][t] - REF[i][t] - ADV[i][t] / lam) / n
        assert grad_lp[i, t].item() == pytest.approx(expected, rel=1e-5), (i, t)
        expected_v = vf_coef * (VALUES[i][t] + DV[i][t] - RET[i][t]) / n
        assert grad_v[i, t].item() == pytest.approx(expected_v, rel=1e-5), (i, t)
    padding = torch.tensor(RESPONSE_MASK) == 0
    for grad in (grad_lp, grad_v):
        assert torch.equal(grad[padding], torch.zeros(int(padding.sum())))


def test_descent_at_pi_init_follows_the_advantage():
    """At ln π_θ = ln π_init the gradient is −2Â/(λn): descent raises tokens with Â > 0, lowers Â < 0."""
    lp, values, rollout = loss_inputs()
    lp = rollout.ref_logprobs.clone().requires_grad_(True)
    loss, _ = APA(lam=0.1).loss(lp, rollout, values=values)
    (grad,) = torch.autograd.grad(loss, lp)
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(grad[mask], -2 * rollout.extras["advantages"][mask] / (0.1 * int(mask.sum())))


def test_padding_garbage_contributes_nothing():
    lp, values, rollout = loss_inputs()
    base, base_metrics = APA(value_clip=0.2).loss(lp, rollout, values=values)
    padding = ~rollout.response_mask.bool()
    other = make_rollout()
    other.ref_logprobs = other.ref_logprobs.masked_fill(padding, float("-inf"))
    other.old_logprobs = other.old_logprobs.masked_fill(padding, float("nan"))
    other.values = other.values.masked_fill(padding, float("inf"))
    other.extras = {"advantages": rollout.extras["advantages"].masked_fill(padding, float("nan")),
                    "returns": rollout.extras["returns"].masked_fill(padding, -1e30)}
    garbage_lp = lp.detach().masked_fill(padding, float("inf")).requires_grad_(True)
    loss, metrics = APA(value_clip=0.2).loss(garbage_lp, other, values=values.detach().masked_fill(padding, float("nan")))
    assert loss.item() == pytest.approx(base.item(), rel=1e-6)
    for key in base_metrics:
        assert float(metrics[key]) == pytest.approx(float(base_metrics[key]), rel=1e-6, abs=1e-7), key
    (grad,) = torch.autograd.grad(loss, garbage_lp)
    assert torch.isfinite(grad).all() and torch.equal(grad[padding], torch.zeros(int(padding.sum())))


def test_a_row_of_length_one():
    """A batch of the one-token row alone, and that row's share of the token mean in the full batch."""
    lp, values, rollout = loss_inputs(rows=(2,))
    loss, metrics = APA(lam=0.5, vf_coef=1.0).loss(lp, rollout, values=values)
    assert float(metrics["loss/apa"]) == pytest.approx(16.0, rel=1e-6)
    assert float(metrics["loss/value"]) == pytest.approx(0.5 * (1.0 - 0.3 - 0.2) ** 2, rel=1e-5)
    assert loss.item() == pytest.approx(16.0 + 0.125, rel=1e-5)
    # in the full batch the row is one real token of 6: the token mean, not a mean over rows
    assert hand_apa(0.5) == pytest.approx((5 * hand_apa(0.5, rows=(0, 1)) + 16.0) / 6)
    lp, values, rollout = loss_inputs()
    full = APA(lam=0.5).loss(lp, rollout, values=values)[1]["loss/apa"]
    assert float(full) == pytest.approx(hand_apa(0.5), rel=1e-6)
    assert float(full) != pytest.approx((hand_apa(0.5, rows=(0,)) + hand_apa(0.5, rows=(1,)) + 16.0) / 3)


def test_micro_batches_weighted_by_token_share_give_the_whole_loss():
    lp, values, rollout = loss_inputs()
    objective = APA(lam=0.5, value_clip=0.2)
    whole, _ = objective.loss(lp, rollout, values=values)
    total = 0.0
    for rows in ([0], [1, 2]):
        index = torch.tensor(rows)
        chunk = rollout.select_rows(index)
        part, _ = objective.loss(lp[index], chunk, values=values[index])
        total += objective.chunk_weight(chunk, rollout) * part.item()
    assert total == pytest.approx(whole.item(), rel=1e-6)


def test_loss_requires_values_and_prepared_advantages():
    lp, values, rollout = loss_inputs()
    with pytest.raises(ValueError, match="values"):
        APA().loss(lp, rollout)
    rollout.extras = {}
    with pytest.raises(RuntimeError, match="prepare"):
        APA().loss(lp, rollout, values=values)


# ---------------------------------------------------------------------------- prepare
def hand_gae(beta=BETA, gamma=1.0, lam=0.95, rows=(0, 1, 2)):
    """Per row: advantages and returns over the real tokens, in plain floats (PPO's token rewards)."""
    out = {}
    for i in rows:
        real = [t for t in range(3) if RESPONSE_MASK[i][t]]
        rewards = [-beta * (OLD[i][t] - REF[i][t]) for t in real]
        rewards[-1] += SCORE[i]
        advantages, next_adv, next_value = [0.0] * len(real), 0.0, 0.0
        for k in reversed(range(len(real))):
            value = VALUES[i][real[k]]
            next_adv = rewards[k] + gamma * next_value - value + gamma * lam * next_adv
            advantages[k] = next_adv
            next_value = value
        out[i] = (advantages, [a + VALUES[i][t] for a, t in zip(advantages, real)])
    return out


def padded(per_row) -> torch.Tensor:
    return torch.tensor([row + [0.0] * (3 - len(row)) for row in per_row])


@pytest.mark.parametrize("gamma,gae_lambda,beta", [(1.0, 0.95, BETA), (0.9, 0.5, 0.0), (1.0, 1.0, 2.0)])
def test_prepare_is_gae_on_kl_shaped_token_rewards(gamma, gae_lambda, beta):
    rollout = APA(gamma=gamma, gae_lambda=gae_lambda, whiten_advantages=False).prepare(
        make_rollout(kl_coef=beta), lambda t: t)
    hand = hand_gae(beta=beta, gamma=gamma, lam=gae_lambda)
    torch.testing.assert_close(rollout.extras["advantages"], padded([hand[i][0] for i in range(3)]))
    torch.testing.assert_close(rollout.extras["returns"], padded([hand[i][1] for i in range(3)]))
    # the same numbers as PPO's prepare with lam = gae_lambda (one shared implementation)
    ppo = PPO(gamma=gamma, lam=gae_lambda, whiten_advantages=False).prepare(make_rollout(kl_coef=beta), lambda t: t)
    torch.testing.assert_close(rollout.extras["advantages"], ppo.extras["advantages"])


def test_prepare_whitens_over_real_tokens_and_logs_raw_statistics():
    rollout = APA().prepare(make_rollout(), lambda t: t)
    hand = hand_gae()
    flat = [a for i in range(3) for a in hand[i][0]]
    mean, std = statistics.mean(flat), statistics.stdev(flat)
    whitened = padded([[(a - mean) / std for a in hand[i][0]] for i in range(3)])
    torch.testing.assert_close(rollout.extras["advantages"], whitened, rtol=1e-5, atol=1e-5)
    assert rollout.metrics["apa/advantage_mean"] == pytest.approx(mean, rel=1e-5)
    assert rollout.metrics["apa/advantage_std"] == pytest.approx(std, rel=1e-5)
    returns = [r for i in range(3) for r in hand[i][1]]
    assert rollout.metrics["apa/return_mean"] == pytest.approx(statistics.mean(returns), rel=1e-5)


def test_prepare_requires_values_and_reference():
    rollout = make_rollout()
    rollout.values = None
    with pytest.raises(ValueError, match="critic"):
        APA().prepare(rollout, lambda t: t)
    rollout = make_rollout()
    rollout.ref_logprobs = None
    with pytest.raises(ValueError, match="ref_logprobs"):
        APA().prepare(rollout, lambda t: t)


# ---------------------------------------------------------------------------- configuration
def test_defaults_and_needs():
    objective = APA()
    assert objective.needs.critic and objective.needs.reference and objective.needs.samples_per_prompt == 1
    assert not objective.needs.entropy and objective.needs.kl_in_reward
    settings = (objective.lam, objective.vf_coef, objective.value_clip, objective.gamma, objective.gae_lambda)
    assert settings == (0.1, 1.0, None, 1.0, 0.95)
    assert (objective.inner_epochs, objective.num_minibatches, objective.whiten_advantages) == (2, 1, True)
    assert objective.name == "apa"


@pytest.mark.parametrize("key,value", [("lam", 0.0), ("lam", -1.0), ("lam", math.inf), ("lam", math.nan),
                                       ("vf_coef", -1.0), ("value_clip", 0.0), ("value_clip", -0.1),
                                       ("gamma", 1.5), ("gae_lambda", -0.1), ("whiten_advantages", "yes"),
                                       ("inner_epochs", 0), ("num_minibatches", 0)])
def test_invalid_arguments_name_the_key(key, value):
    with pytest.raises(RecipeError, match=f"model.init_args.objective.init_args.{key}"):
        APA(**{key: value})


def test_all_problems_are_reported_at_once():
    with pytest.raises(RecipeError) as info:
        APA(lam=-1.0, gae_lambda=2.0, vf_coef=-0.5, inner_epochs=0)
    message = str(info.value)
    for key in ("lam", "gae_lambda", "vf_coef", "inner_epochs"):
        assert f"objective.init_args.{key}" in message


# ---------------------------------------------------------------------------- end to end
def test_apa_learns_the_reward(tiny_model, tiny_data, tmp_path):
    """A fresh value head on the policy's body as critic; 8 rollout batches of 8 prompts, 2 inner epochs."""
    from runs import run_cli, tiny_run_args

    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8, lr=3e-3,
                         objective=["--model.objective", "rlhf_lightning.objectives.APA"],
                         extra=["--model.critic.path", str(tiny_model), "--model.critic_lr", "1e-2"])
    cli = run_cli(args)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == "apa"
    assert summary["sft_reward"] < 0.3
    assert summary["reward"] > summary["sft_reward"] + 0.5, summary
    assert summary["win_rate_vs_sft"] >= 0.75, summary
    assert cli.trainer.global_step == 8 * 2  # rollout batches × inner epochs (one minibatch)
    groups = cli.trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["initial_lr"] == pytest.approx(1e-2)  # the critic is trained
