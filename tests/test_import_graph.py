"""The package's modules import each other without a loop: no module needs one that needs it, whether the
import is at the top, inside a function or under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = {"rlhf_lightning": ROOT / "rlhf_lightning", "rlhf_lightning.callbacks": ROOT / "callbacks"}


def _module_files() -> dict[str, Path]:
    files = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            files[name.removesuffix(".__init__")] = path
    return files


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Package modules that ``path`` imports anywhere in its text."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(anchor[:len(anchor) - node.level + 1] + [node.module])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def test_no_import_loops():
    files = _module_files()
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    # a package's __init__ that imports its own modules is not a loop with them
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    loops = []

    def walk(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                loops.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            walk(node, [node])
    assert not loops, loops


def test_every_subpackage_is_installed():
    """A non-editable install holds only the packages pyproject.toml lists: each folder of the package must be one."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("rlhf_lightning", *path.parent.relative_to(ROOT / "rlhf_lightning").parts))
             for path in (ROOT / "rlhf_lightning").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
