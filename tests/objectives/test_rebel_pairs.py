"""REBEL's pair sources (paper, Remarks 1-2): sampled pairs, best/worst of N under r̃, sample + data-set response.

The loss is Eq. 1 in every case; only which rows form the pair changes.
"""

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.rebel import REBEL
from rlhf_lightning.rollout import Rollout


def identity(t):
    return t


def make_rollout(shaped, group_size, response_width=3) -> Rollout:
    """Rows numbered so that a selected row can be recognised: input_ids[i] = i + 10 everywhere, old
    log-probs −0.1·(i+1) per real token; row i has (i % response_width) + 1 real response tokens."""
    n = len(shaped)
    P = 2
    input_ids = (torch.arange(n)[:, None] + 10).repeat(1, P + response_width)
    mask = torch.ones(n, P + response_width, dtype=torch.long)
    for i in range(n):
        mask[i, P + (i % response_width) + 1:] = 0
    old = torch.tensor([[-0.1 * (i + 1)] * response_width for i in range(n)]) * mask[:, P:]
    return Rollout(input_ids=input_ids, attention_mask=mask, prompt_length=P, old_logprobs=old,
                   ref_logprobs=old * 2, rewards=torch.tensor(shaped) * 10, shaped_rewards=torch.tensor(shaped),
                   group_size=group_size, extras={"row": torch.arange(n)}, metrics={"reward/raw": 1.5})


# ---------------------------------------------------------------------------- configuration
def test_sampled_is_the_default_and_unchanged():
    objective = REBEL()
    assert (objective.pairs, objective.num_samples, objective.needs.samples_per_prompt) == ("sampled", 2, 2)
    assert objective.needs.dataset_responses_per_prompt == 0
    rollout = make_rollout([0.1, 0.2, 0.3, 0.4], group_size=2)
    assert objective.prepare(rollout, identity) is rollout


@pytest.mark.parametrize("n", [2, 4, 5])
def test_best_worst_generates_num_samples_per_prompt(n):
    objective = REBEL(pairs="best_worst", num_samples=n)
    assert objective.needs.samples_per_prompt == n and objective.needs.dataset_responses_per_prompt == 0
    assert REBEL.needs.samples_per_prompt == 2  # an instance setting, not a change to the class


def test_dataset_pairs_one_sample_with_one_dataset_response():
    objective = REBEL(pairs="dataset")
    assert objective.needs.samples_per_prompt == 1 and objective.needs.dataset_responses_per_prompt == 1
    rollout = make_rollout([0.3, 0.9, -0.2, 0.1], group_size=2)  # (sample, data-set response) per prompt
    assert objective.prepare(rollout, identity) is rollout
    lp = torch.zeros(4, 3, requires_grad=True)
    loss, _ = objective.loss(lp, rollout)
    # ratios ln π_θ − ln π_t with π_θ = 0: +0.1·(i+1)·|y_i| with |y_i| = 1, 2, 3, 1
    ratios = [0.1 * 1, 0.2 * 2, 0.3 * 3, 0.4 * 1]
    expected = ((ratios[0] - ratios[1]) - (0.3 - 0.9)) ** 2 + ((ratios[2] - ratios[3]) - (-0.2 - 0.1)) ** 2
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


@pytest.mark.parametrize("n", [1, 0, -3])
def test_num_samples_below_two_is_an_error_naming_the_key(n):
    with pytest.raises(RecipeError, match=r"objective\.init_args\.num_samples"):
        REBEL(pairs="best_worst", num_samples=n)


def test_num_samples_without_best_worst_is_an_error():
    with pytest.raises(RecipeError, match="num_samples.*best_worst"):
        REBEL(pairs="sampled", num_samples=4)


def test_unknown_pairs_and_bad_eta_are_reported_together():
    with pytest.raises(RecipeError) as info:
        REBEL(eta=0.0, pairs="random")  # type: ignore[arg-type]
    assert "eta" in str(info.value) and "pairs" in str(info.value)


# ---------------------------------------------------------------------------- best/worst selection
def test_best_worst_selects_the_highest_and_lowest_shaped_reward_per_prompt():
    shaped = [0.1, 0.7, -0.4, 0.3,   # prompt 0: best row 1, worst row 2
              -1.0, -2.0, 5.0, 0.0,  # prompt 1: best row 6, worst row 5
              0.2, 0.2, 0.9, -0.1]   # prompt 2: best row 10, worst row 11
    rollout = make_rollout(shaped, group_size=4)
    rollout.rewards = -rollout.rewards  # raw rewards rank the other way: the selection uses r̃
    pairs = REBEL(pairs="best_worst", num_samples=4).prepare(rollout, identity)
    assert pairs.group_size == 2 and len(pairs) == 6 and pairs.num_prompts == 3
    assert pairs.extras["row"].tolist() == [1, 2, 6, 5, 10, 11]
    for name in ("input_ids", "attention_mask", "old_logprobs", "ref_logprobs", "rewards", "shaped_rewards"):
        torch.testing.assert_close(getattr(pairs, name), getattr(rollout, name)[[1, 2, 6, 5, 10, 11]], msg=name)
    assert pairs.metrics["reward/raw"] == 1.5  # the rollout's metrics (over all N samples) are kept
    assert pairs.metrics["rebel/best_worst_gap"] == pytest.approx(((0.7 + 0.4) + 7.0 + 1.0) / 3)


def test_best_worst_with_all_equal_rewards_picks_two_distinct_rows():
    rollout = make_rollout([0.5] * 3 + [0.2, 0.2, 0.2], group_size=3)
    pairs = REBEL(pairs="best_worst", num_samples=3).prepare(rollout, identity)
    rows = pairs.extras["row"].view(-1, 2)
    assert pairs.group_size == 2
    for g in range(2):
        assert rows[g, 0] != rows[g, 1] and rows[g].div(3, rounding_mode="floor").tolist() == [g, g]


def test_best_worst_loss_is_eq1_on_the_selected_pair():
    shaped = [0.1, 0.7, -0.4, 0.3, -1.0, -2.0, 5.0, 0.0]
    rollout = make_rollout(shaped, group_size=4)
    objective = REBEL(eta=0.5, pairs="best_worst", num_samples=4)
    pairs = objective.prepare(rollout, identity)
    lp = torch.zeros(4, 3, requires_grad=True)
    loss, _ = objective.loss(lp, pairs)

    def ratio(i):  # ln π_θ − ln π_t with π_θ = 0 over |y_i| = (i % 3) + 1 tokens
        return 0.1 * (i + 1) * ((i % 3) + 1)

    residuals = [(ratio(b) - ratio(w)) / 0.5 - (shaped[b] - shaped[w]) for b, w in [(1, 2), (6, 5)]]
    assert loss.item() == pytest.approx(sum(r * r for r in residuals) / 2, rel=1e-6)


def test_best_worst_rejects_a_rollout_of_the_wrong_group_size():
    with pytest.raises(ValueError, match="4 samples"):
        REBEL(pairs="best_worst", num_samples=4).prepare(make_rollout([0.0] * 6, group_size=3), identity)


def test_loss_still_refuses_groups_that_are_not_pairs():
    rollout = make_rollout([0.0] * 8, group_size=4)
    with pytest.raises(ValueError, match="pairs"):
        REBEL(pairs="best_worst", num_samples=4).loss(torch.zeros(8, 3), rollout)


def test_minibatches_of_selected_pairs_keep_pairs_together():
    shaped = torch.randn(6 * 4, generator=torch.Generator().manual_seed(1)).tolist()
    pairs = REBEL(pairs="best_worst", num_samples=4).prepare(make_rollout(shaped, group_size=4), identity)
    for minibatch in pairs.minibatches(3, generator=torch.Generator().manual_seed(0)):
        rows = minibatch.extras["row"].view(-1, 2)
        assert bool((rows.div(4, rounding_mode="floor")[:, 0] == rows.div(4, rounding_mode="floor")[:, 1]).all())
        r = minibatch.shaped_rewards.view(-1, 2)
        assert bool((r[:, 0] >= r[:, 1]).all())
