"""KTO (Ethayarajh et al., 2024) against hand computations in Python floats.

Rows come in twos: row 2i is the labelled (x_i, y_i), row 2i+1 a mismatched (x_i, y_j) for z0.

    r_i = Σ_t m·(ln π_θ − ln π_ref)                      (sequence log-ratio)
    z0  = max(0, mean over mismatched rows of r)          (no gradient)
    ℓ_i = λ_D·(1 − σ(β(r_i − z0)))   desirable
          λ_U·(1 − σ(β(z0 − r_i)))   undesirable
    L   = mean over labelled rows of ℓ_i
"""

import math

import pytest
import torch

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.kto import KTO

P = 2
PROMPT_MASK = [[0, 1], [0, 1], [1, 1], [1, 1], [1, 1], [1, 1]]
RESPONSE_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
POLICY = [[-0.5, -1.0, -0.25], [-2.0, -0.75, None], [-0.1, None, None],
          [-3.0, -0.5, -0.2], [-1.0, -1.0, None], [-0.3, -0.3, -0.3]]
REF = [[-0.75, -1.5, -0.5], [-2.5, -1.0, None], [-0.4, None, None],
       [-2.5, -0.5, -0.5], [-0.75, -0.75, None], [-0.3, -0.6, -0.3]]
# labelled rows 0, 2, 4: desirable, undesirable, desirable; the mismatched rows' labels are the
# opposite of their pair's, and must be ignored
LABELS = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def with_garbage(rows, garbage):
    return torch.tensor([[garbage if v is None else v for v in row] for row in rows])


def make_batch(ref=REF, labels=LABELS, group_size=2, ref_garbage=13.0, rows=None) -> SequenceBatch:
    mask = torch.tensor([p + r for p, r in zip(PROMPT_MASK, RESPONSE_MASK)])
    input_ids = torch.randint(3, 15, mask.shape, generator=torch.Generator().manual_seed(0)).masked_fill(mask == 0, 0)
    batch = SequenceBatch(input_ids=input_ids, attention_mask=mask, prompt_length=P, group_size=group_size,
                          ref_logprobs=with_garbage(ref, ref_garbage), extras={"label": torch.tensor(labels)})
    return batch if rows is None else batch.select_rows(torch.tensor(rows))


def policy_tensor(rows=POLICY, garbage=100.0):
    return with_garbage(rows, garbage).requires_grad_(True)


def ratio(i, policy=POLICY, ref=REF):
    return sum(p - r for p, r, m in zip(policy[i], ref[i], RESPONSE_MASK[i]) if m)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def hand_z0(policy=POLICY, ref=REF, rows=(1, 3, 5)):
    return max(0.0, sum(ratio(i, policy, ref) for i in rows) / len(rows))


def hand_loss(beta, lam_d=1.0, lam_u=1.0, policy=POLICY, ref=REF, real=(0, 2, 4), mismatched=(1, 3, 5)):
    z0 = hand_z0(policy, ref, mismatched)
    terms = []
    for i in real:
        r = ratio(i, policy, ref)
        if LABELS[i] == 1.0:
            terms.append(lam_d * (1 - sigmoid(beta * (r - z0))))
        else:
            terms.append(lam_u * (1 - sigmoid(beta * (z0 - r))))
    return sum(terms) / len(terms)


def test_fixture():
    assert [ratio(i) for i in range(6)] == pytest.approx([1.0, 0.75, 0.3, -0.2, -0.5, 0.3])
    assert hand_z0() == pytest.approx(0.85 / 3)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_loss_matches_the_paper_by_hand(beta, weights):
    lam_d, lam_u = weights
    objective = KTO(beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    loss, _ = objective.loss(policy_tensor(), make_batch())
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(hand_loss(beta, lam_d, lam_u), rel=1e-6)


def test_z0_is_clamped_at_zero():
    # mismatched ratios −1.0, −0.2, −0.2: a negative mean, so z0 = 0
    ref = [row[:] for row in REF]
    ref[1] = [-1.0, -0.75, None]  # ratio −1.0 + 0 = −1.0
    ref[5] = [-0.3, -0.3, -0.1]  # ratio −0.2
    assert sum(ratio(i, ref=ref) for i in (1, 3, 5)) < 0
    _, metrics = KTO(beta=1.0).loss(policy_tensor(), make_batch(ref=ref))
    assert float(metrics["kto/z0"]) == 0.0
    loss, _ = KTO(beta=1.0).loss(policy_tensor(), make_batch(ref=ref))
    assert loss.item() == pytest.approx(hand_loss(1.0, ref=ref), rel=1e-6)


@pytest.mark.parametrize("garbage", [-1e4, 1e4, float("-inf"), float("nan")])
def test_padding_garbage_and_mismatched_labels_do_not_matter(garbage):
    objective = KTO(beta=0.5)
    labels = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # same labelled rows, other labels on the mismatched rows
    lp = policy_tensor(garbage=garbage)
    loss, _ = objective.loss(lp, make_batch(labels=labels, ref_garbage=-garbage))
    assert loss.item() == pytest.approx(hand_loss(0.5), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("beta, lam_d, lam_u", [(0.1, 1.0, 1.0), (2.0, 1.33, 0.7)])
def test_gradient_matches_analytic_and_z0_gets_none(beta, lam_d, lam_u):
    """With s = σ(β(r − z0)): ∂L/∂lp = −λ_D·β·s(1−s)/n (desirable), +λ_U·β·s(1−s)/n (undesirable),
    on every real token of the labelled rows; exactly 0 on the mismatched rows (z0 is detached)."""
    lp = policy_tensor()
    loss, _ = KTO(beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u).loss(lp, make_batch())
    (grad,) = torch.autograd.grad(loss, lp)
    z0 = hand_z0()
    for i in (0, 2, 4):
        s = sigmoid(beta * (ratio(i) - z0))
        coefficient = (-lam_d if LABELS[i] == 1.0 else lam_u) * beta * s * (1 - s) / 3
        for t in range(3):
            assert grad[i, t].item() == pytest.approx(RESPONSE_MASK[i][t] * coefficient, rel=1e-5, abs=1e-9), (i, t)
    for i in (1, 3, 5):
        assert torch.equal(grad[i], torch.zeros(3)), i


def test_a_descent_step_raises_desirable_and_lowers_undesirable():
    lp = policy_tensor()
    batch = make_batch()
    objective = KTO(beta=1.0)
    loss, _ = objective.loss(lp, batch)
    (grad,) = torch.autograd.grad(loss, lp)
    mask = torch.tensor(RESPONSE_MASK).bool()
    assert bool((grad[0][mask[0]] < 0).all()) and bool((grad[4][mask[4]] < 0).all())  # desirable: up
    assert bool((grad[2][mask[2]] > 0).all())  # undesirable: down
    assert objective.loss((lp - 0.5 * grad).detach(), batch)[0].item() < loss.item()


def test_large_log_ratios_are_stable():
    big = [[5e3, 5e3, None], [0.0, 0.0, None], [5e3, None, None], [0.0, 0.0, 0.0], [-5e3, -5e3, None], [0.0] * 3]
    zeros = [[0.0 if v is not None else None for v in row] for row in big]
    lp = policy_tensor(big)
    loss, _ = KTO(beta=1.0).loss(lp, make_batch(ref=zeros))
    # desirable r = 1e4 → 0; undesirable r = 5e3 → λ_U; desirable r = −1e4 → λ_D
    assert loss.item() == pytest.approx(2 / 3)
    (grad,) = torch.autograd.grad(loss, lp)
    assert torch.isfinite(grad).all() and grad.abs().max().item() < 1e-12


def test_metrics():
    _, metrics = KTO(beta=0.5).loss(policy_tensor(), make_batch())
    for key in ("loss/kto", "kto/z0", "kto/desirable_reward", "kto/undesirable_reward"):
        value = metrics[key]
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
    assert float(metrics["loss/kto"]) == pytest.approx(hand_loss(0.5), rel=1e-6)
    assert float(metrics["kto/z0"]) == pytest.approx(0.85 / 3, rel=1e-6)
    assert float(metrics["kto/desirable_reward"]) == pytest.approx((1.0 - 0.5) / 2)
    assert float(metrics["kto/undesirable_reward"]) == pytest.approx(0.3)


def test_metrics_without_undesirable_examples():
    _, metrics = KTO().loss(policy_tensor(), make_batch(labels=[1.0] * 6))
    assert float(metrics["kto/undesirable_reward"]) == 0.0
    assert float(metrics["kto/desirable_reward"]) == pytest.approx((1.0 + 0.3 - 0.5) / 3)


def test_bool_labels_work_like_floats():
    as_bool = make_batch(labels=[v == 1.0 for v in LABELS])
    loss, _ = KTO(beta=0.5).loss(policy_tensor(), as_bool)
    assert loss.item() == pytest.approx(hand_loss(0.5), rel=1e-6)


def test_micro_batches_use_their_own_z0():
    """Documented behaviour: z0 comes from the rows a call sees, so chunks weigh rows exactly (row
    share) but each estimates its own z0; when the chunks' z0 equal the whole's, the split is exact."""
    objective = KTO(beta=1.0)
    whole = make_batch()
    chunks = whole.split(2)  # pairs (0, 1), (2, 3), (4, 5)
    weights = [objective.chunk_weight(chunk, whole) for chunk in chunks]
    assert weights == pytest.approx([1 / 3] * 3)
    lp = policy_tensor()
    per_chunk = [objective.loss(lp[2 * g:2 * g + 2], chunk) for g, chunk in enumerate(chunks)]
    assert [float(m["kto/z0"]) for _, m in per_chunk] == pytest.approx([0.75, 0.0, 0.3])
    for g, (loss, _) in enumerate(per_chunk):
        assert loss.item() == pytest.approx(hand_loss(1.0, real=(2 * g,), mismatched=(2 * g + 1,)), rel=1e-6)

    # equal mismatched ratios in every pair: every chunk's z0 is the whole's, and the split is exact
    policy = [row[:] for row in POLICY]
    policy[3] = [-2.25, -0.5, -0.5]  # ratio 0.25 … as are rows 1 and 5 below
    policy[1] = [-2.25, -1.0, None]
    policy[5] = [-0.3, -0.35, -0.3]
    assert [ratio(i, policy) for i in (1, 3, 5)] == pytest.approx([0.25] * 3)
    lp = policy_tensor(policy)
    whole_loss, _ = objective.loss(lp, whole)
    split = sum(w * objective.loss(lp[2 * g:2 * g + 2], c)[0] for g, (w, c) in enumerate(zip(weights, chunks)))
    assert split.item() == pytest.approx(whole_loss.item(), rel=1e-6)


def test_defaults_and_declarations():
    objective = KTO()
    assert (objective.beta, objective.desirable_weight, objective.undesirable_weight) == (0.1, 1.0, 1.0)
    assert KTO.needs.rollout is False and KTO.needs.reference is True and KTO.needs.head == "causal_lm"


def test_bad_args_are_all_reported():
    with pytest.raises(RecipeError, match=r"model\.init_args\.objective\.init_args\.beta"):
        KTO(beta=0.0)
    with pytest.raises(RecipeError, match="desirable_weight"):
        KTO(desirable_weight=-1.0)
    with pytest.raises(RecipeError) as info:
        KTO(beta=float("nan"), desirable_weight=0.0, undesirable_weight=float("inf"))
    message = str(info.value)
    assert "3 problems" in message
    for key in ("init_args.beta", "init_args.desirable_weight", "init_args.undesirable_weight"):
        assert key in message, key


def test_rejects_malformed_batches():
    with pytest.raises(ValueError, match="twos"):
        KTO().loss(policy_tensor(), make_batch(group_size=3))
    no_ref = make_batch()
    no_ref.ref_logprobs = None
    with pytest.raises(ValueError, match="ref_logprobs"):
        KTO().loss(policy_tensor(), no_ref)
    no_label = make_batch()
    no_label.extras = {}
    with pytest.raises(ValueError, match="label"):
        KTO().loss(policy_tensor(), no_label)
