"""Response masks from generations (``response_attention_mask``) and the ``Rollout`` batch helpers."""

import pytest
import torch

from rlhf_lightning.generation import response_attention_mask
from rlhf_lightning.rollout import Rollout

PAD, EOS = 0, 1


# ---------------------------------------------------------------------------- response_attention_mask
def test_any_token_of_an_eos_set_ends_the_response():
    """Llama-3-style checkpoints end responses with either of two ids: each one counts as EOS."""
    SECOND = 9
    responses = torch.tensor([
        [5, SECOND, 7, PAD],  # ends with the second EOS: the 7 after it is masked
        [5, 6, EOS, PAD],
        [5, 6, 7, 8],  # no EOS at all
    ])
    mask, has_eos = response_attention_mask(responses, (EOS, SECOND), PAD)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False]
    _, only_first = response_attention_mask(responses, EOS, PAD)
    assert only_first.tolist() == [False, True, False]


def test_mask_keeps_tokens_up_to_and_including_first_eos():
    """Tokens after the first EOS are masked (even non-pad ones, even a second EOS); EOS itself is kept."""
    responses = torch.tensor([
        [5, 6, EOS, PAD, PAD],
        [5, EOS, 7, EOS, PAD],  # junk after the first EOS
        [EOS, PAD, PAD, PAD, PAD],  # empty response: only EOS
        [5, 6, 7, 8, EOS],  # EOS on the last position
    ])
    mask, has_eos = response_attention_mask(responses, EOS, PAD)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, True, True]
    assert mask.dtype == torch.long


def test_mask_without_eos_keeps_every_token_up_to_pad():
    """A row without EOS keeps all its tokens (up to the first pad token) and reports has_eos False."""
    responses = torch.tensor([
        [5, 6, 7, 8, 9],  # hit max_new_tokens
        [5, 6, 7, PAD, PAD],
        [5, 6, EOS, PAD, PAD],
    ])
    mask, has_eos = response_attention_mask(responses, EOS, PAD)
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert has_eos.tolist() == [False, False, True]


def test_mask_when_pad_equals_eos():
    """pad == eos: the first EOS is kept, the padding EOS tokens after it are masked."""
    responses = torch.tensor([
        [5, 6, EOS, EOS, EOS],
        [EOS, EOS, EOS, EOS, EOS],
        [5, 6, 7, 8, 9],
        [5, 6, 7, 8, EOS],
    ])
    mask, has_eos = response_attention_mask(responses, eos_ids=EOS, pad_token_id=EOS)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False, True]


def test_mask_without_eos_stops_at_the_first_pad_token():
    """Docstring contract: "A row without EOS keeps every token up to the first pad token". A pad id the
    model sampled mid-row must not leave a hole in the mask (the response block must stay right-padded).

    Library bug: the mask is ``~after_eos & (responses != pad)``, which keeps tokens after the first pad,
    giving ``[1, 0, 1, 1]`` here — a non-contiguous mask.
    """
    responses = torch.tensor([[5, PAD, 6, 7]])
    mask, has_eos = response_attention_mask(responses, EOS, PAD)
    assert not has_eos.item()
    assert mask.tolist() == [[1, 0, 0, 0]], f"mask has a hole after the first pad token: {mask.tolist()}"


def test_mask_is_contiguous_prefix_for_typical_generations():
    """For generations padded only after EOS, every mask row is 1…1 0…0 (a right-padded block)."""
    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(2, 15, (32, 9), generator=gen)
    eos_at = torch.randint(0, 12, (32,), generator=gen)  # ≥ 9 means no EOS
    for row, pos in enumerate(eos_at.tolist()):
        if pos < 9:
            responses[row, pos] = EOS
            responses[row, pos + 1:] = PAD
    mask, has_eos = response_attention_mask(responses, EOS, PAD)
    lengths = mask.sum(-1)
    expected = torch.arange(9)[None, :] < lengths[:, None]
    assert torch.equal(mask.bool(), expected)
    assert torch.equal(has_eos, eos_at < 9)
    assert torch.equal(lengths, torch.where(eos_at < 9, eos_at + 1, torch.full_like(eos_at, 9)))


# ---------------------------------------------------------------------------- Rollout helpers
def make_rollout(num_prompts: int = 5, group_size: int = 2, P: int = 3, R: int = 4) -> Rollout:
    """Rows tagged by content: input_ids[:, 0] = prompt index, rewards = row index."""
    N = num_prompts * group_size
    input_ids = torch.zeros(N, P + R, dtype=torch.long)
    input_ids[:, 0] = torch.arange(N) // group_size
    input_ids[:, 1] = torch.arange(N) % group_size
    attention_mask = torch.ones(N, P + R, dtype=torch.long)
    attention_mask[:, P + 2:] = 0  # responses of length 2
    attention_mask[::2, P + 2] = 1  # every other row of length 3
    lp = -torch.rand(N, R, generator=torch.Generator().manual_seed(1)) * attention_mask[:, P:]
    return Rollout(input_ids=input_ids, attention_mask=attention_mask, prompt_length=P, old_logprobs=lp,
                   ref_logprobs=lp * 2, rewards=torch.arange(N).float(), shaped_rewards=-torch.arange(N).float(),
                   group_size=group_size, temperature=0.7, metrics={"x": 1.0})


def assert_whole_groups(part: Rollout, full: Rollout) -> list[int]:
    """Every group in ``part`` is a whole prompt, in order, with all per-row tensors taken from the same rows."""
    g = full.group_size
    rows = part.rewards.long().tolist()  # rewards carry the original row index
    assert len(rows) % g == 0
    prompts = []
    for start in range(0, len(rows), g):
        group = rows[start:start + g]
        prompt = group[0] // g
        assert group == list(range(prompt * g, prompt * g + g))
        prompts.append(prompt)
    idx = torch.tensor(rows)
    for name in ("input_ids", "attention_mask", "old_logprobs", "ref_logprobs", "rewards", "shaped_rewards"):
        assert torch.equal(getattr(part, name), getattr(full, name)[idx]), name
    assert part.prompt_length == full.prompt_length and part.group_size == g
    assert part.temperature == full.temperature
    return prompts


def test_response_mask_is_float_response_block_of_attention_mask():
    rollout = make_rollout()
    assert rollout.response_mask.dtype == torch.float32
    assert torch.equal(rollout.response_mask, rollout.attention_mask[:, 3:].float())
    assert rollout.response_mask.shape == rollout.old_logprobs.shape


def test_num_prompts_and_len():
    rollout = make_rollout(num_prompts=5, group_size=3)
    assert len(rollout) == 15 and rollout.num_prompts == 5


@pytest.mark.parametrize("num_prompts,group_size,num_minibatches", [(5, 2, 2), (6, 2, 3), (4, 3, 4), (3, 2, 5)])
def test_minibatches_keep_groups_and_cover_every_row_once(num_prompts, group_size, num_minibatches):
    """Each epoch's minibatches are whole prompt groups that partition the rollout (each row exactly once)."""
    rollout = make_rollout(num_prompts, group_size)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # several epochs, different shuffles
        parts = rollout.minibatches(num_minibatches, generator=gen)
        assert 1 <= len(parts) <= num_minibatches
        seen = []
        for part in parts:
            assert len(part) > 0
            seen += assert_whole_groups(part, rollout)
            assert part.metrics == rollout.metrics and part.metrics is not rollout.metrics
        assert sorted(seen) == list(range(num_prompts))


@pytest.mark.parametrize("num_prompts,num_minibatches", [(4, 2), (5, 2), (6, 4), (10, 4), (3, 5)])
def test_minibatches_give_num_minibatches_even_parts(num_prompts, num_minibatches):
    """Contract (Objective / RLHFModule docstrings): ``num_minibatches`` optimizer steps per pass, the prompts
    "split evenly". So there are min(num_prompts, num_minibatches) parts whose sizes differ by at most one.

    Library bug: ``Rollout.minibatches`` uses ``Tensor.chunk``, which gives [2, 2, 2] for 6 prompts in 4
    minibatches (3 optimizer steps, not 4) and [3, 3, 3, 1] for 10 prompts in 4 (not even).
    """
    rollout = make_rollout(num_prompts)
    parts = rollout.minibatches(num_minibatches, generator=torch.Generator().manual_seed(0))
    sizes = [p.num_prompts for p in parts]
    assert len(parts) == min(num_prompts, num_minibatches), f"{num_minibatches} minibatches requested, got {sizes}"
    assert max(sizes) - min(sizes) <= 1, f"uneven split {sizes}"


def test_minibatches_shuffle_prompts():
    rollout = make_rollout(num_prompts=8)
    orders = set()
    for seed in range(5):
        parts = rollout.minibatches(2, generator=torch.Generator().manual_seed(seed))
        orders.add(tuple(prompt for part in parts for prompt in assert_whole_groups(part, rollout)))
    assert len(orders) > 1


def test_one_minibatch_is_the_batch_itself_and_draws_the_same_random_numbers():
    """No copy for one minibatch (the loss is a mean, so order does not matter), but the permutation is
    still drawn, so the random stream of a run (its later samples) does not depend on this shortcut."""
    rollout = make_rollout(num_prompts=8)
    generator = torch.Generator().manual_seed(0)
    assert rollout.minibatches(1, generator=generator)[0] is rollout
    expected = torch.Generator().manual_seed(0)
    torch.randperm(8, generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())


@pytest.mark.parametrize("max_rows,expected_rows", [(4, [4, 4, 2]), (5, [4, 4, 2]), (2, [2] * 5),
                                                    (1, [2] * 5), (100, [10])])
def test_split_keeps_groups_together(max_rows, expected_rows):
    """split(max_rows): consecutive whole prompts, ≤ max_rows rows each (at least one prompt per chunk)."""
    rollout = make_rollout(num_prompts=5, group_size=2)
    parts = rollout.split(max_rows)
    assert [len(p) for p in parts] == expected_rows
    seen = []
    for part in parts:
        seen += assert_whole_groups(part, rollout)
    assert seen == list(range(5))  # consecutive, in order
