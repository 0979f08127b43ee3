"""A non-finite reward, loss or gradient stops the run with one message, before it reaches the weights:
the checkpoints written before the stop stay finite and nothing is exported from the broken state."""

from __future__ import annotations

import math

import pytest
import torch

import tiny
from rlhf_lightning.cli import main
from rlhf_lightning.guards import (DivergenceLimits, DivergenceMonitor, PolicyDiverged, TrainingDiverged,
                                   clip_gradient_norm, require_finite)
from runs import tiny_run_args, without_evaluation


def test_require_finite_counts_what_is_wrong():
    require_finite("reward", torch.tensor([0.0, 1.0]), step=1)
    with pytest.raises(TrainingDiverged, match=r"reward is not finite at rollout batch 7 \(1 NaN and 1 infinite of 3"):
        require_finite("reward", torch.tensor([float("nan"), float("inf"), 0.0]), step=7)


def test_counts_are_summed_over_processes():
    """A rank whose own values are finite still stops when another rank's are not (summed counts)."""
    other_rank = torch.tensor([1.0, 0.0, 2.0])  # nan, inf, numel on the other process
    with pytest.raises(TrainingDiverged, match="1 NaN and 0 infinite of 4 values"):
        require_finite("loss", torch.tensor([0.5, 0.5]), step=2, reduce_sum=lambda counts: counts + other_rank)


def test_gradient_norm():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert float(clip_gradient_norm([a, b], None)) == pytest.approx(5.0)
    assert a.grad.tolist() == [3.0, 0.0]  # no max_norm: not clipped
    assert float(clip_gradient_norm([a, b], 1.0)) == pytest.approx(5.0)  # the norm before clipping
    assert a.grad.tolist() == pytest.approx([0.6, 0.0], abs=1e-5) and b.grad.tolist() == pytest.approx([0.8], abs=1e-5)
    assert clip_gradient_norm([torch.nn.Parameter(torch.zeros(1))], 1.0) is None


def _checkpointing(root) -> list[str]:
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.every_n_train_steps", "2",
            "--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]


@pytest.mark.parametrize("value, quantity", [(float("nan"), "reward"), (float("inf"), "reward"),
                                             (1e30, "loss")])  # 1e30 is finite; REBEL's squared loss is not
def test_broken_reward_stops_the_run_before_the_weights_change(tiny_model, tiny_data, tmp_path, capsys, value,
                                                               quantity):
    tiny.FAULTY_REWARD.update(calls=0, from_call=3, value=value)  # rollout batches 1-2 fine, 3 broken
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=6,
                                            extra=_checkpointing(tmp_path)))
    args[args.index("tiny.good_word_reward")] = "tiny.faulty_reward"
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 3, err
    assert "Traceback" not in err
    (headline,) = [line for line in err.splitlines() if line.startswith("rlhf-lightning: training stopped:")]
    assert f"{quantity} is not finite at rollout batch 3" in headline, err
    assert "likely cause" in err
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4  # 2 rollout batches × 2 inner epochs: the good state
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    assert not (tmp_path / "policy").exists()  # no export from the stopped run


def test_divergence_monitor_acts_after_patience_batches():
    monitor = DivergenceMonitor(DivergenceLimits(max_kl=1.0, patience=2))
    monitor.observe(1, kl=2.0, entropy=None, vocab_size=10)  # one batch over the limit: not yet
    monitor.observe(2, kl=0.5, entropy=None, vocab_size=10)  # back under: the streak restarts
    monitor.observe(3, kl=2.0, entropy=None, vocab_size=10)
    with pytest.raises(PolicyDiverged, match=r"rollout batch 4: KL to the reference 3 nats .*> max_kl 1.0"):
        monitor.observe(4, kl=3.0, entropy=None, vocab_size=10)


def test_entropy_limit_needs_the_policy_to_have_started_below_it():
    """A random model starts near uniform: that is not a collapse. A trained one that climbs there is."""
    limits = DivergenceLimits(max_kl=None, uniform_entropy=0.95, patience=1)
    near_uniform = 0.99 * math.log(10)
    DivergenceMonitor(limits).observe(1, kl=0.0, entropy=near_uniform, vocab_size=10)  # started there: fine
    monitor = DivergenceMonitor(limits)
    monitor.observe(1, kl=0.0, entropy=0.5, vocab_size=10)
    with pytest.raises(PolicyDiverged, match="samples nearly uniformly"):
        monitor.observe(2, kl=0.0, entropy=near_uniform, vocab_size=10)


def test_warn_instead_of_stop():
    monitor = DivergenceMonitor(DivergenceLimits(max_kl=1.0, patience=1, action="warn"))
    with pytest.warns(UserWarning, match="diverged at rollout batch 1"):
        monitor.observe(1, kl=5.0, entropy=None, vocab_size=10)


@pytest.mark.parametrize("field, value, text", [("max_kl", float("nan"), "finite"), ("max_kl", -1.0, "> 0"),
                                                ("uniform_entropy", 1.5, "(0, 1]"), ("patience", 0, "≥ 1")])
def test_bad_limits_are_recipe_errors(field, value, text):
    (problem,) = DivergenceLimits(**{field: value}).problems()
    assert problem.field == f"model.init_args.divergence.{field}" and text in str(problem)


def test_a_run_away_policy_stops_the_run(tiny_model, tiny_data, tmp_path, capsys):
    """A KL limit the tiny run's high learning rate crosses: one message naming the batch, exit code 3."""
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8, lr=3e-2,
                                            extra=["--model.divergence.max_kl", "0.5",
                                                   "--model.divergence.patience", "1"]))
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 3 and "Traceback" not in err, err
    assert "rlhf-lightning: training stopped: the policy diverged at rollout batch" in err
    assert "KL to the reference" in err and "model.init_args.divergence" in err
