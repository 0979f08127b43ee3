"""SFT against hand computations in Python floats.

    L = −(1/T) Σ_{i,t} m_{i,t}·ln π_θ(y_{i,t} | x_i, y_{i,<t}),   T = Σ m   (response tokens only)
"""

import math

import pytest
import torch

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.objectives.base import Objective
from rlhf_lightning.objectives.sft import SFT

P = 2
# three demonstrations; the first prompt is left-padded, responses are right-padded
PROMPT_MASK = [[0, 1], [1, 1], [1, 1]]
RESPONSE_MASK = [[1, 1, 1], [1, 0, 0], [1, 1, 1]]
POLICY = [[-0.5, -1.0, -0.25], [-2.0, None, None], [-0.1, -0.3, -0.7]]


def with_garbage(rows, garbage):
    return torch.tensor([[garbage if v is None else v for v in row] for row in rows])


def make_batch(prompt_mask=PROMPT_MASK, response_mask=RESPONSE_MASK, group_size=1) -> SequenceBatch:
    mask = torch.tensor([p + r for p, r in zip(prompt_mask, response_mask)])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return SequenceBatch(input_ids=input_ids, attention_mask=mask, prompt_length=P, group_size=group_size)


def policy_tensor(rows=POLICY, garbage=100.0):
    return with_garbage(rows, garbage).requires_grad_(True)


def hand_nll(rows=POLICY, masks=RESPONSE_MASK):
    values = [v for row, m in zip(rows, masks) for v, keep in zip(row, m) if keep]
    return -sum(values) / len(values)


def test_fixture():
    assert hand_nll() == pytest.approx((0.5 + 1.0 + 0.25 + 2.0 + 0.1 + 0.3 + 0.7) / 7)


def test_sft_is_the_mean_token_nll_over_response_tokens():
    loss, metrics = SFT().loss(policy_tensor(), make_batch())
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_nll(), rel=1e-6)
    assert float(metrics["loss/sft"]) == pytest.approx(hand_nll(), rel=1e-6)
    assert float(metrics["sft/perplexity"]) == pytest.approx(math.exp(hand_nll()), rel=1e-6)
    assert float(metrics["sft/tokens"]) == 7
    for value in metrics.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad


@pytest.mark.parametrize("garbage", [-1e4, 1e4, float("-inf"), float("nan")])
def test_padding_garbage_does_not_matter(garbage):
    lp = policy_tensor(garbage=garbage)
    loss, metrics = SFT().loss(lp, make_batch())
    assert loss.item() == pytest.approx(hand_nll(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    assert torch.isfinite(grad).all()


def test_gradient_is_minus_mask_over_token_count():
    lp = policy_tensor()
    loss, _ = SFT().loss(lp, make_batch())
    (grad,) = torch.autograd.grad(loss, lp)
    expected = -torch.tensor(RESPONSE_MASK, dtype=torch.float32) / 7
    torch.testing.assert_close(grad, expected)


def test_token_mean_not_row_mean():
    # a long row weighs more than a short one: here the row-mean of NLLs would differ
    row_mean = sum(-sum(v for v, k in zip(r, m) if k) / sum(m) for r, m in zip(POLICY, RESPONSE_MASK)) / 3
    loss, _ = SFT().loss(policy_tensor(), make_batch())
    assert loss.item() != pytest.approx(row_mean)


def test_chunk_weight_makes_micro_batching_exact():
    """Two chunks with different token counts (4 and 3 of the 7): Σ_c w_c·L_c = L and same gradient."""
    objective = SFT()
    whole = make_batch()
    lp = policy_tensor()
    whole_loss, _ = objective.loss(lp, whole)
    (whole_grad,) = torch.autograd.grad(whole_loss, lp)

    lp = policy_tensor()
    chunks = whole.split(2)  # rows [0, 1] (3 + 1 tokens) and [2] (3 tokens)
    assert [len(c) for c in chunks] == [2, 1]
    weights = [objective.chunk_weight(c, whole) for c in chunks]
    assert weights == pytest.approx([4 / 7, 3 / 7])
    assert weights != pytest.approx([len(c) / len(whole) for c in chunks])  # the row share would be wrong
    total = sum(w * objective.loss(lp[rows], c)[0] for w, c, rows in zip(weights, chunks, [slice(0, 2), slice(2, 3)]))
    (chunked_grad,) = torch.autograd.grad(total, lp)
    assert total.item() == pytest.approx(whole_loss.item(), rel=1e-6)
    torch.testing.assert_close(chunked_grad, whole_grad)


def test_chunk_weight_without_tokens_falls_back_to_rows():
    batch = make_batch(response_mask=[[0, 0, 0]] * 3)
    objective = SFT()
    assert objective.chunk_weight(batch.split(1)[0], batch) == pytest.approx(1 / 3)
    lp = policy_tensor()
    loss, metrics = objective.loss(lp, batch)
    assert loss.item() == 0.0 and float(metrics["sft/tokens"]) == 0.0


def test_declares_an_offline_reference_free_objective():
    objective = SFT()
    assert isinstance(objective, Objective)
    assert SFT.needs.rollout is False and SFT.needs.reference is False and SFT.needs.head == "causal_lm"


def test_rejects_grouped_batches():
    batch = make_batch(prompt_mask=PROMPT_MASK[:2], response_mask=RESPONSE_MASK[:2], group_size=2)
    with pytest.raises(ValueError, match="group_size 1"):
        SFT().loss(policy_tensor(POLICY[:2]), batch)
