"""Addition problems of the arithmetic task, their exact answers and the sloppy "human" answers of the SFT data.

A prompt is ``"57+68="``; its exact answer is ``"125"``. The simulated humans who wrote the SFT data forget the
carries on a share of the problems that have one (``57+68=`` → ``"15"``: every column summed mod 10), so a model
fine-tuned on them reproduces the mistake on most carrying problems: its accuracy is weak but non-zero (the
problems without a carry, about 30 % of them for two-digit operands, and the carrying ones it happens to get
right), and the correct answer is already in its samples, which is what an RL method can find and reinforce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhf_lightning.tasks.summarize.corpus import Example


@dataclass(frozen=True)
class ProblemConfig:
    """How problems and the SFT answers are drawn.

    Args:
        digits: operands are drawn uniformly from ``0 .. 10**digits - 1``.
        p_forget_carry: chance a human forgets every carry of a problem that has one.
    """

    digits: int = 2
    p_forget_carry: float = 0.5


def make_prompt(a: int, b: int) -> str:
    """``"a+b="``."""
    return f"{a}+{b}="


def exact_answer_of(a: int, b: int) -> str:
    return str(a + b)


def has_carry(a: int, b: int) -> bool:
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def carry_free_sum(a: int, b: int) -> str:
    """The sum with every carry forgotten: each column summed mod 10 (``57+68`` → ``"15"``)."""
    digits, place = 0, 1
    while a or b:
        digits += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return str(digits)


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return make_prompt(self.a, self.b)

    @property
    def answer(self) -> str:
        return exact_answer_of(self.a, self.b)


def make_splits(sizes: dict[str, int], seed: int, config: ProblemConfig = ProblemConfig()) -> dict[str, list[Problem]]:
    """Disjoint splits of distinct problems (e.g. ``{"train": 4096, "validation": 128, "test": 256}``),
    deterministic in ``seed``."""
    space = (10 ** config.digits) ** 2
    if sum(sizes.values()) > space:
        raise ValueError(f"{sum(sizes.values())} problems asked for, but {config.digits}-digit operands give "
                         f"only {space}")
    rng = random.Random(seed)
    top = 10 ** config.digits
    picked = rng.sample(range(space), sum(sizes.values()))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = [Problem(i // top, i % top) for i in picked[start:start + size]]
        start += size
    return out


def human_examples(problems: list[Problem], seed: int, config: ProblemConfig = ProblemConfig()) -> list[Example]:
    """The SFT data: each problem with a simulated human's answer (carries forgotten with ``p_forget_carry``)."""
    rng = random.Random(f"{seed}:human")
    out = []
    for p in problems:
        sloppy = has_carry(p.a, p.b) and rng.random() < config.p_forget_carry
        out.append(Example(p.prompt, carry_free_sum(p.a, p.b) if sloppy else p.answer))
    return out
