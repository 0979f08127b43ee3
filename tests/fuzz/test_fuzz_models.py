"""Fuzz: bad models and tokenizers. Each case gives the CLI (in-process, one rollout batch of REBEL, or PPO where a
critic is needed) a broken or wrong model directory, hub id, tokenizer or LoRA setting for the policy, the
reference, the critic or the reward model: the run ends in one message naming the recipe field and the fix
(exit code 2, no traceback, no advice to load unsafely), and the finished run in the folder is left whole.

Model directories are copies of the session's tiny Llama, edited the way real checkpoints break: a config.json
cut short, weights of another shape, a pickle that runs code, NaN weights, a reward model where a causal LM
goes, an adapter alone, a tokenizer with a broken file or template.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path
from typing import Callable, Union

import pytest
import torch

from faults import bare_run_args, expect_fault
from tiny import fill_hub_cache, make_chat_tokenizer, make_model_dir, make_reward_model_dir

OVERWRITE = ["--overwrite", "true"]
PPO = ["--model.objective", "rlhf_lightning.objectives.ppo.PPO", "--model.objective.inner_epochs", "1"]
REWARD_MODEL = "rlhf_lightning.rewards.RewardModel"
POLICY, REFERENCE, CRITIC = "model.init_args.policy", "model.init_args.reference", "model.init_args.critic"
REWARD = "model.init_args.reward.init_args"
MARKER = "code_ran.txt"  # written by the shipped code or pickle of a case, were it ever run


# ------------------------------------------------------------------------------------------ broken checkpoints
def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def write(file: Path, text: str) -> Path:
    """Overwrite ``file`` with ``text``; returns its directory."""
    file.write_text(text)
    return file.parent


def edit_config(directory: Path, **values) -> Path:
    """Set ``values`` in the directory's config.json."""
    config = json.loads((directory / "config.json").read_text())
    config.update(values)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def with_nonfinite_weights(directory: Path) -> Path:
    """Three NaN and one infinite value in an MLP weight, as a checkpoint saved after a diverged run holds."""
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / "model.safetensors")
    name = next(key for key in weights if "mlp" in key)
    weights[name][0, :3] = float("nan")
    weights[name][1, 0] = float("inf")
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


class RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious ``pytorch_model.bin`` does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def with_malicious_pickle(directory: Path, marker: Path) -> Path:
    """The safetensors weights replaced by a ``pytorch_model.bin`` whose pickle runs a shell command."""
    (directory / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": RunsCode(marker)}, directory / "pytorch_model.bin")
    return directory


def with_remote_code(directory: Path, marker: Path, model_type: str = "tinyremote") -> Path:
    """A custom architecture whose config.json points (``auto_map``) at modelling code shipped with it."""
    for module in ("configuration_tiny", "modeling_tiny"):
        (directory / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return edit_config(directory, model_type=model_type, architectures=["TinyRemoteForCausalLM"],
                       auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                                 "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM"})


def lora_adapter_dir(model: Path, path: Path) -> Path:
    """What ``ExportPolicy(merge_lora=false)`` writes: the adapter and the tokenizer, no config.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model)
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")).save_pretrained(path)
    AutoTokenizer.from_pretrained(model).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def zoo(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints several cases share (built once): reward models of one and two labels, another family's
    causal LM, a LoRA adapter, a chat model and chat prompts."""
    from families import FAMILIES, make_family_checkpoint

    root = tmp_path_factory.mktemp("zoo")
    chat = make_model_dir(root / "chat", tokenizer=make_chat_tokenizer())
    prompts = root / "chat_prompts.jsonl"
    row = {"prompt": [{"role": "user", "content": "say : cat dog"}], "reference": "good"}
    prompts.write_text((json.dumps(row) + "\n") * 16)
    return {"reward": make_reward_model_dir(root / "reward"),
            "two_labels": make_reward_model_dir(root / "two_labels", num_labels=2),
            "chat_reward": make_reward_model_dir(root / "chat_reward", tokenizer=make_chat_tokenizer()),
            "neox": make_family_checkpoint(FAMILIES["gpt_neox"], root / "neox"),
            "adapter": lora_adapter_dir(tiny_model, root / "adapter"), "chat": chat, "chat_prompts": prompts}


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One bad input: ``build(model, zoo, tmp)`` returns the arguments to add (a key given again overrides the
    base arguments' value); the message names ``field`` and holds ``text``."""

    build: Callable[[Path, dict, Path], list[str]]
    field: str
    text: str
    hub: bool = False  # runs offline on a Hugging Face cache in tmp (with tiny-org/tiny-llama in it)
    marks: list = default(default_factory=list)  # pytest marks of the case


def policy(path: Union[Path, str]) -> list[str]:
    return ["--model.policy.path", str(path)]


def policy_copy(edit: Callable[[Path, Path], Path]) -> Callable[[Path, dict, Path], list[str]]:
    """The policy is a copy of the tiny model changed by ``edit(copy, tmp)``."""
    return lambda m, z, t: policy(edit(copy_model(m, t / "model"), t))


def reward_model(path: Path) -> list[str]:
    return ["--model.reward", REWARD_MODEL, "--model.reward.path", str(path)]


def without_weights(d: Path, t: Path) -> Path:
    (d / "model.safetensors").unlink()
    return d


def with_tokenizer_config(d: Path, **values) -> Path:
    config = json.loads((d / "tokenizer_config.json").read_text())
    config.update(values)
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def with_added_pad_token(d: Path, t: Path) -> Path:
    """A pad token added to the tokenizer (id 15) and the embeddings not resized (15 rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(d)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.save_pretrained(d)
    return d


def with_foreign_tokenizer_json(d: Path) -> Path:
    """A tokenizer.json that parses but is not a tokenizers file (another tool's layout)."""
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "SentencePiece"}}))
    return d


def with_raising_chat_template(d: Path) -> Path:
    """A Mistral-style template that refuses conversations starting with a user turn (``raise_exception``)."""
    (d / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if loop.first and m['role'] == 'user' %}"
        "{{ raise_exception('Conversation roles must start with system') }}{% endif %}{% endfor %}")
    return d


CASES: dict[str, Case] = {
    # config.json
    "config-invalid-json": Case(policy_copy(lambda d, t: write(d / "config.json", '{"model_type": "llama", ')),
                                f"{POLICY}.path", "config.json' is not valid JSON"),
    "config-unknown-model-type": Case(policy_copy(lambda d, t: edit_config(d, model_type="llama9")),
                                      f"{POLICY}.path", "model type 'llama9', which transformers"),
    "config-remote-code-not-trusted": Case(policy_copy(lambda d, t: with_remote_code(d, t / MARKER)),
                                           f"{POLICY}.path", "set model.init_args.policy.trust_remote_code: true"),
    "reference-remote-code-not-trusted": Case(
        lambda m, z, t: ["--model.reference.path", str(with_remote_code(copy_model(m, t / "ref"), t / MARKER))],
        f"{REFERENCE}.path", "set model.init_args.reference.trust_remote_code: true"),
    "config-pad-token-id-beyond-embeddings": Case(policy_copy(lambda d, t: edit_config(d, pad_token_id=99)),
                                                  f"{POLICY}.path", "pad_token_id 99, outside the model's 15"),
    # weights
    "weights-missing": Case(policy_copy(without_weights), f"{POLICY}.path", "has a config.json but no weights"),
    "weights-wrong-shape": Case(policy_copy(lambda d, t: edit_config(d, hidden_size=48)), f"{POLICY}.path",
                                "do not fit its config.json"),
    "weights-malicious-pickle": Case(policy_copy(lambda d, t: with_malicious_pickle(d, t / MARKER)),
                                     f"{POLICY}.path", "a pickle that holds code"),
    "reward-model-malicious-pickle": Case(
        lambda m, z, t: reward_model(with_malicious_pickle(copy_model(z["reward"], t / "rm"), t / MARKER)),
        f"{REWARD}.path", "a pickle that holds code"),
    "weights-nan-policy": Case(policy_copy(lambda d, t: with_nonfinite_weights(d)), f"{POLICY}.path",
                               "hold 4 NaN or infinite values in 1 tensor"),
    "weights-nan-reference": Case(
        lambda m, z, t: ["--model.reference.path", str(with_nonfinite_weights(copy_model(m, t / "ref")))],
        f"{REFERENCE}.path", "hold 4 NaN or infinite values"),
    "weights-nan-reward-model": Case(
        lambda m, z, t: reward_model(with_nonfinite_weights(copy_model(z["reward"], t / "rm"))),
        f"{REWARD}.path", "hold 4 NaN or infinite values"),
    "weights-nan-critic": Case(
        lambda m, z, t: PPO + ["--model.critic.path", str(with_nonfinite_weights(copy_model(m, t / "critic")))],
        f"{CRITIC}.path", "hold 4 NaN or infinite values"),
    # the wrong kind of model
    "policy-is-a-reward-model": Case(lambda m, z, t: policy(z["reward"]), f"{POLICY}.path",
                                     "LlamaForSequenceClassification checkpoint (a reward or classification model)"),
    "reward-model-is-a-causal-lm": Case(lambda m, z, t: reward_model(m), f"{REWARD}.path",
                                        "is a causal language model (LlamaForCausalLM), not a reward model"),
    "reward-model-of-two-labels": Case(lambda m, z, t: reward_model(z["two_labels"]), f"{REWARD}.path",
                                       "has 2 outputs (num_labels 2); a reward model has one output"),
    "preference-model-is-a-causal-lm": Case(
        lambda m, z, t: ["--model.reward", "rlhf_lightning.rewards.PreferenceModel", "--model.reward.path", str(m)],
        f"{REWARD}.path", "not a preference model"),
    "critic-of-two-labels": Case(lambda m, z, t: PPO + ["--model.critic.path", str(z["two_labels"])],
                                 f"{CRITIC}.path", "a classifier with 2 outputs"),
    "critic-is-a-data-file": Case(lambda m, z, t: PPO + ["--model.critic.path", str(m / "config.json")],
                                  f"{CRITIC}.path", "is a file, not a model directory"),
    "policy-is-a-lora-adapter": Case(lambda m, z, t: policy(z["adapter"]), f"{POLICY}.path",
                                     "is a LoRA adapter for the base model"),
    # LoRA and 4-bit settings
    "lora-target-modules-missing": Case(lambda m, z, t: ["--model.policy.lora.target_modules", "[q_proj, qkv_proj]"],
                                        f"{POLICY}.lora.target_modules", "'qkv_proj' is not a module of the model"),
    "lora-r-zero": Case(lambda m, z, t: ["--model.policy.lora.r", "0"], f"{POLICY}.lora.r",
                        "must be a positive integer, got 0"),
    "lora-r-negative": Case(lambda m, z, t: ["--model.policy.lora.r", "-8"], f"{POLICY}.lora.r",
                            "must be a positive integer, got -8"),
    "lora-dropout-one": Case(lambda m, z, t: ["--model.policy.lora.dropout", "1.0"], f"{POLICY}.lora.dropout",
                             "must be in [0, 1), got 1.0"),
    "load-in-4bit-on-cpu": Case(lambda m, z, t: ["--model.policy.load_in_4bit", "true", "--model.policy.lora", "{}"],
                                f"{POLICY}.load_in_4bit", "needs a CUDA GPU",
                                marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here")]),
    # hub ids (offline)
    "hub-id-not-in-the-cache": Case(lambda m, z, t: ["--model.reference.path", "tiny-org/not-downloaded"],
                                    f"{REFERENCE}.path", "'tiny-org/not-downloaded' is not in the Hugging Face cache",
                                    hub=True),
    "hub-revision-not-in-the-cache": Case(
        lambda m, z, t: policy("tiny-org/tiny-llama") + ["--model.policy.revision", "v9"], f"{POLICY}.path",
        "revision 'v9' of 'tiny-org/tiny-llama' is not in the Hugging Face cache (cached: main)", hub=True),
    # tokenizers
    "tokenizer-without-eos": Case(policy_copy(lambda d, t: with_tokenizer_config(d, eos_token=None)),
                                  f"{POLICY}.path", "has no EOS token"),
    "tokenizer-pad-token-beyond-embeddings": Case(policy_copy(with_added_pad_token), f"{POLICY}.path",
                                                  "(its pad token '[PAD]' is id 15)"),
    "tokenizer-json-cut-short": Case(policy_copy(lambda d, t: write(d / "tokenizer.json", '{"version": "1.0"')),
                                     f"{POLICY}.path", "tokenizer.json' is not valid JSON"),
    "data-tokenizer-json-of-another-layout": Case(
        lambda m, z, t: ["--data.tokenizer", str(with_foreign_tokenizer_json(copy_model(m, t / "tok")))],
        "data.init_args.tokenizer", "is not a tokenizer the tokenizers library reads"),
    "reward-model-chat-template-raises": Case(
        lambda m, z, t: ["--model.policy.path", str(z["chat"]), "--data.tokenizer", str(z["chat"]),
                         "--data.train_file", str(z["chat_prompts"])]
        + reward_model(with_raising_chat_template(copy_model(z["chat_reward"], t / "rm"))),
        f"{REWARD}.path", "chat template of"),
    # the reference and the critic read the policy's tokens
    "reference-with-fewer-positions": Case(
        lambda m, z, t: ["--model.reference.path",
                         str(edit_config(copy_model(m, t / "ref"), max_position_embeddings=8))],
        f"{REFERENCE}.path", "has 8 positions"),
    "critic-with-fewer-positions": Case(
        lambda m, z, t: PPO + ["--model.critic.path", str(edit_config(copy_model(m, t / "critic"),
                                                                      max_position_embeddings=8))],
        f"{CRITIC}.path", "has 8 positions"),
    "reference-of-another-family": Case(lambda m, z, t: ["--model.reference.path", str(z["neox"])],
                                        f"{REFERENCE}.path", "is not the policy's"),
    "critic-of-another-family": Case(lambda m, z, t: PPO + ["--model.critic.path", str(z["neox"])],
                                     f"{CRITIC}.path", "is not the policy's"),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    """No case may reach the network (``HF_HUB_OFFLINE=1``): a path that is taken for a hub id fails at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def offline_hub(tiny_model, tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache in ``tmp_path`` holding tiny-org/tiny-llama at ``main`` (offline, see :func:`offline`)."""
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    fill_hub_cache(hf_home, "tiny-org/tiny-llama", tiny_model)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    return hf_home


@pytest.mark.parametrize("case", [pytest.param(name, marks=case.marks) for name, case in CASES.items()])
def test_bad_model_input_is_one_message(case, tiny_model, tiny_data, zoo, run_root, tmp_path, capsys, request):
    spec = CASES[case]
    if spec.hub:
        request.getfixturevalue("offline_hub")
    cases = tmp_path / "case"
    cases.mkdir()
    args = bare_run_args(tiny_model, tiny_data, run_root) + OVERWRITE + spec.build(tiny_model, zoo, cases)
    message = expect_fault(args, capsys, spec.text, protect=run_root)
    assert message.startswith(f"rlhf-lightning: error in the recipe: {spec.field}: "), message
    assert "\n  fix: " in message, message
    assert not (cases / MARKER).exists(), "the shipped code or pickle was run"


def test_shipped_code_of_a_known_architecture_is_never_run(tiny_model, tiny_data, run_root, tmp_path):
    """A checkpoint of an architecture transformers knows (model_type llama) that also ships code (auto_map)
    trains with transformers' own implementation: the shipped code is not run without trust_remote_code."""
    from rlhf_lightning.cli import main

    model = with_remote_code(copy_model(tiny_model, tmp_path / "model"), tmp_path / MARKER, model_type="llama")
    main(bare_run_args(tiny_model, tiny_data, run_root) + OVERWRITE + policy(model))
    assert not (tmp_path / MARKER).exists()
