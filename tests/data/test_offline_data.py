"""Offline data modules (SFT, preference pairs, unpaired KTO labels) on tiny local files.

Files are written in ``tmp_path``; the tokenizer is the word-level one of ``tests/tiny.py``
(``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, then the WORDS in order, no BOS).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.data import PreferenceDataModule, SFTDataModule, UnpairedDataModule
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.logprobs import response_logprobs
from rlhf_lightning.objectives.sft import SFT
from tiny import SPECIALS, WORDS, make_model_dir

ID = {w: i for i, w in enumerate(SPECIALS + WORDS)}
PAD, EOS = ID["<pad>"], ID["<eos>"]
# a chat template made of vocabulary words, so every token is known: "<content> ... say :"
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}say :{% endif %}")


def ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("offline") / "model")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    path = make_model_dir(tmp_path_factory.mktemp("offline_chat") / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SFT_ROWS = [{"prompt": "say : cat", "response": "good"},
            {"prompt": "say : cat dog sun", "response": "good good red"},
            {"prompt": "say :", "response": "blue"}]
PAIR_ROWS = [{"prompt": "say : cat", "chosen": "good good", "rejected": "bad"},
             {"prompt": "say : dog sun moon", "chosen": "good", "rejected": "bad bad bad"}]
KTO_ROWS = [{"prompt": "say : cat", "completion": "good", "label": True},
            {"prompt": "say : dog sun", "completion": "bad bad", "label": False},
            {"prompt": "say :", "completion": "good red", "label": True}]


def setup(module):
    module.setup("fit")
    return module


# ---------------------------------------------------------------------------- file formats and columns
def test_sft_default_columns_and_collate_layout(model_dir, tmp_path):
    dm = setup(SFTDataModule(str(write_jsonl(tmp_path / "t.jsonl", SFT_ROWS)), str(model_dir), batch_size=3))
    batch = dm.collate(dm.splits["train"])
    assert isinstance(batch, SequenceBatch) and batch.group_size == 1
    P = 5  # longest prompt "say : cat dog sun"
    assert batch.prompt_length == P
    expected = [
        [PAD, PAD] + ids("say : cat") + ids("good") + [EOS, PAD, PAD],
        ids("say : cat dog sun") + ids("good good red") + [EOS],
        [PAD, PAD, PAD] + ids("say :") + ids("blue") + [EOS, PAD, PAD],
    ]
    assert batch.input_ids.tolist() == expected
    assert batch.attention_mask.tolist() == [[int(t != PAD) for t in row] for row in expected]
    assert batch.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.extras["index"].tolist() == [0, 1, 2]
    # every response ends with EOS, the last real token of the row
    for row, mask in zip(batch.input_ids[:, P:], batch.response_mask):
        assert row[int(mask.sum()) - 1] == EOS


def test_configurable_columns_for_each_module(model_dir, tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"q": r["prompt"], "a": r["response"]} for r in SFT_ROWS])
    dm = setup(SFTDataModule(str(sft), str(model_dir), prompt_column="q", response_column="a"))
    assert [r["response_ids"] for r in dm.splits["train"]][0] == ids("good") + [EOS]

    pairs = write_jsonl(tmp_path / "p.jsonl", [{"x": r["prompt"], "w": r["chosen"], "l": r["rejected"], "m": 2.5}
                                               for r in PAIR_ROWS])
    dm = setup(PreferenceDataModule(str(pairs), str(model_dir), prompt_column="x", chosen_column="w",
                                    rejected_column="l", margin_column="m"))
    row = dm.splits["train"][0]
    assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (
        ids("say : cat"), ids("good good") + [EOS], ids("bad") + [EOS])
    assert dm.collate(dm.splits["train"]).extras["margin"].tolist() == [2.5] * 4

    unpaired = write_jsonl(tmp_path / "u.jsonl", [{"x": r["prompt"], "y": r["completion"], "ok": r["label"]}
                                                  for r in KTO_ROWS])
    dm = setup(UnpairedDataModule(str(unpaired), str(model_dir), prompt_column="x", completion_column="y",
                                  label_column="ok"))
    assert [r["label"] for r in dm.splits["train"]] == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("module, rows, option", [
    (SFTDataModule, SFT_ROWS, "data.init_args.response_column"),
    (PreferenceDataModule, PAIR_ROWS, "data.init_args.rejected_column"),
    (UnpairedDataModule, KTO_ROWS, "data.init_args.completion_column"),
])
def test_missing_column_names_the_option(model_dir, tmp_path, module, rows, option):
    column = option.split(".")[-1].removesuffix("_column")
    path = write_jsonl(tmp_path / "t.jsonl", [{k: v for k, v in r.items() if k != column} for r in rows])
    with pytest.raises(RecipeError, match=option) as error:
        setup(module(str(path), str(model_dir)))
    assert repr(column) in str(error.value)


def test_missing_prompt_column_names_the_option(model_dir, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": r["prompt"], "response": r["response"]} for r in SFT_ROWS])
    with pytest.raises(RecipeError, match="data.init_args.prompt_column"):
        setup(SFTDataModule(str(path), str(model_dir)))


def test_json_file_is_read_like_jsonl(model_dir, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(PAIR_ROWS))
    dm = setup(PreferenceDataModule(str(tmp_path / "t.json"), str(model_dir)))
    assert len(dm.splits["train"]) == 2


def test_parquet_file(model_dir, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pd.DataFrame(PAIR_ROWS).to_parquet(tmp_path / "t.parquet")
    dm = setup(PreferenceDataModule(str(tmp_path / "t.parquet"), str(model_dir)))
    assert [r["chosen_ids"] for r in dm.splits["train"]] == [ids("good good") + [EOS], ids("good") + [EOS]]


def test_save_to_disk_directory(model_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(KTO_ROWS).save_to_disk(str(tmp_path / "ds"))
    dm = setup(UnpairedDataModule(str(tmp_path / "ds"), str(model_dir)))
    assert [r["completion_ids"] for r in dm.splits["train"]][1] == ids("bad bad") + [EOS]


def test_unreadable_data_is_a_recipe_error(model_dir, tmp_path):
    with pytest.raises(RecipeError, match="data.init_args.train_file.*does not exist"):
        setup(SFTDataModule(str(tmp_path / "missing.jsonl"), str(model_dir)))
    (tmp_path / "t.txt").write_text("prompt,response\n")
    with pytest.raises(RecipeError, match="unsupported data file type"):
        setup(SFTDataModule(str(tmp_path / "t.txt"), str(model_dir)))


# ---------------------------------------------------------------------------- chat messages
def test_chat_prompt_goes_through_the_template(chat_dir, tmp_path):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "cat dog"}]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": messages, "chosen": "good", "rejected": "bad"}])
    dm = setup(PreferenceDataModule(str(path), str(chat_dir)))
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert dm.splits["train"][0]["prompt_ids"] == expected == ids("cat dog say :")


def test_sft_messages_column_last_assistant_message_is_the_response(chat_dir, tmp_path):
    rows = [{"chat": [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "good dog"}]},
            {"chat": [{"role": "user", "content": "sun"}, {"role": "assistant", "content": "red"},
                      {"role": "user", "content": "moon"}, {"role": "assistant", "content": "blue"}]},
            {"chat": [{"role": "user", "content": "tree"}]}]  # no assistant answer: a bad row
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.warns(UserWarning, match="1 message lists that do not end with an assistant message"):
        dm = setup(SFTDataModule(str(path), str(chat_dir), messages_column="chat"))
    first, second = dm.splits["train"]
    assert first["prompt_ids"] == ids("cat say :") and first["response_ids"] == ids("good dog") + [EOS]
    assert second["prompt_ids"] == ids("sun red moon say :") and second["response_ids"] == ids("blue") + [EOS]


def test_chat_prompt_without_template_is_a_recipe_error(model_dir, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "cat"}],
                                               "chosen": "good", "rejected": "bad"}])
    with pytest.raises(RecipeError, match="data.init_args.prompt_column.*no chat template"):
        setup(PreferenceDataModule(str(path), str(model_dir)))


# ---------------------------------------------------------------------------- bad rows
BAD_SFT = SFT_ROWS + [
    {"prompt": "say : cat", "response": "  "},  # empty response
    {"prompt": "say : cat dog sun moon tree", "response": "good"},  # 7 prompt tokens > 6
    {"prompt": "say : cat", "response": "good good good good"},  # 5 response tokens (EOS incl.) > 4
    {"prompt": "say : rock", "response": ""},  # empty response
]


def test_bad_rows_are_counted_warned_and_skipped(model_dir, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", BAD_SFT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = setup(SFTDataModule(str(path), str(model_dir), max_prompt_length=6, max_response_length=4))
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert "skipped 4 of 7 rows" in message
    assert "2 empty responses (first: row 3)" in message
    assert "1 prompts longer than max_prompt_length=6 (first: row 4)" in message
    assert "1 responses longer than max_response_length=4 (first: row 5)" in message
    assert [r["index"] for r in dm.splits["train"]] == [0, 1, 2]


@pytest.mark.parametrize("row, field", [
    ({"prompt": "say : cat", "response": ""}, "empty responses"),
    ({"prompt": "say : cat dog sun moon tree", "response": "good"}, "max_prompt_length=6"),
    ({"prompt": "say : cat", "response": "good good good good"}, "max_response_length=4"),
])
def test_bad_rows_raise_with_on_bad_row_error(model_dir, tmp_path, row, field):
    path = write_jsonl(tmp_path / "t.jsonl", SFT_ROWS + [row])
    with pytest.raises(RecipeError, match="data.init_args.train_file") as error:
        setup(SFTDataModule(str(path), str(model_dir), max_prompt_length=6, max_response_length=4,
                            on_bad_row="error"))
    assert field in str(error.value) and "1 of 4 rows" in str(error.value)


def test_bad_pair_rows_are_skipped(model_dir, tmp_path):
    rows = PAIR_ROWS + [{"prompt": "say : cat", "chosen": "good", "rejected": ""},
                        {"prompt": "say : cat", "chosen": "good good good good", "rejected": "bad"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.warns(UserWarning, match="skipped 2 of 4 rows"):
        dm = setup(PreferenceDataModule(str(path), str(model_dir), max_response_length=4))
    assert [r["index"] for r in dm.splits["train"]] == [0, 1]


def test_only_bad_rows_is_an_error(model_dir, tmp_path):
    """One error that says why the rows are unusable (no warning before it)."""
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "say :", "response": ""}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RecipeError, match="no usable rows.*1 empty responses"):
            setup(SFTDataModule(str(path), str(model_dir)))


def test_bad_settings_are_recipe_errors(model_dir, tmp_path):
    with pytest.raises(RecipeError, match="batch_size"):
        SFTDataModule("x.jsonl", str(model_dir), batch_size=0)
    with pytest.raises(RecipeError, match="max_length"):
        SFTDataModule("x.jsonl", str(model_dir), packing=True, max_length=0)


# ---------------------------------------------------------------------------- pair and KTO layouts
def test_preference_batches_interleave_chosen_and_rejected(model_dir, tmp_path):
    dm = setup(PreferenceDataModule(str(write_jsonl(tmp_path / "p.jsonl", PAIR_ROWS)), str(model_dir)))
    batch = dm.collate(dm.splits["train"])
    assert batch.group_size == 2 and batch.num_prompts == 2 and len(batch) == 4
    P = batch.prompt_length
    assert P == 5
    prompts = [ids("say : cat")] * 2 + [ids("say : dog sun moon")] * 2
    responses = [ids("good good"), ids("bad"), ids("good"), ids("bad bad bad")]
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        assert batch.input_ids[row, :P].tolist() == [PAD] * (P - len(prompt)) + prompt
        real = response + [EOS]
        assert batch.input_ids[row, P:P + len(real)].tolist() == real
        assert batch.response_mask[row].tolist() == [1] * len(real) + [0] * (4 - len(real))
    assert batch.extras["index"].tolist() == [0, 0, 1, 1]
    assert batch.extras["position"].tolist() == [0, 1, 0, 1]
    assert "margin" not in batch.extras


def test_kto_rows_pair_each_example_with_a_mismatched_completion(model_dir, tmp_path):
    rows = KTO_ROWS + [{"prompt": "say : moon", "completion": "red", "label": "false"},
                       {"prompt": "say : tree", "completion": "blue", "label": "Yes"}]
    dm = setup(UnpairedDataModule(str(write_jsonl(tmp_path / "u.jsonl", rows)), str(model_dir), batch_size=5))
    train = dm.splits["train"]
    assert [r["label"] for r in train] == [1.0, 0.0, 1.0, 0.0, 1.0]  # string labels parsed
    batch = dm.collate(train)
    n, P = len(train), batch.prompt_length
    assert batch.group_size == 2 and len(batch) == 2 * n
    for i in range(n):
        for offset, completion in ((0, train[i]["completion_ids"]), (1, train[(i + 1) % n]["completion_ids"])):
            row = 2 * i + offset
            prompt = train[i]["prompt_ids"]
            assert batch.input_ids[row, :P].tolist()[P - len(prompt):] == prompt
            assert batch.input_ids[row, P:P + len(completion)].tolist() == completion
    assert batch.extras["mismatched"].tolist() == [0.0, 1.0] * n
    assert batch.extras["label"].tolist() == [l for r in train for l in (r["label"], r["label"])]
    assert batch.extras["index"].tolist() == [i for i in range(n) for _ in range(2)]


# ---------------------------------------------------------------------------- loss masking
def test_sft_loss_is_the_mean_nll_of_response_tokens_only(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    dm = setup(SFTDataModule(str(write_jsonl(tmp_path / "t.jsonl", SFT_ROWS)), str(model_dir), batch_size=3))
    batch = dm.collate(dm.splits["train"])
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
        loss, metrics = SFT().loss(logprobs, batch)
        # by hand: each row unpadded, NLL of its response tokens (incl. EOS) given everything before them
        nlls = []
        for row in dm.splits["train"]:
            sequence = torch.tensor([row["prompt_ids"] + row["response_ids"]])
            logp = model(sequence).logits[0].log_softmax(-1)
            start = len(row["prompt_ids"])
            for t in range(start, sequence.shape[1]):
                nlls.append(-float(logp[t - 1, sequence[0, t]]))
    assert len(nlls) == 2 + 4 + 2 == int(metrics["sft/tokens"])
    assert math.isclose(float(loss), sum(nlls) / len(nlls), rel_tol=1e-4)


# ---------------------------------------------------------------------------- packing
def packing_rows(n: int = 10) -> list[dict]:
    nouns = WORDS[4:10]
    return [{"prompt": f"say : {nouns[i % 6]}", "response": " ".join(["good"] * (1 + i % 3))} for i in range(n)]


def test_packing_layout(model_dir, tmp_path):
    rows = [{"prompt": "say : cat", "response": "good"},  # 3 + 2 tokens
            {"prompt": "say :", "response": "good red"},  # 2 + 3
            {"prompt": "say : dog sun", "response": "blue"}]  # 4 + 2
    dm = setup(SFTDataModule(str(write_jsonl(tmp_path / "t.jsonl", rows)), str(model_dir), packing=True,
                             max_length=10, batch_size=2))
    assert len(dm.splits["train"]) == 2  # [ex0 + ex1] (10 tokens), [ex2]
    batch = dm.collate(dm.splits["train"])
    assert batch.prompt_length == 1 and batch.group_size == 1
    first = ids("say : cat good") + [EOS] + ids("say : good red") + [EOS]
    second = ids("say : dog sun blue") + [EOS]
    assert batch.input_ids.tolist() == [first, second + [PAD] * 4]
    assert batch.attention_mask.tolist() == [[1] * 10, [1] * 6 + [0] * 4]
    loss_mask = batch.extras["loss_mask"]
    assert loss_mask.shape == (2, 9)
    # response block = tokens 1.. of the row; 1 on the responses (EOS included), 0 on prompts and padding
    assert loss_mask.tolist() == [[0, 0, 1, 1, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0, 0]]


def test_packing_too_long_example_is_a_bad_row(model_dir, tmp_path):
    rows = [{"prompt": "say : cat", "response": "good"}, {"prompt": "say : cat dog", "response": "good good red"}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.warns(UserWarning, match="1 examples longer than max_length=6"):
        dm = setup(SFTDataModule(str(path), str(model_dir), packing=True, max_length=6))
    assert dm.splits["train"][0]["input_ids"] == ids("say : cat good") + [EOS]
    with pytest.raises(RecipeError, match="max_length=6"):
        setup(SFTDataModule(str(path), str(model_dir), packing=True, max_length=6, on_bad_row="error"))


def test_packed_and_unpacked_have_the_same_loss_tokens(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    path = str(write_jsonl(tmp_path / "t.jsonl", packing_rows(10)))
    plain = setup(SFTDataModule(path, str(model_dir), batch_size=10))
    packed = setup(SFTDataModule(path, str(model_dir), batch_size=10, packing=True, max_length=16))
    assert len(packed.splits["train"]) < len(plain.splits["train"])
    results = []
    for dm in (plain, packed):
        batch = dm.collate(dm.splits["train"])
        with torch.no_grad():
            logprobs, _ = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
            loss, metrics = SFT().loss(logprobs, batch)
        assert torch.isfinite(loss)
        results.append((int(metrics["sft/tokens"]), float(loss)))
    expected_tokens = sum(len(r["response_ids"]) for r in plain.splits["train"])
    assert results[0][0] == results[1][0] == expected_tokens
    # the first example of each packed row sees exactly its own context: same NLL as unpacked
    batch = packed.collate(packed.splits["train"][:1])
    first = plain.splits["train"][0]
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, batch.input_ids, batch.attention_mask, 1)
        single = plain.collate([first])
        reference, _ = response_logprobs(model, single.input_ids, single.attention_mask, single.prompt_length)
    n_prompt, n_response = len(first["prompt_ids"]), len(first["response_ids"])
    torch.testing.assert_close(logprobs[0, n_prompt - 1:n_prompt - 1 + n_response], reference[0], rtol=1e-4, atol=1e-5)


def test_packed_chunk_weights_are_exact(model_dir, tmp_path):
    path = str(write_jsonl(tmp_path / "t.jsonl", packing_rows(12)))
    dm = setup(SFTDataModule(path, str(model_dir), batch_size=4, packing=True, max_length=12))
    batch = dm.collate(dm.splits["train"][:4])
    logprobs = -torch.rand(batch.extras["loss_mask"].shape, generator=torch.Generator().manual_seed(0))
    objective = SFT()
    whole, _ = objective.loss(logprobs, batch)
    chunks = batch.split(1)
    assert sum(objective.chunk_weight(c, batch) for c in chunks) == pytest.approx(1.0)
    combined = sum(objective.loss(logprobs[i:i + 1], c)[0] * objective.chunk_weight(c, batch)
                   for i, c in enumerate(chunks))
    torch.testing.assert_close(combined, whole)


def test_packed_sft_learns(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    path = str(write_jsonl(tmp_path / "t.jsonl", packing_rows(24)))
    dm = setup(SFTDataModule(path, str(model_dir), batch_size=4, packing=True, max_length=24, shuffle=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    objective = SFT()
    losses = []
    for _ in range(3):
        for batch in dm.train_dataloader():
            logprobs, _ = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
            loss, _ = objective.loss(logprobs, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------- resumable training loader
@pytest.mark.parametrize("module, rows", [(SFTDataModule, SFT_ROWS * 4), (PreferenceDataModule, PAIR_ROWS * 6),
                                          (UnpairedDataModule, KTO_ROWS * 4)])
def test_training_loader_resumes_mid_epoch(model_dir, tmp_path, module, rows):
    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    full = setup(module(path, str(model_dir), batch_size=2, seed=3))
    loader = full.train_dataloader()
    loader.sampler.set_epoch(1)
    epoch_one = [b.extras["index"].tolist() for b in loader]
    loader.sampler.set_epoch(0)
    epoch_zero = [b.extras["index"].tolist() for b in loader]
    assert epoch_zero != epoch_one  # a new seeded permutation each epoch
    assert sorted(i for b in epoch_zero for i in b) == sorted(i for b in epoch_one for i in b)
    assert full.state_dict() == {}  # no trainer: nothing to save yet

    # resume before the loader exists (checkpoint loaded first), then after it exists
    resumed = setup(module(path, str(model_dir), batch_size=2, seed=3))
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    assert [b.extras["index"].tolist() for b in resumed.train_dataloader()] == epoch_one[2:]
    assert [b.extras["index"].tolist() for b in resumed.train_dataloader()] == epoch_one  # one pass only
    resumed.load_state_dict({"epoch": 0, "batches": 1})
    assert [b.extras["index"].tolist() for b in resumed.train_dataloader()] == epoch_zero[1:]
    resumed.load_state_dict({})  # an old checkpoint without a position: no-op
    assert [b.extras["index"].tolist() for b in resumed.train_dataloader()] == epoch_zero


def test_validation_loader_keeps_order(model_dir, tmp_path):
    path = str(write_jsonl(tmp_path / "t.jsonl", SFT_ROWS * 2))
    dm = setup(SFTDataModule(path, str(model_dir), validation_file=path, batch_size=4))
    assert [b.extras["index"].tolist() for b in dm.val_dataloader()] == [[0, 1, 2, 3], [4, 5]]
    assert setup(SFTDataModule(path, str(model_dir))).val_dataloader() == []


def test_rows_that_would_train_on_nothing_are_bad_rows(model_dir, tmp_path):
    """Identical chosen/rejected (zero gradient) and empty prompts are counted and skipped, not trained on."""
    rows = PAIR_ROWS + [{"prompt": "say : cat", "chosen": "good", "rejected": "good"},
                        {"prompt": "  ", "chosen": "good", "rejected": "bad"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.warns(UserWarning, match="skipped 2 of 4 rows") as caught:
        dm = setup(PreferenceDataModule(str(path), str(model_dir)))
    message = str(caught[0].message)
    assert "1 identical chosen and rejected responses" in message and "1 empty prompts" in message, message
    assert [r["index"] for r in dm.splits["train"]] == [0, 1]


@pytest.mark.parametrize("label, expected", [(True, 1.0), (1, 1.0), ("desirable", 1.0), ("Yes", 1.0),
                                             (False, 0.0), (0, 0.0), ("undesirable", 0.0), ("no", 0.0)])
def test_kto_labels(model_dir, tmp_path, label, expected):
    rows = [{"prompt": "say : cat", "completion": "good", "label": label},
            {"prompt": "say : dog", "completion": "bad", "label": label}]
    dm = setup(UnpairedDataModule(str(write_jsonl(tmp_path / "u.jsonl", rows)), str(model_dir)))
    assert [r["label"] for r in dm.splits["train"]] == [expected, expected]


@pytest.mark.parametrize("label", [-1, 2, 0.5, "maybe"])
def test_kto_labels_that_bool_would_misread_are_bad_rows(model_dir, tmp_path, label):
    rows = [{"prompt": "say : cat", "completion": "good", "label": True},
            {"prompt": "say : dog", "completion": "bad", "label": label}]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    with pytest.raises(RecipeError, match="labels that are not true/false"):
        setup(UnpairedDataModule(str(path), str(model_dir), on_bad_row="error"))
