"""The work-saving paths give the plain computation's numbers: chunked log-probs, trimmed padding, shared
prompts (values and gradients, every model family, LoRA, padding on both sides) and the preallocated KV cache."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig

from families import FAMILIES, make_family_checkpoint
from rlhf_lightning import logprobs as L
from rlhf_lightning.generation import HFGenerator, SamplingParams
from rlhf_lightning.generation.kv_cache import PreallocatedCache, preallocated_cache
from rlhf_lightning.response_forward import prompt_owners, trim_padding


@pytest.fixture(autouse=True)
def every_saving_counts(monkeypatch):
    """The tiny test models save few FLOPs: take the work-saving paths whatever they save (one test below
    checks the threshold itself)."""
    import rlhf_lightning.response_forward as forward

    monkeypatch.setattr(forward, "MIN_SAVED_FLOPS", 0)


def plain_logprobs(model, input_ids, attention_mask, prompt_length, temperature=1.0):
    """The reference computation: one forward over every column, a float32 log-softmax over the vocabulary."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=L.position_ids_from_mask(attention_mask), use_cache=False).logits
    logits = logits[:, prompt_length - 1:-1].float() / temperature
    labels = input_ids[:, prompt_length:]
    return logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1) * attention_mask[:, prompt_length:]


def grouped_batch(vocab: int, prompt_lengths, response_lengths, group: int, pad: int = 0, extra_left: int = 2,
                  extra_right: int = 3, seed: int = 0):
    """Left-padded prompts (each repeated ``group`` times) + right-padded responses, with all-padding columns
    on both sides; ``response_lengths`` has one entry per row."""
    g = torch.Generator().manual_seed(seed)
    P = max(prompt_lengths) + extra_left
    R = max(response_lengths) + extra_right
    rows_ids, rows_mask = [], []
    for i, plen in enumerate(prompt_lengths):
        prompt = torch.randint(3, vocab, (plen,), generator=g)
        for j in range(group):
            rlen = response_lengths[i * group + j]
            response = torch.randint(3, vocab, (rlen,), generator=g)
            ids = torch.full((P + R,), pad)
            mask = torch.zeros(P + R, dtype=torch.long)
            ids[P - plen:P], mask[P - plen:P] = prompt, 1
            ids[P:P + rlen], mask[P:P + rlen] = response, 1
            rows_ids.append(ids), rows_mask.append(mask)
    return torch.stack(rows_ids), torch.stack(rows_mask), P


def forward_shapes(monkeypatch, model) -> list[tuple[int, ...]]:
    """The ``input_ids`` shape of every forward of ``model`` from now on (filled as they run)."""
    seen = []
    forward = type(model).forward

    def counting(self, input_ids=None, **kwargs):
        seen.append(tuple(input_ids.shape))
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    return seen


def tiny_llama(vocab: int = 97, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, **overrides)
    return LlamaForCausalLM(config)


# ----------------------------------------------------------------------------- chunked log-probs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_token_logprobs_equal_log_softmax_values_and_grads(monkeypatch, dtype, temperature):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 700)  # several chunks, the last one partial
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 7, 211)).to(dtype).requires_grad_()
    labels = torch.randint(0, 211, (3, 7))
    weights = torch.randn(3, 7)
    before = logits.detach().clone()
    fast = L.token_logprobs_from_logits(logits, labels, temperature)
    (fast * weights).sum().backward()
    fast_grad, logits.grad = logits.grad.clone(), None
    assert torch.equal(logits.detach(), before)  # the backward does not write into the logits
    plain = (logits.float() / temperature).log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
    (plain * weights).sum().backward()
    assert fast.dtype == torch.float32 and fast_grad.dtype == dtype
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(fast_grad.float(), logits.grad.float(), atol=1e-5)


def test_chunked_token_logprobs_hand_computed():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[2, 0]])
    lse = torch.log(torch.tensor(1 + torch.e + torch.e ** 2))
    expected = torch.stack([2 - lse, -torch.log(torch.tensor(3.0))])
    assert torch.allclose(L.token_logprobs_from_logits(logits, labels)[0], expected, atol=1e-6)


# ----------------------------------------------------------------------------- padding and shared prompts
def test_trim_padding_cuts_only_all_padding_columns():
    ids, mask, P = grouped_batch(50, [3, 5], [2, 4, 1, 3], group=2, extra_left=2, extra_right=3)
    trimmed = trim_padding(ids, mask, P)
    assert (trimmed.cut_left, trimmed.cut_right) == (2, 3)
    assert trimmed.prompt_length == 5 and trimmed.input_ids.shape[1] == 5 + 4
    assert int(trimmed.attention_mask.sum()) == int(mask.sum())


def test_prompt_owners_finds_consecutive_repeats_only():
    ids, mask, P = grouped_batch(50, [3, 5, 4], [2, 2, 2, 2, 2, 2], group=2)
    owner, first = prompt_owners(ids, mask, P)
    assert owner.tolist() == [0, 0, 1, 1, 2, 2] and first.tolist() == [0, 2, 4]
    ids, mask, P = grouped_batch(50, [3, 5, 4], [2, 2, 2], group=1)
    assert prompt_owners(ids, mask, P) is None
    ids[1, P - 1] = ids[0, P - 1]  # same last token but different prompts stay apart
    assert prompt_owners(ids, mask, P) is None


def _compare(model, ids, mask, P, temperature=1.0, entropy=True):
    """Shared-prompt path vs plain forward: values ≤ 1e-5, gradients ≤ 1e-5 (relative to the largest)."""
    results = []
    for share in (True, False):
        model.zero_grad()
        logprobs, ent = L.response_logprobs(model, ids, mask, P, temperature, with_entropy=entropy,
                                            share_prompts=share)
        (logprobs.sum() + (0.1 * ent.sum() if entropy else 0)).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((logprobs.detach(), ent.detach() if entropy else None, grads))
    (fast, fast_ent, fast_grads), (plain_path, plain_ent, plain_grads) = results
    with torch.no_grad():
        reference = plain_logprobs(model, ids, mask, P, temperature)
    assert fast.shape == reference.shape == plain_path.shape
    assert torch.allclose(fast, reference, atol=1e-5), (fast - reference).abs().max()
    assert torch.allclose(plain_path, reference, atol=1e-5)
    assert (fast[mask[:, P:] == 0] == 0).all()
    if entropy:
        assert torch.allclose(fast_ent, plain_ent, atol=1e-5)
    assert len(fast_grads) == len(plain_grads) > 0
    for a, b in zip(fast_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-5 * max(1.0, b.abs().max().item())), (a - b).abs().max()


@pytest.mark.parametrize("group", [1, 2, 3])
def test_shared_prompts_equal_plain_forward_with_padding_on_both_sides(group):
    model = tiny_llama()
    lengths = [1, 4, 6, 3]
    responses = [(i * 5) % 7 + 1 for i in range(len(lengths) * group)]  # lengths 1 … 7, padding after most
    ids, mask, P = grouped_batch(97, lengths, responses, group=group)
    _compare(model, ids, mask, P, temperature=0.8)


def test_shared_prompts_single_token_responses_and_mixed_groups():
    model = tiny_llama()
    ids, mask, P = grouped_batch(97, [5, 2], [1, 1, 1, 1], group=2, extra_right=0)
    _compare(model, ids, mask, P)
    lone, lone_mask, _ = grouped_batch(97, [3], [2], group=1, extra_left=P - 3, extra_right=0, seed=3)
    lone, lone_mask = lone[:, :ids.shape[1]], lone_mask[:, :ids.shape[1]]
    _compare(model, torch.cat([ids, lone]), torch.cat([mask, lone_mask]), P)  # groups of 2, 2 and 1


@pytest.fixture(scope="module", params=[name for name in FAMILIES])
def family_model(request, tmp_path_factory):
    path = make_family_checkpoint(FAMILIES[request.param], tmp_path_factory.mktemp(request.param))
    return AutoModelForCausalLM.from_pretrained(path)


def test_shared_prompts_equal_plain_forward_on_every_family(family_model, monkeypatch):
    import rlhf_lightning.response_forward as shared

    taken = []
    original = shared._shared_prompt_parts
    monkeypatch.setattr(shared, "_shared_prompt_parts", lambda *a, **k: taken.append(1) or original(*a, **k))
    vocab = family_model.config.vocab_size
    ids, mask, P = grouped_batch(vocab, [4, 7, 2], [3, 6, 1, 5, 2, 4], group=2)
    _compare(family_model, ids, mask, P)
    assert taken  # the family's model went through the shared-prompt forward


def test_shared_prompts_sliding_window_shorter_than_the_prompt():
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, sliding_window=3,
                           pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config)
    ids, mask, P = grouped_batch(97, [6, 8], [5, 3, 4, 6], group=2)
    _compare(model, ids, mask, P)


def test_shared_prompts_under_lora_and_gradient_checkpointing():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False))
    ids, mask, P = grouped_batch(97, [4, 6], [3, 5, 2, 4], group=2)
    _compare(model, ids, mask, P)
    checkpointed = tiny_llama()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed.train()
    _compare(checkpointed, ids, mask, P, entropy=False)  # falls back to the full forward (no cache in training)


def test_shared_prompts_run_each_prompt_once(monkeypatch):
    model = tiny_llama()
    ids, mask, P = grouped_batch(97, [4, 6], [3, 5, 2, 4], group=2)
    seen = forward_shapes(monkeypatch, model)
    with torch.no_grad():
        L.response_logprobs(model, ids, mask, P)
    trimmed = trim_padding(ids, mask, P)
    R = trimmed.input_ids.shape[1] - trimmed.prompt_length
    assert seen == [(2, trimmed.prompt_length), (4, R - 1)]  # 2 prompts once, then the 4 responses' tokens


# ----------------------------------------------------------------------------- preallocated KV cache
def _generate(model, prompts, mask, cache=None, new_tokens=9):
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              eos_token_id=[2], pad_token_id=0)
    torch.manual_seed(0)
    with torch.no_grad():
        return model.generate(input_ids=prompts, attention_mask=mask, generation_config=config,
                              **({"cache": cache} if cache is not None else {}))


def test_preallocated_cache_generates_the_default_caches_samples():
    model = tiny_llama().eval()
    ids, mask, P = grouped_batch(97, [3, 6, 5], [1, 1, 1], group=1, extra_left=0, extra_right=0)
    prompts, prompt_mask = ids[:, :P], mask[:, :P]
    default = _generate(model, prompts, prompt_mask)
    cache = preallocated_cache(model, P + 9)
    assert isinstance(cache, PreallocatedCache)
    assert torch.equal(_generate(model, prompts, prompt_mask, cache), default)
    small = preallocated_cache(model, 2)  # too small: grows instead of failing
    assert torch.equal(_generate(model, prompts, prompt_mask, small), default)


def test_preallocated_cache_only_for_plain_attention_layers():
    sliding = AutoModelForCausalLM.from_config(MistralConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, sliding_window=4))
    assert preallocated_cache(sliding, 16) is None
    assert preallocated_cache(tiny_llama(), 16) is not None


@pytest.mark.parametrize("share_prefill_from", [None, 2])
def test_hf_generator_samples_equal_with_and_without_preallocation(share_prefill_from):
    model = tiny_llama().eval()
    ids, mask, P = grouped_batch(97, [3, 6, 5], [1, 1, 1], group=1, extra_left=0, extra_right=0)
    params = SamplingParams(max_new_tokens=8, num_samples=2)
    outputs = []
    for preallocate in (True, False):
        generator = HFGenerator(share_prefill_from=share_prefill_from, preallocate_cache=preallocate)
        generator.eos_ids, generator.pad_token_id = (2,), 0
        torch.manual_seed(0)
        outputs.append(generator.generate(model, ids[:, :P], mask[:, :P], params))
    assert torch.equal(outputs[0].responses, outputs[1].responses)
    assert torch.equal(outputs[0].response_mask, outputs[1].response_mask)


# ----------------------------------------------------------------------------- dropping ended rows
def eos_prone_llama(eos_scale: float = 3.0) -> LlamaForCausalLM:
    """A tiny Llama whose EOS (id 2) logit is scaled up, so that rows end at many different steps
    (3: greedy responses of 1 to 10 tokens; 20: sampled ones of 1 to 12)."""
    model = tiny_llama(seed=1).eval()
    with torch.no_grad():
        model.lm_head.weight[2] *= eos_scale
    return model


def _engine(drop: bool, share, record=False) -> HFGenerator:
    engine = HFGenerator(share_prefill_from=share, drop_ended_rows=drop, record_sampler_logprobs=record)
    engine.eos_ids, engine.pad_token_id = (2,), 0
    return engine


def _prompts(rows: int = 6):
    lengths = [3, 6, 5, 2, 7, 4][:rows]
    ids, mask, P = grouped_batch(97, lengths, [1] * rows, group=1, extra_left=0, extra_right=0, seed=5)
    return ids[:, :P], mask[:, :P]


@pytest.mark.parametrize("share", [None, 2])
def test_dropping_ended_rows_greedy_equals_hf_generate(share):
    model = eos_prone_llama()
    prompts, mask = _prompts()
    params = SamplingParams(max_new_tokens=12, temperature=0.0, num_samples=2)
    fast = _engine(True, share).generate(model, prompts, mask, params)
    slow = _engine(False, share).generate(model, prompts, mask, params)
    lengths = fast.response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 2  # rows end at different steps, so rows were dropped on the way
    assert torch.equal(fast.responses, slow.responses) and torch.equal(fast.ended, slow.ended)


def test_dropping_ended_rows_samples_equal_hf_generate_while_no_row_ends():
    model = tiny_llama().eval()
    prompts, mask = _prompts()
    params = SamplingParams(max_new_tokens=8, min_new_tokens=8, num_samples=2)  # EOS forbidden: nobody ends
    outputs = []
    for drop in (True, False):
        engine = _engine(drop, 2)
        engine.pad_token_id = 2  # pad = EOS (a sampled pad would end a row too)
        torch.manual_seed(0)
        outputs.append(engine.generate(model, prompts, mask, params).responses)
    assert torch.equal(*outputs)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.9)])
def test_dropping_ended_rows_samples_from_the_policy_at_every_step(sampling):
    """After rows leave the batch, every remaining row still samples from its own context: the sampler's
    ln p of each token equals the policy's recomputed one (top-k/top-p: the cut distribution's)."""
    model = eos_prone_llama()
    prompts, mask = _prompts()
    params = SamplingParams(max_new_tokens=12, num_samples=3, **sampling)
    torch.manual_seed(0)
    generation = _engine(True, 2, record=True).generate(model, prompts, mask, params)
    lengths = generation.response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 2 and bool(generation.ended.any())
    ids = torch.cat([prompts.repeat_interleave(3, 0), generation.responses], 1)
    full_mask = torch.cat([mask.repeat_interleave(3, 0), generation.response_mask], 1)
    from rlhf_lightning.generation.decode import _warpers

    P = prompts.shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=full_mask, position_ids=L.position_ids_from_mask(full_mask)).logits
    scores = logits[:, P - 1:-1].float().flatten(0, 1)
    for warp in _warpers(params):  # the cut distribution (nothing cut in the plain case)
        scores = warp(None, scores)
    expected = scores.log_softmax(-1).gather(-1, generation.responses.reshape(-1, 1)).view_as(generation.responses)
    expected = torch.where(generation.response_mask.bool(), expected, 0.0)  # padding may lie outside the cut
    assert torch.isfinite(expected).all()
    assert torch.allclose(generation.sampler_logprobs, expected, atol=1e-4)
    if not sampling:
        policy, _ = L.response_logprobs(model, ids, full_mask, P)
        assert torch.allclose(generation.sampler_logprobs, policy, atol=1e-4)


def test_dropping_ended_rows_computes_fewer_rows(monkeypatch):
    model = eos_prone_llama()
    prompts, mask = _prompts()
    shapes = forward_shapes(monkeypatch, model)
    params = SamplingParams(max_new_tokens=12, temperature=0.0, num_samples=2)
    _engine(True, 2).generate(model, prompts, mask, params)
    rows = [shape[0] for shape in shapes]
    assert rows[0] == 6 and rows[1] == 12 and rows[-1] < 12  # one prefill per prompt, then fewer rows


def test_fused_entropy_equals_the_full_softmax_entropy(monkeypatch):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 500)
    torch.manual_seed(0)
    logits = 3 * torch.randn(2, 5, 173)
    labels = torch.randint(0, 173, (2, 5))
    for temperature in (1.0, 0.6):
        logprobs, entropy = L.token_logprobs_and_entropy(logits, labels, temperature)
        assert torch.allclose(entropy, L.entropy_from_logits(logits, temperature), atol=1e-5)
        assert torch.allclose(logprobs, L.token_logprobs_from_logits(logits, labels, temperature))
    uniform = torch.zeros(1, 1, 8)
    assert torch.allclose(L.token_logprobs_and_entropy(uniform, torch.zeros(1, 1, dtype=torch.long))[1],
                          torch.log(torch.tensor(8.0)))


# ----------------------------------------------------------------------------- length groups
def test_length_buckets_hand_cases():
    from rlhf_lightning.response_forward import length_buckets

    assert length_buckets([5] * 16) is None  # nothing to save
    assert length_buckets([1, 9] * 3) is None  # too few rows for two groups of 4
    groups = length_buckets([1] * 8 + [10] * 8)
    assert [sorted(g) for g in groups] == [list(range(8)), list(range(8, 16))]  # 16·10 → 8·1 + 8·10 tokens
    assert length_buckets([1] * 8 + [10] * 8, per_row=200) is None  # long prompts per row: < 15 % saved
    lengths = [2, 30, 3, 31, 2, 15, 16, 30, 3, 15, 2, 16, 3, 31, 15, 16]
    groups = length_buckets(lengths)
    assert len(groups) == 3 and sorted(i for g in groups for i in g) == list(range(16))
    assert [max(lengths[i] for i in g) for g in groups] == [3, 16, 31]


@pytest.mark.parametrize("share", [True, False])
def test_length_groups_equal_plain_forward_and_run_shorter(monkeypatch, share):
    model = tiny_llama()
    responses = [2, 12, 12, 2, 2, 11, 12, 2, 2, 12, 12, 1, 2, 11, 12, 2]  # 8 of ≤ 2 tokens, 8 of 11–12
    ids, mask, P = grouped_batch(97, [3, 5, 4, 6, 2, 5, 4, 3], responses, group=2)
    seen = forward_shapes(monkeypatch, model)
    with torch.no_grad():
        L.response_logprobs(model, ids, mask, P, share_prompts=share)
    if share:
        assert seen[0][0] == 8 and len(seen) == 3 and sorted(rows for rows, _ in seen[1:]) == [8, 8]
        assert sorted(width for _, width in seen[1:]) == [1, 11]  # each group to its own longest response
    else:
        assert len(seen) == 2 and sorted(rows for rows, _ in seen) == [8, 8]
    monkeypatch.undo()
    _compare(model, ids, mask, P, temperature=0.9)
    model.zero_grad()
    lp, _ = L.response_logprobs(model, ids, mask, P, share_prompts=share)
    assert torch.allclose(lp.detach(), plain_logprobs(model, ids, mask, P).detach(), atol=1e-5)


def test_tiny_savings_keep_one_forward(monkeypatch):
    """Below MIN_SAVED_FLOPS another forward call costs more than it saves: one forward over the batch."""
    import rlhf_lightning.response_forward as forward

    monkeypatch.setattr(forward, "MIN_SAVED_FLOPS", 2e8)
    model = tiny_llama()
    ids, mask, P = grouped_batch(97, [4, 6], [3, 5, 2, 4], group=2)
    seen = forward_shapes(monkeypatch, model)
    with torch.no_grad():
        L.response_logprobs(model, ids, mask, P)
    assert len(seen) == 1
    assert forward.saves_enough(model, 10 ** 6) and not forward.saves_enough(model, 10)
