"""The guards' parts: finiteness counts over processes, the gradient norm, the divergence monitor and its
limits (the runs they stop: tests/fuzz/test_fuzz_numerics.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lightning.guards import (DivergenceLimits, DivergenceMonitor, PolicyDiverged, TrainingDiverged,
                                   clip_gradient_norm, require_finite)


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


def test_zero_gradient_streak_acts_at_its_limit():
    monitor = DivergenceMonitor(DivergenceLimits(zero_gradient_steps=3))
    for norm in (0.0, None, 0.5, 0.0, 0.0):  # a non-zero norm restarts the count
        monitor.observe_gradient(1, norm)
    with pytest.raises(PolicyDiverged, match="gradient norm was 0 for 3 optimizer steps in a row"):
        monitor.observe_gradient(2, 0.0)
