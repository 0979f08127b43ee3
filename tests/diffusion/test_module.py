"""The diffusion policy in ``DiffusionRLHFModule`` with ``ImageRollout``: the trajectory log-probs recorded while
sampling equal those recomputed from the stored trajectory under the policy before the update; REBEL and the
clipped objective (GRPO, β = 0: the paper's "PPO") on them against hand computations; the checks before training;
and an end-to-end run by recipe in which the hidden judge's score rises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from rlhf_lightning.callbacks.image_rollout import ImageRollout, PerPromptStats  # noqa: E402
from rlhf_lightning.diffusion import (DiffusionPolicyConfig, DiffusionRLHFModule, ImageFunctionReward,  # noqa: E402
                                      LearnedImageReward)
from rlhf_lightning.errors import RecipeError  # noqa: E402
from rlhf_lightning.models import LoraSettings  # noqa: E402
from rlhf_lightning.objectives import GRPO, PPO, REBEL  # noqa: E402
from rlhf_lightning.tasks.images.build import build_image_task, scorer_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """A quickly built image task (an under-trained UNet is enough for the wiring)."""
    root = tmp_path_factory.mktemp("images")
    build_image_task(root, unet_steps=40, scorer_steps=40, progress=False)
    return root


def module_for(task: Path, objective, lora: bool = True, eta: float = 1.0, num_steps: int = 4,
               reward=None, **policy) -> DiffusionRLHFModule:
    config = DiffusionPolicyConfig(path=str(task / "pipeline"), lora=LoraSettings(r=4, alpha=4) if lora else None,
                                   **policy)
    module = DiffusionRLHFModule(config, objective, reward or LearnedImageReward(str(scorer_dir(task))))
    module.use_sampler(eta, num_steps)
    module.configure_model()
    return module


def batch(labels: list[int]) -> dict:
    return {"labels": torch.tensor(labels), "prompt": [f"class {i}" for i in labels]}


def test_recorded_log_probs_equal_the_policy_before_the_update(task):
    torch.manual_seed(0)
    module = module_for(task, REBEL(inner_epochs=1))
    samples = ImageRollout(num_steps=4).collect(module, batch([0, 1, 2]))
    assert samples.extras["latents"].shape == (6, 5, 3, 16, 16)  # 3 prompts × 2 samples, x_T … x_0
    recorded, _ = module.rollout_logprobs(samples)
    recomputed = module.trajectory_logprobs(samples.extras["latents"], samples.extras["condition"])
    torch.testing.assert_close(recomputed, recorded, rtol=1e-5, atol=1e-3)
    # the reference (adapter disabled) is the starting policy: the same numbers before any update
    torch.testing.assert_close(samples.ref_logprobs, recorded, rtol=1e-5, atol=1e-3)
    assert samples.rewards.shape == (6,) and torch.isfinite(samples.rewards).all()


def test_rebel_and_the_clipped_objective_on_trajectories_by_hand(task):
    torch.manual_seed(1)
    module = module_for(task, REBEL(inner_epochs=1))
    samples = ImageRollout(num_steps=4, reward_normalization="none").collect(module, batch([0, 2]))
    rollout = samples.with_policy_logprobs(samples.extras["sampled_logprobs"])
    with torch.no_grad():  # move the policy away from π_t
        for name, parameter in module.policy.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    current = module.trajectory_logprobs(samples.extras["latents"], samples.extras["condition"])
    ratio = (current - rollout.old_logprobs).sum(1)  # ln π_θ(τ) − ln π_t(τ)
    r = rollout.rewards
    loss, _ = REBEL(eta=0.5, inner_epochs=1).loss(current, rollout)
    by_hand = (((ratio[0] - ratio[1]) / 0.5 - (r[0] - r[1])) ** 2 + ((ratio[2] - ratio[3]) / 0.5 - (r[2] - r[3])) ** 2) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-4)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters() if p.requires_grad)
    clipped = GRPO(group_size=2, clip_ratio=0.2, beta=0.0, scale_rewards=False)
    prepared = clipped.prepare(rollout, lambda t: t)
    value, _ = clipped.loss(current.detach(), prepared)
    advantage = r - r.view(-1, 2).mean(1).repeat_interleave(2)  # A = r − mean of the pair
    step_ratio = (current.detach() - rollout.old_logprobs).exp()  # per denoising step
    per_step = -torch.minimum(step_ratio * advantage[:, None], step_ratio.clamp(0.8, 1.2) * advantage[:, None])
    assert value.item() == pytest.approx(per_step.mean(1).mean().item(), rel=1e-4)


def test_per_prompt_statistics_by_hand():
    stats = PerPromptStats(buffer_size=4, min_count=2, clip=10.0)
    labels, rewards = torch.tensor([0, 0, 1, 1]), torch.tensor([1.0, 3.0, 5.0, 5.0])
    out = stats.normalize(labels, rewards)
    assert out[:2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-4)
    assert out[2:].abs().max() < 1e-3  # no spread: no advantage
    out = stats.normalize(torch.tensor([0]), torch.tensor([2.0]))  # buffer 1, 3, 2 → mean 2
    assert out.item() == pytest.approx(0.0, abs=1e-5)
    tight = PerPromptStats(buffer_size=4, min_count=1, clip=0.5)
    assert tight.normalize(torch.tensor([0, 0]), torch.tensor([10.0, 0.0])).tolist() == [0.5, -0.5]  # clipped


# ------------------------------------------------------------------------------------------ checks before training
def test_missing_or_wrong_policy_directories_are_named(task, tmp_path):
    with pytest.raises(RecipeError, match=r"model.init_args.policy.path.*does not exist"):
        module_for(tmp_path / "nowhere", REBEL())
    (tmp_path / "lm" / "pipeline" / "unet").mkdir(parents=True)  # a causal LM's config where the UNet's should be
    (tmp_path / "lm" / "pipeline" / "unet" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RecipeError, match="is not a diffusion UNet"):
        module_for(tmp_path / "lm", REBEL())
    (tmp_path / "sd" / "pipeline" / "unet").mkdir(parents=True)  # a Stable Diffusion UNet without the rest
    (tmp_path / "sd" / "pipeline" / "unet" / "config.json").write_text(
        json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 64, "down_block_types": ["A", "B"]}))
    (tmp_path / "sd" / "pipeline" / "scheduler").mkdir()
    (tmp_path / "sd" / "pipeline" / "scheduler" / "scheduler_config.json").write_text("{}")
    with pytest.raises(RecipeError) as error:
        module_for(tmp_path / "sd", REBEL())
    for key in ("text_encoder_subfolder", "tokenizer_subfolder", "vae_subfolder"):
        assert f"model.init_args.policy.{key}" in str(error.value)


def test_bad_resolution_sampler_and_objective_are_refused(task):
    with pytest.raises(RecipeError, match=r"policy.resolution.*multiple of 2"):
        module_for(task, REBEL(), resolution=15)
    with pytest.raises(RecipeError, match=r"rollout.init_args.eta.*deterministic"):
        ImageRollout(eta=0.0)
    with pytest.raises(RecipeError, match="rollout.init_args.num_steps"):
        ImageRollout(num_steps=0)
    with pytest.raises(RecipeError, match="value model"):
        module_for(task, PPO())
    with pytest.raises(RecipeError, match="load_in_4bit"):
        module_for(task, REBEL(), load_in_4bit=True)


def wrong_shape(images, labels):
    return torch.zeros(len(images), 2)


def not_finite(images, labels):
    return torch.full((len(images),), float("nan"))


@pytest.mark.parametrize("function, message", [("wrong_shape", r"returned shape \[2, 2\] for 2 images"),
                                               ("not_finite", "must be finite")])
def test_an_image_reward_of_the_wrong_shape_or_not_finite_is_refused_before_training(task, function, message):
    reward = ImageFunctionReward(f"{__name__}.{function}")
    with pytest.raises(RecipeError, match=message):
        module_for(task, REBEL(), reward=reward)


def test_export_writes_a_pipeline_that_loads_back(task, tmp_path):
    from diffusers import DDIMScheduler, UNet2DModel

    module = module_for(task, REBEL())
    out = module.export(tmp_path / "policy")
    unet = UNet2DModel.from_pretrained(out / "unet")
    assert unet.config.num_class_embeds == 3
    assert DDIMScheduler.from_pretrained(out / "scheduler").config.steps_offset == 1
    assert not (tmp_path / "policy.partial").exists()


# ------------------------------------------------------------------------------------------ end to end
def run(recipe: str, task: Path, root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_lightning.cli", "run", recipe,
                           "--data.init_args.root", str(task), "--data.init_args.unet_steps", "40",
                           "--data.init_args.scorer_steps", "40",
                           "--model.init_args.policy.path", str(task / "pipeline"),
                           "--trainer.default_root_dir", str(root), "--trainer.logger", "false",
                           "--cpu_threads", "1", *overrides], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_judge_score_rises_under_rebel(task, tmp_path):
    """REBEL on the judge itself as the reward (the learned scorer of an under-trained build is not reliable
    enough for a short test): the held-out judge score on fixed noise goes up."""
    result = run("recipes/images/rebel.yaml", task, tmp_path / "rebel",
                 "--model.init_args.reward.class_path", "rlhf_lightning.diffusion.ImageFunctionReward",
                 "--model.init_args.reward.init_args.function", "rlhf_lightning.tasks.images.image_score",
                 "--data.init_args.repeats", "128", "--model.init_args.lr", "3e-3")  # 24 rollout batches
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "rebel" / "summary.json").read_text())
    assert summary["judge"] > summary["start_judge"] + 0.015, summary  # seen: 0.286 → 0.314
    assert summary["reward"] > summary["start_reward"] + 0.015, summary
    assert (tmp_path / "rebel" / "images_start.png").is_file() and (tmp_path / "rebel" / "images_end.png").is_file()
    assert (tmp_path / "rebel" / "policy" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_the_clipped_baseline_runs_by_recipe_and_a_text_rollout_is_refused(task, tmp_path):
    result = run("recipes/images/ppo.yaml", task, tmp_path / "ppo", "--model.init_args.reward.init_args.path",
                 str(scorer_dir(task)), "--trainer.limit_train_batches", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["objective"] == "grpo" and summary["rollout_batches"] == 2
    result = run("recipes/images/rebel.yaml", task, tmp_path / "text", "--rollout.class_path",
                 "rlhf_lightning.callbacks.Rollout", "--trainer.limit_train_batches", "1")
    assert result.returncode == 2 and "rollout.class_path: rlhf_lightning.callbacks.ImageRollout" in result.stderr
    result = run("recipes/images/rebel.yaml", task, tmp_path / "fsdp", "--trainer.strategy", "fsdp",
                 "--trainer.accelerator", "cpu", "--trainer.limit_train_batches", "1")
    assert result.returncode == 2 and "trainer.strategy" in result.stderr and "use strategy: ddp" in result.stderr, \
        result.stderr[-2000:]
