"""Verifiable rewards for the recipes in this folder (``rlhf-lightning run`` puts the folder on the import path)."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def exact_answer(prompts, responses, answer, **_) -> list[float]:
    """1.0 when the last number in the response equals the row's ``answer`` column, else 0.0."""
    scores = []
    for response, expected in zip(responses, answer):
        numbers = _NUMBER.findall(response)
        scores.append(float(bool(numbers) and numbers[-1] == str(expected).strip()))
    return scores
