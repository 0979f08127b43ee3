"""Per-step training scalars: to the loggers, the progress bar and ``trainer.callback_metrics``.

``LightningModule.log`` costs about half a millisecond per key on a CPU (each call moves a torchmetrics
state between devices); an online step that logs twenty scalars spent a tenth of its time there with a
tiny model. :func:`log_step_metrics` does the same job for a dict of plain scalars at once: one
all-reduce across processes, then Lightning's own logger path (same step numbers, same
``log_every_n_steps`` rule), so that ``ModelCheckpoint(monitor=...)``, ``EarlyStopping``,
``trainer.logged_metrics`` and the progress bar see the values exactly as if ``self.log`` had been used.
Epoch-level metrics (validation) still go through ``self.log``, which aggregates them.
"""

from __future__ import annotations

from typing import Mapping

import torch
from lightning.pytorch import LightningModule, Trainer


def logger_step(trainer: Trainer) -> int:
    """The step Lightning's ``self.log`` writes rows at, so that rows logged by other means line up
    with them (W&B drops rows whose step goes backwards)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def log_step_metrics(module: LightningModule, metrics: Mapping[str, float],
                     progress_bar: Mapping[str, str] | None = None) -> None:
    """Log this training step's scalars (averaged over processes when there are several).

    Args:
        module: the module whose trainer logs.
        metrics: name → scalar for this step.
        progress_bar: progress-bar label → metric name, e.g. ``{"reward": "reward/raw"}``.
    """
    trainer = module.trainer
    names = list(metrics)
    values = torch.tensor([float(metrics[name]) for name in names], dtype=torch.float64)
    if trainer.world_size > 1:
        values = trainer.strategy.reduce(values.to(module.device), reduce_op="mean").cpu()
    scalars = dict(zip(names, values.tolist()))
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None or not hasattr(connector, "log_metrics") or not hasattr(connector, "should_update_logs"):
        # a Lightning without these internals: the slower public path gives the same result
        module.log_dict(scalars, on_step=True, on_epoch=False, batch_size=1)
        for label, name in (progress_bar or {}).items():
            module.log(label, scalars[name], prog_bar=True, on_step=True, on_epoch=False, batch_size=1, logger=False)
        return
    tensors = {name: torch.tensor(value, dtype=torch.float32) for name, value in scalars.items()}
    trainer.callback_metrics.update(tensors)  # every step, as self.log does
    trainer.logged_metrics.update(tensors)
    trainer.progress_bar_metrics.update({label: scalars[name] for label, name in (progress_bar or {}).items()
                                         if name in scalars})
    if connector.should_update_logs or trainer.fast_dev_run:
        connector.log_metrics(tensors)
