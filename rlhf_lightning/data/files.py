"""Read records from JSON, JSONL, Parquet files or a ``datasets`` directory saved with ``save_to_disk``."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.models import is_hub_id


def read_records(path: str, field: str, split: str = "train") -> list[dict]:
    """All rows of a data file as dicts: a local file or ``save_to_disk`` directory, or a hub data set id
    (``org/name``, or ``org/name:split`` to name the split; otherwise ``split``); a clear error for a
    missing or unreadable one."""
    p = Path(path)
    repo, _, named_split = path.partition(":")
    if not p.exists() and is_hub_id(repo):
        return hub_records(repo, named_split or split, field)
    if not p.exists():
        raise RecipeError(field, f"data file '{path}' does not exist", "give a .jsonl, .json, .parquet file or a "
                          "directory written by datasets.Dataset.save_to_disk")
    try:
        if p.is_dir():
            from datasets import load_from_disk  # optional dependency

            return [dict(row) for row in load_from_disk(str(p))]
        if p.suffix == ".jsonl":
            return jsonl_records(p, field)
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            return data if isinstance(data, list) else data["data"]
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq  # optional dependency

            return pq.read_table(p).to_pylist()
    except ImportError as error:
        raise RecipeError(field, f"reading '{path}' needs an optional package ({error.name})",
                          f"pip install {error.name} (or pip install rlhf-lightning[data])") from None
    except RecipeError:
        raise
    except FileNotFoundError as error:  # a folder that is not a save_to_disk data set
        raise RecipeError(field, f"'{path}' is a folder but not a data set written by save_to_disk ({error})",
                          "give a .jsonl, .json or .parquet file, or a save_to_disk folder") from None
    except (ValueError, KeyError) as error:
        raise RecipeError(field, f"cannot parse '{path}': {error}", "check the file format") from None
    raise RecipeError(field, f"unsupported data file type '{p.suffix}'", "use .jsonl, .json, .parquet or a dataset directory")


def jsonl_records(path: Path, field: str) -> list[dict]:
    """The rows of a JSON-lines file; a bad line is named by its line number in the file."""
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                raise RecipeError(field, f"line {number} of '{path}' is not valid JSON ({error.args[0].split(':')[0]})",
                                  f"fix or remove line {number}") from None
    return rows


def hub_records(repo: str, split: str, field: str) -> list[dict]:
    """The rows of one split of a hub data set, through the Hugging Face cache (``HF_HUB_OFFLINE`` works
    once it is cached) and ``datasets``."""
    try:
        from datasets import load_dataset  # optional dependency
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise RecipeError(field, f"reading the hub data set '{repo}' needs an optional package ({error.name})",
                          "pip install rlhf-lightning[data]") from None
    try:
        local = snapshot_download(repo, repo_type="dataset")
    except Exception as error:  # offline and not cached, unknown id, no network
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecipeError(field, f"cannot get the hub data set '{repo}': {detail}",
                          "check the id; offline (HF_HUB_OFFLINE=1) it must be in the Hugging Face cache already "
                          "(huggingface-cli download --repo-type dataset NAME)") from None
    try:
        return [dict(row) for row in load_dataset(local, split=split)]
    except ValueError as error:
        raise RecipeError(field, f"the hub data set '{repo}' has no split '{split}' ({str(error).splitlines()[0]})",
                          f"name the split as {repo}:SPLIT") from None


def require_columns(records: list[dict], columns: Sequence[str], field: str, path: str,
                    options: Optional[Mapping[str, str]] = None) -> None:
    """Every needed column must be present in the first row (and all rows).

    ``options`` maps a column to the recipe key that names it (e.g. ``prompt`` →
    ``data.init_args.prompt_column``), so the error can say which option to change.
    """
    if not records:
        raise RecipeError(field, f"'{path}' has no rows", "give a non-empty data file")
    if not isinstance(records[0], dict):
        raise RecipeError(field, f"rows of '{path}' are {type(records[0]).__name__}, not objects with named columns",
                          "write one JSON object per row, e.g. {\"prompt\": \"...\"}")
    missing = [c for c in columns if c not in records[0]]
    if missing:
        present = ", ".join(sorted(records[0])) or "none"
        named = [options[m] for m in missing if options and m in options]
        fix = f"rename the column to '{missing[0]}' in the data"
        fix += f", or set {named[0]} to the column that holds it" if named else \
            ", or set the data module's *_column option"
        close = difflib.get_close_matches(missing[0], list(records[0]), n=1)
        if close:
            fix = f"did you mean '{close[0]}'? " + fix
        raise RecipeError(field, f"'{path}' has no column {', '.join(repr(m) for m in missing)} (columns: {present})",
                          fix)
    for index, row in enumerate(records):
        for column in columns:
            if column not in row or row[column] is None:
                raise RecipeError(field, f"row {index} of '{path}' has no value for '{column}'",
                                  "fix or drop that row")
