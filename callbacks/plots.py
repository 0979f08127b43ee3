"""Figures of a run's held-out evaluations, written next to ``eval_history.json``.

``eval_curves.png`` (:func:`plot_history`): judge reward, KL to the reference policy and win rates against
rollout batches, one panel each. ``reward_vs_kl.png`` (:func:`plot_reward_vs_kl`, when a separate judge
is set so a proxy reward exists): judge and proxy reward against KL, the over-optimisation picture.

Conventions shared by both figures:

* colour and marker tell the evaluation splits apart (validation: blue circles, test: orange diamonds,
  another split: the next colour); each split is its own series, joined by its own line when it has
  several points, never by a line to another split's points;
* the history is read as :class:`~rlhf_lightning.callbacks.WinRateEvaluation` writes it, a list of dicts
  ``{"rollouts", "split", "reward", "sft_reward", "kl", "win_rate_vs_sft"}`` plus, when the data has
  reference responses, ``"reference_reward"``, ``"win_rate_vs_reference"``, ``"sft_win_rate_vs_reference"``,
  when the judge knows its best responses ``"oracle_reward"`` (a line: the most a policy can reach) and, with a
  separate judge, ``"proxy_reward"``; a missing optional key leaves its series out;
* any number of evaluations >= 1 is drawn: one evaluation (e.g. only the final test one) is a single
  marker, still worth seeing next to the SFT and reference lines; an empty history draws nothing;
* an evaluation repeated on the same split at the same rollout count (the periodic and the final one
  when the run has no validation split) is drawn once, the later one (the one ``summary.json`` reports).

The figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, not through
``pyplot``: nothing global (the user's backend, pyplot's list of open figures) changes. The functions
return the :class:`~matplotlib.figure.Figure` so callers and tests can read its axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
X_LABEL = "rollout batches"
SPLIT_ORDER = ("validation", "test")
SPLIT_STYLES = {
    "validation": {"color": "C0", "marker": "o", "markersize": 6},
    "test": {"color": "C1", "marker": "D", "markersize": 8},
}
OTHER_SPLIT_COLOURS = ("C4", "C5", "C6", "C8", "C9")
SFT_COLOUR, REFERENCE_COLOUR, ORACLE_COLOUR = "0.4", "C2", "C3"
BASELINE_STYLES = ("--", ":", "-.")  # one per split when the splits' baselines differ
REFERENCE_LABEL = "reference responses (data set)"
ORACLE_LABEL = "oracle (the judge's best responses)"


# ---------------------------------------------------------------------------------------------- public
def plot_history(history: list[dict], path: Path) -> Optional[Figure]:
    """Write ``eval_curves.png`` to ``path`` (and ``reward_vs_kl.png`` beside it when the history holds
    a proxy reward); return the curves' figure, or ``None`` for an empty history (nothing written)."""
    figure = history_figure(history)
    if figure is None:
        return None
    path = Path(path)
    figure.savefig(path, dpi=DPI)
    if any("proxy_reward" in h for h in history):
        plot_reward_vs_kl(history, path.with_name("reward_vs_kl.png"))
    return figure


def plot_reward_vs_kl(history: list[dict], path: Path) -> Optional[Figure]:
    """Write ``reward_vs_kl.png``: judge (gold) and proxy (training) reward against KL to the reference over
    training (the gold curve bends down while the proxy keeps rising when the policy over-optimises the
    proxy). Return the figure, or ``None`` when no evaluation holds a proxy reward (nothing written)."""
    figure = reward_vs_kl_figure(history)
    if figure is not None:
        figure.savefig(Path(path), dpi=DPI)
    return figure


def history_figure(history: list[dict]) -> Optional[Figure]:
    """The ``eval_curves.png`` figure: judge reward, KL and win rate against rollout batches."""
    series = _by_split(history)
    if not series:
        return None
    has_reference = any("win_rate_vs_reference" in h for h in history)
    steps = [int(h["rollouts"]) for entries in series.values() for h in entries]
    figure = _figure(figsize=(15, 5.4))
    reward_axis, kl_axis, win_axis = figure.subplots(1, 3)

    _split_series(reward_axis, series, "reward", "policy")
    _baselines(reward_axis, series, "sft_reward", "SFT model", SFT_COLOUR)
    _baselines(reward_axis, series, "reference_reward", REFERENCE_LABEL, REFERENCE_COLOUR)
    _baselines(reward_axis, series, "oracle_reward", ORACLE_LABEL, ORACLE_COLOUR)
    reward_axis.margins(y=0.08)  # the reference line is often the top of the data: keep it off the frame
    _decorate(reward_axis, "Judge reward", "mean judge reward per response", steps)

    _split_series(kl_axis, series, "kl", "policy")
    low = min(h["kl"] for entries in series.values() for h in entries)
    kl_axis.set_ylim(bottom=min(0.0, low * 1.1))  # the SFT model sits at 0
    _decorate(kl_axis, "KL to the reference (SFT) policy", "KL(π ‖ π_ref), nats per response", steps)

    _split_series(win_axis, series, "win_rate_vs_sft", "vs SFT model")
    if has_reference:
        _split_series(win_axis, series, "win_rate_vs_reference", "vs reference responses", hollow=True)
    win_axis.axhline(0.5, color="0.3", linestyle="--", linewidth=1, label="tie (0.5)", zorder=1)
    win_axis.set_ylim(0.0, 1.0)
    title = "Win rate vs SFT model" + (" and vs reference responses" if has_reference else "")
    _decorate(win_axis, title, "policy's win rate (share of prompts; ties ½)", steps)

    figure.suptitle("Held-out evaluation during training: the policy's responses scored by the judge",
                    fontsize=13)
    return figure


def reward_vs_kl_figure(history: list[dict]) -> Optional[Figure]:
    """The ``reward_vs_kl.png`` figure; ``None`` when no evaluation holds a proxy reward."""
    series = _by_split([h for h in history if "proxy_reward" in h])
    if not series:
        return None
    figure = _figure(figsize=(7.5, 5.6))
    axis = figure.subplots()
    for split, entries in series.items():
        style = _split_style(split, list(series))
        kl = [h["kl"] for h in entries]
        axis.plot(kl, [h["reward"] for h in entries], **_line(style, len(entries)),
                  label=f"judge (gold) reward, {split}", zorder=3)
        axis.plot(kl, [h["proxy_reward"] for h in entries], **_line(style, len(entries), hollow=True),
                  label=f"proxy (training) reward, {split}", zorder=3)
        offset = (6, 6) if split == "validation" else (6, -13)
        for h, x in zip(entries, kl):  # which evaluation each point is
            for key in ("reward", "proxy_reward"):
                axis.annotate(str(int(h["rollouts"])), (x, h[key]), textcoords="offset points", xytext=offset,
                              fontsize=8, color=style["color"])
    sft = [(split, entries[-1]["sft_reward"]) for split, entries in series.items() if "sft_reward" in entries[-1]]
    for index, (split, value) in enumerate(sft):  # the starting policy: KL 0
        axis.plot([0.0], [value], linestyle="none", marker="*", markersize=12, color=SFT_COLOUR,
                  markeredgecolor="black", markeredgewidth=0.5, zorder=4,
                  label="SFT model (KL 0), judge reward" if index == 0 else None)
    _baselines(axis, series, "reference_reward", f"{REFERENCE_LABEL}, judge reward", REFERENCE_COLOUR)
    _baselines(axis, series, "oracle_reward", f"{ORACLE_LABEL}, judge reward", ORACLE_COLOUR)
    axis.margins(x=0.08, y=0.1)
    axis.set_xlabel("KL(π ‖ π_ref) on held-out prompts, nats per response")
    axis.set_ylabel("mean reward per response")
    axis.set_title("Judge (gold) and proxy (training) reward against KL over training\n"
                   "(numbers beside the points: rollout batches)", fontsize=11)
    axis.grid(alpha=0.3)
    _legend(axis)
    return figure


# ---------------------------------------------------------------------------------------------- helpers
def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _by_split(history: list[dict]) -> dict[str, list[dict]]:
    """The evaluations per split (validation first, then test, then others as they come), in rollout
    order, the later of two at the same rollout count kept."""
    kept: dict[str, dict[int, dict]] = {}
    for entry in history:
        kept.setdefault(str(entry.get("split", "test")), {})[int(entry["rollouts"])] = entry
    order = [s for s in SPLIT_ORDER if s in kept] + [s for s in kept if s not in SPLIT_ORDER]
    return {split: [kept[split][step] for step in sorted(kept[split])] for split in order}


def _split_style(split: str, splits: list[str]) -> dict:
    if split in SPLIT_STYLES:
        return dict(SPLIT_STYLES[split])
    others = [s for s in splits if s not in SPLIT_STYLES]
    return {"color": OTHER_SPLIT_COLOURS[others.index(split) % len(OTHER_SPLIT_COLOURS)], "marker": "s",
            "markersize": 7}


def _line(style: dict, points: int, hollow: bool = False) -> dict:
    """Plot keywords for one split's series: a line only through the split's own points."""
    kwargs = dict(style, linestyle=("--" if hollow else "-") if points > 1 else "none", linewidth=1.6,
                  markeredgecolor=style["color"] if hollow else "black", markeredgewidth=1.4 if hollow else 0.6,
                  clip_on=False)
    if hollow:
        kwargs["markerfacecolor"] = "white"
    return kwargs


def _split_series(axis: Axes, series: dict[str, list[dict]], key: str, what: str, hollow: bool = False) -> None:
    for split, entries in series.items():
        entries = [h for h in entries if key in h]
        if entries:
            style = _split_style(split, list(series))
            axis.plot([h["rollouts"] for h in entries], [h[key] for h in entries],
                      **_line(style, len(entries), hollow), label=f"{what}, {split}", zorder=3)


def _baselines(axis: Axes, series: dict[str, list[dict]], key: str, label: str, colour: str) -> None:
    """Horizontal lines for a constant of each split (the SFT model's, the reference or oracle responses' reward):
    one line when the splits agree, else one per split with its own line style."""
    values = {split: entries[-1][key] for split, entries in series.items() if key in entries[-1]}
    if not values:
        return
    if max(values.values()) - min(values.values()) <= 1e-9:
        values = {None: next(iter(values.values()))}
    for index, (split, value) in enumerate(values.items()):
        axis.axhline(value, color=colour, linewidth=1.4, zorder=2,
                     linestyle=BASELINE_STYLES[index % len(BASELINE_STYLES)],
                     label=f"{label}, {split}" if split else label)


def _decorate(axis: Axes, title: str, ylabel: str, steps: list[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_title(title)
    axis.set_xlabel(X_LABEL)
    axis.set_ylabel(ylabel)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = min(steps), max(steps)
    pad = max(1.0, 0.06 * (high - low))  # a single point, or several at one count, still gets a readable axis
    axis.set_xlim(low - pad, high + pad)
    axis.grid(alpha=0.3)
    _legend(axis)


def _legend(axis: Axes) -> None:
    """Below the axes, so it never covers a point."""
    entries = len(axis.get_legend_handles_labels()[1])
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8.5, frameon=False,
                ncols=2 if entries > 4 else 1)
