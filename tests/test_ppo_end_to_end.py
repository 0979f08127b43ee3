"""End-to-end PPO runs on the tiny model: learning, the missing-critic error, PPO-ptx, adaptive KL."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from transformers import AutoModelForCausalLM

from rlhf_lightning.callbacks import Rollout
from rlhf_lightning.cli import main
from rlhf_lightning.data.prompts import PretrainStream, PromptDataModule
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.logprobs import sequence_nll
from runs import fit_with_callbacks, run_cli, tiny_run_args

PPO_CLASS = "rlhf_lightning.objectives.ppo.PPO"


def ppo_args(*options: str) -> list[str]:
    return ["--model.objective", PPO_CLASS, "--model.objective.inner_epochs", "2", *options]


def metric_rows(root: Path) -> list[dict]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def train_rows(root: Path) -> list[dict]:
    """One row per logged training step (the rows that carry the rollout's reward)."""
    return [row for row in metric_rows(root) if row.get("reward/raw")]




# ---------------------------------------------------------------------------- learning
def test_ppo_learns_the_reward(tiny_model, tiny_data, tmp_path):
    """A fresh value head on the policy's body as critic; 2 epochs × 8 rollout batches of 8 prompts.

    The critic learns faster than the policy (critic_lr 1e-2, vf_coef 0.5): with a random value head
    and 8 samples per batch the paper's 0.1 leaves the advantages noisy for too long on this task.
    """
    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8, lr=3e-3,
                         objective=ppo_args("--model.objective.vf_coef", "0.5"),
                         extra=["--model.critic.path", str(tiny_model), "--model.critic_lr", "1e-2"])
    args[args.index("--trainer.max_epochs") + 1] = "2"
    cli = run_cli(args)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == "ppo"
    assert summary["sft_reward"] < 0.3
    assert summary["reward"] > summary["sft_reward"] + 0.5
    assert summary["win_rate_vs_sft"] >= 0.75
    assert cli.trainer.global_step == 16 * 2  # rollout batches × inner epochs (one minibatch)
    # the critic is trained, in its own param group at critic_lr
    groups = cli.trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["initial_lr"] == pytest.approx(1e-2)
    rows = train_rows(tmp_path)
    assert len(rows) == 16
    for key in ("loss/policy", "loss/value", "loss/total", "ppo/clip_fraction", "ppo/approx_kl",
                "value/explained_variance", "value/mean", "ppo/return_mean", "ppo/advantage_std", "kl/coef"):
        assert all(row.get(key) and math.isfinite(float(row[key])) for row in rows), key
    assert "loss/entropy" not in rows[0] or not rows[0]["loss/entropy"]  # entropy_coef 0: not computed


def test_ppo_without_a_critic_is_a_recipe_error(tiny_model, tiny_data, tmp_path, capsys):
    """A FunctionReward gives no reward model to start the critic from: exit code 2, naming the key."""
    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=1, objective=ppo_args())
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "model.init_args.critic" in capsys.readouterr().err
    with pytest.raises(RecipeError, match=r"model\.init_args\.critic"):
        run_cli(args)


# ---------------------------------------------------------------------------- PPO-ptx
PRETRAIN_TEXTS = ["moon moon rock", "rock moon", "moon tree moon rock", "red blue moon", "moon rock rock moon"]


def write_pretrain_file(root: Path, column: str = "text") -> Path:
    path = root / "pretrain.jsonl"
    path.write_text("".join(json.dumps({column: text}) + "\n" for text in PRETRAIN_TEXTS))
    return path


class RecordPretrain(Callback):
    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch["pretrain"]["input_ids"].clone())


def test_ppo_ptx_logs_the_lm_loss_and_trains_on_the_pretraining_text(tiny_model, tiny_data, tmp_path):
    pretrain = write_pretrain_file(tmp_path)
    args = tiny_run_args(tiny_model, tiny_data, tmp_path / "run", batches=3,
                         objective=ppo_args("--model.objective.ptx_coef", "5.0"),
                         extra=["--model.critic.path", str(tiny_model), "--data.pretrain_file", str(pretrain),
                                "--data.pretrain_batch_size", "4"])
    recorder = RecordPretrain()
    cli = fit_with_callbacks(args, recorder)

    rows = train_rows(tmp_path / "run")
    assert len(rows) == 3
    ptx = [float(row["loss/ptx"]) for row in rows]
    assert all(math.isfinite(v) and v > 0 for v in ptx)
    # loss/total includes ptx_coef × loss/ptx on top of the PPO terms
    for row in rows:
        ppo_total = float(row["loss/policy"]) + 0.1 * float(row["loss/value"])
        assert float(row["loss/total"]) == pytest.approx(ppo_total + 5.0 * float(row["loss/ptx"]), rel=1e-4, abs=1e-5)

    # one pretraining batch per training batch, in the data module's seeded stream (no read-ahead draws)
    datamodule = cli.datamodule
    assert datamodule.state_dict()["pretrain_draws"] == 3
    stream = PretrainStream(len(datamodule.pretrain_rows), 4, seed=0)
    for seen in recorder.batches:
        expected = datamodule.collate_pretrain([datamodule.pretrain_rows[i] for i in stream.next()])["input_ids"]
        assert torch.equal(seen, expected)

    # the LM term pulls the policy toward the pretraining text
    text = datamodule.collate_pretrain(datamodule.pretrain_rows)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        before = sequence_nll(initial, text["input_ids"], text["attention_mask"]).item()
        after = sequence_nll(cli.model.policy, text["input_ids"], text["attention_mask"]).item()
    assert after < before - 0.1


def test_ptx_without_pretraining_data_names_the_data_key(tiny_model, tiny_data, tmp_path):
    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=1,
                         objective=ppo_args("--model.objective.ptx_coef", "1.0"),
                         extra=["--model.critic.path", str(tiny_model)])
    with pytest.raises(RecipeError, match=r"data\.init_args\.pretrain_file"):
        run_cli(args)


def test_pretraining_batches_are_right_padded_seeded_and_resumable(tiny_model, tiny_data, tmp_path):
    pretrain = write_pretrain_file(tmp_path, column="body")
    datamodule = PromptDataModule(str(tiny_data["train"]), str(tiny_model), pretrain_file=str(pretrain),
                                  pretrain_column="body", pretrain_max_length=4, pretrain_batch_size=3, seed=5)
    datamodule.setup("fit")
    tokenizer = datamodule.tokenizer
    # EOS appended, then cut to pretrain_max_length
    for text, ids in zip(PRETRAIN_TEXTS, datamodule.pretrain_rows):
        assert ids == (tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])[:4]
    batch = datamodule.next_pretrain_batch()
    lengths = batch["attention_mask"].sum(-1)
    for row, length in zip(batch["attention_mask"], lengths.tolist()):
        assert row.tolist() == [1] * length + [0] * (row.numel() - length)  # right padding
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()

    # the stream visits every row once per pass, is seeded, and continues exactly after a reload
    stream = PretrainStream(5, 3, seed=5)
    draws = [stream.next() for _ in range(10)]  # 30 indices = 6 passes over 5 rows
    flat = [i for draw in draws for i in draw]
    for cycle in range(6):
        assert sorted(flat[cycle * 5:(cycle + 1) * 5]) == list(range(5))
    again = PretrainStream(5, 3, seed=5)
    assert [again.next() for _ in range(10)] == draws
    assert flat != [i for draw in (PretrainStream(5, 3, seed=6).next() for _ in range(10)) for i in draw]
    resumed = PromptDataModule(str(tiny_data["train"]), str(tiny_model), pretrain_file=str(pretrain),
                               pretrain_column="body", pretrain_batch_size=3, seed=5)
    resumed.setup("fit")
    resumed.load_state_dict({"pretrain_draws": 4})
    assert resumed.pretrain_stream().next() == draws[4]
    # two ranks take disjoint rows of the same sequence
    ranks = [PretrainStream(6, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    first = [ranks[0].next(), ranks[1].next()]
    assert sorted(first[0] + first[1]) == list(range(6))


def test_missing_pretrain_column_is_a_recipe_error(tiny_model, tiny_data, tmp_path):
    pretrain = write_pretrain_file(tmp_path, column="body")
    datamodule = PromptDataModule(str(tiny_data["train"]), str(tiny_model), pretrain_file=str(pretrain))
    with pytest.raises(RecipeError, match=r"data\.init_args\.pretrain_file.*'text'"):
        datamodule.setup("fit")


# ---------------------------------------------------------------------------- adaptive KL
@pytest.mark.parametrize("observed,clipped_error", [(0.3, 0.2), (0.12, 0.2), (0.11, 0.1), (0.09, -0.1),
                                                    (0.05, -0.2), (0.0, -0.2)])
def test_adaptive_kl_controller_step(observed, clipped_error):
    """Ziegler et al. (2019): β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon); target 0.1, n 8, horizon 100."""
    callback = Rollout(kl_coef=0.05, target_kl=0.1, kl_horizon=100)
    callback.update_kl_coef(observed, num_samples=8)
    assert callback.kl_coef == pytest.approx(0.05 * (1 + clipped_error * 8 / 100))
    fixed = Rollout(kl_coef=0.05)
    fixed.update_kl_coef(observed, num_samples=8)
    assert fixed.kl_coef == 0.05


def test_ppo_with_adaptive_kl_and_entropy_bonus(tiny_model, tiny_data, tmp_path):
    """kl/coef follows the controller from the logged per-batch KL; the entropy bonus reaches the loss."""
    target, horizon = 0.5, 64
    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=4,
                         objective=ppo_args("--model.objective.entropy_coef", "0.01"),
                         extra=["--model.critic.path", str(tiny_model)])
    args = args + ["--rollout.target_kl", str(target), "--rollout.kl_horizon", str(horizon)]
    cli = run_cli(args)
    (rollout_callback,) = [c for c in cli.trainer.callbacks if isinstance(c, Rollout)]
    assert rollout_callback.target_kl == target and rollout_callback.kl_horizon == horizon
    rows = train_rows(tmp_path)
    assert len(rows) == 4
    coefs = [float(row["kl/coef"]) for row in rows]
    assert coefs[0] == pytest.approx(0.05)
    for k in range(1, 4):
        error = min(max(float(rows[k - 1]["kl/ref"]) / target - 1, -0.2), 0.2)
        assert coefs[k] == pytest.approx(coefs[k - 1] * (1 + error * 8 / horizon), rel=1e-5)
    assert len(set(coefs)) == 4  # it moves every batch
    assert all(row.get("loss/entropy") and float(row["loss/entropy"]) > 0 for row in rows)


def test_sequence_nll_is_the_token_mean_cross_entropy_for_any_padding(tiny_model):
    """``sequence_nll`` = mean over predicted tokens of −ln softmax(logits)[next token], the same for
    right- and left-padded rows as for each row alone."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    rows = [[4, 5, 6, 1], [7, 8, 1]]
    with torch.no_grad():
        losses, count = 0.0, 0
        for ids in rows:
            logits = model(torch.tensor([ids])).logits[0]
            losses += torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
        right = sequence_nll(model, torch.tensor([rows[0], rows[1] + [0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
        left = sequence_nll(model, torch.tensor([rows[0], [0] + rows[1]]), torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]))
    assert right.item() == pytest.approx(losses / count, rel=1e-5)
    assert left.item() == pytest.approx(losses / count, rel=1e-5)
