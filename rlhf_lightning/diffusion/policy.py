"""Where a diffusion policy comes from: a ``diffusers`` UNet and its noise scheduler, checked before any weights
load, with an optional LoRA adapter (peft), as :class:`~rlhf_lightning.models.ModelConfig` is for causal LMs.

The policy directory is laid out as a ``diffusers`` pipeline is: ``<path>/<unet_subfolder>`` (a ``UNet2DModel``,
class- or un-conditional, or a ``UNet2DConditionModel``, text-conditional) and ``<path>/<scheduler_subfolder>``
(its scheduler's ``scheduler_config.json``, read as a ``DDIMScheduler``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.models import LoraSettings, ModelConfig, add_lora

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
DIFFUSION_LORA_TARGETS = ["conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class DiffusionPolicyConfig(ModelConfig):
    """A diffusion policy: the UNet to train and the scheduler whose noise schedule the sampler follows. It extends
    :class:`~rlhf_lightning.models.ModelConfig` (the recipe key is the same ``model.init_args.policy``); of the
    causal-LM settings, ``load_in_4bit``, ``trust_remote_code`` and ``tokenizer`` do not apply and must stay unset.

    Args:
        path: a pipeline directory (``save_pretrained`` output with ``unet/`` and ``scheduler/``) or a hub id
            resolved through the Hugging Face cache.
        revision: hub revision of a hub id.
        dtype: weight dtype when loading.
        lora: train a LoRA adapter (peft) instead of all weights; ``target_modules: all-linear`` (the default)
            adapts the UNet's convolutions, time projections and attention projections. The reference is then the
            UNet with the adapter disabled.
        gradient_checkpointing: recompute the UNet's activations in the backward pass.
        unet_subfolder: the UNet's folder inside ``path`` (``""``: ``path`` itself).
        scheduler_subfolder: the scheduler's folder inside ``path``.
        resolution: image (or latent) side the sampler draws; ``null``: the UNet's ``sample_size``.
    """

    unet_subfolder: str = "unet"
    scheduler_subfolder: str = "scheduler"
    resolution: Optional[int] = None

    def problems(self, field: str) -> list[RecipeError]:
        """The causal-LM settings that do not apply to a UNet, if set."""
        unused = [("load_in_4bit", self.load_in_4bit, "4-bit UNets are not supported"),
                  ("trust_remote_code", self.trust_remote_code, "the UNet and scheduler load from diffusers' own "
                   "classes; no remote code runs"),
                  ("tokenizer", self.tokenizer is not None, "a UNet policy has no tokenizer")]
        return [RecipeError(f"{field}.{key}", why, f"remove {key}") for key, set_, why in unused if set_]


def _local_file(config: DiffusionPolicyConfig, subfolder: str, filename: str) -> Optional[Path]:
    """The file inside a local directory or a cached hub snapshot (``None`` if it is in neither)."""
    local = Path(config.path) / subfolder / filename
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(config.path, f"{subfolder}/{filename}".lstrip("/"), revision=config.revision)
        return Path(cached) if isinstance(cached, str) else None
    except Exception:  # not a hub id
        return None


def unet_config(config: DiffusionPolicyConfig, field: str) -> dict[str, Any]:
    """The UNet's ``config.json`` (no weights), or one clear error: the directory is missing, or is not a
    diffusion UNet."""
    path = _local_file(config, config.unet_subfolder, "config.json")
    if path is None:
        where = Path(config.path) / config.unet_subfolder
        hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", config.path) is not None and not config.path.startswith(".")
        problem = (f"'{config.path}' does not exist" if not Path(config.path).exists() and not hub_id
                   else f"no UNet config at '{where}/config.json' (nor in the Hugging Face cache)")
        raise RecipeError(f"{field}.path", problem,
                          "point it at a diffusers pipeline directory holding unet/ and scheduler/ (e.g. "
                          "runs/.cache/images/pipeline, built by the image task), or set unet_subfolder")
    values = json.loads(path.read_text())
    name = values.get("_class_name")
    if name not in UNET_CLASSES:
        raise RecipeError(f"{field}.path", f"'{path.parent}' is not a diffusion UNet (its config.json names "
                          f"{name!r}, not one of {', '.join(UNET_CLASSES)})",
                          "point it at a diffusers pipeline (its unet/ folder), not a causal LM or another model")
    return values


def sample_size(values: dict[str, Any]) -> int:
    size = values.get("sample_size", 64)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def resolution_problem(config: DiffusionPolicyConfig, values: dict[str, Any], field: str) -> Optional[RecipeError]:
    """The resolution must be a positive multiple of the UNet's total down-sampling factor."""
    resolution = config.resolution if config.resolution is not None else sample_size(values)
    factor = 2 ** (len(values.get("down_block_types", ())) - 1)
    if not (isinstance(resolution, int) and resolution >= factor and resolution % factor == 0):
        return RecipeError(f"{field}.resolution", f"{resolution} is not a size this UNet can take: its "
                           f"{len(values.get('down_block_types', ()))} blocks halve the side {factor // 2 or 1} "
                           f"time(s), so the side must be a positive multiple of {factor}",
                           f"use e.g. {sample_size(values)} (the UNet's sample_size) or null")
    return None


def load_scheduler(config: DiffusionPolicyConfig, field: str):
    """The scheduler as a ``diffusers.DDIMScheduler`` (the sampler only reads its timesteps and ᾱ)."""
    from diffusers import DDIMScheduler

    path = _local_file(config, config.scheduler_subfolder, "scheduler_config.json")
    if path is None:
        raise RecipeError(f"{field}.scheduler_subfolder", f"no scheduler_config.json under "
                          f"'{Path(config.path) / config.scheduler_subfolder}' (nor in the Hugging Face cache)",
                          "point path at a diffusers pipeline directory, or set scheduler_subfolder")
    return DDIMScheduler.from_config(json.loads(path.read_text()))


def load_unet(config: DiffusionPolicyConfig, field: str) -> nn.Module:
    """The UNet in the recipe's dtype (safetensors only, no remote code), with the LoRA adapter when asked for."""
    import diffusers

    values = unet_config(config, field)
    cls = getattr(diffusers, values["_class_name"])
    dtype = getattr(torch, config.dtype)
    unet = cls.from_pretrained(config.path, subfolder=config.unet_subfolder or None, revision=config.revision,
                               torch_dtype=dtype, use_safetensors=True)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if config.lora is None:
        return unet
    lora = config.lora
    targets = lora.target_modules
    if targets == "all-linear":  # a transformers shortcut: use the UNet's own layers that exist in this model
        names = {name.split(".")[-1] for name, _ in unet.named_modules()} | {
            ".".join(name.split(".")[-2:]) for name, _ in unet.named_modules()}
        targets = [target for target in DIFFUSION_LORA_TARGETS if target in names]
    return add_lora(unet, LoraSettings(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=targets),
                    field, task_type=None)


class Denoiser:
    """``ε_θ(x_t, t, c)`` of a UNet: class labels for a class-conditional ``UNet2DModel`` (``c`` ignored by an
    unconditional one), prompt embeddings (``encoder_hidden_states``) for a ``UNet2DConditionModel``. A plain
    callable (not a module), so the UNet's weights are registered once, as the policy's."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        base = unet.get_base_model() if hasattr(unet, "get_base_model") else unet
        self.kind = type(base).__name__
        self.class_conditional = getattr(base.config, "num_class_embeds", None) is not None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, condition: Union[torch.Tensor, None]) -> torch.Tensor:
        if self.kind == "UNet2DConditionModel":
            return self.unet(x, t, encoder_hidden_states=condition).sample
        labels = condition if self.class_conditional else None
        return self.unet(x, t, class_labels=labels).sample

