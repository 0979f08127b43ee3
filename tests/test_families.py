"""The model-family matrix: tiny random GPT-NeoX, Llama-3, Qwen2, GPT-2, Mistral, Gemma and Phi-3 checkpoints
(byte-level BPE tokenizers with each family's special tokens and chat template) through chat SFT, DPO and
REBEL with LoRA for 2 steps each, exported and reloaded: EOS sets, end-of-turn targets, one BOS, tied
embeddings kept tied."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from families import FAMILIES, make_family_checkpoint
from rlhf_lightning.data.encoding import encode_prompt, encode_response
from rlhf_lightning.generation import eos_token_ids
from runs import run_cli, tiny_run_args, without_evaluation
from test_offline_end_to_end import offline_args, offline_files

LORA = ["--model.policy.lora.r", "4", "--model.policy.lora.alpha", "8",
        "--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    spec = FAMILIES[request.param]
    return spec, make_family_checkpoint(spec, tmp_path_factory.mktemp(spec.name) / "model")


def _chat(spec, text):
    return [{"role": "user", "content": text}] if spec.template else text


def test_eos_set_bos_and_end_of_turn_targets(family):
    spec, path = family
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = eos_token_ids(tokenizer, model)
    expected = {tokenizer.convert_tokens_to_ids(t) for t in (spec.eos, *spec.extra_eos)}
    if spec.end_of_turn:
        expected.add(tokenizer.convert_tokens_to_ids(spec.end_of_turn))
    assert expected <= set(ids), (ids, expected)
    prompt = _chat(spec, "say : good cat")
    prompt_ids = encode_prompt(tokenizer, prompt)
    if spec.bos:
        assert prompt_ids.count(tokenizer.bos_token_id) == 1 and prompt_ids[0] == tokenizer.bos_token_id
    response = encode_response(tokenizer, "good dog", prompt)
    end = tokenizer.convert_tokens_to_ids(spec.end_of_turn) if spec.end_of_turn else tokenizer.eos_token_id
    assert end in response and response[-1] in (end, *tokenizer.encode("\n", add_special_tokens=False)), \
        tokenizer.convert_ids_to_tokens(response)
    assert end in ids  # the target's last turn token ends a generated response too


def _assert_export(cli, root, spec):
    export = root / "policy"
    reloaded = AutoModelForCausalLM.from_pretrained(export).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(export).encode("say : good cat")])
    cli.model.policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, cli.model.policy(ids).logits, rtol=1e-4, atol=1e-4)
    if spec.tied:
        assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()


def test_chat_sft_with_lora_exports_and_reloads(family, tmp_path):
    spec, path = family
    files = offline_files(tmp_path / "data")
    if spec.template:  # the SFT rows as conversations
        rows = [json.loads(line) for line in open(files["sft_train"])]
        chat = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
                for r in rows]
        (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
        files["sft_train"] = str(tmp_path / "chat.jsonl")
    extra = LORA + (["--data.messages_column", "messages"] if spec.template else [])
    cli = run_cli(offline_args(path, files, tmp_path / "sft", ["--model.objective", "rlhf_lightning.objectives.SFT"],
                               "sft", batches=2, evaluate=False, extra=extra))
    assert cli.trainer.global_step == 2
    _assert_export(cli, tmp_path / "sft", spec)


def test_dpo_with_lora_exports_and_reloads(family, tmp_path):
    spec, path = family
    files = offline_files(tmp_path / "data")
    cli = run_cli(offline_args(path, files, tmp_path / "dpo", ["--model.objective", "rlhf_lightning.objectives.DPO"],
                               "pairs", batches=2, evaluate=False, extra=LORA))
    assert cli.trainer.global_step == 2
    _assert_export(cli, tmp_path / "dpo", spec)


def test_rebel_with_lora_exports_and_reloads(family, tiny_data, tmp_path):
    spec, path = family
    args = without_evaluation(tiny_run_args(path, tiny_data, tmp_path / "rebel", batches=1, extra=LORA))
    cli = run_cli(args)
    assert cli.trainer.global_step == 2  # 1 rollout batch × 2 inner epochs
    assert set(cli.model.generator.eos_ids) >= {cli.model.tokenizer.eos_token_id}
    _assert_export(cli, tmp_path / "rebel", spec)
