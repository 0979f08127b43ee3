"""Every shipped online objective trains on samples drawn exactly from the policy whose log-probs it uses,
on a checkpoint whose generation config would change sampling (repetition penalty) and that ends
responses with either of two EOS ids (Llama-3 style)."""

from __future__ import annotations

import pytest
import torch

from rlhf_lightning.callbacks import Rollout
from runs import RecordRollouts, RecordingGenerator, fit_with_callbacks, tiny_run_args, without_evaluation
from tiny import with_generation_config

SECOND_EOS = 4  # "bad": never in a prompt, not the rewarded word
NO_EOS_REWARD = -4.0

OBJECTIVES = {
    "rebel": ["--model.objective", "rlhf_lightning.objectives.REBEL", "--model.objective.inner_epochs", "2"],
    "ppo": ["--model.objective", "rlhf_lightning.objectives.PPO", "--model.objective.inner_epochs", "2"],
    "rloo": ["--model.objective", "rlhf_lightning.objectives.RLOO"],
    "grpo": ["--model.objective", "rlhf_lightning.objectives.GRPO", "--model.objective.group_size", "2"],
    "reinforce": ["--model.objective", "rlhf_lightning.objectives.REINFORCE"],
    "online_dpo": ["--model.objective", "rlhf_lightning.objectives.OnlineDPO", "--model.objective.inner_epochs", "2"],
}


@pytest.fixture(scope="module")
def instruct_checkpoint(tiny_model, tmp_path_factory):
    return with_generation_config(tiny_model, tmp_path_factory.mktemp("instruct") / "model", repetition_penalty=1.2,
                                  eos_token_id=[1, SECOND_EOS])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_old_logprobs_are_the_samplers_and_the_second_eos_ends_a_response(name, instruct_checkpoint, tiny_data,
                                                                           tmp_path, recwarn):
    extra = ["--rollout.temperature", "0.7", "--rollout.no_eos_reward", str(NO_EOS_REWARD),
             "--rollout.generator", "runs.RecordingGenerator"]
    if name == "ppo":
        extra += ["--model.critic.path", str(instruct_checkpoint)]
    if name == "grpo":
        extra += ["--rollout.kl_coef", "0"]
    args = without_evaluation(tiny_run_args(instruct_checkpoint, tiny_data, tmp_path, batches=3,
                                            objective=OBJECTIVES[name], extra=extra))
    args[args.index("--rollout.no_eos_reward") + 1] = str(NO_EOS_REWARD)  # tiny_run_args sets null first
    recorder = RecordRollouts()
    cli = fit_with_callbacks(args, recorder)
    assert any("repetition_penalty=1.2" in str(w.message) for w in recwarn), "the dropped setting is named"
    (rollout_callback,) = [c for c in cli.trainer.callbacks if isinstance(c, Rollout)]
    engine = rollout_callback.generator
    assert isinstance(engine, RecordingGenerator) and engine.eos_ids == (1, SECOND_EOS)
    assert len(engine.generations) == len(recorder.rollouts) == 3
    ended_by_second = 0
    for generation, rollout in zip(engine.generations, recorder.rollouts):
        mask = rollout.response_mask.bool()
        # ln π_t of every sampled token is log_softmax(logits / T) of the policy that sampled it
        gap = (rollout.old_logprobs - generation.sampler_logprobs)[mask].abs().max()
        assert gap <= 1e-5, gap
        responses = rollout.input_ids[:, rollout.prompt_length:]
        lengths = rollout.response_mask.sum(-1).long()
        last = responses.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
        second = last == SECOND_EOS
        ended_by_second += int(second.sum())
        # a response that ends with the second EOS is a finished response: its reward is the source's, not −4
        assert (rollout.rewards[second] >= 0).all()
        no_eos = ~generation.ended
        assert torch.equal(rollout.rewards[no_eos], torch.full_like(rollout.rewards[no_eos], NO_EOS_REWARD))
    assert ended_by_second > 0


def test_a_lora_policy_with_a_shared_prefill_samples_on_policy(tiny_model, tiny_data, tmp_path):
    """LoRA (the reference is the adapter disabled) and the shared-prefill path of the engine together:
    ln π_t is still the sampler's log-prob of every token."""
    extra = ["--model.policy.lora.r", "8", "--model.policy.lora.alpha", "16", "--rollout.temperature", "0.7",
             "--rollout.generator", "runs.RecordingGenerator", "--rollout.generator.share_prefill_from", "2"]
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=3, lr=1e-2,
                                            objective=OBJECTIVES["rebel"], extra=extra))
    recorder = RecordRollouts()
    cli = fit_with_callbacks(args, recorder)
    (rollout_callback,) = [c for c in cli.trainer.callbacks if isinstance(c, Rollout)]
    engine = rollout_callback.generator
    assert engine.share_prefill_from == 2 and cli.model.reference is None
    for generation, rollout in zip(engine.generations, recorder.rollouts):
        gap = (rollout.old_logprobs - generation.sampler_logprobs)[rollout.response_mask.bool()].abs().max()
        assert gap <= 1e-5, gap


@pytest.mark.parametrize("name", ["rebel", "rloo"])  # ln π_t from a no-grad pass / from the update's forward
def test_bf16_mixed_rollout_runs_in_the_updates_autocast(name, tiny_model, tiny_data, tmp_path):
    """Under bf16-mixed the rollout (sampling, ln π_ref) runs in the same autocast as the update: before the
    first update the policy is the reference, so ln π_t − ln π_ref is exactly 0 on every token."""
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=1, objective=OBJECTIVES[name],
                                            extra=["--trainer.precision", "bf16-mixed"]))
    recorder = RecordRollouts()
    fit_with_callbacks(args, recorder)
    first = recorder.rollouts[0]
    assert torch.equal(first.old_logprobs, first.ref_logprobs)
    assert first.metrics["kl/ref"] == 0.0
