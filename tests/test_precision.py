"""bf16 without losing updates: fp32 master weights under bf16-mixed (Lightning) and for bf16-stored weights
(``dtype: bfloat16`` / ``bf16-true``, through ``MasterWeightAdamW``), against full fp32 training."""

from __future__ import annotations

import csv

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_lightning.optim import MasterWeightAdamW
from runs import run_cli
from test_offline_end_to_end import offline_args, offline_files

LR = "3e-6"  # the README's real-model learning rate: updates far below bf16's spacing


def test_master_weights_follow_fp32_adamw_exactly():
    torch.manual_seed(0)
    start = torch.randn(64, 8)
    fp32 = start.clone().requires_grad_()
    low = start.bfloat16().float().clone().bfloat16().requires_grad_()
    reference = torch.optim.AdamW([fp32], lr=3e-6, weight_decay=0.01)
    mastered = MasterWeightAdamW([low], lr=3e-6, weight_decay=0.01)
    fp32.data.copy_(low.detach().float())  # the same starting values
    plain_low = low.detach().clone().requires_grad_()
    plain = torch.optim.AdamW([plain_low], lr=3e-6, weight_decay=0.01)
    for _ in range(4):
        grad = torch.randn(64, 8).bfloat16()  # representable in bf16: both see the same numbers
        fp32.grad, low.grad, plain_low.grad = grad.float(), grad.clone(), grad.clone()
        reference.step(), mastered.step(), plain.step()
    torch.testing.assert_close(mastered.masters[0][0], fp32.detach(), rtol=0, atol=0)
    assert (mastered.masters[0][0] != start.bfloat16().float()).float().mean() > 0.99
    assert (plain_low.detach() != start.bfloat16()).float().mean() < 0.1  # bf16 AdamW loses most updates


def test_master_weights_survive_a_state_dict_round_trip():
    low = torch.randn(16).bfloat16().requires_grad_()
    optimizer = MasterWeightAdamW([low], lr=1e-3)
    low.grad = torch.ones(16).bfloat16()
    optimizer.step()
    state = optimizer.state_dict()
    again = MasterWeightAdamW([low.detach().clone().requires_grad_()], lr=1e-3)
    again.load_state_dict(state)
    torch.testing.assert_close(again.masters[0][0], optimizer.masters[0][0], rtol=0, atol=0)
    assert again.inner.state_dict()["state"][0]["step"] == 1


def _changed_share(after: dict, before: dict) -> float:
    changed = sum(int((after[k].float() != before[k].float()).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def _losses(root) -> list[float]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    return [float(row["loss/sft"]) for row in csv.DictReader(open(path)) if row.get("loss/sft")]


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory):
    return offline_files(tmp_path_factory.mktemp("precision_data"))


def _train(tiny_model, sft_files, root, *extra):
    args = offline_args(tiny_model, sft_files, root, ["--model.objective", "rlhf_lightning.objectives.SFT"], "sft",
                        batches=4, batch_size=8, evaluate=False, extra=["--model.lr", LR, *extra])
    return run_cli(args)


def test_bf16_keeps_the_updates_of_fp32(tiny_model, sft_files, tmp_path):
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model).state_dict().items()}
    fp32 = _train(tiny_model, sft_files, tmp_path / "fp32")
    mixed = _train(tiny_model, sft_files, tmp_path / "mixed", "--trainer.precision", "bf16-mixed")
    stored = _train(tiny_model, sft_files, tmp_path / "bf16", "--model.policy.dtype", "bfloat16")
    reference_share = _changed_share(fp32.model.policy.state_dict(), before)
    assert reference_share > 0.5
    # bf16-mixed: the weights are fp32 (Lightning's master weights), the forward runs in bf16 autocast
    assert _changed_share(mixed.model.policy.state_dict(), before) >= 0.9 * reference_share
    # bf16-stored weights: the optimizer's fp32 masters carry the updates
    optimizer = stored.trainer.optimizers[0]
    assert isinstance(optimizer, MasterWeightAdamW)
    names = [name for name, p in stored.model.policy.named_parameters() if p.requires_grad]
    masters = dict(zip(names, optimizer.masters[0]))
    assert _changed_share(masters, {k: before[k] for k in names}) >= 0.9 * _changed_share(
        {k: fp32.model.policy.state_dict()[k] for k in names}, {k: before[k] for k in names})
    # the loss curves agree within bf16's resolution (its relative spacing is 2^-8 ≈ 0.4 %)
    for run in ("mixed", "bf16"):
        for a, b in zip(_losses(tmp_path / "fp32"), _losses(tmp_path / run)):
            assert b == pytest.approx(a, rel=0.02), (run, a, b)
