"""``ln π_t`` from the update's own forward (``RLHFModule.old_logprobs_from_update``) and the per-step
metrics path: the same training and the same logged numbers as the separate no-grad pass and ``self.log``."""

from __future__ import annotations

import csv

from dataclasses import replace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rlhf_lightning import RLHFModule
from rlhf_lightning.models import ModelConfig
from rlhf_lightning.objectives import GRPO, PPO, REBEL, RLOO
from rlhf_lightning.rollout import Rollout, Samples
from runs import RecordRollouts, fit_with_callbacks, tiny_run_args, without_evaluation


class EntropyBonusRLOO(RLOO):
    """A user objective that also needs the policy's entropy (with grad): RLOO − 0.1 · mean entropy."""

    needs = replace(RLOO.needs, entropy=True)

    def loss(self, logprobs, rollout, entropy):
        loss, metrics = super().loss(logprobs, rollout)
        bonus = (entropy * rollout.response_mask).sum() / rollout.response_mask.sum()
        return loss - 0.1 * bonus, {**metrics, "loss/entropy": bonus.detach()}


OBJECTIVES = {
    "rloo": ["--model.objective", "rlhf_lightning.objectives.RLOO"],
    "grpo": ["--model.objective", "rlhf_lightning.objectives.GRPO", "--model.objective.group_size", "2", "--rollout.kl_coef", "0"],
    "rebel_1_epoch": ["--model.objective", "rlhf_lightning.objectives.REBEL", "--model.objective.inner_epochs", "1"],
    "user_entropy_bonus": ["--model.objective", "test_update_forward.EntropyBonusRLOO"],
    # micro-batches as large as the rollout: the update runs on a copy of the rows (carrying the forward)
    "rloo_one_micro_batch": ["--model.objective", "rlhf_lightning.objectives.RLOO", "--model.micro_batch_size", "16"],
}
COMPARED = ("reward/raw", "reward/shaped", "kl/ref", "gen/entropy", "gen/length", "gen/eos_share")


def _train(tiny_model, tiny_data, root, objective, from_update: bool):
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, root, batches=3, objective=objective,
                                             extra=["--model.old_logprobs_from_update", str(from_update).lower(),
                                                    "--rollout.temperature", "0.7"]))
    recorder = RecordRollouts()
    cli = fit_with_callbacks(args, recorder)
    return cli, recorder


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_old_logprobs_from_the_update_train_exactly_like_the_separate_pass(tiny_model, tiny_data, tmp_path, name):
    fused, fused_rollouts = _train(tiny_model, tiny_data, tmp_path / "fused", OBJECTIVES[name], True)
    separate, separate_rollouts = _train(tiny_model, tiny_data, tmp_path / "separate", OBJECTIVES[name], False)
    assert fused_rollouts.deferred == [True] * 3  # the rollout really left ln π_t to the update
    assert separate_rollouts.deferred == [False] * 3
    for a, b in zip(fused_rollouts.rollouts, separate_rollouts.rollouts):
        assert torch.equal(a.input_ids, b.input_ids)  # same samples: same random stream
        torch.testing.assert_close(a.old_logprobs, b.old_logprobs, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.shaped_rewards, b.shaped_rewards, rtol=0, atol=1e-6)
        assert not a.old_logprobs.requires_grad and not any(key.startswith("_live_") for key in a.extras)
    for key, value in fused.model.policy.state_dict().items():
        torch.testing.assert_close(value, separate.model.policy.state_dict()[key], rtol=0, atol=1e-6, msg=key)
    fused_logged, separate_logged = fused.trainer.logged_metrics, separate.trainer.logged_metrics
    assert set(COMPARED) <= set(fused_logged) and set(fused_logged) == set(separate_logged)
    for key in fused_logged:
        if not key.startswith(("time/", "perf/")):  # everything but the timings
            assert float(fused_logged[key]) == pytest.approx(float(separate_logged[key]), abs=1e-5), key


def _module(objective, **kwargs) -> RLHFModule:
    return RLHFModule(policy=ModelConfig(path="unused"), objective=objective, **kwargs)


def test_update_forward_is_used_only_when_it_is_one_step_over_all_rows():
    assert _module(RLOO()).takes_old_logprobs_from_update(16)
    assert _module(GRPO(group_size=4)).takes_old_logprobs_from_update(16)
    assert _module(REBEL(inner_epochs=1)).takes_old_logprobs_from_update(16)
    assert _module(RLOO(), micro_batch_size=16).takes_old_logprobs_from_update(16)
    # the policy changes between updates, or the update runs in pieces, or over other rows
    assert not _module(REBEL()).takes_old_logprobs_from_update(16)  # 4 inner epochs
    assert not _module(RLOO(num_minibatches=2)).takes_old_logprobs_from_update(16)
    assert not _module(RLOO(), micro_batch_size=8).takes_old_logprobs_from_update(16)
    assert not _module(REBEL(inner_epochs=1, pairs="best_worst", num_samples=4)).takes_old_logprobs_from_update(16)
    assert not _module(PPO(inner_epochs=1)).takes_old_logprobs_from_update(16)  # values from the critic too
    assert not _module(RLOO(), old_logprobs_from_update=False).takes_old_logprobs_from_update(16)


def test_with_policy_logprobs_shapes_rewards_and_sets_metrics_by_hand():
    # two rows, P = 1, R = 3; row 0 has 2 response tokens, row 1 has 3
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    samples = Samples(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=attention_mask, prompt_length=1,
                      ref_logprobs=ref, rewards=torch.tensor([1.0, 2.0]), group_size=2, kl_coef=0.5,
                      metrics={"reward/raw": 1.5})
    entropy = torch.tensor([[1.0, 3.0, 9.0], [2.0, 2.0, 2.0]])  # the 9 is on padding
    rollout = samples.with_policy_logprobs(old, entropy)
    assert isinstance(rollout, Rollout) and rollout.rewards is samples.rewards
    assert samples.metrics == {"reward/raw": 1.5}  # the samples are not changed
    assert rollout.metrics["reward/raw"] == 1.5
    # ln π_t − ln π_ref per row: (−3) − (−2.5) = −0.5 and (−2) − (−3) = 1
    torch.testing.assert_close(rollout.shaped_rewards, torch.tensor([1.0 + 0.25, 2.0 - 0.5]))
    assert rollout.old_logprobs is old
    assert rollout.metrics["kl/ref"] == pytest.approx(0.25)
    assert rollout.metrics["reward/shaped"] == pytest.approx((1.25 + 1.5) / 2)
    assert rollout.metrics["gen/entropy"] == pytest.approx((1 + 3 + 2 + 2 + 2) / 5)


def test_step_metrics_reach_loggers_progress_bar_and_checkpoint_monitor(tiny_model, tiny_data, tmp_path):
    """Rows at Lightning's steps under log_every_n_steps, values in callback/logged/progress-bar metrics,
    and a ModelCheckpoint that monitors a per-step metric."""
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=4, objective=OBJECTIVES["rloo"]))
    args[args.index("--trainer.log_every_n_steps") + 1] = "3"
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "best", monitor="reward/raw", mode="max", save_top_k=1,
                                 every_n_train_steps=1)
    recorder = RecordRollouts()
    cli = fit_with_callbacks(args, recorder, checkpoint)
    trainer = cli.trainer
    last_reward = recorder.rollouts[-1].metrics["reward/raw"]
    assert float(trainer.callback_metrics["reward/raw"]) == pytest.approx(last_reward)
    assert float(trainer.logged_metrics["reward/raw"]) == pytest.approx(last_reward)
    assert trainer.progress_bar_metrics["reward"] == pytest.approx(last_reward)
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    logged_steps = [int(row["step"]) for row in rows if row.get("reward/raw")]
    assert logged_steps == [2]  # Lightning's rule for on_step values: every 3rd batch, at the batch's step
    by_step = {int(row["step"]): row for row in rows if row.get("reward/raw")}
    assert float(by_step[2]["reward/raw"]) == pytest.approx(recorder.rollouts[2].metrics["reward/raw"], abs=1e-6)
    best = max(r.metrics["reward/raw"] for r in recorder.rollouts)
    assert float(checkpoint.best_model_score) == pytest.approx(best, abs=1e-6)
    assert checkpoint.best_model_path
