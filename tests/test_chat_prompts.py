"""Online training on chat prompts: messages go through the chat template with the generation prompt, once
with BOS, and the template's end-of-turn token ends a response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_lightning.data.encoding import encode_prompt
from runs import RecordRollouts, fit_with_callbacks, tiny_run_args
from tiny import make_chat_tokenizer, make_model_dir, make_prompt_files


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("chatml") / "model", tokenizer=make_chat_tokenizer("<|im_end|>"))


def _chat_files(root: Path) -> dict:
    """The tiny prompts as one-turn conversations in a ``messages`` column."""
    root.mkdir(parents=True)
    files = make_prompt_files(root)
    for path in files.values():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        rows = [{"messages": [{"role": "user", "content": r["prompt"]}], "reference": r["reference"]} for r in records]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return files


def test_rendered_text_gets_one_bos():
    tokenizer = make_chat_tokenizer()
    messages = [{"role": "user", "content": "say : cat"}]
    from_messages = encode_prompt(tokenizer, messages)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<s>")
    from_text = encode_prompt(tokenizer, rendered)  # a template rendered beforehand, BOS included
    assert from_text == from_messages
    assert from_messages.count(tokenizer.bos_token_id) == 1 and from_messages[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(from_messages[-2:]) == ["<turn>", "assistant"]  # the generation prompt
    assert encode_prompt(tokenizer, "say : cat")[0] == tokenizer.bos_token_id  # plain text still gets its BOS


def test_chat_prompts_train_online_and_the_policy_learns(chat_model, tmp_path):
    files = _chat_files(tmp_path / "data")
    args = tiny_run_args(chat_model, files, tmp_path / "run", batches=8,
                         extra=["--data.prompt_column", "messages"])
    recorder = RecordRollouts()
    cli = fit_with_callbacks(args, recorder)
    tokenizer = cli.model.tokenizer
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert cli.model.generator.eos_ids == (tokenizer.eos_token_id, end_of_turn)
    first = recorder.rollouts[0]
    prompt = first.input_ids[0, :first.prompt_length][first.attention_mask[0, :first.prompt_length].bool()].tolist()
    train_prompts = [encode_prompt(tokenizer, row["prompt"]) for row in cli.datamodule.splits["train"]]
    assert prompt in train_prompts  # the batch holds the template's encoding of a training conversation
    assert prompt[0] == tokenizer.bos_token_id and prompt.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_ids_to_tokens(prompt[-2:]) == ["<turn>", "assistant"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reward"] > summary["sft_reward"] + 0.5, summary
    assert summary["win_rate_vs_sft"] >= 0.75, summary


@pytest.mark.parametrize("end_of_turn", ["<|im_end|>", "<end_of_turn>", "<|eot_id|>"])
def test_chat_targets_end_with_the_templates_end_of_turn(end_of_turn, tmp_path):
    """SFT on chat messages and preference pairs with chat prompts: the target is the template's assistant turn,
    ending with its end-of-turn token (not the tokenizer's EOS), after a prompt with one BOS."""
    from rlhf_lightning.data import PreferenceDataModule, SFTDataModule

    tokenizer = make_chat_tokenizer(end_of_turn)
    tokenizer.save_pretrained(tmp_path / "tok")
    user = {"role": "user", "content": "say : cat"}
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [user, {"role": "assistant", "content": "good cat"}]}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": [user], "chosen": "good", "rejected": "bad bad"}) + "\n")
    end = tokenizer.convert_tokens_to_ids(end_of_turn)
    for module in (SFTDataModule(str(sft), str(tmp_path / "tok"), messages_column="messages", batch_size=1),
                   PreferenceDataModule(str(pairs), str(tmp_path / "tok"), batch_size=1)):
        module.setup("fit")
        batch = module.collate(module.splits["train"])
        for row in range(len(batch)):
            prompt = batch.input_ids[row, :batch.prompt_length][batch.attention_mask[row, :batch.prompt_length].bool()]
            response = batch.input_ids[row, batch.prompt_length:][batch.response_mask[row].bool()]
            assert prompt.tolist().count(tokenizer.bos_token_id) == 1 and prompt[0] == tokenizer.bos_token_id
            assert response[-1] == end and tokenizer.eos_token_id not in response.tolist()
    texts = encode_prompt(tokenizer, "say : cat")  # plain text keeps the tokenizer's EOS as its end
    from rlhf_lightning.data.encoding import encode_response

    assert encode_response(tokenizer, "good", "say : cat")[-1] == tokenizer.eos_token_id and texts[0] == tokenizer.bos_token_id


def test_trls_implicit_prompt_preference_format_is_one_clear_error(tmp_path):
    """Whole chosen/rejected conversations without a prompt column: named, with the fix."""
    from rlhf_lightning.data import PreferenceDataModule
    from rlhf_lightning.errors import RecipeError

    tokenizer = make_chat_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    user = {"role": "user", "content": "say : cat"}
    row = {"chosen": [user, {"role": "assistant", "content": "good"}],
           "rejected": [user, {"role": "assistant", "content": "bad"}]}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(RecipeError, match="implicit-prompt format") as caught:
        PreferenceDataModule(str(tmp_path / "pairs.jsonl"), str(tmp_path / "tok")).setup("fit")
    assert caught.value.field == "data.init_args.train_file"
