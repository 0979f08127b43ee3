"""The generation engine: EOS sets of real checkpoint families, sampling exactly from the policy, stopping."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from rlhf_lightning.generation import HFGenerator, SamplingParams, eos_token_ids
from rlhf_lightning.logprobs import response_logprobs
from tiny import make_chat_tokenizer, make_tokenizer, with_generation_config

SECOND_EOS = 4  # "bad" in the tiny vocabulary: the checkpoint's second EOS id, as Llama-3's <|eot_id|>


def _prompts(tokenizer, texts):
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


# ---------------------------------------------------------------------------- the EOS set
@pytest.mark.parametrize("end_of_turn", ["<|im_end|>", "<end_of_turn>", "<|eot_id|>"])
def test_eos_set_adds_the_chat_templates_end_of_turn(end_of_turn):
    tokenizer = make_chat_tokenizer(end_of_turn)
    ids = eos_token_ids(tokenizer)
    assert ids == (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn))


def test_eos_set_adds_the_generation_configs_list(tiny_model, tmp_path):
    checkpoint = with_generation_config(tiny_model, tmp_path / "llama3", eos_token_id=[1, SECOND_EOS])
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert eos_token_ids(tokenizer, model) == (1, SECOND_EOS)
    assert eos_token_ids(make_tokenizer(), None) == (1,)  # the tokenizer's alone, no repeats


# ---------------------------------------------------------------------------- sampling fidelity
def _sample(model, tokenizer, engine, temperature=0.7, seed=0):
    input_ids, attention_mask = _prompts(tokenizer, ["say : cat dog", "say : sun", "say : moon tree rock"] * 4)
    torch.manual_seed(seed)
    generation = engine.generate(model, input_ids, attention_mask,
                                 SamplingParams(max_new_tokens=8, temperature=temperature))
    ids = torch.cat([input_ids, generation.responses], 1)
    mask = torch.cat([attention_mask, generation.response_mask], 1)
    with torch.no_grad():
        policy, _ = response_logprobs(model, ids, mask, input_ids.shape[1], temperature)
    return generation, policy


def test_samples_are_drawn_from_the_policy_despite_the_checkpoints_processors(tiny_model, tmp_path):
    """A Qwen-Instruct-style generation config (repetition penalty, n-gram blocking, suppressed tokens) is
    switched off: the sampler's log-probs equal log_softmax(logits / T) of the policy, with one warning."""
    checkpoint = with_generation_config(tiny_model, tmp_path / "instruct", repetition_penalty=1.2,
                                        no_repeat_ngram_size=2, suppress_tokens=[5], do_sample=True, temperature=0.3,
                                        top_p=0.8,
                                        eos_token_id=[1, SECOND_EOS])
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    engine = HFGenerator(record_sampler_logprobs=True)
    with pytest.warns(UserWarning) as caught:
        engine.setup(tokenizer, model)
    message = " ".join(str(w.message) for w in caught)
    for named in ("repetition_penalty=1.2", "no_repeat_ngram_size=2", "suppress_tokens=[5]", "temperature=0.3",
                  "top_p=0.8"):
        assert named in message, message
    generation, policy = _sample(model, tokenizer, engine)
    mask = generation.response_mask.bool()
    assert mask.sum() > 40
    gap = (generation.sampler_logprobs - policy)[mask].abs().max()
    assert gap <= 1e-5, gap
    assert model.generation_config.repetition_penalty == 1.2  # the checkpoint's config is left as it was


def test_the_checkpoints_processors_would_make_sampling_off_policy(tiny_model, tmp_path):
    """The control: generating with the checkpoint's config (as plain ``generate`` does) samples from another
    distribution than the policy's log-probs describe, which the test above would catch."""
    checkpoint = with_generation_config(tiny_model, tmp_path / "instruct", repetition_penalty=1.2)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    input_ids, attention_mask = _prompts(tokenizer, ["say : cat dog", "say : sun", "say : moon tree rock"] * 4)
    torch.manual_seed(0)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=0.7,
                         top_k=0, max_new_tokens=8, output_scores=True, return_dict_in_generate=True,
                         pad_token_id=0, eos_token_id=1)
    responses = out.sequences[:, input_ids.shape[1]:]
    sampler = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    ids, mask = out.sequences, torch.cat([attention_mask, torch.ones_like(responses)], 1)
    with torch.no_grad():
        policy, _ = response_logprobs(model, ids, mask, input_ids.shape[1], 0.7)
    assert (sampler - policy).abs().max() > 1e-2


def test_a_checkpoints_own_sampling_settings_are_named_when_replaced(tiny_model, tmp_path):
    checkpoint = with_generation_config(tiny_model, tmp_path / "chat", do_sample=True, temperature=0.7, top_p=0.8,
                                        top_k=20)
    with pytest.warns(UserWarning, match=r"replaces temperature=0\.7, top_k=20, top_p=0\.8"):
        HFGenerator().setup(AutoTokenizer.from_pretrained(checkpoint), AutoModelForCausalLM.from_pretrained(checkpoint))


def test_no_warning_for_a_plain_generation_config(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HFGenerator().setup(AutoTokenizer.from_pretrained(tiny_model), model)


def test_greedy_is_the_argmax_of_the_policy(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    engine = HFGenerator()
    engine.setup(tokenizer, model)
    input_ids, attention_mask = _prompts(tokenizer, ["say : cat dog", "say : sun"])
    generation = engine.generate(model, input_ids, attention_mask, SamplingParams(max_new_tokens=5, temperature=0))
    first = model(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].argmax(-1)
    assert generation.responses[:, 0].tolist() == first.tolist()


# ---------------------------------------------------------------------------- stopping on any EOS
class AlwaysSecondEOS(LlamaForCausalLM):
    """A checkpoint that always predicts the second EOS id (as an instruct model ends a turn with it)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits[..., SECOND_EOS] += 100.0
        return out


def test_generation_stops_on_the_second_eos_and_counts_it(tiny_model, tmp_path):
    ends_with_second = with_generation_config(tiny_model, tmp_path / "two_eos", eos_token_id=[1, SECOND_EOS])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    input_ids, attention_mask = _prompts(tokenizer, ["say : cat dog", "say : sun"])
    params = SamplingParams(max_new_tokens=6)
    results = {}
    for name, path in {"two eos ids": ends_with_second, "tokenizer eos only": tiny_model}.items():
        model = AlwaysSecondEOS.from_pretrained(path)
        engine = HFGenerator()
        engine.setup(tokenizer, model)
        results[name] = engine.generate(model, input_ids, attention_mask, params)
    stopped = results["two eos ids"]
    assert stopped.responses[:, 0].tolist() == [SECOND_EOS, SECOND_EOS]
    assert stopped.response_mask.sum(-1).tolist() == [1, 1] and stopped.ended.tolist() == [True, True]
    runs_on = results["tokenizer eos only"]  # without the generation config's id the response never ends
    assert runs_on.response_mask.sum(-1).tolist() == [6, 6] and runs_on.ended.tolist() == [False, False]


def test_sampling_params_are_checked():
    problems = SamplingParams(max_new_tokens=0, temperature=-1, top_p=0, top_k=-1).problems("rollout.init_args")
    assert [p.field for p in problems] == ["rollout.init_args.max_new_tokens", "rollout.init_args.temperature",
                                           "rollout.init_args.top_p", "rollout.init_args.top_k"]
    assert [p.field for p in SamplingParams(max_new_tokens=4, min_new_tokens=5).problems("r")] == ["r.min_new_tokens"]


# ---------------------------------------------------------------------------- several samples per prompt
@pytest.mark.parametrize("share_prefill_from", [None, 2])
def test_samples_per_prompt_come_back_grouped_and_on_policy(tiny_model, share_prefill_from):
    """k samples per prompt, with the prompt's prefill shared among them or not: rows grouped by prompt,
    every sampled token's log-prob the policy's."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    engine = HFGenerator(record_sampler_logprobs=True, share_prefill_from=share_prefill_from)
    engine.setup(tokenizer, model)
    input_ids, attention_mask = _prompts(tokenizer, ["say : cat dog", "say : sun", "say : moon tree rock"])
    torch.manual_seed(0)
    generation = engine.generate(model, input_ids, attention_mask,
                                 SamplingParams(max_new_tokens=8, temperature=0.7, num_samples=3))
    assert generation.responses.shape[0] == 9
    ids = torch.cat([input_ids.repeat_interleave(3, 0), generation.responses], 1)
    mask = torch.cat([attention_mask.repeat_interleave(3, 0), generation.response_mask], 1)
    with torch.no_grad():
        policy, _ = response_logprobs(model, ids, mask, input_ids.shape[1], 0.7)
    gap = (generation.sampler_logprobs - policy)[generation.response_mask.bool()].abs().max()
    assert gap <= 1e-5, gap


def test_a_shared_prefill_decodes_what_a_repeated_prompt_decodes(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    input_ids, attention_mask = _prompts(tokenizer, ["say : cat dog", "say : sun", "say : moon tree rock"])
    params = SamplingParams(max_new_tokens=8, temperature=0, num_samples=2)
    out = {}
    for share in (None, 2):
        engine = HFGenerator(share_prefill_from=share)
        engine.setup(tokenizer, model)
        out[share] = engine.generate(model, input_ids, attention_mask, params)
    assert torch.equal(out[None].responses, out[2].responses)
    assert torch.equal(out[None].response_mask, out[2].response_mask)
