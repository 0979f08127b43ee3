"""Where a diffusion policy comes from: a ``diffusers`` UNet and its noise scheduler, checked before any weights
load, with an optional LoRA adapter (peft), as :class:`~rlhf_lightning.models.ModelConfig` is for causal LMs.

The policy directory is laid out as a ``diffusers`` pipeline is: ``<path>/<unet_subfolder>`` (a ``UNet2DModel``,
class- or un-conditional, or a ``UNet2DConditionModel``, text-conditional) and ``<path>/<scheduler_subfolder>``
(its scheduler's ``scheduler_config.json``, read as a ``DDIMScheduler``).
"""

from __future__ import annotations

import json
import math
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
        text_encoder_subfolder, tokenizer_subfolder, vae_subfolder: a text-conditional pipeline's (Stable Diffusion,
            LCM) frozen text encoder, its tokenizer and the VAE that decodes latents into images.
        resolution: image (or latent) side the sampler draws; ``null``: the UNet's ``sample_size``.
    """

    unet_subfolder: str = "unet"
    scheduler_subfolder: str = "scheduler"
    text_encoder_subfolder: str = "text_encoder"
    tokenizer_subfolder: str = "tokenizer"
    vae_subfolder: str = "vae"
    resolution: Optional[int] = None

    def problems(self, field: str) -> list[RecipeError]:
        """The causal-LM settings that do not apply to a UNet, if set."""
        unused = [("load_in_4bit", self.load_in_4bit, "4-bit UNets are not supported"),
                  ("trust_remote_code", self.trust_remote_code, "the UNet and scheduler load from diffusers' own "
                   "classes; no remote code runs"),
                  ("tokenizer", self.tokenizer is not None, "a UNet policy has no tokenizer")]
        return [RecipeError(f"{field}.{key}", why, f"remove {key}") for key, set_, why in unused if set_]


def _is_hub_id(path: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None and not path.startswith(".") and not Path(path).exists()


def _local_file(config: DiffusionPolicyConfig, subfolder: str, filename: str) -> Optional[Path]:
    """The file inside a local directory, the Hugging Face cache, or (a hub id, online) downloaded into the cache;
    ``None`` where it is in none of them. Only small config files go through here, before any weights load."""
    local = Path(config.path) / subfolder / filename
    if local.is_file():
        return local
    if not _is_hub_id(config.path):
        return None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        name = f"{subfolder}/{filename}".lstrip("/")
        cached = try_to_load_from_cache(config.path, name, revision=config.revision)
        if isinstance(cached, str):
            return Path(cached)
        return Path(hf_hub_download(config.path, filename, subfolder=subfolder or None, revision=config.revision))
    except Exception:  # offline and not cached, no such repository or file
        return None


def pipeline_folder(config: DiffusionPolicyConfig, subfolder: str) -> str:
    """A component's local folder: inside a local pipeline directory, or the hub snapshot's (its configs,
    safetensors and tokenizer files fetched into the cache when missing; the cached snapshot offline)."""
    if not _is_hub_id(config.path):
        return str(Path(config.path) / subfolder)
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*.{ext}".lstrip("/") for ext in ("json", "safetensors", "txt", "model")]
    return str(Path(snapshot_download(config.path, revision=config.revision, allow_patterns=patterns)) / subfolder)


def unet_config(config: DiffusionPolicyConfig, field: str) -> dict[str, Any]:
    """The UNet's ``config.json`` (no weights), or one clear error: the directory is missing, or is not a
    diffusion UNet."""
    path = _local_file(config, config.unet_subfolder, "config.json")
    if path is None:
        where = Path(config.path) / config.unet_subfolder
        problem = (f"'{config.path}' does not exist" if not Path(config.path).exists() and not _is_hub_id(config.path)
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


def unet_config_at(config: DiffusionPolicyConfig, subfolder: str) -> dict[str, Any]:
    """Another component's ``config.json`` inside the pipeline (``{}`` when absent)."""
    path = _local_file(config, subfolder, "config.json")
    return json.loads(path.read_text()) if path is not None else {}


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


def load_scheduler(config: DiffusionPolicyConfig, field: str, sampler: str = "ddim"):
    """The scheduler as a ``diffusers.DDIMScheduler`` (or ``LCMScheduler`` for the LCM sampler), built from the
    pipeline's scheduler config (the sampler only reads its timesteps, ᾱ and the LCM timestep scaling)."""
    from diffusers import DDIMScheduler, LCMScheduler

    path = _local_file(config, config.scheduler_subfolder, "scheduler_config.json")
    if path is None:
        raise RecipeError(f"{field}.scheduler_subfolder", f"no scheduler_config.json under "
                          f"'{Path(config.path) / config.scheduler_subfolder}' (nor in the Hugging Face cache)",
                          "point path at a diffusers pipeline directory, or set scheduler_subfolder")
    return (LCMScheduler if sampler == "lcm" else DDIMScheduler).from_config(json.loads(path.read_text()))


def text_conditional(values: dict[str, Any]) -> bool:
    return values.get("_class_name") == "UNet2DConditionModel"


def text_component_problems(config: DiffusionPolicyConfig, field: str) -> list[RecipeError]:
    """A text-conditional pipeline needs its text encoder, tokenizer and VAE: each missing one named."""
    wanted = [("text_encoder_subfolder", config.text_encoder_subfolder, "config.json"),
              ("tokenizer_subfolder", config.tokenizer_subfolder, "tokenizer_config.json"),
              ("vae_subfolder", config.vae_subfolder, "config.json")]
    return [RecipeError(f"{field}.{key}", f"the UNet is text-conditional (UNet2DConditionModel), but there is no "
                        f"'{subfolder}/{filename}' under '{config.path}'",
                        f"point path at the whole pipeline (Stable Diffusion / LCM layout), or set {key}")
            for key, subfolder, filename in wanted if _local_file(config, subfolder, filename) is None]


def load_text_parts(config: DiffusionPolicyConfig):
    """``(tokenizer, text_encoder, vae)`` of a text-conditional pipeline, frozen (no remote code). Each loads from
    its own local folder (:func:`pipeline_folder`), so the tokenizer makes no hub lookup of a model config."""
    from diffusers import AutoencoderKL
    from transformers import AutoModel, AutoTokenizer

    dtype = getattr(torch, config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(pipeline_folder(config, config.tokenizer_subfolder))
    encoder = AutoModel.from_pretrained(pipeline_folder(config, config.text_encoder_subfolder), torch_dtype=dtype,
                                        use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(pipeline_folder(config, config.vae_subfolder), torch_dtype=dtype,
                                        use_safetensors=True)
    return tokenizer, encoder.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def guidance_embedding(scale: float, dim: int, rows: int) -> torch.Tensor:
    """The LCM UNet's guidance-scale input (``timestep_cond``): a sinusoidal embedding of ``(w − 1)·1000``."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
    angles = (scale - 1.0) * 1000.0 * frequencies
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)])
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding[None].expand(rows, -1)


def load_unet(config: DiffusionPolicyConfig, field: str) -> nn.Module:
    """The UNet in the recipe's dtype (safetensors only, no remote code), with the LoRA adapter when asked for."""
    import diffusers

    values = unet_config(config, field)
    cls = getattr(diffusers, values["_class_name"])
    dtype = getattr(torch, config.dtype)
    unet = cls.from_pretrained(pipeline_folder(config, config.unet_subfolder), torch_dtype=dtype, use_safetensors=True)
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
    unconditional one); prompt embeddings (``encoder_hidden_states``, ``[N, S, D]``) for a ``UNet2DConditionModel``,
    with classifier-free guidance ``ε = ε_∅ + w·(ε_c − ε_∅)`` when ``c`` is ``[N, 2, S, D]`` (empty prompt, prompt),
    or the LCM guidance embedding ``w_emb`` as ``timestep_cond``. A plain callable (not a module), so the UNet's
    weights are registered once, as the policy's."""

    def __init__(self, unet: nn.Module, guidance_scale: float = 1.0) -> None:
        self.unet = unet
        base = unet.get_base_model() if hasattr(unet, "get_base_model") else unet
        self.kind = type(base).__name__
        self.class_conditional = getattr(base.config, "num_class_embeds", None) is not None
        self.guidance_dim = getattr(base.config, "time_cond_proj_dim", None)  # an LCM UNet's guidance input
        self.guidance_scale = guidance_scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor, condition: Union[torch.Tensor, None]) -> torch.Tensor:
        if self.kind != "UNet2DConditionModel":
            return self.unet(x, t, class_labels=condition if self.class_conditional else None).sample
        if condition.dim() == 4:  # classifier-free guidance: one pass over (unconditional, conditional)
            both = self.unet(torch.cat([x, x]), torch.cat([t, t]),
                             encoder_hidden_states=torch.cat([condition[:, 0], condition[:, 1]])).sample
            unconditional, conditional = both.chunk(2)
            return unconditional + self.guidance_scale * (conditional - unconditional)
        cond = (None if self.guidance_dim is None
                else guidance_embedding(self.guidance_scale, self.guidance_dim, x.shape[0]).to(x))
        return self.unet(x, t, encoder_hidden_states=condition, timestep_cond=cond).sample
