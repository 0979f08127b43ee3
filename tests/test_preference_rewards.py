"""Preference rewards (REBEL paper, Appendix C; SPO): a response's reward is its mean win probability
against the other responses to the same prompt,

    r(x, y_i) = 1/(k−1) · Σ_{j≠i} P(y_i ≻ y_j | x),

from a preference function, a pairwise preference model or the embedded task's gold judge.
"""

import math

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.rewards import FunctionPreference, PreferenceModel, PreferenceSource, RewardSource
from rlhf_lightning.tasks.summarize import GoldPreference, gold_score, oracle_summary
from rlhf_lightning.tasks.summarize.corpus import make_splits


def good_share(text: str) -> float:
    words = text.split()
    return sum(w == "good" for w in words) / len(words) if words else 0.0


def prefer_good(prompts: list[str], responses_a: list[str], responses_b: list[str]) -> list[float]:
    """P(a ≻ b) = σ((share of 'good' in a − share in b) / 0.1): used by the end-to-end preference run."""
    return [1 / (1 + math.exp(-(good_share(a) - good_share(b)) / 0.1)) for a, b in zip(responses_a, responses_b)]


def first_wins(prompts, responses_a, responses_b):
    """A judge with pure position bias: always prefers whichever response it is shown first."""
    return [0.9] * len(responses_a)


def out_of_range(prompts, responses_a, responses_b):
    return [1.5] * len(responses_a)


class TablePreference(PreferenceSource):
    """P(a ≻ b) from a fixed table keyed by response text (missing pairs from 1 − P(b ≻ a)); records calls."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls: list[tuple[str, str]] = []

    def preference(self, prompts, responses_a, responses_b):
        self.calls += list(zip(responses_a, responses_b))
        return torch.tensor([self.table[(a, b)] if (a, b) in self.table else 1 - self.table[(b, a)]
                             for a, b in zip(responses_a, responses_b)])


# ---------------------------------------------------------------------------- group scoring by hand
def test_pairs_k2_reward_is_the_win_probability():
    source = TablePreference({("a", "b"): 0.8, ("c", "d"): 0.25})
    scores = source.score_groups(["x", "x", "z", "z"], ["a", "b", "c", "d"], group_size=2)
    torch.testing.assert_close(scores, torch.tensor([0.8, 0.2, 0.25, 0.75]))
    assert source.calls == [("a", "b"), ("c", "d")]  # one query per unordered pair, in one batch
    assert scores.dtype == torch.float32


def test_groups_of_three_average_over_the_other_two():
    table = {("a", "b"): 0.8, ("a", "c"): 0.6, ("b", "c"): 0.3,
             ("d", "e"): 0.5, ("d", "f"): 1.0, ("e", "f"): 0.0}
    source = TablePreference(table)
    scores = source.score_groups(["x"] * 6, ["a", "b", "c", "d", "e", "f"], group_size=3)
    expected = [(0.8 + 0.6) / 2, (0.2 + 0.3) / 2, (0.4 + 0.7) / 2,
                (0.5 + 1.0) / 2, (0.5 + 0.0) / 2, (0.0 + 1.0) / 2]
    torch.testing.assert_close(scores, torch.tensor(expected))
    assert scores.view(2, 3).sum(-1).tolist() == pytest.approx([1.5, 1.5])  # k/2 in every group
    assert len(source.calls) == 6


def test_a_preference_reward_cannot_score_single_responses():
    source = TablePreference({})
    with pytest.raises(RecipeError, match="≥ 2 samples per prompt"):
        source.score(["x"], ["a"])
    with pytest.raises(RecipeError, match="≥ 2 samples per prompt") as info:
        source.score_groups(["x", "y"], ["a", "b"], group_size=1)
    assert "judge" in str(info.value)  # points evaluation to a pointwise judge
    with pytest.raises(ValueError):
        source.score_groups(["x"] * 3, ["a", "b", "c"], group_size=2)


# ---------------------------------------------------------------------------- function preferences
def test_function_preference_scores_and_is_symmetric():
    source = FunctionPreference("test_preference_rewards.prefer_good")
    assert isinstance(source, RewardSource)
    prompts = ["say : cat dog"] * 4
    responses = ["good good", "bad cat", "good bad", "good"]
    p = source.preference(prompts, responses, responses[::-1])
    p_swapped = source.preference(prompts, responses[::-1], responses)
    torch.testing.assert_close(p + p_swapped, torch.ones(4))
    expected = prefer_good(prompts, responses, responses[::-1])
    torch.testing.assert_close(p, torch.tensor(expected))  # prefer_good is already symmetric
    scores = source.score_groups(prompts, responses, group_size=2)
    torch.testing.assert_close(scores, torch.tensor([
        prefer_good([""], ["good good"], ["bad cat"])[0], prefer_good([""], ["bad cat"], ["good good"])[0],
        prefer_good([""], ["good bad"], ["good"])[0], prefer_good([""], ["good"], ["good bad"])[0]]))


def test_function_preference_symmetrisation_removes_position_bias():
    biased = FunctionPreference("test_preference_rewards.first_wins", symmetrise=False)
    assert biased.preference(["x"], ["a"], ["b"]).item() == pytest.approx(0.9)
    fair = FunctionPreference("test_preference_rewards.first_wins")
    assert fair.preference(["x"], ["a"], ["b"]).item() == pytest.approx(0.5)  # ½(0.9 + 1 − 0.9)


def test_function_preference_errors():
    with pytest.raises(RecipeError, match="function"):
        FunctionPreference("test_preference_rewards.no_such_function").setup(torch.device("cpu"))
    with pytest.raises(ValueError, match="probabilities"):
        FunctionPreference("test_preference_rewards.out_of_range").preference(["x"], ["a"], ["b"])


# ---------------------------------------------------------------------------- gold preference (embedded task)
def test_gold_preference_is_sigmoid_of_gold_difference():
    examples = make_splits({"test": 4}, seed=3)["test"]
    prompts = [ex.prompt for ex in examples]
    a = [oracle_summary(p) for p in prompts]
    b = [ex.reference for ex in examples]
    for tau in (0.25, 1.0):
        p = GoldPreference(temperature=tau).preference(prompts, a, b)
        expected = [1 / (1 + math.exp(-(gold_score(x, ya) - gold_score(x, yb)) / tau))
                    for x, ya, yb in zip(prompts, a, b)]
        torch.testing.assert_close(p, torch.tensor(expected))
        torch.testing.assert_close(p + GoldPreference(tau).preference(prompts, b, a), torch.ones(4))
    scores = GoldPreference().score_groups([x for x in prompts for _ in (0, 1)],
                                           [y for pair in zip(a, b) for y in pair], group_size=2)
    assert bool((scores.view(-1, 2)[:, 0] >= 0.5).all())  # the oracle summary wins its pair
    with pytest.raises(RecipeError, match="temperature"):
        GoldPreference(temperature=0.0)


# ---------------------------------------------------------------------------- preference model
@pytest.fixture(scope="module")
def tiny_preference_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tiny import make_tokenizer

    path = tmp_path_factory.mktemp("preference")
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, num_labels=1)
    model = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # visible logits from a random body
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_preference_model_loads_scores_in_unit_interval_and_is_symmetric(tiny_preference_model):
    source = PreferenceModel(str(tiny_preference_model), batch_size=3)
    source.setup(torch.device("cpu"))
    prompts = ["say : cat dog ", "say : sun moon ", "say : tree rock ", "say : red blue "]
    a = ["good good", "bad", "cat dog sun", ""]
    b = ["bad cat", "good moon", "rock", "good"]
    p = source.preference(prompts, a, b)
    assert p.shape == (4,) and p.dtype == torch.float32
    assert bool(((p >= 0) & (p <= 1)).all())
    torch.testing.assert_close(p + source.preference(prompts, b, a), torch.ones(4))
    assert p.std() > 1e-4  # not a constant ½

    # the symmetrised probability is built from σ(logit) of both orders of the documented text
    model, tokenizer = source._model, source._tokenizer

    def logit(text):
        with torch.no_grad():
            return model(**tokenizer([text], return_tensors="pt")).logits[0, 0].item()

    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    x, ya, yb = prompts[0], a[0], b[0]
    expected = 0.5 * (sig(logit(x + ya + "\n\nversus\n\n" + yb)) + 1 - sig(logit(x + yb + "\n\nversus\n\n" + ya)))
    assert p[0].item() == pytest.approx(expected, abs=1e-5)

    scores = source.score_groups(prompts, a[:2] + b[:2], group_size=2)
    torch.testing.assert_close(scores.view(-1, 2).sum(-1), torch.ones(2))
    with pytest.raises(RecipeError):
        source.score(prompts, a)


def test_preference_model_needs_one_output(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tiny import make_tokenizer

    tokenizer = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None, num_labels=2)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(RecipeError, match="one output"):
        PreferenceModel(str(tmp_path)).setup(torch.device("cpu"))


def test_reward_model_shares_the_loader_and_scores_like_training(tiny_preference_model):
    """RewardModel and PreferenceModel load through the same code; a one-logit model also works as a
    pointwise reward model: r(x, y) = the head at the last token of [prompt tokens, response tokens, EOS]
    (the encoding reward-model training uses), the same with or without batch padding."""
    from rlhf_lightning.rewards import RewardModel

    source = RewardModel(str(tiny_preference_model), batch_size=2)
    prompts = ["say : cat dog", "say : sun", "say : tree rock moon"]
    responses = ["good", "bad good red", "cat"]
    scores = source.score(prompts, responses)
    model, tokenizer = source._model, source._tokenizer
    with torch.no_grad():
        one_by_one = []
        for x, y in zip(prompts, responses):
            ids = tokenizer(x)["input_ids"] + tokenizer(y, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            one_by_one.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    torch.testing.assert_close(scores, torch.tensor(one_by_one), rtol=1e-4, atol=1e-5)
