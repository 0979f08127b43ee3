"""Hide the known irrelevant messages of a run at their source, and nothing else.

:func:`silence_known_noise` (called first thing by ``rlhf-lightning run``/``fit``) hides exactly the messages
listed below, each by its text (and category, or logger): nothing a user can act on, printed by every run.
Every other warning still shows, once per place as Python does by default: no category is ignored wholesale.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import warnings
from typing import Hashable

# Lightning's rank_zero_info lines are log records, not warnings; they are logged on the logger that
# lightning_utilities' rank_zero module was last pointed at (each of these sets it when imported).
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                          "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")

# Lightning's advertising tips, printed when the run has no LitLogger / no litmodels checkpoint: they advertise
# Lightning's cloud products; the run logs through the recipe's logger (W&B, CSV, TensorBoard) and writes
# checkpoints and the exported policy itself, so there is nothing to install or change.
LIGHTNING_TIPS = r"Tip: .*try installing \[(litlogger|litmodels)\]"

# DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
# accelerate imports deepspeed (when installed) inside every save_pretrained; on a machine without a GPU this
# line is logged although the run does not use DeepSpeed, and the device a run uses is Lightning's choice,
# printed by Lightning ("GPU available: ..., used: ...").
DEEPSPEED_CPU = r"^Setting accelerator to CPU\. If you have GPU or other accelerator, we were unable to detect it"

# What wandb prints when a setting named `anonymous` is passed at all: Lightning's WandbLogger always passes
# `anonymous=None` to wandb.init (its own argument left unset), so every W&B run printed it. Kept when the user
# set WANDB_ANONYMOUS (then the warning is about the user's own setting).
WANDB_ANONYMOUS = "The anonymous setting has no effect and will be removed in a future version."


class DropMessages(logging.Filter):
    """A logging filter dropping the records whose message matches ``pattern`` (a regular expression)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _drop_on(logger_name: str, pattern: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropMessages) and f.pattern.pattern == pattern for f in logger.filters):
        logger.addFilter(DropMessages(pattern))


_REPORTED: set = set()


def first_report(key: Hashable) -> bool:
    """True the first time ``key`` is reported in this run, False after: for a warning that a run would otherwise
    give once for each place that meets the same problem (:func:`silence_known_noise` starts a run afresh)."""
    if key in _REPORTED:
        return False
    _REPORTED.add(key)
    return True


def silence_known_noise() -> None:
    """Hide the known irrelevant warnings and log lines of a run (idempotent; see the module). Call it at the start
    of a run: it also starts the run's :func:`first_report` afresh."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    _REPORTED.clear()
    # "You defined a `validation_step` but have no `val_dataloader`. Skipping val loop." RLHFModule defines
    # validation_step for the offline objectives' validation loss; every data module of the library for them
    # defines val_dataloader (no batches without validation_file), so Lightning says this only for a data
    # module without one: the prompt data of the online objectives, whose evaluation runs in WinRateEvaluation
    # (no validation loader by design). Filtered globally, not per objective: the check runs inside Trainer.fit
    # before any hook of the library could tell the objective, and the one other case (a user's own offline data
    # module without val_dataloader) is a data module that chose to have no validation batches.
    warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`",
                            category=PossibleUserWarning)
    # torch's "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and
    # treespec.is_leaf()` instead": Lightning's own use of a torch internal (lightning/pytorch/utilities/
    # _pytree.py), triggered by every optimizer step of manual optimization; only Lightning can change it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    for name in LIGHTNING_INFO_LOGGERS:
        _drop_on(name, LIGHTNING_TIPS)
    _drop_on("DeepSpeed", DEEPSPEED_CPU)
    _hide_wandb_anonymous()
    # (The tokenizer pad-token warning is given once per tokenizer in a run: rlhf_lightning.models.load_tokenizer.)
    # Outside a terminal, transformers' progress bars would write \r updates into the log (rlhf_lightning.progress).
    from rlhf_lightning.progress import quiet_third_party_bars

    quiet_third_party_bars()


def _hide_wandb_anonymous() -> None:
    """Mark wandb's anonymous-setting warning as already printed. wandb prints it with ``repeat=False`` (once per
    process, remembered in ``wandb.errors.term``) while ``wandb.init`` reads its arguments, before its own
    ``silent`` setting (WANDB_SILENT) applies, so no setting hides it."""
    if "WANDB_ANONYMOUS" in os.environ or importlib.util.find_spec("wandb") is None:
        return
    try:
        from wandb.errors import term
    except ImportError:  # pragma: no cover - another wandb layout: leave its output alone
        return
    printed, label = getattr(term, "_printed_messages", None), getattr(term, "WARN_STRING", None)
    if isinstance(printed, set) and isinstance(label, str):
        printed.add(f"{label} {WANDB_ANONYMOUS}")  # the text termwarn remembers: its label, then the message
