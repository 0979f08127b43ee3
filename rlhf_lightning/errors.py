"""One error type for bad input: it names the recipe field and the fix, and the CLI prints it alone."""

from __future__ import annotations


class RecipeError(ValueError):
    """Bad input the user can fix. ``field`` is the recipe key (e.g. ``model.init_args.policy.path``)."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)


def raise_all(errors: list[RecipeError]) -> None:
    """Raise every collected problem at once (one message, one problem per line)."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    joined = "\n".join(f"- {e}" for e in errors)
    raise RecipeError(errors[0].field, f"{len(errors)} problems in the recipe:\n{joined}")
