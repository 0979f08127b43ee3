"""Bradley–Terry reward-model loss against hand computations in Python floats.

For G pairs with rewards r_w (chosen row 2g) and r_l (rejected row 2g+1) and optional margin m_g:

    L = 1/G Σ_g −ln σ(r_w − r_l − m_g)  +  c · 1/G Σ_g (r_w + r_l)²
"""

import math

import pytest
import torch

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.reward_model import BradleyTerry

P = 2
PROMPT_MASK = [[0, 1], [0, 1], [1, 1], [1, 1], [1, 1], [1, 1]]
RESPONSE_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
# pair 0: chosen wins by 1.0; pair 1: chosen loses by 0.5; pair 2: tie
SCORES = [1.5, 0.5, -0.2, 0.3, 0.7, 0.7]
MARGINS = [2.0, 2.0, 0.5, 0.5, 0.0, 0.0]  # per pair, repeated on both rows


def make_batch(margins=None, group_size=2) -> SequenceBatch:
    mask = torch.tensor([p + r for p, r in zip(PROMPT_MASK, RESPONSE_MASK)])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    extras = {} if margins is None else {"margin": torch.tensor(margins)}
    return SequenceBatch(input_ids=input_ids, attention_mask=mask, prompt_length=P, group_size=group_size,
                         extras=extras)


def scores_tensor(values=SCORES):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def softplus(z):  # −ln σ(−z) = ln(1 + e^z), stable
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def hand_loss(scores=SCORES, margins=None, center=0.0):
    pairs = [(scores[2 * g], scores[2 * g + 1], 0.0 if margins is None else margins[2 * g])
             for g in range(len(scores) // 2)]
    bt = sum(softplus(-(w - l - m)) for w, l, m in pairs) / len(pairs)
    return bt + center * sum((w + l) ** 2 for w, l, _ in pairs) / len(pairs)


def test_fixture():
    assert hand_loss() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5)) + math.log(2)) / 3)


def test_loss_is_minus_log_sigmoid_of_the_reward_difference():
    loss, _ = BradleyTerry().loss(None, make_batch(), scores=scores_tensor())
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_loss(), rel=1e-6)


def test_margins_are_ignored_unless_asked_for():
    loss, _ = BradleyTerry().loss(None, make_batch(MARGINS), scores=scores_tensor())
    assert loss.item() == pytest.approx(hand_loss(), rel=1e-6)


def test_margin_variant_subtracts_the_pair_margin():
    loss, metrics = BradleyTerry(margin=True).loss(None, make_batch(MARGINS), scores=scores_tensor())
    assert loss.item() == pytest.approx(hand_loss(margins=MARGINS), rel=1e-6)
    assert loss.item() > hand_loss()  # a positive margin asks for more
    assert float(metrics["rm/margin"]) == pytest.approx((1.0 - 0.5 + 0.0) / 3)  # r_w − r_l, without m


def test_margin_variant_without_margins_names_the_key():
    with pytest.raises(RecipeError, match=r"model\.init_args\.objective\.init_args\.margin"):
        BradleyTerry(margin=True).loss(None, make_batch(), scores=scores_tensor())


@pytest.mark.parametrize("margin", [False, True])
def test_gradient_matches_analytic(margin):
    """∂L/∂r_w = −σ(−(r_w − r_l − m))/G, ∂L/∂r_l = +σ(−(r_w − r_l − m))/G."""
    scores = scores_tensor()
    loss, _ = BradleyTerry(margin=margin).loss(None, make_batch(MARGINS), scores=scores)
    (grad,) = torch.autograd.grad(loss, scores)
    for g in range(3):
        m = MARGINS[2 * g] if margin else 0.0
        weight = sigmoid(-(SCORES[2 * g] - SCORES[2 * g + 1] - m)) / 3
        assert grad[2 * g].item() == pytest.approx(-weight, rel=1e-5)
        assert grad[2 * g + 1].item() == pytest.approx(weight, rel=1e-5)


def test_centering_term_and_its_gradient():
    c = 0.25
    scores = scores_tensor()
    loss, _ = BradleyTerry(center_coef=c).loss(None, make_batch(), scores=scores)
    assert loss.item() == pytest.approx(hand_loss(center=c), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, scores)
    for g in range(3):
        w, lo = SCORES[2 * g], SCORES[2 * g + 1]
        bt = sigmoid(-(w - lo)) / 3
        centre = 2 * c * (w + lo) / 3
        assert grad[2 * g].item() == pytest.approx(-bt + centre, rel=1e-5)
        assert grad[2 * g + 1].item() == pytest.approx(bt + centre, rel=1e-5)


def test_large_margins_are_stable():
    scores = scores_tensor([1e4, -1e4, -1e4, 1e4])  # one pair right by 2e4, one wrong by 2e4
    batch = make_batch()
    batch = batch.select_rows(torch.arange(4))
    loss, metrics = BradleyTerry().loss(None, batch, scores=scores)
    assert loss.item() == pytest.approx((0.0 + 2e4) / 2)
    (grad,) = torch.autograd.grad(loss, scores)
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, -0.5, 0.5]))
    assert float(metrics["rm/accuracy"]) == 0.5


def test_metrics_and_accuracy_counts_ties_as_wrong():
    _, metrics = BradleyTerry().loss(None, make_batch(), scores=scores_tensor())
    for key in ("loss/reward_model", "rm/accuracy", "rm/margin", "rm/chosen", "rm/rejected"):
        value = metrics[key]
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
    assert float(metrics["loss/reward_model"]) == pytest.approx(hand_loss(), rel=1e-6)
    assert float(metrics["rm/accuracy"]) == pytest.approx(1 / 3)  # pair 0 right, pair 1 wrong, pair 2 tied
    assert float(metrics["rm/margin"]) == pytest.approx((1.0 - 0.5 + 0.0) / 3)
    assert float(metrics["rm/chosen"]) == pytest.approx((1.5 - 0.2 + 0.7) / 3)
    assert float(metrics["rm/rejected"]) == pytest.approx((0.5 + 0.3 + 0.7) / 3)


@pytest.mark.parametrize("scores, expected", [
    ([0.2, 0.1, 0.9, 0.3, 0.5, 0.4], 1.0),  # all in [0, 1]: must not be read as probabilities
    ([0.0, 0.0, 0.5, 0.5, -3.0, -3.0], 0.0),  # all ties
    ([0.6, 0.5, 0.5, 0.6, 3.0, -3.0], 2 / 3),
])
def test_accuracy_is_the_share_of_strict_wins(scores, expected):
    _, metrics = BradleyTerry().loss(None, make_batch(), scores=scores_tensor(scores))
    assert float(metrics["rm/accuracy"]) == pytest.approx(expected)


def test_declares_a_scalar_head_without_reference_and_a_summary_metric():
    assert BradleyTerry.needs.head == "scalar"
    assert BradleyTerry.needs.rollout is False and BradleyTerry.needs.reference is False
    assert BradleyTerry.summary_metrics == {"rm/accuracy": "rm_accuracy"}
    objective = BradleyTerry()
    assert (objective.margin, objective.center_coef) == (False, 0.0)


def test_bad_args_are_all_reported():
    with pytest.raises(RecipeError, match=r"objective\.init_args\.center_coef"):
        BradleyTerry(center_coef=-0.1)
    with pytest.raises(RecipeError, match="center_coef"):
        BradleyTerry(center_coef=float("nan"))
    with pytest.raises(RecipeError) as info:
        BradleyTerry(margin="yes", center_coef=float("inf"))
    assert "margin" in str(info.value) and "center_coef" in str(info.value)


def test_rejects_batches_that_are_not_pairs_or_lack_scores():
    with pytest.raises(ValueError, match="pairs"):
        BradleyTerry().loss(None, make_batch(group_size=3), scores=scores_tensor())
    with pytest.raises(ValueError, match="scores"):
        BradleyTerry().loss(None, make_batch())
