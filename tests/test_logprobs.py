"""Shared maths of ``rlhf_lightning.logprobs``: masked reductions, per-token log-probs, entropy, KL
estimators, KL shaping, and ``response_logprobs`` on a tiny Llama under every padding layout."""

import math

import pytest
import torch
from torch import nn

from rlhf_lightning.logprobs import (
    entropy_from_logits,
    kl_per_token,
    kl_shaped_reward,
    masked_mean,
    masked_sum,
    position_ids_from_mask,
    response_logprobs,
    token_logprobs_from_logits,
)

PAD, EOS = 0, 1  # ids in tests/tiny.py


# ---------------------------------------------------------------------------- hand-computed helpers
def hand_log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    """``ln softmax(x / T)_v = x_v/T − ln Σ_u exp(x_u/T)`` in plain Python floats."""
    scaled = [x / temperature for x in row]
    top = max(scaled)
    log_z = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - log_z for x in scaled]


LOGITS = torch.tensor([
    [[0.1, -1.2, 2.0, 0.5], [3.0, 0.0, -2.0, 1.0], [0.0, 0.0, 0.0, 0.0]],
    [[-0.7, 0.3, 0.9, -3.1], [1.5, 1.5, -0.5, 2.5], [10.0, -10.0, 0.0, 5.0]],
])  # [2, 3, 4]
LABELS = torch.tensor([[2, 0, 3], [1, 3, 0]])


# ---------------------------------------------------------------------------- masked reductions
def test_masked_sum_is_sum_of_values_times_mask():
    """masked_sum = Σ_t v_t·m_t along the last dim (and along dim=0 when asked)."""
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    assert torch.equal(masked_sum(values, mask), torch.tensor([3.0, 21.0]))
    assert torch.equal(masked_sum(values, mask, dim=0), torch.tensor([1.0, 8.0, 7.0, 8.0]))


def test_masked_sum_ignores_garbage_at_masked_positions():
    """Finite garbage under mask 0 contributes nothing."""
    values = torch.tensor([[1.0, 2.0, 1e6, -1e6]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert masked_sum(values, mask).item() == 3.0


def test_masked_mean_per_row_and_global_with_all_masked_row_giving_zero():
    """masked_mean = Σ v·m / max(Σ m, 1); a row with no real entries gives 0, not NaN."""
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 1]])  # integer mask is accepted
    per_row = masked_mean(values, mask, dim=-1)
    assert torch.allclose(per_row, torch.tensor([1.5, 0.0, 8.5]))
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 8 + 9) / 4)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0
    assert torch.isfinite(per_row).all()


def test_position_ids_count_real_tokens_only():
    """Positions = cumsum(mask) − 1, clamped at 0: left padding does not shift positions."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 0, 1, 2, 2]])
    assert torch.equal(position_ids_from_mask(mask), expected)


# ---------------------------------------------------------------------------- per-token log-probs
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_token_logprobs_match_hand_log_softmax(temperature):
    """token_logprobs[n, r] = ln softmax(logits[n, r] / T)[label[n, r]] on a 2×3×4 tensor."""
    out = token_logprobs_from_logits(LOGITS, LABELS, temperature)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    for n in range(2):
        for r in range(3):
            expected = hand_log_softmax(LOGITS[n, r].tolist(), temperature)[LABELS[n, r].item()]
            assert out[n, r].item() == pytest.approx(expected, abs=1e-6)


def test_token_logprobs_are_float32_for_low_precision_logits():
    """Half-precision logits are upcast: the result is float32."""
    out = token_logprobs_from_logits(LOGITS.bfloat16(), LABELS)
    assert out.dtype == torch.float32
    assert torch.allclose(out, token_logprobs_from_logits(LOGITS.bfloat16().float(), LABELS))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_entropy_matches_hand_computation(temperature):
    """H = −Σ_v p_v ln p_v with p = softmax(logits / T), per position."""
    out = entropy_from_logits(LOGITS, temperature)
    assert out.shape == (2, 3)
    for n in range(2):
        for r in range(3):
            logp = hand_log_softmax(LOGITS[n, r].tolist(), temperature)
            expected = -sum(math.exp(lp) * lp for lp in logp)
            assert out[n, r].item() == pytest.approx(expected, abs=1e-6)
    assert out[0, 2].item() == pytest.approx(math.log(4), abs=1e-6)  # uniform row: ln V


# ---------------------------------------------------------------------------- KL estimators
LOGP = torch.tensor([[-0.5, -2.0, -1.0], [-3.0, -0.1, -0.7]])  # policy π
LOGQ = torch.tensor([[-1.5, -1.0, -1.0], [-0.2, -2.3, -0.9]])  # reference π_ref


def test_kl_k1_is_logp_minus_logq():
    """k1 = ln π − ln π_ref (argument order: policy first, reference second)."""
    assert torch.allclose(kl_per_token(LOGP, LOGQ, "k1"), LOGP - LOGQ)
    assert torch.allclose(kl_per_token(LOGP, LOGQ), LOGP - LOGQ)  # k1 is the default


def test_kl_k2_is_half_squared_log_ratio():
    """k2 = ½ (ln π − ln π_ref)²."""
    for p, q, k in zip(LOGP.flatten().tolist(), LOGQ.flatten().tolist(),
                       kl_per_token(LOGP, LOGQ, "k2").flatten().tolist()):
        assert k == pytest.approx(0.5 * (p - q) ** 2, abs=1e-6)


def test_kl_k3_is_ratio_minus_one_minus_log_ratio_and_non_negative():
    """k3 = exp(ln π_ref − ln π) − 1 − (ln π_ref − ln π) ≥ 0, zero when π = π_ref."""
    out = kl_per_token(LOGP, LOGQ, "k3")
    for p, q, k in zip(LOGP.flatten().tolist(), LOGQ.flatten().tolist(), out.flatten().tolist()):
        assert k == pytest.approx(math.exp(q - p) - 1 - (q - p), abs=1e-6)
    assert bool((out >= 0).all())
    for estimator in ("k1", "k2", "k3"):
        assert torch.equal(kl_per_token(LOGP, LOGP, estimator), torch.zeros_like(LOGP))


def test_kl_estimators_k1_k3_are_unbiased_for_forward_kl_policy_vs_reference():
    """E_{y~π}[k1] = E_{y~π}[k3] = KL(π‖π_ref) (exact expectation over a categorical), not KL(π_ref‖π)."""
    logp = torch.tensor([0.9, 0.09, 0.01]).log()
    logq = torch.tensor([0.1, 0.1, 0.8]).log()
    p = logp.exp()
    forward_kl = (p * (logp - logq)).sum().item()
    reverse_kl = (logq.exp() * (logq - logp)).sum().item()
    assert abs(forward_kl - reverse_kl) > 1.0  # the two directions differ, so the check has teeth
    for estimator in ("k1", "k3"):
        expectation = (p * kl_per_token(logp, logq, estimator)).sum().item()
        assert expectation == pytest.approx(forward_kl, abs=1e-6), estimator


def test_kl_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(LOGP, LOGQ, "k4")


def test_kl_shaped_reward_formula():
    """r̃ = r − γ·(ln π_t(y|x) − ln π_ref(y|x))."""
    reward = torch.tensor([1.0, -0.5, 0.0])
    logp_sum = torch.tensor([-3.0, -10.0, -2.0])
    ref_sum = torch.tensor([-4.0, -7.0, -2.0])
    out = kl_shaped_reward(reward, logp_sum, ref_sum, kl_coef=0.1)
    expected = [1.0 - 0.1 * 1.0, -0.5 - 0.1 * (-3.0), 0.0]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(kl_shaped_reward(reward, logp_sum, ref_sum, 0.0), reward)


# ---------------------------------------------------------------------------- response_logprobs on a tiny Llama
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from tiny import make_model_dir

    path = make_model_dir(tmp_path_factory.mktemp("logprobs") / "model")
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model


PROMPT = [5, 6, 7]  # the sequence under test: prompt x …
RESPONSE = [8, 9, 4, EOS]  # … and response y (ends with EOS)
LONG_PROMPT = [3, 4, 5, 6, 7, 8, 9]
LONG_RESPONSE = [10, 11, 12, 13, 14, 3, EOS]


def build(prompts: list[list[int]], responses: list[list[int]], pad_fill: int = PAD):
    """Left-pad prompts to the longest, right-pad responses to the longest: ``(input_ids, mask, P)``."""
    P = max(len(p) for p in prompts)
    R = max(len(r) for r in responses)
    ids, mask = [], []
    for p, r in zip(prompts, responses):
        ids.append([pad_fill] * (P - len(p)) + p + r + [pad_fill] * (R - len(r)))
        mask.append([0] * (P - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (R - len(r)))
    return torch.tensor(ids), torch.tensor(mask), P


def direct_logits(model, prompt, response):
    """Logits predicting each response token from a full forward of the unpadded sequence: positions P−1 … P+R−2."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    P, R = len(prompt), len(response)
    return logits[P - 1:P + R - 1]  # [R, V]


def direct_logprobs(model, prompt, response, temperature=1.0):
    """ln softmax(logits_t / T)[y_t] gathered at the response tokens, by hand."""
    logits = direct_logits(model, prompt, response).float() / temperature
    logp = logits.log_softmax(-1)
    return logp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def target_row(model, prompts, responses, row, temperature=1.0, pad_fill=PAD):
    ids, mask, P = build(prompts, responses, pad_fill)
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, ids, mask, P, temperature)
    R = len(responses[row])
    return logprobs, mask[:, P:], logprobs[row, :R]


LAYOUTS = {
    "unpadded alone": ([PROMPT], [RESPONSE], 0),
    "left-padded prompt": ([LONG_PROMPT, PROMPT], [RESPONSE, RESPONSE], 1),
    "right-padded response": ([PROMPT, PROMPT], [LONG_RESPONSE, RESPONSE], 1),
    "padded both sides": ([LONG_PROMPT, PROMPT, [4, 5]], [RESPONSE[:2], RESPONSE, LONG_RESPONSE], 1),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_response_logprobs_equal_direct_forward_under_any_padding(model, layout):
    """ln π(y_t | x, y_<t) of the sequence is the same alone or padded in a batch (left prompt pad,
    right response pad, both), and equals log_softmax(logits[P−1 … P+R−2])[y] of an unpadded forward."""
    prompts, responses, row = LAYOUTS[layout]
    expected = direct_logprobs(model, PROMPT, RESPONSE)
    logprobs, response_mask, got = target_row(model, prompts, responses, row)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    # padding after the response is exactly zero and masked out
    assert torch.equal(logprobs[row, len(RESPONSE):], torch.zeros(logprobs.shape[1] - len(RESPONSE)))
    assert torch.equal(response_mask[row], torch.tensor([1] * len(RESPONSE)
                                                         + [0] * (logprobs.shape[1] - len(RESPONSE))))


def test_response_logprobs_of_every_row_in_a_padded_batch_match_their_direct_forward(model):
    """Each row of a mixed-padding batch equals its own unpadded forward (not only the row under test)."""
    prompts, responses, _ = LAYOUTS["padded both sides"]
    ids, mask, P = build(prompts, responses)
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, ids, mask, P)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        assert torch.allclose(logprobs[row, :len(r)], direct_logprobs(model, p, r), atol=1e-5), row


def test_padding_token_ids_do_not_matter_under_mask_zero(model):
    """Token ids at masked positions (prompt left pad, response right pad) do not change the result."""
    prompts, responses, row = LAYOUTS["padded both sides"]
    a, _, got_a = target_row(model, prompts, responses, row, pad_fill=PAD)
    b, _, got_b = target_row(model, prompts, responses, row, pad_fill=9)
    assert torch.allclose(got_a, got_b, atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5)


def test_masked_sum_of_padded_batch_gives_unpadded_sequence_logprob(model):
    """ln π(y|x) = Σ_t mask_t · ln π(y_t|…) with mask = attention_mask[:, P:], same as unpadded."""
    expected = direct_logprobs(model, PROMPT, RESPONSE).sum().item()
    for layout, (prompts, responses, row) in LAYOUTS.items():
        logprobs, response_mask, _ = target_row(model, prompts, responses, row)
        seq = masked_sum(logprobs, response_mask.float())
        assert seq[row].item() == pytest.approx(expected, abs=1e-4), layout
        # garbage written into padded positions does not leak into the masked sum
        garbage = logprobs.masked_fill(response_mask == 0, 100.0)
        assert masked_sum(garbage, response_mask.float())[row].item() == pytest.approx(expected, abs=1e-4), layout


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_response_logprobs_with_temperature(model, temperature):
    """With temperature T: ln softmax(logits / T)[y], padded batch vs unpadded direct forward."""
    prompts, responses, row = LAYOUTS["padded both sides"]
    expected = direct_logprobs(model, PROMPT, RESPONSE, temperature)
    _, _, got = target_row(model, prompts, responses, row, temperature)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, direct_logprobs(model, PROMPT, RESPONSE), atol=1e-3)  # T matters


def test_response_logprobs_with_entropy_shape_and_values(model):
    """with_entropy: ``[N, R]`` entropy equal to entropy_from_logits of the direct forward, zero on padding,
    with grad when grad is enabled (for an entropy bonus), like the log-probs."""
    prompts, responses, row = LAYOUTS["padded both sides"]
    ids, mask, P = build(prompts, responses)
    R = ids.shape[1] - P
    logprobs, entropy = response_logprobs(model, ids, mask, P, temperature=0.8, with_entropy=True)
    assert entropy.shape == logprobs.shape == (3, R)
    assert logprobs.requires_grad and entropy.requires_grad
    expected = entropy_from_logits(direct_logits(model, PROMPT, RESPONSE), temperature=0.8)
    assert torch.allclose(entropy[row, :len(RESPONSE)], expected, atol=1e-5)
    response_mask = mask[:, P:]
    assert torch.equal(entropy.detach()[response_mask == 0], torch.zeros(int((response_mask == 0).sum())))
    assert bool((entropy[response_mask == 1] > 0).all())
    no_entropy = response_logprobs(model, ids, mask, P)[1]
    assert no_entropy is None


class NoLogitsToKeep(nn.Module):
    """A model wrapper whose forward does not accept ``logits_to_keep`` (exercises the fallback path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def test_response_logprobs_fallback_for_models_without_logits_to_keep(model):
    """The full-logits fallback slices the same positions as the logits_to_keep path."""
    prompts, responses, _ = LAYOUTS["padded both sides"]
    ids, mask, P = build(prompts, responses)
    with torch.no_grad():
        fast, _ = response_logprobs(model, ids, mask, P)
        slow, _ = response_logprobs(NoLogitsToKeep(model), ids, mask, P)
    assert torch.allclose(fast, slow, atol=1e-5)
