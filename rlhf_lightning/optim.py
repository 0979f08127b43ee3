"""Optimisation of low-precision weights: AdamW on fp32 master copies.

A bf16 weight cannot hold a small update: at lr 3e-6 an Adam step changes a weight by about 3e-6, far
below bf16's spacing (about 4e-3 relative), so stepping bf16 weights directly rounds most updates away.
:class:`MasterWeightAdamW` keeps an fp32 copy of every bf16/fp16 parameter, steps the copies and writes
them back rounded, so the updates accumulate in fp32 as in full-precision training.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)


def has_low_precision(params: Iterable[Tensor]) -> bool:
    """Whether any of ``params`` is stored in bf16 or fp16."""
    return any(p.dtype in LOW_PRECISION for p in params)


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW whose low-precision parameters are stepped through fp32 master copies.

    ``param_groups`` are the model's own parameters (so gradient clipping and learning-rate schedulers
    act on them as usual); at each :meth:`step` their gradients are copied to fp32 masters, an inner
    ``torch.optim.AdamW`` steps the masters with the groups' current hyperparameters, and the masters are
    copied back into the parameters. fp32 parameters are their own masters. The state dict holds the
    inner optimizer's state and the masters, so a resumed run continues from the unrounded weights.
    """

    def __init__(self, params: Any, **defaults: Any) -> None:
        super().__init__(params, defaults)
        self.masters: list[list[Tensor]] = [
            [p.detach().clone().float() if p.dtype in LOW_PRECISION else p for p in group["params"]]
            for group in self.param_groups]
        inner_groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": masters}
                        for group, masters in zip(self.param_groups, self.masters)]
        self.inner = torch.optim.AdamW(inner_groups, **defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, inner, masters in zip(self.param_groups, self.inner.param_groups, self.masters):
            inner.update({k: v for k, v in group.items() if k != "params"})  # lr from the scheduler, ...
            for param, master in zip(group["params"], masters):
                if master is not param:
                    master.grad = None if param.grad is None else param.grad.float()
        self.inner.step()
        for group, masters in zip(self.param_groups, self.masters):
            for param, master in zip(group["params"], masters):
                if master is not param:
                    param.copy_(master)
                    master.grad = None
        return loss

    def state_dict(self) -> dict[str, Any]:
        masters = [[None if master is param else master.detach().clone()  # fp32 parameters: in the model's state
                    for param, master in zip(group["params"], group_masters)]
                   for group, group_masters in zip(self.param_groups, self.masters)]
        return {"inner": self.inner.state_dict(), "param_groups": super().state_dict()["param_groups"],
                "masters": masters}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict["inner"])
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
        for group, masters, saved in zip(self.param_groups, self.masters, state_dict["masters"]):
            for param, master, value in zip(group["params"], masters, saved):
                if value is not None and master is not param:
                    master.data.copy_(value)
