"""A careless user's code, named by ``class_path``/``function`` in the fuzz cases: reward functions and
objectives that raise, return the wrong thing, or blow up the numbers."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from rlhf_lightning.objectives.rebel import REBEL
from tiny import good_word_reward


def judge_is_down(prompts, responses):
    raise ConnectionError("the judge server is down")


def fails_on_third_call(prompts, responses, _calls=[0]):  # noqa: B006 (a counter kept between calls)
    _calls[0] += 1
    if _calls[0] >= 3:
        raise KeyError("missing score for response")
    return good_word_reward(prompts, responses)


def takes_only_prompts(prompts):
    return [0.0] * len(prompts)


def constant(prompts, responses):
    return [1.0] * len(responses)


def nones(prompts, responses):
    return [None] * len(responses)


def one_number(prompts, responses):
    return 1.0


def generator(prompts, responses):
    return (1.0 for _ in responses)


def two_per_response(prompts, responses):
    return torch.ones(len(responses), 2)


def short(prompts, responses):
    return [0.0]


def strings(prompts, responses):
    return ["x"] * len(responses)


def minus_infinity_once(prompts, responses):
    return [-float("inf")] + [0.0] * (len(responses) - 1)


class FloatLoss(REBEL):
    """Returns the loss as a Python float."""

    def loss(self, logprobs, rollout, **outputs):
        loss, metrics = super().loss(logprobs, rollout, **outputs)
        return float(loss), metrics


class PerTokenLoss(REBEL):
    """Forgets to reduce: one loss per token."""

    def loss(self, logprobs, rollout, **outputs):
        _, metrics = super().loss(logprobs, rollout, **outputs)
        return -logprobs, metrics


class DetachedLoss(REBEL):
    """Detaches the loss (trains nothing)."""

    def loss(self, logprobs, rollout, **outputs):
        loss, metrics = super().loss(logprobs, rollout, **outputs)
        return loss.detach(), metrics


class NaNLoss(REBEL):
    """Divides by a count that is 0."""

    def loss(self, logprobs, rollout, **outputs):
        loss, metrics = super().loss(logprobs, rollout, **outputs)
        return loss * 0.0 / 0.0, metrics


class InfiniteGradient(REBEL):
    """A finite loss whose gradient overflows (a backward hook scales it to infinity)."""

    def loss(self, logprobs, rollout, **outputs):
        loss, metrics = super().loss(logprobs, rollout, **outputs)
        if logprobs.requires_grad:
            logprobs.register_hook(lambda grad: grad * float("inf"))
        return loss, metrics


class GrowingCheckpoint(Callback):
    """From the second checkpoint on, adds ``extra_mb`` of data to it (a second checkpoint that no longer fits
    where the first one did)."""

    def __init__(self, extra_mb: float = 2.0) -> None:
        self.extra_mb, self.saves = extra_mb, 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saves += 1
        if self.saves >= 2:
            checkpoint["padding"] = torch.zeros(int(self.extra_mb * 2**20 / 4))



def all_nan(prompts, responses):
    return [float("nan")] * len(responses)
