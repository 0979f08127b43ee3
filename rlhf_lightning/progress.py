"""Progress that reads well in a terminal and in a log file.

In a terminal (stdout and stderr both TTYs, or a notebook) the usual bars are shown: Lightning's own bar
for training, tqdm bars for the library's long steps (the embedded task's SFT warm start, the reference
log-probs precompute, preference pairs), left on screen when done. When the output goes to a file or a
pipe, a bar would write one ``\\r`` update per step; instead a plain line is printed every
``every_percent`` per cent of the steps or every ``every_seconds`` seconds (whichever comes first), and
one when the step is done:

    SFT warm start: 360/1800 steps (20%), 0:29 elapsed, about 1:56 left, loss=1.612

* :func:`progress_bar` -- tqdm's interface used by the library (iteration, ``update``, ``set_postfix``,
  ``close``), a tqdm bar in a terminal and plain lines otherwise.
* :class:`LineProgressBar` -- a Lightning progress bar writing such lines for training and validation.
* :class:`DefaultProgressBar` -- what ``RLHFCLI`` adds to every trainer: outside a terminal it puts a
  :class:`LineProgressBar` in place of the bar Lightning adds by default. A recipe's own progress bar
  callback, or ``trainer.enable_progress_bar: false``, is left as it is.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

EVERY_PERCENT = 10
EVERY_SECONDS = 60.0


def interactive() -> bool:
    """True in a terminal (stdout and stderr both TTYs) or a Jupyter kernel: bars redraw in place there."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))
    except (AttributeError, ValueError):  # a stream without isatty, or closed
        return False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _value(value: Any) -> str:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class LineProgress:
    """Progress written as plain lines: the part of tqdm's interface the library uses.

    Iterating yields the items of ``iterable`` and counts them (closing at the end, like tqdm);
    ``update(n)`` counts ``n`` more; ``set_postfix(**values)`` sets the values shown at the end of the
    next line; ``close()`` prints the last line (steps done and the time taken). A line is printed each time
    another ``every_percent`` per cent of ``total`` is done, or when ``every_seconds`` passed since the last
    line; so a step of any length prints at most ``100 / every_percent + duration / every_seconds + 1`` lines.
    """

    def __init__(self, iterable: Optional[Iterable] = None, desc: str = "", total: Optional[float] = None,
                 unit: str = "it", disable: bool = False, every_percent: float = EVERY_PERCENT,
                 every_seconds: float = EVERY_SECONDS, file: Optional[TextIO] = None) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit, self.disable = iterable, desc, total, unit, disable
        self.every_percent, self.every_seconds = every_percent, every_seconds
        self.file = file
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last_line = time.monotonic()
        self._bucket = 0  # how many every_percent steps the last line reported
        self._closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **values: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        """tqdm's redraw: nothing to do for lines."""

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable or self._closed:
            return
        now = time.monotonic()
        bucket = self._bucket
        if self.total and self.total != math.inf and self.every_percent > 0:
            bucket = int(100 * self.n / self.total // self.every_percent)
        done = bool(self.total) and self.n >= self.total  # close() writes the last line
        if not done and (bucket > self._bucket or now - self._last_line >= self.every_seconds):
            self._bucket = bucket
            self._write(self._line(now))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable:
            self._write(self._line(time.monotonic(), final=True))

    def _line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._start
        known = bool(self.total) and self.total != math.inf
        count = f"{_number(self.n)}/{_number(self.total)} {self.unit}" if known else f"{_number(self.n)} {self.unit}"
        if final:
            text = f"{self.desc}: {count} in {_clock(elapsed)}"
        else:
            text = f"{self.desc}: {count}"
            if known:
                text += f" ({100 * self.n / self.total:.0f}%)"
            text += f", {_clock(elapsed)} elapsed"
            if known and self.n > 0:
                text += f", about {_clock(elapsed * (self.total - self.n) / self.n)} left"
        if self.postfix:
            text += ", " + ", ".join(f"{key}={_value(value)}" for key, value in self.postfix.items())
        return text

    def _write(self, line: str) -> None:
        self._last_line = time.monotonic()
        print(line, file=self.file or sys.stderr, flush=True)


def progress_bar(iterable: Optional[Iterable] = None, *, desc: str, total: Optional[float] = None,
                 unit: str = "it", disable: bool = False, leave: bool = True, **line_options: Any):
    """A tqdm bar in a terminal (left on screen when done unless ``leave=False``), a :class:`LineProgress`
    (``line_options``: ``every_percent``, ``every_seconds``, ``file``) otherwise."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, disable=disable, **line_options)


def quiet_third_party_bars() -> None:
    """Outside a terminal, turn off the bars of transformers and huggingface_hub ("Loading weights",
    "Writing model shards", downloads): they cannot be shown as lines, and each writes ``\\r`` updates into
    the log. Left alone in a terminal, or when the user set ``HF_HUB_DISABLE_PROGRESS_BARS`` either way."""
    if interactive() or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    transformers_logging.disable_progress_bar()  # also huggingface_hub's bars


class LineProgressBar(ProgressBar):
    """A Lightning progress bar for log files: plain lines for training (each epoch) and validation.

    Args:
        every_percent: a line each time this share of the epoch's batches is done (0: by time only).
        every_seconds: and a line when this long passed since the last one.
    """

    def __init__(self, every_percent: float = EVERY_PERCENT, every_seconds: float = EVERY_SECONDS) -> None:
        super().__init__()
        self.every_percent, self.every_seconds = every_percent, every_seconds
        self._enabled = True
        self._train: Optional[LineProgress] = None
        self._validation: Optional[LineProgress] = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def _lines(self, desc: str, total: float) -> LineProgress:
        return LineProgress(desc=desc, total=total if total and total != math.inf else None, unit="batches",
                            disable=not self._enabled, every_percent=self.every_percent,
                            every_seconds=self.every_seconds)

    def _metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {key: value for key, value in metrics.items() if not isinstance(value, dict)}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epochs = trainer.max_epochs
        desc = "train" if epochs == 1 else f"train epoch {trainer.current_epoch + 1}" + (
            f"/{epochs}" if epochs is not None and epochs > 0 else "")
        self._train = self._lines(desc, self.total_train_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train is not None:
            self._train.set_postfix(self._metrics(trainer, pl_module))
            self._train.update(batch_idx + 1 - self._train.n)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._train is not None:
            self._train.set_postfix(self._metrics(trainer, pl_module))
            self._train.close()
            self._train = None

    def on_train_end(self, trainer, pl_module) -> None:
        if self._train is not None:  # stopped within an epoch (max_steps, early stopping)
            self._train.close()
            self._train = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validation = self._lines(self.validation_description, self.total_val_batches)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._validation is not None:
            self._validation.update(1)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validation is not None:
            if self._validation.n:
                self._validation.close()
            self._validation = None


class DefaultProgressBar(Callback):
    """The library trainer's progress-bar default (added by ``RLHFCLI`` through ``trainer_defaults``).

    Lightning adds a ``RichProgressBar`` (or ``TQDMProgressBar``) when the recipe has no progress bar and
    ``enable_progress_bar`` is true; this callback is not a progress bar itself, so Lightning's rules (one bar at
    most; none with ``enable_progress_bar: false``) stay as they are. At ``setup``, outside a terminal, it puts a
    :class:`LineProgressBar` in place of that default bar: Lightning appends its default after the trainer's
    callbacks (this one included), so a progress bar *after* this callback is Lightning's, one before it is the
    recipe's own and is kept. In a terminal it does nothing.
    """

    def __init__(self, every_percent: float = EVERY_PERCENT, every_seconds: float = EVERY_SECONDS) -> None:
        self.every_percent, self.every_seconds = every_percent, every_seconds

    def setup(self, trainer, pl_module, stage: str) -> None:
        if interactive():
            return
        callbacks = trainer.callbacks
        mine = next((i for i, c in enumerate(callbacks) if c is self), None)
        if mine is None:
            return
        for index in range(mine + 1, len(callbacks)):
            if type(callbacks[index]) in (RichProgressBar, TQDMProgressBar):  # Lightning's default, as created
                bar = LineProgressBar(self.every_percent, self.every_seconds)
                callbacks[index] = bar
                bar.setup(trainer, pl_module, stage)  # (the hook loop may reach it again: setup is idempotent)
                return
