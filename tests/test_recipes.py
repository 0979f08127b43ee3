"""Every recipe under recipes/ parses: ``--print_config`` succeeds and shows the recipe's objective.

A recipe that only states what differs from another (e.g. ``recipes/examples/pairwise_hinge.yaml``
on top of the quickstart) says so in its header with the command that runs it,
``rlhf-lightning run recipes/quickstart.yaml recipes/examples/pairwise_hinge.yaml``; the test runs
that same command line. User modules next to a recipe (``pairwise_hinge.py``) import because
``rlhf-lightning`` puts each recipe's folder on the import path, as a user relies on; no
PYTHONPATH is set here (``sys.path`` is restored after each test). Section fragments included by
recipes (``recipes/base/*.yaml``) are not run alone.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_lightning.cli import main

ROOT = Path(__file__).parents[1]
SECTIONS = {"seed_everything", "trainer", "model", "data"}


def is_recipe(path: Path) -> bool:
    """A recipe has top-level sections; a fragment such as ``recipes/base/trainer.yaml`` (the value of
    one section, included by ``trainer: base/trainer.yaml``) is checked through the recipes using it."""
    config = yaml.safe_load(path.read_text())
    return isinstance(config, dict) and bool(SECTIONS & set(config))


RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*") if p.suffix in {".yaml", ".yml"} and is_recipe(p))
USAGE = re.compile(r"rlhf-lightning run\s+((?:\S+\.ya?ml\s+)*\S+\.ya?ml)")


def recipe_stack(recipe: Path) -> list[Path]:
    """The recipe files its header says to run it with (``rlhf-lightning run A.yaml B.yaml``), else itself."""
    header = []
    for line in recipe.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#"))
    for match in USAGE.finditer("\n".join(header)):
        stack = [ROOT / name for name in match.group(1).split()]
        if any(p.resolve() == recipe.resolve() for p in stack):
            return stack
    return [recipe]


def expected_objective(stack: list[Path]) -> str:
    """The objective class_path after the later files override the earlier ones."""
    found = None
    for path in stack:
        config = yaml.safe_load(path.read_text()) or {}
        objective = (((config.get("model") or {}).get("init_args") or {}).get("objective") or {})
        if isinstance(objective, dict) and objective.get("class_path"):
            found = objective["class_path"]
    assert found, f"no model.init_args.objective.class_path in {[str(p) for p in stack]}"
    return found


def print_config(args: list[str], capsys) -> str:
    try:
        main(args)
    except SystemExit as exit_info:  # --print_config ends with exit code 0
        captured = capsys.readouterr()
        assert exit_info.code in (0, None), captured.err
        return captured.out
    return capsys.readouterr().out


def test_recipes_are_found():
    assert ROOT / "recipes" / "quickstart.yaml" in RECIPES


@pytest.mark.parametrize("form", ["fit --config", "run"])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses(recipe, form, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # undo the recipe folders main puts on the path
    stack = recipe_stack(recipe)
    if form == "run":
        args = ["run", *map(str, stack), "--print_config"]
    else:
        args = ["fit", *[item for p in stack for item in ("--config", str(p))], "--print_config"]
    out = print_config(args, capsys)
    objective = expected_objective(stack)
    assert objective in out
    printed = yaml.safe_load(out)
    assert printed["model"]["init_args"]["objective"]["class_path"] == objective
    # the rollout lives at its own key; trainer.callbacks holds the rest (a Rollout there is refused at run time)
    assert printed["rollout"]["class_path"].startswith("rlhf_lightning.callbacks")
    assert not any("Rollout" in str(c.get("class_path")) for c in printed["trainer"].get("callbacks") or [])
    if objective.endswith("GRPO"):  # its KL is in the loss: the recipe must not shape the reward as well
        assert printed["rollout"]["init_args"]["kl_coef"] == 0
