"""Hand checks of the shared advantage maths."""

import torch

from rlhf_lightning.advantages import (gae, group_normalized_advantages, leave_one_out_advantages, masked_whiten,
                                       per_token_rewards)


def test_per_token_rewards_put_score_on_last_real_token():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, 9.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    got = per_token_rewards(torch.tensor([2.0, -1.0]), old, ref, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.1 * 0.5, -0.1 * -1.0, 2.0], [-0.1 * 1.0, 0.0 - 1.0, 0.0]])
    torch.testing.assert_close(got, expected)


def test_gae_matches_hand_recursion():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # row 0: deltas
    d2 = 1.0 - 0.3
    d1 = 0.0 + gamma * 0.3 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.1
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    # row 1: the value at the padded position is ignored
    e1 = 2.0 - 0.5
    e0 = 0.5 + gamma * 0.5 - 0.4
    b1 = e1
    b0 = e0 + gamma * lam * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(ret, adv + values * mask)


def test_masked_whiten_ignores_padding_and_uses_global_stats():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1]])
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (real - real.mean()) / real.std()
    got = masked_whiten(values, mask, eps=0)
    torch.testing.assert_close(got[mask.bool()], expected)
    assert got[0, 2] == 0
    kept = masked_whiten(values, mask, shift_mean=False, eps=0)
    torch.testing.assert_close(kept[mask.bool()], expected + real.mean())
    # two "processes", each half the data, summed by reduce_sum: same result as one process
    halves = [values[:1], values[1:]]
    masks = [mask[:1], mask[1:]]
    totals = sum(torch.stack([(v * m).sum(), (v.pow(2) * m).sum(), m.sum()]) for v, m in zip(halves, masks))
    got_first = masked_whiten(halves[0], masks[0], reduce_sum=lambda t: totals, eps=0)
    torch.testing.assert_close(got_first, got[:1])


def test_leave_one_out_advantages():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    got = leave_one_out_advantages(rewards, 3)
    expected = torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0.0])
    torch.testing.assert_close(got, expected)


def test_group_normalized_advantages_and_dr_grpo_variant():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])
    got = group_normalized_advantages(rewards, 2, eps=0.0)
    std = torch.tensor([1.0, 3.0]).std()
    torch.testing.assert_close(got[:2], torch.tensor([-1.0, 1.0]) / std)
    assert torch.all(group_normalized_advantages(rewards, 2)[2:] == 0)  # equal rewards: no signal, no NaN
    torch.testing.assert_close(group_normalized_advantages(rewards, 2, scale=False), torch.tensor([-1.0, 1.0, 0.0, 0.0]))
