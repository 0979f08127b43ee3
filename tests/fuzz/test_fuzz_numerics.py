"""Fuzz: numbers that go wrong during training, from the reward source, a user's objective or the optimizer.

Each run has checkpoints every 2 optimizer steps and an export callback. A non-finite value, or a policy
beyond its divergence limits, stops the run with exit code 3 and one message naming the rollout batch and
the quantity; every checkpoint left is finite and loads, nothing is exported from the broken state, and the
folder holds no lock or temp file. A user's objective or reward function that returns the wrong kind of
value is a recipe error (exit code 2) naming it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from faults import LEFTOVERS, checkpointing, expect_exit
from rlhf_lightning.cli import main
from runs import tiny_run_args, without_evaluation

EXPORT = ["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]


def _args(model: Path, data: dict, root: Path, extra: list[str], batches: int = 6, lr: float = 3e-3) -> list[str]:
    return without_evaluation(tiny_run_args(model, data, root, batches=batches, lr=lr,
                                            extra=checkpointing(root) + EXPORT + extra))


def _reward(name: str) -> list[str]:
    return ["--model.reward.function", name]


def _objective(name: str) -> list[str]:
    return ["--model.objective", name, "--model.objective.inner_epochs", "2"]


def assert_stopped_cleanly(root: Path) -> None:
    """Every checkpoint left loads and is finite; no export; no lock, temp file or replaced outputs."""
    for path in sorted((root / "checkpoints").glob("*.ckpt")):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(value).all() for value in state.values()), path
    assert not (root / "policy").exists()
    assert not [p for pattern in LEFTOVERS for p in root.glob(pattern)]


@pytest.fixture
def faulty_from_batch_3():
    def arm(value: float) -> list[str]:
        tiny.FAULTY_REWARD.update(calls=0, from_call=3, value=value)
        return _reward("tiny.faulty_reward")
    return arm


# name → (extra arguments, the text of the one message); all stop with exit code 3
STOPS = {
    "NaN reward from batch 3": (lambda arm: arm(float("nan")), "reward is not finite at rollout batch 3"),
    "infinite reward from batch 3": (lambda arm: arm(float("inf")), "reward is not finite at rollout batch 3"),
    "one reward of -inf": (lambda arm: _reward("fault_code.minus_infinity_once"), "reward is not finite at rollout "
                                                                                  "batch 1 (0 NaN and 1 infinite"),
    "reward of 1e30 (squared loss overflows)": (lambda arm: arm(1e30), "loss is not finite at rollout batch 3"),
    "kl_coef of 1e30": (lambda arm: ["--rollout.kl_coef", "1e30"], "is not finite at rollout batch 2"),
    "reward function raises": (lambda arm: _reward("fault_code.judge_is_down"),
                               "the reward function 'fault_code.judge_is_down' raised ConnectionError: the judge "
                               "server is down (at "),
    "reward function raises at batch 3": (lambda arm: _reward("fault_code.fails_on_third_call"),
                                          "raised KeyError: 'missing score for response'"),
    "objective divides by zero": (lambda arm: _objective("fault_code.NaNLoss"), "loss is not finite at rollout batch 1"),
    "gradient overflows, loss finite": (lambda arm: _objective("fault_code.InfiniteGradient"),
                                        "gradient norm is not finite at rollout batch 1"),
    "constant reward: no gradient": (lambda arm: _reward("fault_code.constant") + [
        "--model.divergence.zero_gradient_steps", "4"], "training stalled at rollout batch 2: the gradient norm was 0 "
                                                        "for 4 optimizer steps"),
    "KL beyond its limit": (lambda arm: ["--model.lr", "3e-2", "--model.divergence.max_kl", "0.5",
                                         "--model.divergence.patience", "1"], "KL to the reference"),
}


@pytest.mark.parametrize("case", list(STOPS))
def test_a_broken_number_stops_the_run_cleanly(case, tiny_model, tiny_data, tmp_path, capsys, faulty_from_batch_3):
    extra, text = STOPS[case]
    root = tmp_path / "run"
    message = expect_exit(_args(tiny_model, tiny_data, root, extra(faulty_from_batch_3)), capsys, code=3)
    assert text in message, message
    assert "likely cause" in message or "fix:" in message, message
    assert_stopped_cleanly(root)


def test_the_checkpoints_before_the_stop_are_the_good_ones(tiny_model, tiny_data, tmp_path, capsys,
                                                         faulty_from_batch_3):
    """NaN from batch 3 of 6: ``last.ckpt`` holds step 4 (2 batches × 2 inner epochs), and resumes."""
    root = tmp_path / "run"
    expect_exit(_args(tiny_model, tiny_data, root, faulty_from_batch_3(float("nan"))), capsys, code=3)
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    tiny.FAULTY_REWARD.update(calls=0, from_call=10**9)  # the reward is fixed: the run resumes and finishes
    main(_args(tiny_model, tiny_data, root, _reward("tiny.faulty_reward")) + ["--ckpt_path", "last"])
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    assert (root / "policy" / "model.safetensors").exists()


def test_a_judge_that_returns_nan_stops_the_evaluation(tiny_model, tiny_data, tmp_path, capsys):
    root = tmp_path / "run"
    judge = ["--trainer.callbacks.judge", "rlhf_lightning.rewards.FunctionReward",
             "--trainer.callbacks.judge.function", "fault_code.all_nan"]
    message = expect_exit(tiny_run_args(tiny_model, tiny_data, root, batches=2, extra=judge), capsys, code=3)
    assert "evaluation score is not finite" in message and "the evaluation was not recorded" in message, message
    assert not (root / "eval_history.json").exists()


def _peaked_model(tiny_model: Path, root: Path) -> Path:
    """The tiny model with its output layer × 4: a policy that starts well below uniform (entropy 0.77 ln |V|),
    as a fine-tuned checkpoint does."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(root)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model / name).exists():
            (root / name).write_bytes((tiny_model / name).read_bytes())
    return root


def test_lr_1e6_drives_a_trained_policy_to_noise_and_stops(tiny_model, tiny_data, tmp_path, capsys):
    model = _peaked_model(tiny_model, tmp_path / "peaked")
    root = tmp_path / "run"
    args = _args(model, tiny_data, root, ["--data.tokenizer", str(model)], lr=1e6)
    message = expect_exit(args, capsys, code=3)
    assert "the policy diverged at rollout batch" in message and "samples nearly uniformly" in message, message
    assert not (root / "policy").exists()


@pytest.mark.parametrize("case, extra, text", [
    ("divergence warns", ["--model.lr", "3e-2", "--model.divergence.max_kl", "0.5", "--model.divergence.patience", "1",
                          "--model.divergence.action", "warn"], "the policy diverged at rollout batch"),
    ("stall warns", _reward("fault_code.constant") + ["--model.divergence.zero_gradient_steps", "4",
                                                       "--model.divergence.action", "warn"], "training stalled"),
])
def test_warn_instead_of_stop_finishes_the_run(case, extra, text, tiny_model, tiny_data, tmp_path):
    root = tmp_path / "run"
    with pytest.warns(UserWarning, match=text):
        main(_args(tiny_model, tiny_data, root, extra))
    assert (root / "policy" / "model.safetensors").exists()


# a user's code that returns the wrong kind of value: a recipe error naming it (exit code 2)
WRONG_VALUES = {
    "reward of the wrong length": (_reward("fault_code.short"), "'fault_code.short' returned 1 rewards for 16"),
    "reward of strings": (_reward("fault_code.strings"), "must return one number per response, got str values"),
    "reward of None values": (_reward("fault_code.nones"), "got NoneType values"),
    "reward of one number": (_reward("fault_code.one_number"), "returned 1 rewards for 16 responses"),
    "reward from a generator": (_reward("fault_code.generator"), "got generator values"),
    "reward of two numbers per response": (_reward("fault_code.two_per_response"), "returned 32 rewards for 16"),
    "reward function without a responses parameter": (_reward("fault_code.takes_only_prompts"),
                                                      "takes (prompts), but a reward function is called as "
                                                      "fn(prompts, responses, **columns)"),
    "objective returns a float": (_objective("fault_code.FloatLoss"), "FloatLoss.loss returned float, not a tensor"),
    "objective returns a loss per token": (_objective("fault_code.PerTokenLoss"), "not a scalar"),
    "objective returns a detached loss": (_objective("fault_code.DetachedLoss"), "does not depend on the policy"),
}


@pytest.mark.parametrize("case", list(WRONG_VALUES))
def test_a_wrong_kind_of_value_is_one_message(case, tiny_model, tiny_data, tmp_path, capsys):
    extra, text = WRONG_VALUES[case]
    root = tmp_path / "run"
    message = expect_exit(_args(tiny_model, tiny_data, root, extra), capsys)
    assert text in message, message
    assert_stopped_cleanly(root)

