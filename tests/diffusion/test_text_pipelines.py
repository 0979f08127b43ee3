"""Text-conditional latent pipelines in the Stable Diffusion / LCM layout (``unet/``, ``scheduler/``,
``text_encoder/``, ``tokenizer/``, ``vae/``), tiny and random, built locally: prompts are embedded by the frozen
text encoder, latents decoded by the frozen VAE; classifier-free guidance (SD) and the LCM multistep sampler with
its guidance embedding are part of the policy, so the recorded log-probs equal those recomputed before the update;
REBEL trains the UNet's LoRA through them; a run by recipe trains and exports the whole pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from rlhf_lightning.callbacks.image_rollout import ImageRollout  # noqa: E402
from rlhf_lightning.diffusion import DiffusionPolicyConfig, DiffusionRLHFModule, ImageFunctionReward  # noqa: E402
from rlhf_lightning.models import LoraSettings  # noqa: E402
from rlhf_lightning.objectives import REBEL  # noqa: E402
from tests.families import FAMILIES, family_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a cat", "a painting of a dog"]


def brightness(images, labels):
    """A stand-in image reward: mean pixel value."""
    return images.mean((1, 2, 3))


def build_pipeline(root: Path, lcm: bool) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = family_tokenizer(FAMILIES["gpt2"])
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 8
    tokenizer.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=8, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(root / "text_encoder")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                  norm_num_groups=4, sample_size=16).save_pretrained(root / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=2, norm_num_groups=4,
                         time_cond_proj_dim=8 if lcm else None).save_pretrained(root / "unet")
    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    (LCMScheduler if lcm else DDIMScheduler)(**schedule).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {"sd": build_pipeline(root / "sd", lcm=False), "lcm": build_pipeline(root / "lcm", lcm=True)}


def module_for(path: Path, rollout: ImageRollout) -> DiffusionRLHFModule:
    config = DiffusionPolicyConfig(path=str(path), unet_subfolder="unet",
                                   lora=LoraSettings(r=2, alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    module = DiffusionRLHFModule(config, REBEL(inner_epochs=1), ImageFunctionReward(f"{__name__}.brightness"))
    module.use_sampler(rollout.eta, rollout.num_steps, rollout.sampler, rollout.guidance_scale)
    module.configure_model()
    return module


@pytest.mark.parametrize("kind, rollout, steps", [
    ("sd", ImageRollout(num_steps=3, guidance_scale=3.0), 3),
    ("lcm", ImageRollout(sampler="lcm", num_steps=4, guidance_scale=8.0), 3),  # the last LCM step is deterministic
])
def test_text_conditional_log_probs_recorded_equal_recomputed(pipelines, kind, rollout, steps):
    torch.manual_seed(1)
    module = module_for(pipelines[kind], rollout)
    batch = {"labels": torch.tensor([0, 1]), "prompt": PROMPTS}
    samples = rollout.collect(module, batch)
    condition = samples.extras["condition"]
    assert condition.shape[:2] == ((4, 2) if kind == "sd" else (4, 8))  # SD: (empty, prompt) embeddings for CFG
    assert samples.extras["latents"].shape == (4, steps + 1, 4, 8, 8)
    recorded = samples.extras["sampled_logprobs"]
    assert recorded.shape == (4, steps) and torch.isfinite(recorded).all()
    recomputed = module.trajectory_logprobs(samples.extras["latents"], condition)
    torch.testing.assert_close(recomputed, recorded, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(samples.ref_logprobs, recorded, rtol=1e-5, atol=1e-3)  # the adapter disabled
    rollout_ = samples.with_policy_logprobs(recorded)
    loss, _ = REBEL(inner_epochs=1).loss(module.trajectory_logprobs(samples.extras["latents"], condition), rollout_)
    loss.backward()
    adapted = [p for name, p in module.policy.named_parameters() if "lora_" in name]
    assert adapted and any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapted)
    assert all(p.grad is None for p in module.text_encoder.parameters()) and all(
        p.grad is None for p in module.vae.parameters())


def test_the_prompt_changes_the_sample(pipelines):
    """The text encoder's embedding reaches the UNet: the same noise under two prompts gives two images."""
    module = module_for(pipelines["sd"], ImageRollout(num_steps=2, guidance_scale=3.0))
    condition = module.condition(torch.tensor([0, 1]), PROMPTS)
    x = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    eps = module.denoiser()(x, torch.tensor([500, 500]), condition)
    assert not torch.allclose(eps[0], eps[1])
    assert module.decode(x).shape == (2, 3, 16, 16)


def test_a_recipe_trains_the_lcm_pipeline_and_exports_it_whole(pipelines, tmp_path):
    root = tmp_path / "run"
    result = subprocess.run([
        sys.executable, "-m", "rlhf_lightning.cli", "run", "recipes/images/rebel.yaml", "--trainer.logger", "false",
        "--cpu_threads", "1", "--trainer.default_root_dir", str(root), "--trainer.limit_train_batches", "2",
        "--data", "rlhf_lightning.tasks.images.ImagePrompts", "--data.init_args.prompts", json.dumps(PROMPTS),
        "--data.init_args.batch_size", "2", "--model.init_args.policy.path", str(pipelines["lcm"]),
        "--model.init_args.policy.lora.target_modules", '["to_q", "to_k", "to_v", "to_out.0"]',
        "--model.init_args.reward.class_path", "rlhf_lightning.diffusion.ImageFunctionReward",
        "--model.init_args.reward.init_args.function", "rlhf_lightning.tasks.images.image_score",
        "--rollout.sampler", "lcm", "--rollout.num_steps", "4", "--rollout.guidance_scale", "8.0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["rollout_batches"] == 2 and summary["samples_generated"] == 8
    for part in ("unet", "scheduler", "text_encoder", "tokenizer", "vae"):
        assert (root / "policy" / part).is_dir(), part


def test_jpeg_compressibility_prefers_simple_images():
    from rlhf_lightning.diffusion import jpeg_compressibility

    flat = torch.zeros(1, 3, 64, 64)
    noisy = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = jpeg_compressibility(torch.cat([flat, noisy]), torch.zeros(2, dtype=torch.long))
    assert scores.shape == (2,) and scores[0] > scores[1] and (scores < 0).all()


@pytest.mark.parametrize("recipe", ["lcm_rebel.yaml", "lcm_ppo.yaml"])
def test_the_lcm_hub_recipes_run_from_the_hub_id(pipelines, tmp_path, recipe):
    """recipes/hub/lcm_{rebel,ppo}.yaml as written (SimianLuo/LCM_Dreamshaper_v7 by hub id), with the tiny LCM
    pipeline in an offline Hugging Face cache under that id, on the CPU for one rollout batch."""
    import os

    from tests.tiny import fill_hub_cache

    fill_hub_cache(tmp_path / "hf", "SimianLuo/LCM_Dreamshaper_v7", pipelines["lcm"])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    root = tmp_path / "run"
    result = subprocess.run([
        sys.executable, "-m", "rlhf_lightning.cli", "run", str(REPO / "recipes" / "hub" / recipe),
        "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.limit_train_batches", "1",
        "--trainer.default_root_dir", str(root), "--data.init_args.batch_size", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["rollout_batches"] == 1 and summary["evaluated_images"] == 90  # 45 prompts × 2
    assert (root / "policy" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
