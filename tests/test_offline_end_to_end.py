"""End-to-end offline runs through the CLI on the tiny model: each offline objective learns from tiny
SFT / preference / unpaired files, the precomputed reference matches the live one, and a trained
reward model exports and scores.

Prompts are ``say : <noun> <noun>``; good responses contain ``good``, bad ones ``bad``. The evaluation
judge is ``tiny.good_word_reward`` (share of ``good`` words), near 0 for the random tiny model.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Sequence

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from runs import run_cli
from tiny import WORDS

NOUNS = WORDS[4:10]  # cat dog sun moon tree rock
OTHERS = ["red", "blue", "cat", "dog", "sun", "moon"]


def _prompt(rng: random.Random) -> str:
    return f"say : {rng.choice(NOUNS)} {rng.choice(NOUNS)}"


def _response(rng: random.Random, word: str) -> str:
    """Three words, at least two of them ``word``."""
    words = [word, word, rng.choice([word] + OTHERS)]
    rng.shuffle(words)
    return " ".join(words)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def offline_files(root: Path, n_train: int = 64, n_val: int = 16, n_eval: int = 16) -> dict[str, str]:
    """SFT, preference, unpaired (KTO) and evaluation-prompt files (train + validation)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_val)):
        pairs = [{"prompt": _prompt(rng), "chosen": _response(rng, "good"), "rejected": _response(rng, "bad")}
                 for _ in range(n)]
        files[f"pairs_{split}"] = write_jsonl(root / f"pairs_{split}.jsonl", pairs)
        files[f"sft_{split}"] = write_jsonl(root / f"sft_{split}.jsonl",
                                            [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs])
        unpaired = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 == 0 else p["rejected"],
                     "label": i % 2 == 0} for i, p in enumerate(pairs)]
        files[f"unpaired_{split}"] = write_jsonl(root / f"unpaired_{split}.jsonl", unpaired)
    files["eval"] = write_jsonl(root / "eval.jsonl", [{"prompt": _prompt(rng), "reference": "good good good"}
                                                      for _ in range(n_eval)])
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    return offline_files(tmp_path_factory.mktemp("offline_data"))


DATA = {"pairs": "rlhf_lightning.data.PreferenceDataModule", "sft": "rlhf_lightning.data.SFTDataModule",
        "unpaired": "rlhf_lightning.data.UnpairedDataModule"}


def offline_args(model_dir: Path, files: dict, root: Path, objective: Sequence[str], kind: str = "pairs", *,
                 batches: int = 8, batch_size: int = 4, lr: float = 1e-2, evaluate: bool = True,
                 validation: bool = False, extra: Sequence[str] = ()) -> list[str]:
    args = [
        "fit", "--seed_everything", "0",
        "--model", "rlhf_lightning.RLHFModule", "--model.policy.path", str(model_dir), *objective,
        "--model.lr", str(lr), "--model.lr_schedule", "constant",
        "--data", DATA[kind], "--data.train_file", files[f"{kind}_train"], "--data.tokenizer", str(model_dir),
        "--data.batch_size", str(batch_size), "--data.eval_prompt_file", files["eval"],
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches),
        "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false",
    ]
    if validation:
        args += ["--data.validation_file", files[f"{kind}_validation"]]
    if evaluate:
        args += ["--trainer.callbacks+=rlhf_lightning.callbacks.WinRateEvaluation",
                 "--trainer.callbacks.judge", "rlhf_lightning.rewards.FunctionReward",
                 "--trainer.callbacks.judge.function", "tiny.good_word_reward",
                 "--trainer.callbacks.max_new_tokens", "4"]
    return args + list(extra)


def summary(root: Path) -> dict:
    return json.loads((root / "summary.json").read_text())


def logged_rows(root: Path) -> list[dict]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def first_logged(root: Path, key: str) -> float:
    return next(float(row[key]) for row in logged_rows(root) if row.get(key))


def assert_learned(root: Path, margin: float = 0.5) -> dict:
    result = summary(root)
    assert result["sft_reward"] < 0.3, result
    assert result["reward"] > result["sft_reward"] + margin, result
    assert result["win_rate_vs_sft"] >= 0.75, result
    return result


OBJECTIVES = {
    "dpo": ["--model.objective", "rlhf_lightning.objectives.DPO", "--model.objective.beta", "0.1"],
    "ipo": ["--model.objective", "rlhf_lightning.objectives.IPO"],
    "slic": ["--model.objective", "rlhf_lightning.objectives.SLiC"],
    "simpo": ["--model.objective", "rlhf_lightning.objectives.SimPO"],
    "orpo": ["--model.objective", "rlhf_lightning.objectives.ORPO"],
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_preference_objective_learns(tiny_model, files, tmp_path, name):
    cli = run_cli(offline_args(tiny_model, files, tmp_path, OBJECTIVES[name]))
    result = assert_learned(tmp_path)
    assert result["objective"] == name
    assert cli.trainer.global_step == 8


def test_kto_learns(tiny_model, files, tmp_path):
    run_cli(offline_args(tiny_model, files, tmp_path, ["--model.objective", "rlhf_lightning.objectives.KTO"],
                         kind="unpaired"))
    assert summary(tmp_path)["objective"] == "kto"
    assert_learned(tmp_path)


# ---------------------------------------------------------------------------- SFT
def heldout_nll(model, datamodule) -> float:
    """Mean response-token NLL of the validation rows (unpacked layout)."""
    from rlhf_lightning.data import SFTDataModule
    from rlhf_lightning.logprobs import response_logprobs
    from rlhf_lightning.objectives import SFT

    plain = SFTDataModule(datamodule.validation_file, datamodule.tokenizer_path, batch_size=64)
    plain.setup("fit")
    batch = plain.collate(plain.splits["train"])
    with torch.no_grad():
        logprobs, _ = response_logprobs(model.eval(), batch.input_ids, batch.attention_mask, batch.prompt_length)
        return float(SFT().loss(logprobs, batch)[0])


@pytest.mark.parametrize("packing", [False, True])
def test_sft_learns(tiny_model, files, tmp_path, packing):
    """Held-out NLL falls, the logged training loss falls, and greedy responses turn to ``good``."""
    from transformers import AutoModelForCausalLM

    extra = ["--data.packing", "true", "--data.max_length", "24"] if packing else []
    cli = run_cli(offline_args(tiny_model, files, tmp_path, ["--model.objective", "rlhf_lightning.objectives.SFT"],
                               kind="sft", validation=True, batches=8, extra=extra))
    assert summary(tmp_path)["objective"] == "sft"
    start = heldout_nll(AutoModelForCausalLM.from_pretrained(tiny_model), cli.datamodule)
    end = heldout_nll(cli.model.policy, cli.datamodule)
    assert end < start - 0.5, (start, end)
    losses = [float(row["loss/sft"]) for row in logged_rows(tmp_path) if row.get("loss/sft")]
    rows = len(cli.datamodule.splits["train"])
    assert len(losses) == min(8, rows // 4) and losses[-1] < losses[0] - 0.7, losses
    if packing:  # several examples per row
        assert rows < 64 // 2
        tokens = [float(row["sft/tokens"]) for row in logged_rows(tmp_path) if row.get("sft/tokens")]
        assert min(tokens) > 4 * 4 + 8  # 4 unpacked rows hold at most 4 × 4 response tokens
    else:  # validation NLL (logged by the module) matches the hand-made one on the final policy
        assert float(cli.trainer.callback_metrics["val/loss/sft"]) == pytest.approx(end, rel=1e-4)
    assert_learned(tmp_path)


# ---------------------------------------------------------------------------- reward model
def test_reward_model_ranks_heldout_pairs_and_exports(tiny_model, files, tmp_path):
    from rlhf_lightning.rewards import RewardModel

    run_cli(offline_args(tiny_model, files, tmp_path, ["--model.objective", "rlhf_lightning.objectives.BradleyTerry"],
                         evaluate=False, validation=True, batches=16, lr=3e-3,
                         extra=["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]))
    result = summary(tmp_path)
    assert result["objective"] == "bradleyterry"
    assert result["rm_accuracy"] >= 0.9, result
    exported = Path(result["policy_dir"])
    assert exported == tmp_path / "policy" and (exported / "model.safetensors").exists()
    pairs = [json.loads(line) for line in Path(files["pairs_validation"]).read_text().splitlines()]
    reward = RewardModel(str(exported))
    prompts = [p["prompt"] for p in pairs]
    chosen = reward.score(prompts, [p["chosen"] for p in pairs])
    rejected = reward.score(prompts, [p["rejected"] for p in pairs])
    assert chosen.shape == rejected.shape == (len(pairs),)
    assert (chosen > rejected).float().mean() >= 0.9


# ---------------------------------------------------------------------------- precomputed reference
@pytest.fixture(scope="module")
def other_reference(tmp_path_factory) -> Path:
    """A different random model as the reference, so that the loss of step 1 depends on it."""
    from tiny import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("reference") / "model", seed=1)


@pytest.mark.parametrize("objective", [["--model.objective", "rlhf_lightning.objectives.DPO"],
                                       ["--model.objective", "rlhf_lightning.objectives.IPO"]])
def test_precomputed_reference_gives_the_same_losses(tiny_model, other_reference, files, tmp_path, objective):
    name = objective[1].rsplit(".", 1)[-1].lower()
    losses = {}
    for precompute in ("false", "true"):
        root = tmp_path / precompute
        cli = run_cli(offline_args(tiny_model, files, root, objective, evaluate=False, batches=3,
                                   extra=["--model.reference.path", str(other_reference),
                                          "--model.precompute_reference", precompute]))
        rows = logged_rows(root)
        losses[precompute] = [float(row[f"loss/{name}"]) for row in rows if row.get(f"loss/{name}")]
        margins = [float(row[f"{name}/margin"]) for row in rows if row.get(f"{name}/margin")]
        assert abs(margins[0]) > 0.05, margins  # step 1 already depends on the (different) reference
        if precompute == "true":
            assert cli.model._reference_cache is not None and len(cli.model._reference_cache.rows) == 2 * 64
            assert cli.model.reference is None  # freed once the cache is built
    assert len(losses["false"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5, abs=1e-6)


def test_precomputed_reference_lookup_matches_live(tiny_model, files, tmp_path):
    """The cache holds exactly the live reference log-probs of each (row, position)."""
    cli = run_cli(offline_args(tiny_model, files, tmp_path, OBJECTIVES["dpo"], evaluate=True, batches=1,
                               extra=["--model.precompute_reference", "true"]))
    module, datamodule = cli.model, cli.datamodule
    assert module.reference is not None  # kept: the evaluation compares with the starting policy
    batch = datamodule.collate(datamodule.splits["train"][5:9])
    cached = module._reference_cache.lookup(batch)
    live = module.reference_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_length)
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)


def test_kto_with_precomputed_reference_is_a_clear_error(tiny_model, files, tmp_path):
    with pytest.raises(RecipeError, match="model.init_args.precompute_reference") as error:
        run_cli(offline_args(tiny_model, files, tmp_path, ["--model.objective", "rlhf_lightning.objectives.KTO"],
                             kind="unpaired", evaluate=False, batches=1,
                             extra=["--model.precompute_reference", "true"]))
    assert "precompute_reference: false" in str(error.value)
