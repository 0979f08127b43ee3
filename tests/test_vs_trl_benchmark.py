"""benchmarks/vs_trl.py: the model / tokenizer builders, the FLOP counting and the instrumentation (no TRL
needed), its command line, and the check of the TRL hooks it relies on (on stand-ins: no TRL needed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.dont_write_bytecode = True  # no __pycache__ next to the benchmark
sys.path.insert(0, str(BENCHMARKS))
import vs_trl  # noqa: E402

TEXTS = [f"post: the {w} saw a {v} near the {u} summary: {w} {v}" for w in ("apple", "anchor", "badge", "kettle")
         for v in ("dragon", "engine", "forest") for u in ("garden", "guitar")]
TINY = {"hidden": 4, "layers": 1, "heads": 2, "kv_heads": 2, "head_dim": 2, "intermediate": 8, "vocab": 10}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tokenizer = vs_trl.build_tokenizer(300, TEXTS, seed=0)
    model_dir = vs_trl.build_model(tokenizer, vs_trl.llama_shape(64, 2), tmp_path_factory.mktemp("vs_trl") / "model")
    return tokenizer, model_dir


def test_tokenizer_has_the_requested_size_bos_and_pad(built):
    tokenizer, _ = built
    assert len(tokenizer) == 300
    ids = tokenizer(TEXTS[0])["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id != tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXTS[0]
    own = vs_trl.build_tokenizer(300, TEXTS, seed=0, pad_token="own")
    assert len(own) == 300 and own.pad_token == "<pad>" and own.pad_token_id != own.eos_token_id
    # deterministic in the seed
    assert vs_trl.build_tokenizer(300, TEXTS, seed=0).get_vocab() == tokenizer.get_vocab()


def test_large_vocabularies_are_reachable():
    corpus = vs_trl.tokenizer_corpus(TEXTS, 4000, seed=0)
    assert len(set(" ".join(corpus).split())) > 4000  # enough distinct words for the merges
    assert len(vs_trl.build_tokenizer(4000, TEXTS, seed=0)) == 4000


def test_model_vocab_and_special_ids_match_the_tokenizer(built):
    tokenizer, model_dir = built
    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert config["vocab_size"] == len(tokenizer) == 300
    for key, value in (("bos_token_id", tokenizer.bos_token_id), ("eos_token_id", tokenizer.eos_token_id),
                       ("pad_token_id", tokenizer.pad_token_id)):
        assert config[key] == generation[key] == value
    assert not {"top_k", "top_p", "temperature", "do_sample"} & set(generation)
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()
    shape = vs_trl.shape_of(config)
    assert shape == {"hidden": 64, "layers": 2, "heads": 1, "kv_heads": 1, "head_dim": 64, "intermediate": 192,
                     "vocab": 300, "tied": False}
    # parameters = decoder linears + 2 norms per layer + final norm + embedding + untied lm_head
    expected = vs_trl.nonembedding_params(shape) + 2 * 64 * 2 + 64 + 2 * 300 * 64
    assert vs_trl.count_parameters(model_dir / "model.safetensors") == expected


def test_presets_are_llama_shaped():
    assert vs_trl.llama_shape(**vs_trl.PRESETS["3m"]) == {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 4,
                                                          "head_dim": 64, "intermediate": 704}
    assert vs_trl.llama_shape(**vs_trl.PRESETS["27m"])["intermediate"] == 1344
    assert vs_trl.nonembedding_params({**vs_trl.llama_shape(512, 8), "vocab": 1}) == 8 * (4 * 512 * 512 + 3 * 512 * 1344)


def test_flop_formulas_match_a_hand_count():
    # P_ne = L·(2·h·H·d + 2·h·H_kv·d + 3·h·I) = 1·(2·4·4 + 2·4·4 + 3·4·8) = 160
    assert vs_trl.nonembedding_params(TINY) == 160
    # F(3, 2, 6) = 2·160·3 + 2·4·10·2 + 4·1·2·2·6
    assert vs_trl.forward_flops(TINY, 3, 2, 6) == 960 + 160 + 96
    # p = 2, T = 3: prompt F(2, 1, 3) = 640 + 80 + 48; response F(2, 2, 2·2 + 2·3/2) = 640 + 160 + 112
    assert vs_trl.minimum_sample_flops(TINY, 2, 3) == {"prompt": 768, "response": 912}
    # two samples of one prompt (p = 2), T = 3 and T = 1: prefill once (768), decode 912 + 0
    step = vs_trl.minimum_step_flops(TINY, [2, 2], [3, 1], samples_per_prompt=2, reference=True, updates=1)
    assert step["prefill"] == 768 and step["decode"] == 912 and step["generation"] == step["reference"] == 1680
    assert step["update"] == 3 * 1680 and step["total"] == 5 * 1680
    no_ref = vs_trl.minimum_step_flops(TINY, [2, 2], [3, 1], samples_per_prompt=2, reference=False, updates=4)
    assert no_ref["reference"] == 0 and no_ref["total"] == 1680 * (1 + 12)
    counts = {kind: {"calls": 1, "positions": 3, "logits": 2, "attention": 6} for kind in vs_trl.KINDS}
    actual = vs_trl.actual_step_flops(TINY, counts)
    assert actual["generation"] == actual["logprobs"] == 1216 and actual["update"] == 3 * 1216
    assert actual["total"] == 5 * 1216


def test_instrumented_generate_counts_forwards_and_lengths(built):
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, LlamaModel
    from transformers.generation.utils import GenerationMixin

    tokenizer, model_dir = built
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    saved = (LlamaModel.forward, LlamaForCausalLM.forward, GenerationMixin.generate,
             GenerationMixin._get_logits_processor)
    try:
        counts = vs_trl._instrument([tokenizer.eos_token_id])
        batch = tokenizer([TEXTS[0], TEXTS[1] + " and more words"], return_tensors="pt", padding=True,
                          padding_side="left")
        rows, width = batch["input_ids"].shape
        torch.manual_seed(0)
        out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=True, top_k=0,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            model(input_ids=out, logits_to_keep=5)
        model(input_ids=out).logits.sum().backward()
        step = counts.take()
    finally:
        (LlamaModel.forward, LlamaForCausalLM.forward, GenerationMixin.generate,
         GenerationMixin._get_logits_processor) = saved
    generation = step["generation"]
    assert generation["calls"] == 4  # prefill + 3 decode steps
    assert generation["positions"] == rows * width + 3 * rows and generation["logits"] == 4 * rows
    assert generation["attention"] == rows * (width * width + sum(width + i for i in range(1, 4)))
    assert step["logprobs"] == {"calls": 1, "positions": rows * (width + 4), "logits": rows * 5,
                                "attention": rows * (width + 4) ** 2}
    assert step["update"]["positions"] == rows * (width + 4) and step["update"]["logits"] == rows * (width + 4)
    assert step["completion_lengths"] == [4, 4] and step["prompt_widths"] == [width]
    assert step["prompt_lengths"] == batch["attention_mask"].sum(1).tolist()
    assert "MinNewTokensLengthLogitsProcessor" in counts.info["logits_processors"]


def test_instrumented_engine_of_ours_is_one_generation_region(built):
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, LlamaModel
    from transformers.generation.utils import GenerationMixin

    from rlhf_lightning.generation import huggingface
    from rlhf_lightning.generation.base import SamplingParams

    tokenizer, model_dir = built
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    saved = (LlamaModel.forward, LlamaForCausalLM.forward, GenerationMixin.generate,
             GenerationMixin._get_logits_processor, huggingface.HFGenerator.generate,
             getattr(huggingface, "sample_dropping_ended", None))
    try:
        counts = vs_trl._instrument([tokenizer.eos_token_id], ours=True)
        engine = huggingface.HFGenerator()
        engine.setup(tokenizer, model)
        batch = tokenizer([TEXTS[0], TEXTS[5]], return_tensors="pt", padding=True, padding_side="left")
        torch.manual_seed(0)
        generation = engine.generate(model, batch["input_ids"], batch["attention_mask"],
                                     SamplingParams(max_new_tokens=5, num_samples=2))
        step = counts.take()
    finally:
        (LlamaModel.forward, LlamaForCausalLM.forward, GenerationMixin.generate, GenerationMixin._get_logits_processor,
         huggingface.HFGenerator.generate) = saved[:5]
        if saved[5] is not None:
            huggingface.sample_dropping_ended = saved[5]
    assert step["generation"]["calls"] >= 2 and step["logprobs"]["calls"] == step["update"]["calls"] == 0
    assert step["prompt_lengths"] == [n for n in batch["attention_mask"].sum(1).tolist() for _ in range(2)]
    assert step["completion_lengths"] == generation.response_mask.sum(1).tolist()  # pad = EOS: one rule
    assert counts.info["top_k"] == 0 and counts.info["temperature"] == 1.0 and counts.info["max_new_tokens"] == 5


def test_first_eos_lengths_count_the_eos():
    import torch

    rows = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 1, 1, 1]])
    assert vs_trl.first_eos_lengths(rows, [1]) == [2, 4, 1]


def test_report_stems_and_the_summary(tmp_path):
    assert vs_trl.report_stem("sft", None, 1) == "vs_trl"
    assert vs_trl.report_stem("27m", 8192, 2) == "vs_trl_27m_v8192_t2"
    row = {"samples_per_second": 30.0, "peak_rss_mb": 600.0, "mean_completion_length": 9.0}
    trl = {"samples_per_second": 20.0, "peak_rss_mb": 800.0, "mean_completion_length_same_count": 9.5,
           "cost": {"fraction_of_matmul_rate": 0.25}}
    rows = {"ours_rloo_k2": row, "ours_rebel": row, "trl_rloo_k2": trl, "trl_grpo": trl}
    meta = {"model_parameters": 3_000_000, "model": {"preset": "3m", "vocab": 512}, "threads": 2,
            "max_new_tokens": 16, "steps": 2, "repeats": 1, "target": 1.5}
    (tmp_path / "vs_trl_3m_v512_t2.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    text = vs_trl.write_summary(tmp_path).read_text()
    assert "| vs_trl_3m_v512_t2 | 3m (3.00M) | 512 | 2 | 16 | 2 × 1 | 1.50× |" in text
    assert "| 0.75× | 0.75× | 1.5 |" in text and "25.0" in text and "9.50" in text


def test_help_and_argument_checks():
    run = lambda *args: subprocess.run([sys.executable, str(BENCHMARKS / "vs_trl.py"), *args],  # noqa: E731
                                       capture_output=True, text=True, env={"PYTHONDONTWRITEBYTECODE": "1",
                                                                            "PATH": "/usr/bin:/bin"})
    shown = run("--help")
    assert shown.returncode == 0 and "--model" in shown.stdout and "--threads" in shown.stdout
    assert run("--vocab", "512").returncode == 2  # --vocab is for built models only
    args = vs_trl.parse_args(["--model", "27m"])
    assert (args.label, args.vocab, args.max_new_tokens, args.target) == ("27m", 8192, 48, vs_trl.TARGET_SIZES)
    args = vs_trl.parse_args([])
    assert (args.label, args.built, args.max_new_tokens, args.target, args.threads) == ("sft", False, 12,
                                                                                        vs_trl.TARGET, 1)
    assert vs_trl.parse_args(["--hidden", "384", "--layers", "6"]).label == "h384l6"


def test_missing_trl_hooks_are_named():
    """The TRL worker stops with the names of the TRL internals it wraps when an installed TRL lacks them
    (checked on stand-ins: the suite does not install TRL; the benchmark checks the real one before it runs)."""
    hooks = {name: lambda self: None for name in vs_trl.TRL_TRAINER_HOOKS}
    complete = type("GRPOTrainer", (), hooks)
    renamed = type("RLOOTrainer", (), {name: f for name, f in hooks.items() if name != "_generate_single_turn"})
    utils_ok, utils_old = type("utils", (), {"_ChunkedLogProbFunction": object})(), object()
    assert vs_trl.missing_trl_hooks(utils_ok, (complete,)) == []
    assert vs_trl.missing_trl_hooks(utils_old, (complete, renamed)) == [
        "trl.trainer.utils._ChunkedLogProbFunction", "RLOOTrainer._generate_single_turn"]
