"""DPO (Rafailov et al., 2023) and its options against hand computations in Python floats.

Rows come in twos: row 2i is the chosen y_w of pair i, row 2i+1 the rejected y_l. With sequence
log-probs summed over real response tokens only (each divided by |y| when length-normalised):

    h = [ln π_θ(y_w) − ln π_ref(y_w)] − [ln π_θ(y_l) − ln π_ref(y_l)]     (no π_ref if reference-free)
    L = 1/G Σ_g −(1−ε)·ln σ(βh_g) − ε·ln σ(−βh_g)

The fixture and helpers here are shared by the IPO, SLiC, SimPO and ORPO tests.
"""

import math

import pytest
import torch

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.dpo import DPO

P = 2
# three pairs; lengths differ inside every pair; the first pair's prompt is left-padded
PROMPT_MASK = [[0, 1], [0, 1], [1, 1], [1, 1], [1, 1], [1, 1]]
RESPONSE_MASK = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
POLICY = [[-0.5, -1.0, -0.25, -0.75], [-2.0, -0.75, None, None],
          [-0.1, None, None, None], [-3.0, -0.5, -0.2, None],
          [-1.0, -1.0, -0.4, None], [-0.3, -0.3, -0.3, -0.3]]
REF = [[-0.75, -1.5, -0.5, -1.0], [-1.0, -1.0, None, None],
       [-0.4, None, None, None], [-2.5, -0.5, -0.5, None],
       [-0.5, -0.5, -0.5, None], [-0.3, -0.6, -0.3, -0.3]]
GARBAGE = 100.0  # what padding positions hold: it must not matter


def with_garbage(rows, garbage=GARBAGE):
    return torch.tensor([[garbage if v is None else v for v in row] for row in rows])


def make_batch(ref=REF, ref_garbage=13.0, group_size=2, with_ref=True) -> SequenceBatch:
    mask = torch.tensor([p + r for p, r in zip(PROMPT_MASK, RESPONSE_MASK)])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    return SequenceBatch(input_ids=input_ids, attention_mask=mask, prompt_length=P, group_size=group_size,
                         ref_logprobs=with_garbage(ref, ref_garbage) if with_ref else None,
                         extras={"index": torch.tensor([0, 0, 1, 1, 2, 2])})


def policy_tensor(rows=POLICY, garbage=GARBAGE):
    return with_garbage(rows, garbage).requires_grad_(True)


def length(i):
    return sum(RESPONSE_MASK[i])


def seq(rows, i, normalize=False):
    """Σ of row i's real response values (/|y_i| if normalize)."""
    total = sum(v for v, m in zip(rows[i], RESPONSE_MASK[i]) if m)
    return total / length(i) if normalize else total


def log_ratio(i, policy=POLICY, ref=REF, normalize=False, reference_free=False):
    return seq(policy, i, normalize) - (0.0 if reference_free else seq(ref, i, normalize))


def hand_margins(policy=POLICY, ref=REF, normalize=False, reference_free=False):
    return [log_ratio(2 * g, policy, ref, normalize, reference_free)
            - log_ratio(2 * g + 1, policy, ref, normalize, reference_free) for g in range(3)]


def log_sigmoid(z):
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def sigmoid(z):
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def hand_dpo_loss(beta, eps=0.0, **options):
    return sum(-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
               for h in hand_margins(**options)) / 3


def assert_grad_is(grad, coefficients, normalize=False):
    """``grad[i, t] == coefficients[i]·mask[i, t]`` (``/|y_i|`` if normalize); 0 on padding."""
    for i in range(6):
        for t in range(4):
            expected = RESPONSE_MASK[i][t] * coefficients[i] / (length(i) if normalize else 1)
            assert grad[i, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7), (i, t)


def assert_chunks_exact(objective, batch, policy=POLICY):
    """Splitting the batch (2 pairs + 1 pair) and weighting each chunk's loss by ``chunk_weight``
    gives the whole batch's loss and gradient."""
    lp = policy_tensor(policy)
    whole, _ = objective.loss(lp, batch)
    (whole_grad,) = torch.autograd.grad(whole, lp)
    chunks = batch.split(4)
    assert [len(c) for c in chunks] == [4, 2]
    total, grad = 0.0, torch.zeros_like(lp)
    for rows, chunk in zip([[0, 1, 2, 3], [4, 5]], chunks):
        lp_chunk = policy_tensor([policy[i] for i in rows])
        loss, _ = objective.loss(lp_chunk, chunk)
        weighted = loss * objective.chunk_weight(chunk, batch)
        (chunk_grad,) = torch.autograd.grad(weighted, lp_chunk)
        total += weighted.item()
        grad[rows] += chunk_grad
    assert total == pytest.approx(whole.item(), rel=1e-6)
    torch.testing.assert_close(grad, whole_grad)


OPTIONS = [dict(), dict(length_normalized=True), dict(reference_free=True),
           dict(length_normalized=True, reference_free=True)]


def hand_options(options):
    return dict(normalize=options.get("length_normalized", False),
                reference_free=options.get("reference_free", False))


def test_fixture_margins():
    # log-ratios: 1.25, −0.75 | 0.3, −0.2 | −0.9, 0.3
    assert [log_ratio(i) for i in range(6)] == pytest.approx([1.25, -0.75, 0.3, -0.2, -0.9, 0.3])
    assert hand_margins() == pytest.approx([2.0, 0.5, -1.2])


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_dpo_loss_matches_hand_values(beta, eps, options):
    objective = DPO(beta=beta, label_smoothing=eps, **options)
    batch = make_batch(with_ref=not options.get("reference_free", False))
    loss, _ = objective.loss(policy_tensor(), batch)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_dpo_loss(beta, eps, **hand_options(options)), rel=1e-6)


def test_margin_method_and_known_numbers():
    objective = DPO(beta=1.0)
    torch.testing.assert_close(objective.margin(policy_tensor(), make_batch()), torch.tensor([2.0, 0.5, -1.2]))
    # length-normalised: (1.25/4 + 0.75/2), (0.3/1 + 0.2/3), (−0.9/3 − 0.3/4)
    normalized = DPO(length_normalized=True).margin(policy_tensor(), make_batch())
    torch.testing.assert_close(normalized, torch.tensor([0.6875, 0.3 + 0.2 / 3, -0.375]))
    # at h = 0 the loss is ln 2 whatever β and ε
    loss, _ = DPO(beta=3.0, label_smoothing=0.3).loss(policy_tensor(REF), make_batch())
    assert loss.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("options", OPTIONS)
def test_padding_and_reference_garbage_do_not_matter(options):
    objective = DPO(beta=0.5, **options)
    base = objective.loss(policy_tensor(), make_batch())[0].item()
    for garbage in (-1e4, float("inf"), float("nan")):
        lp = policy_tensor(garbage=garbage)
        loss, metrics = objective.loss(lp, make_batch(ref_garbage=garbage))
        assert loss.item() == pytest.approx(base, rel=1e-6)
        assert all(math.isfinite(float(v)) for v in metrics.values())
        (grad,) = torch.autograd.grad(loss, lp)
        assert torch.isfinite(grad).all()


def test_reference_free_needs_no_reference():
    assert DPO().needs.reference and not DPO(reference_free=True).needs.reference
    assert DPO.needs.rollout is False
    lp = policy_tensor()
    loss, _ = DPO(beta=0.5, reference_free=True).loss(lp, make_batch(with_ref=False))
    assert loss.item() == pytest.approx(hand_dpo_loss(0.5, reference_free=True))
    # a reference in the batch is ignored
    other, _ = DPO(beta=0.5, reference_free=True).loss(lp, make_batch())
    assert other.item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="ref_logprobs"):
        DPO().loss(lp, make_batch(with_ref=False))


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.25])
@pytest.mark.parametrize("beta", [0.05, 1.0])
def test_dpo_gradient_matches_analytic(beta, eps, options):
    """∂L/∂lp_{i,t} = ±β·[ε·σ(βh) − (1−ε)·σ(−βh)]/G · mask_{i,t} (/|y_i| if length-normalised):
    + for y_w, − for y_l."""
    lp = policy_tensor()
    loss, _ = DPO(beta=beta, label_smoothing=eps, **options).loss(lp, make_batch())
    (grad,) = torch.autograd.grad(loss, lp)
    margins = hand_margins(**hand_options(options))
    coefficients = []
    for i in range(6):
        h = margins[i // 2]
        dl_dh = beta * (eps * sigmoid(beta * h) - (1 - eps) * sigmoid(-beta * h)) / 3
        coefficients.append(dl_dh if i % 2 == 0 else -dl_dh)
    assert_grad_is(grad, coefficients, normalize=options.get("length_normalized", False))


def test_large_margins_are_stable():
    def crushed(parity):  # rows of that parity at −1e4 per token: h ≈ ±1e4·|y|, σ(βh) saturates
        return [[None if v is None else -1e4 for v in row] if i % 2 == parity else row
                for i, row in enumerate(POLICY)]

    for policy, flip in [(crushed(1), False), (crushed(0), True)]:
        for eps in (0.0, 0.2):
            lp = policy_tensor(policy)
            loss, metrics = DPO(beta=1.0, label_smoothing=eps).loss(lp, make_batch())
            (grad,) = torch.autograd.grad(loss, lp)
            assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
            assert all(math.isfinite(float(v)) for v in metrics.values())
            h = hand_margins(policy)
            expected = sum(-(1 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x) for x in h) / 3
            assert loss.item() == pytest.approx(expected, rel=1e-5), (flip, eps)


def test_a_descent_step_raises_the_winner_and_lowers_the_loser():
    lp = policy_tensor(REF)  # π_θ = π_ref: h = 0 everywhere
    batch = make_batch()
    objective = DPO(beta=1.0)
    loss, _ = objective.loss(lp, batch)
    (grad,) = torch.autograd.grad(loss, lp)
    mask = torch.tensor(RESPONSE_MASK).bool()
    for winner, loser in [(0, 1), (2, 3), (4, 5)]:
        assert bool((grad[winner][mask[winner]] < 0).all()) and bool((grad[loser][mask[loser]] > 0).all())
    assert objective.loss((lp - 0.1 * grad).detach(), batch)[0].item() < loss.item()


def test_metrics():
    beta = 0.5
    _, metrics = DPO(beta=beta).loss(policy_tensor(), make_batch())
    for key in ("loss/dpo", "dpo/accuracy", "dpo/margin", "dpo/chosen_reward", "dpo/rejected_reward",
                "dpo/chosen_logprob", "dpo/rejected_logprob"):
        value = metrics[key]
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
    assert float(metrics["loss/dpo"]) == pytest.approx(hand_dpo_loss(beta))
    assert float(metrics["dpo/accuracy"]) == pytest.approx(2 / 3)
    assert float(metrics["dpo/margin"]) == pytest.approx((2.0 + 0.5 - 1.2) / 3)
    assert float(metrics["dpo/chosen_reward"]) == pytest.approx(beta * (1.25 + 0.3 - 0.9) / 3)
    assert float(metrics["dpo/rejected_reward"]) == pytest.approx(beta * (-0.75 - 0.2 + 0.3) / 3)
    assert float(metrics["dpo/chosen_logprob"]) == pytest.approx(sum(seq(POLICY, i) for i in (0, 2, 4)) / 3)
    assert float(metrics["dpo/rejected_logprob"]) == pytest.approx(sum(seq(POLICY, i) for i in (1, 3, 5)) / 3)
    # length-normalised, reference-free rewards: β·mean token log-prob
    _, metrics = DPO(beta=beta, length_normalized=True, reference_free=True).loss(policy_tensor(), make_batch())
    assert float(metrics["dpo/chosen_reward"]) == pytest.approx(beta * sum(seq(POLICY, i, True) for i in (0, 2, 4)) / 3)


@pytest.mark.parametrize("options", OPTIONS)
def test_chunk_weights_are_exact(options):
    assert_chunks_exact(DPO(beta=0.5, label_smoothing=0.1, **options), make_batch())


def test_defaults_and_validation():
    objective = DPO()
    assert (objective.beta, objective.label_smoothing, objective.length_normalized, objective.reference_free) == (
        0.05, 0.0, False, False)
    for kwargs, key in [(dict(beta=0.0), "beta"), (dict(beta=-1.0), "beta"), (dict(beta=float("nan")), "beta"),
                        (dict(beta="0.1"), "beta"), (dict(beta=True), "beta"),
                        (dict(label_smoothing=0.5), "label_smoothing"), (dict(label_smoothing=-0.1), "label_smoothing"),
                        (dict(length_normalized="yes"), "length_normalized"),
                        (dict(reference_free=1), "reference_free")]:
        with pytest.raises(RecipeError, match=f"model.init_args.objective.init_args.{key}"):
            DPO(**kwargs)
    with pytest.raises(RecipeError) as info:  # every problem at once
        DPO(beta=-1.0, label_smoothing=0.7, reference_free="no")
    for key in ("beta", "label_smoothing", "reference_free"):
        assert f"objective.init_args.{key}" in str(info.value)
    assert "fix:" in str(info.value)


def test_rejects_groups_that_are_not_pairs():
    with pytest.raises(ValueError, match="chosen and a rejected"):
        DPO().loss(policy_tensor(), make_batch(group_size=3))
