"""Quiet, informative runs: the known irrelevant warnings are hidden at their source (and nothing else), progress
outside a terminal is plain lines (no ``\\r`` updates), and the embedded task's build says what it does."""

from __future__ import annotations

import io
import logging
import warnings

import pytest
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from tiny import make_tokenizer

from rlhf_lightning import progress, quiet
from rlhf_lightning.models import load_tokenizer
from rlhf_lightning.progress import DefaultProgressBar, LineProgress, LineProgressBar, progress_bar
from rlhf_lightning.tasks.summarize import build_task

LITLOGGER_TIP = ("💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                 "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and "
                 "artifacts automatically to the Lightning Experiments platform.")
LITMODELS_TIP = ("💡 Tip: For seamless cloud uploads and versioning, try installing "
                 "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint, which syncs "
                 "automatically with the Lightning model registry.")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def silenced():
    """silence_known_noise() for one test: its warning filters go with the test (pytest restores them), its
    logging filters and the third-party bar switch are undone here."""
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    quiet.silence_known_noise()
    yield
    for name in (*quiet.LIGHTNING_INFO_LOGGERS, "DeepSpeed"):
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, quiet.DropMessages)]:
            logger.removeFilter(f)
    if bars:
        transformers_logging.enable_progress_bar()


class _TrainOnly(LightningDataModule):
    def __init__(self, batches: int = 4) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return DataLoader(RandomDataset(32, self.batches), batch_size=1)


def _trainer(**kwargs) -> Trainer:
    options = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                   accelerator="cpu", devices=1)
    return Trainer(**{**options, **kwargs})


# ------------------------------------------------------------------ warnings and log lines
def test_known_warnings_are_hidden_and_others_still_show(silenced):
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as in a plain run: each warning once per place
        quiet.silence_known_noise()       # (its filters go first, as main() puts them)
        _tree_flatten(torch.zeros(1))     # Lightning's use of torch's deprecated LeafSpec
        _trainer(max_steps=1, enable_progress_bar=False).fit(BoringModel(), datamodule=_TrainOnly())
        rank_zero_warn("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.",
                       category=PossibleUserWarning)
        warnings.warn("an unrelated FutureWarning", FutureWarning)
        warnings.warn("an unrelated warning")
    shown = [str(w.message) for w in caught]
    assert not [m for m in shown if "LeafSpec" in m or "`validation_step` but have no" in m], shown
    for message in ("an unrelated FutureWarning", "an unrelated warning", "have no `validation_step`"):
        assert sum(message in m for m in shown) == 1, (message, shown)


def test_lightning_tips_are_dropped_other_info_lines_kept(silenced):
    from lightning_utilities.core import rank_zero

    records = _Records()
    rank_zero.log.addHandler(records)  # the logger Lightning's rank_zero_info writes to
    try:
        for line in (LITLOGGER_TIP, LITMODELS_TIP, "GPU available: False, used: False", "Tip: something else"):
            rank_zero_info(line)
    finally:
        rank_zero.log.removeHandler(records)
    assert records.messages == ["GPU available: False, used: False", "Tip: something else"]


def test_deepspeed_cpu_line_dropped_other_deepspeed_warnings_kept(silenced):
    logger, records = logging.getLogger("DeepSpeed"), _Records()
    logger.addHandler(records)
    try:
        logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        logger.warning("zero stage 3 offload is slow")
    finally:
        logger.removeHandler(records)
    assert records.messages == ["zero stage 3 offload is slow"]


def test_wandb_anonymous_warning_hidden_unless_the_user_set_it(silenced, monkeypatch, capsys):
    import wandb
    from wandb.errors import term

    monkeypatch.setattr(term, "_silent", False)
    monkeypatch.setattr(term, "_show_warnings", True)
    wandb.termwarn(quiet.WANDB_ANONYMOUS, repeat=False)  # what wandb.init prints for Lightning's anonymous=None
    wandb.termwarn("an unrelated wandb warning (test_quiet_runs)", repeat=False)
    err = capsys.readouterr().err
    assert "anonymous setting" not in err and "an unrelated wandb warning" in err
    term._printed_messages.discard(f"{term.WARN_STRING} {quiet.WANDB_ANONYMOUS}")
    monkeypatch.setenv("WANDB_ANONYMOUS", "allow")  # the user's own setting: its warning stays
    quiet.silence_known_noise()
    assert f"{term.WARN_STRING} {quiet.WANDB_ANONYMOUS}" not in term._printed_messages


def test_missing_pad_token_warned_once_per_tokenizer_in_a_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for path in (first, second):
        make_tokenizer(with_pad=False).save_pretrained(path)
    quiet.silence_known_noise()  # a new run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in (first, first, second, first):  # the data module and the module load the same tokenizer
            assert load_tokenizer(str(path), "data.init_args.tokenizer").pad_token == "<eos>"
        quiet.silence_known_noise()  # the next run warns again
        load_tokenizer(str(first), "model.init_args.policy.path")
    pad = [str(w.message) for w in caught if "has no pad token" in str(w.message)]
    assert [str(first) in m for m in pad] == [True, False, True], pad


# ------------------------------------------------------------------ progress as lines
def test_line_progress_has_no_carriage_returns_and_bounded_lines():
    out = io.StringIO()
    bar = LineProgress(range(20000), desc="SFT warm start", unit="steps", file=out)
    for step in bar:
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10  # 10%, ..., 90% and the last line (a line a minute at most as well)
    assert lines[0].startswith("SFT warm start: 2000/20000 steps (10%), 0:")
    assert lines[-1].startswith("SFT warm start: 20000/20000 steps in 0:") and "loss=0.000" in lines[-1]

    out = io.StringIO()
    with LineProgress(total=None, desc="pairs", unit="pairs", file=out) as unsized:  # no total: by time only
        for _ in range(1000):
            unsized.update(3)
    assert out.getvalue().splitlines() == ["pairs: 3000 pairs in 0:00"]

    out = io.StringIO()
    for _ in LineProgress(range(5), desc="off", disable=True, file=out):
        pass
    assert out.getvalue() == ""


def test_line_progress_by_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = LineProgress(total=1000, desc="slow", every_percent=50, every_seconds=60, file=out)
    for _ in range(300):  # 30 s a step: a line every other step by time, one at 50%
        now[0] += 30
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 150
    assert out.getvalue().splitlines()[0] == "slow: 2/1000 it (0%), 1:00 elapsed, about 8:19:00 left"


def test_progress_bar_is_tqdm_in_a_terminal_lines_otherwise(monkeypatch):
    from tqdm.auto import tqdm

    assert isinstance(progress_bar(range(3), desc="x"), LineProgress)  # pytest captures: no terminal
    monkeypatch.setattr(progress, "interactive", lambda: True)
    bar = progress_bar(range(3), desc="x", disable=True)
    assert isinstance(bar, tqdm) and bar.leave


def test_trainer_default_bar_becomes_lines_outside_a_terminal(capsys):
    trainer = _trainer(callbacks=[DefaultProgressBar()], enable_progress_bar=True)
    trainer.fit(BoringModel(), datamodule=_TrainOnly(batches=400))
    assert isinstance(trainer.progress_bar_callback, LineProgressBar)
    assert sum(isinstance(c, (RichProgressBar, TQDMProgressBar)) for c in trainer.callbacks) == 0
    err = capsys.readouterr().err
    train = [line for line in err.splitlines() if line.startswith("train")]
    assert "\r" not in err
    assert len(train) == 10 and train[-1].startswith("train: 400/400 batches in "), train


def test_a_recipes_own_bar_or_no_bar_is_kept(monkeypatch):
    own = TQDMProgressBar()
    trainer = _trainer(callbacks=[own, DefaultProgressBar()], max_steps=1)
    trainer.fit(BoringModel(), datamodule=_TrainOnly())
    assert trainer.progress_bar_callback is own
    trainer = _trainer(callbacks=[DefaultProgressBar()], enable_progress_bar=False, max_steps=1)
    trainer.fit(BoringModel(), datamodule=_TrainOnly())  # Lightning refuses a bar here: none was added
    assert trainer.progress_bar_callback is None
    monkeypatch.setattr(progress, "interactive", lambda: True)  # in a terminal: Lightning's own bar
    trainer = _trainer(callbacks=[DefaultProgressBar()], max_steps=1)
    trainer.fit(BoringModel(), datamodule=_TrainOnly())
    assert type(trainer.progress_bar_callback) in (RichProgressBar, TQDMProgressBar)


def test_the_cli_adds_the_default_and_keeps_recipe_bars_working(tiny_model, tiny_data, tmp_path):
    from runs import tiny_run_args

    from rlhf_lightning.cli import RLHFCLI

    args = tiny_run_args(tiny_model, tiny_data, tmp_path / "run")[1:]  # enable_progress_bar: false
    cli = RLHFCLI(args=args, run=False)
    assert sum(isinstance(c, DefaultProgressBar) for c in cli.trainer.callbacks) == 1
    assert cli.trainer.progress_bar_callback is None
    own = args + ["--trainer.enable_progress_bar", "true",
                  "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"]
    cli = RLHFCLI(args=own, run=False)  # one bar: the recipe's
    assert type(cli.trainer.progress_bar_callback) is TQDMProgressBar


# ------------------------------------------------------------------ the embedded task's build
def test_build_says_what_it_builds_and_nothing_when_cached(tmp_path, capsys):
    small = dict(n_train=96, n_validation=8, n_test=12, sft_steps=4, sft_batch_size=16, progress=True)
    root = tmp_path / "summarize"
    build_task(root, seed=3, **small)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == (f"Building the embedded summarisation task under {root} (data, tokenizer and SFT warm "
                        "start; first run only, a few seconds)")
    assert lines[-1].startswith(f"Built the embedded summarisation task under {root} in ")
    assert "s, SFT final loss " in lines[-1]
    assert any(line.startswith("SFT warm start: 4/4 steps in ") for line in lines) and "\r" not in err
    build_task(root, seed=3, **small)  # cached: silent
    assert capsys.readouterr().err == ""
    root.joinpath("test.jsonl").unlink()
    build_task(root, seed=3, **small)
    assert capsys.readouterr().err.splitlines()[0] == (
        f"Building the embedded summarisation task under {root} (test split; its files are missing or out of date, "
        "a few seconds)")
    build_task(tmp_path / "quiet", seed=3, **{**small, "progress": False})
    assert capsys.readouterr().err == ""


def test_build_estimate_for_the_default_task():
    from rlhf_lightning.tasks.summarize.build import DATA_SECONDS, SFT_SECONDS_PER_STEP, _about

    assert _about(DATA_SECONDS + 1800 * SFT_SECONDS_PER_STEP) == "about 2.5 min"
    assert _about(5) == "a few seconds" and _about(30) == "under a minute"
