"""The arithmetic task's verifiable reward: a data-aware reward function reading the ``answer`` column."""

from __future__ import annotations

import re
from typing import Sequence

_INTEGER = re.compile(r"-?\d+")


def parse_answer(response: str) -> str | None:
    """The response's answer: the whole response, stripped of surrounding whitespace, when it is one integer
    without a leading zero (``"125"``, ``"0"``), else None (empty, two numbers, junk around the number, an echo
    of the prompt, ``"0125"``)."""
    text = response.strip()
    if not _INTEGER.fullmatch(text):
        return None
    digits = text.lstrip("-")
    if len(digits) > 1 and digits[0] == "0":
        return None
    return text


def exact_answer(prompts: Sequence[str], responses: Sequence[str], answer: Sequence[str], **_) -> list[float]:
    """1.0 when the response is exactly the row's ``answer`` (one integer, nothing else but surrounding
    whitespace), else 0.0: no partial credit and no format term, so the mean reward is the accuracy."""
    return [float(parse_answer(r) == str(a).strip()) for r, a in zip(responses, answer)]
