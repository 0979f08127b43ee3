"""One importer of dotted paths (``package.module.name``) for recipes: reward functions, class paths."""

from __future__ import annotations

import importlib

from rlhf_lightning.errors import RecipeError


def import_object(dotted: str, field: str) -> object:
    """Import ``package.module.name``; a bad path is a :class:`RecipeError` naming ``field``."""
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name:
        raise RecipeError(field, f"'{dotted}' is not a dotted path", "write it as package.module.name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RecipeError(field, f"cannot import module '{module_name}' ({error})",
                          "check the spelling and that the module is on PYTHONPATH") from None
    if not hasattr(module, attribute):
        raise RecipeError(field, f"module '{module_name}' has no attribute '{attribute}'", "check the name")
    return getattr(module, attribute)
