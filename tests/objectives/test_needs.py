"""``Needs``: what an objective asks the module to compute, declared once."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest

from rlhf_lightning.objectives import GRPO, PPO, REBEL, RLOO, Needs, Objective


def test_defaults_describe_an_online_objective_with_a_reference():
    needs = Needs()
    assert needs.rollout and needs.reference and not needs.critic and needs.kl_in_reward
    assert needs.group_size == 1 and needs.head == "causal_lm" and needs.pretrain_coef == 0.0


def test_group_size_counts_samples_then_data_set_responses():
    assert REBEL(pairs="dataset").needs.group_size == 2
    assert REBEL(pairs="best_worst", num_samples=5).needs.group_size == 5
    assert RLOO(k=4).needs.group_size == 4 and GRPO(group_size=8).needs.group_size == 8


def test_instances_change_their_own_needs_only():
    assert PPO(ptx_coef=0.5, entropy_coef=0.01).needs.pretrain_coef == 0.5
    assert PPO.needs.pretrain_coef == 0.0 and PPO().needs.entropy is False
    with pytest.raises(FrozenInstanceError):
        PPO.needs.critic = False  # shared by every instance: replaced, never changed in place
    assert replace(PPO.needs, critic=False).critic is False and PPO.needs.critic


def test_an_old_style_flag_is_an_error_that_says_what_to_write():
    with pytest.raises(TypeError, match=r"needs = Needs\(samples_per_prompt=2, reference=False\)"):
        class OldStyle(Objective):  # noqa: F841 - defining it is the test
            samples_per_prompt = 2
            needs_reference = False

            def loss(self, logprobs, rollout):
                return logprobs.sum(), {}


def test_an_old_style_flag_set_in_init_is_an_error_too():
    class OldInit(Objective):
        def __init__(self):
            super().__init__()
            self.samples_per_prompt = 4  # what objectives used to do per instance

        def loss(self, logprobs, rollout):
            return logprobs.sum(), {}

    with pytest.raises(TypeError, match=r"self.needs = dataclasses.replace\(self.needs, samples_per_prompt=\.\.\.\)"):
        OldInit()


@pytest.mark.parametrize("make", [
    lambda v: REBEL(eta=v), lambda v: GRPO(beta=v), lambda v: GRPO(clip_ratio=v), lambda v: PPO(vf_coef=v),
    lambda v: PPO(clip_ratio=v), lambda v: PPO(entropy_coef=v), lambda v: PPO(ptx_coef=v),
])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_coefficients_are_recipe_errors(make, value):
    from rlhf_lightning.errors import RecipeError

    with pytest.raises(RecipeError, match="model.init_args.objective.init_args"):
        make(value)
