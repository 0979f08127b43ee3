"""Bad input to the reward sources and the data modules: one RecipeError naming the field and the fix (or a
counted, reported bad row), never a traceback and never a wrong result without an error.

Covers: a reward function's nested return, a custom source or preference source that returns the wrong number
of values, a preference function that returns a bad value or raises, response lists that do not end with the
assistant's message or hold messages that are not the prompt, TRL's implicit-prompt format with text pairs, the
KTO label words, a ``DatasetDict`` written by ``save_to_disk``, and unusable ``eval_prompt_file`` rows.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from faults import bare_run_args, expect_exit
from rlhf_lightning.cli import main
from rlhf_lightning.data import PreferenceDataModule, SFTDataModule, UnpairedDataModule
from rlhf_lightning.data.files import read_records
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.guards import RewardFailed
from rlhf_lightning.rewards import (FunctionPreference, FunctionReward, PreferenceSource, RewardSource, RewardTerm,
                                    WeightedRewards)
from tiny import make_chat_tokenizer, make_tokenizer

MODULE = "test_input_checks_rewards_data"
FUNCTION_FIELD = "model.init_args.reward.init_args.function"


# ----------------------------------------------------------------------------- user code named by the tests
def nested(prompts, responses):
    return [[1.0, 2.0], [3.0, 4.0]]


def column_tensor(prompts, responses):
    return torch.ones(len(responses), 1)


def grid_array(prompts, responses):
    return np.ones((2, len(responses) // 2))


def one_float(prompts, responses):
    return 1.0


def flat_list(prompts, responses):
    return [float(i) for i in range(len(responses))]


def flat_tuple(prompts, responses):
    return tuple(float(i) for i in range(len(responses)))


def flat_tensor(prompts, responses):
    return torch.arange(len(responses), dtype=torch.float64)


def flat_array(prompts, responses):
    return np.arange(len(responses))


def bools(prompts, responses):
    return [i % 2 == 0 for i in range(len(responses))]


def judge_raises(prompts, responses_a, responses_b):
    raise ConnectionError("the judge server is down")


def judge_short(prompts, responses_a, responses_b):
    return [0.5]


def judge_nested(prompts, responses_a, responses_b):
    return [[0.5] for _ in responses_a]


def judge_words(prompts, responses_a, responses_b):
    return ["a"] * len(responses_a)


def judge_nan(prompts, responses_a, responses_b):
    return [float("nan")] * len(responses_a)


def judge_out_of_range(prompts, responses_a, responses_b):
    return [1.5] * len(responses_a)


def judge_fair(prompts, responses_a, responses_b):
    return [0.5] * len(responses_a)


class ThreeScores(RewardSource):
    """Returns 3 scores whatever the batch."""

    def score(self, prompts, responses):
        return torch.zeros(3)


class GridScores(RewardSource):
    """Returns the right number of scores, in a shape that does not say which is whose."""

    def score(self, prompts, responses):
        return torch.zeros(2, len(responses) // 2)


class ColumnScores(RewardSource):
    """Returns a column of logits ``[N, 1]``, as a classifier head does (unambiguous: accepted)."""

    def score(self, prompts, responses):
        return torch.arange(len(responses), dtype=torch.float32)[:, None]


class OwnScoreTerms(RewardSource):
    """Overrides score_terms itself and gets the count wrong."""

    def score(self, prompts, responses):
        return torch.zeros(len(responses))

    def score_terms(self, prompts, responses, group_size, **columns):
        return torch.zeros(len(responses) + 1), {}


class ShortPreference(PreferenceSource):
    def preference(self, prompts, responses_a, responses_b):
        return torch.zeros(len(responses_a) + 2)


class WordPreference(PreferenceSource):
    def preference(self, prompts, responses_a, responses_b):
        return ["yes"] * len(responses_a)


# ----------------------------------------------------------------------------- 1. FunctionReward's return
@pytest.mark.parametrize("function, shape", [("nested", "[2, 2]"), ("column_tensor", "[4, 1]"),
                                             ("grid_array", "[2, 2]")])
def test_a_reward_function_returning_a_nested_value_is_an_error(function, shape):
    with pytest.raises(RecipeError) as info:
        FunctionReward(f"{MODULE}.{function}").score_terms(["x"] * 4, ["a", "b", "c", "d"], 1)
    error = info.value
    assert error.field == FUNCTION_FIELD
    assert f"'{MODULE}.{function}'" in error.problem and shape in error.problem and "[4]" in error.problem
    assert "flat list" in error.fix and "one per response" in error.fix


def test_a_reward_function_returning_one_number_is_an_error_even_for_one_response():
    for count in (1, 4):
        with pytest.raises(RecipeError, match="returned 1 rewards for") as info:
            FunctionReward(f"{MODULE}.one_float").score(["x"] * count, ["a"] * count)
        assert "a single float" in info.value.problem


@pytest.mark.parametrize("function", ["flat_list", "flat_tuple", "flat_tensor", "flat_array"])
def test_flat_returns_are_one_reward_per_response(function):
    scores = FunctionReward(f"{MODULE}.{function}").score(["x"] * 4, ["a", "b", "c", "d"])
    assert scores.dtype == torch.float32 and scores.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_bools_are_rewards():
    assert FunctionReward(f"{MODULE}.bools").score(["x"] * 3, ["a", "b", "c"]).tolist() == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- 2. custom sources, preferences
@pytest.mark.parametrize("source, got", [(ThreeScores(), "3 values"), (GridScores(), "shape [2, 2]"),
                                         (OwnScoreTerms(), "5 values")])
def test_a_custom_source_with_the_wrong_shape_is_an_error_naming_the_class(source, got):
    with pytest.raises(RecipeError) as info:
        source.score_terms(["x"] * 4, ["a", "b", "c", "d"], 1)  # as the rollout and the evaluation call it
    error = info.value
    assert error.field == "model.init_args.reward"
    assert type(source).__name__ in error.problem and got in error.problem and "4 responses" in error.problem
    assert "[N]" in error.fix


def test_a_custom_source_in_a_weighted_sum_is_checked_too():
    weighted = WeightedRewards([RewardTerm(ColumnScores()), RewardTerm(ThreeScores(), name="three")])
    with pytest.raises(RecipeError, match="ThreeScores.score returned 3 values for 4 responses"):
        weighted.score_terms(["x"] * 4, ["a"] * 4, 1)
    with pytest.raises(RecipeError, match="ThreeScores.score returned 3 values"):
        weighted.score(["x"] * 4, ["a"] * 4)


def test_a_column_of_scores_is_accepted():
    scores, parts = ColumnScores().score_terms(["x"] * 3, ["a", "b", "c"], 1)
    assert scores.tolist() == [0.0, 1.0, 2.0] and parts == {}


@pytest.mark.parametrize("source, got", [(ShortPreference(), "4 values for 2 pairs"),
                                         (WordPreference(), "must return one number per pair, got str values")])
def test_a_custom_preference_source_with_a_bad_return_is_an_error_naming_the_class(source, got):
    with pytest.raises(RecipeError) as info:
        source.score_terms(["x"] * 4, ["a", "b", "c", "d"], 2)
    assert info.value.field == "model.init_args.reward"
    assert f"{type(source).__name__}.preference" in info.value.problem and got in info.value.problem


@pytest.mark.parametrize("function, text", [
    ("judge_short", "returned 1 probabilities for 2 pairs"),
    ("judge_nested", "returned shape [2, 1] for 2 pairs"),
    ("judge_words", "must return one probability per pair, got str values"),
    ("judge_nan", "must return probabilities in [0, 1]; 2 of 2 are not"),
    ("judge_out_of_range", "must return probabilities in [0, 1]"),
])
def test_a_preference_function_with_a_bad_return_is_a_recipe_error(function, text):
    with pytest.raises(RecipeError) as info:
        FunctionPreference(f"{MODULE}.{function}", symmetrise=False).score_terms(["x"] * 4, ["a", "b", "c", "d"], 2)
    assert info.value.field == FUNCTION_FIELD
    assert f"'{MODULE}.{function}'" in info.value.problem and text in info.value.problem
    assert "[0, 1]" in info.value.fix


def test_a_preference_function_that_raises_stops_the_run_as_a_reward_function_does():
    with pytest.raises(RewardFailed) as info:
        FunctionPreference(f"{MODULE}.judge_raises").score_groups(["x"] * 2, ["a", "b"], 2)
    message = str(info.value)
    assert (f"the preference function '{MODULE}.judge_raises' raised ConnectionError: the judge server is down"
            in message)
    assert "test_input_checks_rewards_data.py:" in message  # where it raised
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
    assert info.value.exit_code == 3


def test_a_fair_preference_function_still_scores():
    scores = FunctionPreference(f"{MODULE}.judge_fair").score_groups(["x"] * 4, ["a", "b", "c", "d"], 2)
    assert scores.tolist() == [0.5, 0.5, 0.5, 0.5]


def test_a_custom_source_with_the_wrong_count_is_one_message_from_the_cli(tiny_model, tiny_data, tmp_path, capsys):
    args = bare_run_args(tiny_model, tiny_data, tmp_path / "run")
    at = args.index("--model.reward")
    args = args[:at] + ["--model.reward", f"{MODULE}.ThreeScores"] + args[at + 4:]
    message = expect_exit(args, capsys, code=2)
    assert "ThreeScores.score returned 3 values for 16 responses" in message, message
    assert "fix:" in message


# ----------------------------------------------------------------------------- data: helpers
def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("chat_tokenizer")
    make_chat_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def text_tokenizer(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text_tokenizer")
    make_tokenizer().save_pretrained(path)
    return str(path)


def set_up(module) -> list[str]:
    """``module.setup()``; the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.setup()
    return [str(w.message) for w in caught if "skipped" in str(w.message)]


CHAT_PAIR = {"prompt": [user("say : cat")], "chosen": [assistant("good good")], "rejected": [assistant("bad")]}


# ----------------------------------------------------------------------------- 3. response lists
def test_a_response_list_that_ends_with_the_user_is_a_counted_bad_row(tmp_path, chat_tokenizer):
    rows = [CHAT_PAIR] * 3 + [{**CHAT_PAIR, "chosen": [assistant("good"), user("say : dog")]}]
    module = PreferenceDataModule(jsonl(tmp_path / "pairs.jsonl", rows), tokenizer=chat_tokenizer, batch_size=1)
    warned = set_up(module)
    assert len(module.splits["train"]) == 3
    assert len(warned) == 1 and "skipped 1 of 4 rows" in warned[0], warned
    assert "1 responses whose last message is not the assistant's (first: row 3: 'chosen' ends with a 'user' " \
           "message)" in warned[0]


def test_a_single_message_response_of_the_user_is_a_bad_row(tmp_path, chat_tokenizer):
    rows = [CHAT_PAIR, {**CHAT_PAIR, "rejected": user("bad")}]
    module = PreferenceDataModule(jsonl(tmp_path / "pairs.jsonl", rows), tokenizer=chat_tokenizer, batch_size=1,
                                  on_bad_row="error")
    with pytest.raises(RecipeError) as info:
        module.setup()
    assert info.value.field == "data.init_args.train_file"
    assert "1 of 2 rows" in info.value.problem and "'rejected' ends with a 'user' message" in info.value.problem
    assert "assistant's reply" in info.value.fix


def test_earlier_messages_that_are_not_the_prompt_are_refused_not_dropped(tmp_path, chat_tokenizer):
    rows = [CHAT_PAIR, {**CHAT_PAIR, "chosen": [user("say : dog"), assistant("good")]},
            {"prompt": "say : cat", "completion": [user("say : sun"), assistant("good")], "label": True}]
    module = PreferenceDataModule(jsonl(tmp_path / "pairs.jsonl", rows[:2]), tokenizer=chat_tokenizer, batch_size=1)
    warned = set_up(module)
    assert [row["index"] for row in module.splits["train"]] == [0]
    assert "responses with messages before the assistant's reply that are not the row's prompt (first: row 1: " \
           "'chosen' has 1 earlier message(s) ('user') that differ from 'prompt')" in warned[0], warned
    kto = UnpairedDataModule(jsonl(tmp_path / "kto.jsonl", rows[2:]), tokenizer=chat_tokenizer, batch_size=1)
    with pytest.raises(RecipeError, match="no usable rows") as info:
        kto.setup()
    assert "'completion' has 1 earlier message(s)" in info.value.problem
    assert "put the conversation before the reply in 'prompt'" in info.value.fix


def test_a_response_list_that_repeats_the_prompt_is_the_reply_alone(tmp_path, chat_tokenizer):
    whole = {"prompt": [user("say : cat")], "chosen": [user("say : cat"), assistant("good good")],
             "rejected": [user("say : cat"), assistant("bad")]}
    text_prompt = {"prompt": "say : cat", "chosen": [user("say : cat"), assistant("good good")],
                   "rejected": [user("say : cat"), assistant("bad")]}  # as HuggingFaceH4/ultrafeedback_binarized
    plain = {"prompt": "say : cat", "chosen": "good good", "rejected": "bad"}
    module = PreferenceDataModule(jsonl(tmp_path / "pairs.jsonl", [CHAT_PAIR, whole, text_prompt, plain]),
                                  tokenizer=chat_tokenizer, batch_size=1, on_bad_row="error")
    assert set_up(module) == []
    single, repeated, text_row, plain_row = module.splits["train"]
    assert repeated["chosen_ids"] == single["chosen_ids"] and repeated["rejected_ids"] == single["rejected_ids"]
    assert text_row["chosen_ids"] == plain_row["chosen_ids"]


def test_sft_conversations_still_train_on_the_last_assistant_message(tmp_path, chat_tokenizer):
    rows = [{"messages": [user("say : cat"), assistant("good"), user("say : dog"), assistant("good good")]}]
    module = SFTDataModule(jsonl(tmp_path / "sft.jsonl", rows), tokenizer=chat_tokenizer, batch_size=1,
                           messages_column="messages", on_bad_row="error")
    assert set_up(module) == [] and len(module.splits["train"]) == 1


# ----------------------------------------------------------------------------- 4. implicit-prompt text pairs
def test_implicit_prompt_text_pairs_say_so_and_how_to_split_them(tmp_path, text_tokenizer):
    rows = [{"chosen": "say : cat good", "rejected": "say : cat bad"}] * 4
    module = PreferenceDataModule(jsonl(tmp_path / "pairs.jsonl", rows), tokenizer=text_tokenizer, batch_size=1)
    with pytest.raises(RecipeError) as info:
        module.setup()
    error = info.value
    assert error.field == "data.init_args.train_file"
    assert "has no 'prompt' column (columns: chosen, rejected)" in error.problem
    assert "implicit-prompt format" in error.problem
    assert "split each row into the shared prompt ('prompt') and the two responses" in error.fix
    assert "data.init_args.prompt_column" in error.fix and "--data.prompt_column" in error.fix


def test_implicit_prompt_conversations_are_still_refused_with_how_to_split_them(tmp_path, chat_tokenizer):
    rows = [{"chosen": [user("say : cat"), assistant("good")], "rejected": [user("say : cat"), assistant("bad")]}]
    module = PreferenceDataModule(jsonl(tmp_path / "pairs.jsonl", rows), tokenizer=chat_tokenizer, batch_size=1)
    with pytest.raises(RecipeError, match="implicit-prompt format") as info:
        module.setup()
    assert "two final assistant messages" in info.value.fix


def test_a_prompt_column_by_another_name_keeps_the_did_you_mean_error(tmp_path, text_tokenizer):
    rows = [{"prompts": "say : cat", "chosen": "good", "rejected": "bad"}]
    module = PreferenceDataModule(jsonl(tmp_path / "pairs.jsonl", rows), tokenizer=text_tokenizer, batch_size=1)
    with pytest.raises(RecipeError, match="did you mean 'prompts'"):
        module.setup()


# ----------------------------------------------------------------------------- 5. KTO label words
def test_kto_label_words_are_read_and_documented(tmp_path, text_tokenizer):
    words = ["yes", "no", "Good", "BAD", "desirable", "undesirable", "1", "0", "true", "false"]
    rows = [{"prompt": "say : cat", "completion": "good", "label": word} for word in words]
    module = UnpairedDataModule(jsonl(tmp_path / "kto.jsonl", rows), tokenizer=text_tokenizer, batch_size=1,
                                on_bad_row="error")
    module.setup()
    assert [row["label"] for row in module.splits["train"]] == [1.0, 0.0] * 5
    doc = UnpairedDataModule.__doc__
    assert all(f'"{word}"' in doc for word in ("yes", "no", "good", "bad", "desirable", "undesirable"))
    table = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `label_column`"))
    assert all(f"`{word}`" in row for word in ("yes", "no", "good", "bad"))


# ----------------------------------------------------------------------------- 6. a saved DatasetDict
@pytest.fixture
def dataset_dict(tmp_path) -> Path:
    datasets = pytest.importorskip("datasets")
    train = [{"prompt": f"say : {w}", "response": "good"} for w in ("cat", "dog", "sun", "moon")]
    test = [{"prompt": "say : tree", "reference": "good"}, {"prompt": "", "reference": "good"}]
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(folder))
    return folder


def test_a_dataset_dict_folder_gives_the_split_the_field_asks_for(dataset_dict):
    assert [row["prompt"] for row in read_records(str(dataset_dict), "data.init_args.train_file", "train")] == [
        "say : cat", "say : dog", "say : sun", "say : moon"]
    assert read_records(str(dataset_dict), "data.init_args.test_file", "test")[0]["prompt"] == "say : tree"
    assert len(read_records(f"{dataset_dict}:test", "data.init_args.train_file", "train")) == 2  # folder:split


def test_a_dataset_dict_without_the_split_lists_the_ones_it_holds(dataset_dict):
    with pytest.raises(RecipeError) as info:
        read_records(str(dataset_dict), "data.init_args.validation_file", "validation")
    error = info.value
    assert error.field == "data.init_args.validation_file"
    assert "is a DatasetDict written by save_to_disk that holds the splits 'train', 'test'" in error.problem
    assert "'validation'" in error.problem and "damaged" not in str(error)
    assert f"'{dataset_dict}:train'" in error.fix
    with pytest.raises(RecipeError, match="holds the splits 'train', 'test', not the split 'dev' named in the path"):
        read_records(f"{dataset_dict}:dev", "data.init_args.train_file", "train")


def test_a_data_module_reads_a_dataset_dict_folder(dataset_dict, text_tokenizer):
    module = SFTDataModule(str(dataset_dict), tokenizer=text_tokenizer, batch_size=1)
    module.setup()
    assert len(module.splits["train"]) == 4


# ----------------------------------------------------------------------------- 7. eval_prompt_file bad rows
def test_unusable_eval_prompts_are_counted_and_reported(tmp_path, text_tokenizer):
    train = jsonl(tmp_path / "train.jsonl", [{"prompt": "say : cat", "response": "good"}] * 2)
    prompts = [{"prompt": "say : cat", "reference": "good"}, {"prompt": "   ", "reference": "good"},
               {"prompt": "say : dog", "reference": "good"}, {"prompt": ["say", "cat"], "reference": "good"}]
    evaluation = jsonl(tmp_path / "eval.jsonl", prompts)
    module = SFTDataModule(train, tokenizer=text_tokenizer, batch_size=1, eval_prompt_file=evaluation)
    warned = set_up(module)
    assert [row["prompt"] for row in module.eval_rows("test")] == ["say : cat", "say : dog"]
    assert len(warned) == 1 and "skipped 2 of 4 rows of" in warned[0] and "eval.jsonl" in warned[0], warned
    assert "1 empty prompts (first: row 1)" in warned[0]
    assert "1 prompts that are neither text nor chat messages (first: row 3: a list of str)" in warned[0]

    strict = SFTDataModule(train, tokenizer=text_tokenizer, batch_size=1, eval_prompt_file=evaluation,
                           on_bad_row="error")
    with pytest.raises(RecipeError, match="2 of 4 rows in") as info:
        strict.setup()
    assert info.value.field == "data.init_args.eval_prompt_file"

    empty = jsonl(tmp_path / "empty_eval.jsonl", [{"prompt": " ", "reference": "good"}])
    with pytest.raises(RecipeError, match="no usable rows in") as info:
        SFTDataModule(train, tokenizer=text_tokenizer, batch_size=1, eval_prompt_file=empty).setup()
    assert info.value.field == "data.init_args.eval_prompt_file"


def test_a_too_long_eval_prompt_is_reported(tmp_path, text_tokenizer):
    train = jsonl(tmp_path / "train.jsonl", [{"prompt": "say : cat", "response": "good"}] * 2)
    evaluation = jsonl(tmp_path / "eval.jsonl", [{"prompt": "say : cat"}, {"prompt": "say : cat dog sun moon"}])
    module = SFTDataModule(train, tokenizer=text_tokenizer, batch_size=1, eval_prompt_file=evaluation,
                           max_prompt_length=3)
    warned = set_up(module)
    assert len(module.eval_rows("test")) == 1
    assert "prompts longer than max_prompt_length=3" in warned[0], warned
