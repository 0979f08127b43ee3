"""Preference pairs of the summarisation task: labels, noise, unpaired files, determinism and caching."""

import json

import pytest

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.tasks.summarize.corpus import oracle_summary
from rlhf_lightning.tasks.summarize.judge import gold_score
from rlhf_lightning.tasks.summarize.preferences import (
    PreferenceFiles,
    build_preferences,
    preference_dir,
    preference_files,
    read_preferences,
)

TASK = dict(n_train=96, n_validation=8, n_test=12, sft_steps=4, sft_batch_size=16)
SIZES = {"train": 400, "validation": 24, "test": 30}  # more validation / test pairs than prompts: reused
PAIRS = dict(n_train_pairs=400, n_validation_pairs=24, n_test_pairs=30, max_new_tokens=6, batch_size=256,
             task_seed=3, task_options=TASK, progress=False)
NOISE = 0.25
SPLITS = ("train", "validation", "test")
ROW_KEYS = {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "flipped", "chosen_source",
            "rejected_source"}


def _all_paths(files: PreferenceFiles):
    return [files.split(name, unpaired) for name in SPLITS for unpaired in (False, True)] + [files.manifest]


def _mtimes(files: PreferenceFiles):
    return {str(p): p.stat().st_mtime_ns for p in _all_paths(files)}


def _bytes(files: PreferenceFiles):
    return {p.name: p.read_bytes() for p in _all_paths(files) if p != files.manifest}


def _clean(row):
    """(prompt, winner, loser) under the clean judge."""
    return (row["prompt"], row["rejected"], row["chosen"]) if row["flipped"] else (
        row["prompt"], row["chosen"], row["rejected"])


@pytest.fixture(scope="module")
def task_root(tmp_path_factory):
    return tmp_path_factory.mktemp("task") / "summarize"


@pytest.fixture(scope="module")
def built(task_root):
    return build_preferences(task_root, seed=0, label_noise=NOISE, **PAIRS)


def test_writes_pairs_unpaired_and_manifest(built, task_root):
    assert built.root == task_root / "preferences-noise0.25-seed0" == preference_dir(task_root, NOISE, 0)
    manifest = json.loads(built.manifest.read_text())
    for name, size in SIZES.items():
        rows = read_preferences(built.split(name))
        assert len(rows) == size and all(set(r) == ROW_KEYS for r in rows)
        assert all(r["chosen_source"] == r["rejected_source"] == "sft" for r in rows)
        counts = manifest["counts"][name]
        assert counts["pairs"] == size and counts["flipped"] == sum(r["flipped"] for r in rows)
        assert counts["prompts_used"] == size + counts["identical_dropped"] + counts["ties_dropped"]
    task_prompts = {name: {json.loads(line)["prompt"] for line in (task_root / f"{name}.jsonl").open()}
                    for name in SPLITS}
    for name in SPLITS:  # each split's pairs come from that split's prompts
        assert {r["prompt"] for r in read_preferences(built.split(name))} <= task_prompts[name]
    assert manifest["params"]["label_noise"] == NOISE and manifest["params"]["noisy_splits"] == ["train"]
    assert set(manifest["digests"]) == {p.name for p in _all_paths(built) if p != built.manifest}


def test_labels_follow_the_gold_judge(built):
    for name in SPLITS:
        for row in read_preferences(built.split(name)):
            assert row["chosen"] != row["rejected"]  # identical pairs are dropped
            assert row["chosen_score"] == gold_score(row["prompt"], row["chosen"])
            assert row["rejected_score"] == gold_score(row["prompt"], row["rejected"])
            if row["flipped"]:
                assert row["chosen_score"] < row["rejected_score"]
            else:
                assert row["chosen_score"] > row["rejected_score"]  # strictly: ties are dropped


def test_noise_on_train_only(built):
    flips = [r["flipped"] for r in read_preferences(built.train)]
    assert abs(sum(flips) / len(flips) - NOISE) < 0.07  # binomial sd ≈ 0.022 at 400 pairs
    for name in ("validation", "test"):
        assert not any(r["flipped"] for r in read_preferences(built.split(name)))


def test_unpaired_files_follow_the_pairs(built):
    for name in SPLITS:
        pairs = read_preferences(built.split(name))
        unpaired = read_preferences(built.split(name, unpaired=True))
        expected = []
        for p in pairs:  # chosen → desirable, rejected → undesirable, noisy labels kept
            expected += [{"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                         {"prompt": p["prompt"], "completion": p["rejected"], "label": False}]
        assert unpaired == expected


def test_noise_rate_changes_labels_not_pairs(built, task_root):
    clean = build_preferences(task_root, seed=0, label_noise=0.0, **PAIRS)
    assert clean.root != built.root
    for name in SPLITS:
        clean_rows = read_preferences(clean.split(name))
        assert not any(r["flipped"] for r in clean_rows)
        assert [_clean(r) for r in clean_rows] == [_clean(r) for r in read_preferences(built.split(name))]
    lower = build_preferences(task_root, seed=0, label_noise=0.1, **PAIRS)
    flipped = {i for i, r in enumerate(read_preferences(lower.train)) if r["flipped"]}
    assert flipped and flipped < {i for i, r in enumerate(read_preferences(built.train)) if r["flipped"]}


def test_deterministic_under_the_seed(built, task_root, tmp_path):
    again = build_preferences(tmp_path / "copy", seed=0, label_noise=NOISE, task_seed=3, task_options=TASK,
                              **{k: v for k, v in PAIRS.items() if k not in ("task_seed", "task_options")})
    assert _bytes(again) == _bytes(built)
    assert json.loads(again.manifest.read_text())["digests"] == json.loads(built.manifest.read_text())["digests"]
    other = build_preferences(task_root, seed=1, label_noise=NOISE, **PAIRS)
    assert other.root.name == "preferences-noise0.25-seed1"
    assert other.train.read_bytes() != built.train.read_bytes()


def test_cached_call_does_not_rewrite(built, task_root):
    before = _mtimes(built)
    assert preference_files(task_root, NOISE, 0, **PAIRS) == built
    assert _mtimes(built) == before


def test_rebuilds_missing_or_changed_files(task_root):
    small = {**PAIRS, "n_train_pairs": 64}
    files = build_preferences(task_root, seed=2, label_noise=NOISE, **small)
    content, mtimes = _bytes(files), _mtimes(files)

    files.test.unlink()  # a lost file is regenerated identically; the other splits are left alone
    build_preferences(task_root, seed=2, label_noise=NOISE, **small)
    assert _bytes(files) == content
    assert all(_mtimes(files)[str(files.split(name, u))] == mtimes[str(files.split(name, u))]
               for name in ("train", "validation") for u in (False, True))

    files.validation_unpaired.write_text("corrupted\n")  # an edited file is restored
    build_preferences(task_root, seed=2, label_noise=NOISE, **small)
    assert _bytes(files) == content

    files.manifest.unlink()  # as if a build stopped before its manifest: rebuilt, same files
    build_preferences(task_root, seed=2, label_noise=NOISE, **small)
    assert files.manifest.exists() and _bytes(files) == content

    build_preferences(task_root, seed=2, label_noise=NOISE, **{**small, "n_test_pairs": 20})  # new parameters
    assert len(read_preferences(files.test)) == 20
    assert json.loads(files.manifest.read_text())["params"]["pairs"]["test"] == 20


def test_mixed_in_oracle_candidates(task_root):
    files = build_preferences(task_root, seed=0, label_noise=0.0, oracle_share=1.0,
                              **{**PAIRS, "n_train_pairs": 16})
    for name in SPLITS:
        for row in read_preferences(files.split(name)):  # the oracle is the judge's best response
            assert (row["chosen_source"], row["rejected_source"]) == ("oracle", "sft")
            assert row["chosen"] == oracle_summary(row["prompt"])
    assert json.loads(files.manifest.read_text())["counts"]["test"]["sources"] == {"oracle>sft": 30}


@pytest.mark.parametrize("noise", [0.5, 0.7, -0.1])
def test_label_noise_out_of_range_is_a_clear_error(noise, tmp_path):
    with pytest.raises(RecipeError, match=r"label_noise: must be in \[0, 0.5\)"):
        build_preferences(tmp_path / "t", label_noise=noise, **PAIRS)
    assert not (tmp_path / "t").exists()  # checked before anything is built


def test_every_bad_argument_is_reported_at_once(tmp_path):
    with pytest.raises(RecipeError) as error:
        build_preferences(tmp_path / "t", label_noise=0.5, temperature=0.0, noisy_splits=("train", "dev"),
                          **{**PAIRS, "n_test_pairs": 0})
    message = str(error.value)
    assert all(key in message for key in ("label_noise", "temperature", "noisy_splits", "n_test_pairs"))


def test_samples_that_never_differ_are_an_error(task_root):
    with pytest.raises(RuntimeError, match="identical"):  # near-greedy sampling: both samples agree
        build_preferences(task_root, seed=5, label_noise=0.0, temperature=1e-4,
                          **{**PAIRS, "n_train_pairs": 2, "n_validation_pairs": 2, "n_test_pairs": 2})
