"""``eval_curves.png`` and ``reward_vs_kl.png`` (``rlhf_lightning.callbacks.plots``): every panel is labelled,
validation and test are separate series, the SFT and reference lines are there, for any history shape.
The figures are read through matplotlib's objects, not pixels."""

from __future__ import annotations

import matplotlib.lines
import pytest

from rlhf_lightning.callbacks.plots import plot_history, plot_reward_vs_kl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def entry(rollouts: int, split: str, reward: float, kl: float, win: float, reference: bool = True,
          proxy: bool = False) -> dict:
    h = {"rollouts": rollouts, "split": split, "win_rate_vs_sft": win, "reward": reward,
         "sft_reward": 0.49 if split == "validation" else 0.47, "kl": kl}
    if reference:
        h.update(win_rate_vs_reference=win / 2, reference_reward=0.76 if split == "validation" else 0.73,
                 oracle_reward=1.40 if split == "validation" else 1.39,
                 sft_win_rate_vs_reference=0.05)
    if proxy:
        h["proxy_reward"] = reward + kl
    return h


def example(reference: bool = True, proxy: bool = False) -> list[dict]:
    """Validation at 8, 16, 24 and the final test evaluation at 24, the same rollout count."""
    return [entry(8, "validation", 0.49, 0.3, 0.52, reference, proxy),
            entry(16, "validation", 0.95, 0.85, 0.71, reference, proxy),
            entry(24, "validation", 1.39, 1.5, 0.83, reference, proxy),
            entry(24, "test", 1.36, 1.42, 0.80, reference, proxy)]


SHAPES = {
    "validation_and_test": example(),
    "test_only": [entry(8, "test", 0.6, 0.3, 0.55), entry(16, "test", 1.0, 0.9, 0.7),
                  entry(16, "test", 1.02, 0.92, 0.71)],  # the periodic and the final evaluation at 16
    "no_reference": example(reference=False),
    "one_entry": [entry(24, "test", 1.36, 1.42, 0.80)],
    "validation_only": example()[:3],
}


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def legend_texts(axis) -> list[str]:
    legend = axis.get_legend()
    assert legend is not None, axis.get_title()
    return [text.get_text() for text in legend.get_texts()]


def data_lines(axis, label_part: str) -> list[matplotlib.lines.Line2D]:
    """The evaluation series (not the horizontal SFT / reference / tie lines) whose label names ``label_part``."""
    return [line for line in axis.get_lines() if label_part in line.get_label() and line.get_label() not in
            horizontal_lines(axis)]


def horizontal_lines(axis) -> dict[str, float]:
    """Label -> y of the axhline's drawn on ``axis`` (x data in axes coordinates [0, 1])."""
    return {line.get_label(): float(line.get_ydata()[0]) for line in axis.get_lines()
            if list(line.get_xdata()) == [0, 1] and len(set(line.get_ydata())) == 1}


def visible_xticks(axis) -> list[float]:
    low, high = axis.get_xlim()
    return [tick for tick in axis.get_xticks() if low - 1e-9 <= tick <= high + 1e-9]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_eval_curves_are_labelled_for_every_history_shape(shape, tmp_path):
    history = SHAPES[shape]
    path = tmp_path / "eval_curves.png"
    figure = plot_history(history, path)
    assert is_png(path)
    reward_axis, kl_axis, win_axis = figure.axes
    assert figure.get_suptitle()
    splits = {h["split"] for h in history}
    figure.canvas.draw()  # tick labels get their text at draw time
    for axis in figure.axes:
        assert axis.get_title()
        assert axis.get_xlabel() == "rollout batches"
        assert axis.get_ylabel().strip()
        ticks = visible_xticks(axis)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        labels = [label.get_text().replace("\u2212", "-") for label in axis.get_xticklabels()]
        assert all(text.lstrip("-").isdigit() for text in labels if text), labels
        texts = legend_texts(axis)
        for split in splits:
            assert any(split in text for text in texts), (axis.get_title(), texts)
    # the win-rate axis is [0, 1] exactly, with the tie line
    low, high = win_axis.get_ylim()
    assert 0.0 <= low and high <= 1.0 and (low, high) == (0.0, 1.0)
    assert horizontal_lines(win_axis)["tie (0.5)"] == 0.5
    # the SFT model's reward, and the reference responses' where the data has them
    lines = horizontal_lines(reward_axis)
    sft = {label: y for label, y in lines.items() if label.startswith("SFT model")}
    assert sft and set(sft.values()) <= {h["sft_reward"] for h in history}
    reference = {label: y for label, y in lines.items() if label.startswith("reference responses (data set)")}
    oracle = {label: y for label, y in lines.items() if label.startswith("oracle (the judge's best responses)")}
    if any("reference_reward" in h for h in history):
        assert reference and set(reference.values()) <= {h["reference_reward"] for h in history}
        assert oracle and set(oracle.values()) <= {h["oracle_reward"] for h in history}
        assert any("vs reference" in text for text in legend_texts(win_axis))
    else:
        assert not reference and not oracle
        assert not any("vs reference" in text for text in legend_texts(win_axis))
    assert (tmp_path / "reward_vs_kl.png").exists() is False  # no proxy reward in these histories


def test_validation_and_test_are_separate_series_not_joined(tmp_path):
    figure = plot_history(example(), tmp_path / "eval_curves.png")
    for axis in figure.axes:
        validation = data_lines(axis, "validation")
        test = data_lines(axis, "test")
        assert validation and test
        for line in validation:  # 8, 16, 24 joined by the validation line
            assert list(line.get_xdata()) == [8, 16, 24] and line.get_linestyle() != "None"
        for line in test:  # the final test point on its own, no line back to the validation points
            assert list(line.get_xdata()) == [24] and line.get_linestyle() == "None"
            assert line.get_marker() != validation[0].get_marker()
            assert line.get_color() != validation[0].get_color()
    reward_axis = figure.axes[0]
    # the two splits' SFT (and reference) rewards differ, so each gets its own labelled line
    assert {label for label in horizontal_lines(reward_axis) if label.startswith("SFT")} == {
        "SFT model, validation", "SFT model, test"}


def test_repeated_evaluation_at_one_count_is_drawn_once(tmp_path):
    figure = plot_history(SHAPES["test_only"], tmp_path / "eval_curves.png")
    (reward_line,) = data_lines(figure.axes[0], "test")
    assert list(reward_line.get_xdata()) == [8, 16]
    assert list(reward_line.get_ydata()) == [0.6, 1.02]  # the later evaluation at 16 (the final one)


def test_empty_history_draws_nothing(tmp_path):
    assert plot_history([], tmp_path / "eval_curves.png") is None
    assert not (tmp_path / "eval_curves.png").exists()
    assert plot_reward_vs_kl(example(), tmp_path / "reward_vs_kl.png") is None
    assert not (tmp_path / "reward_vs_kl.png").exists()


@pytest.mark.parametrize("history", [example(proxy=True), example(reference=False, proxy=True),
                                     [entry(24, "test", 1.3, 1.4, 0.8, proxy=True)]],
                         ids=["validation_and_test", "no_reference", "one_entry"])
def test_reward_vs_kl_is_labelled(history, tmp_path):
    assert plot_history(history, tmp_path / "eval_curves.png") is not None
    assert is_png(tmp_path / "reward_vs_kl.png")  # written next to the curves when there is a proxy reward
    figure = plot_reward_vs_kl(history, tmp_path / "again.png")
    assert is_png(tmp_path / "again.png")
    (axis,) = figure.axes
    assert axis.get_title() and axis.get_xlabel().startswith("KL") and axis.get_ylabel().strip()
    texts = legend_texts(axis)
    for split in {h["split"] for h in history}:
        assert any("judge" in t and split in t for t in texts) and any("proxy" in t and split in t for t in texts)
    assert any(t.startswith("SFT model") for t in texts)
    assert any(t.startswith("reference responses (data set)") for t in texts) == ("reference_reward" in history[0])
    # every point is annotated with its rollout count, an integer
    annotations = [child.get_text() for child in axis.texts]
    assert annotations and all(text.isdigit() for text in annotations)
    assert {int(text) for text in annotations} == {h["rollouts"] for h in history}
    assert len(annotations) == 2 * len(history)  # the judge and the proxy point of each evaluation


def test_write_history_uses_the_plots_module():
    from rlhf_lightning.callbacks import evaluation, plots

    assert evaluation.plot_history is plots.plot_history
