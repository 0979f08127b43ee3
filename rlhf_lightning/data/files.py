"""Read records from JSON, JSONL, Parquet files or a ``datasets`` directory saved with ``save_to_disk``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from rlhf_lightning.errors import RecipeError


def read_records(path: str, field: str) -> list[dict]:
    """All rows of a local data file as dicts; a clear error for a missing or unreadable file."""
    p = Path(path)
    if not p.exists():
        raise RecipeError(field, f"data file '{path}' does not exist", "give a .jsonl, .json, .parquet file or a "
                          "directory written by datasets.Dataset.save_to_disk")
    try:
        if p.is_dir():
            from datasets import load_from_disk  # optional dependency

            return [dict(row) for row in load_from_disk(str(p))]
        if p.suffix == ".jsonl":
            with p.open() as handle:
                return [json.loads(line) for line in handle if line.strip()]
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            return data if isinstance(data, list) else data["data"]
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq  # optional dependency

            return pq.read_table(p).to_pylist()
    except ImportError as error:
        raise RecipeError(field, f"reading '{path}' needs an optional package ({error.name})",
                          f"pip install {error.name}") from None
    except (ValueError, KeyError) as error:
        raise RecipeError(field, f"cannot parse '{path}': {error}", "check the file format") from None
    raise RecipeError(field, f"unsupported data file type '{p.suffix}'", "use .jsonl, .json, .parquet or a dataset directory")


def require_columns(records: list[dict], columns: Sequence[str], field: str, path: str) -> None:
    """Every needed column must be present in the first row (and all rows)."""
    if not records:
        raise RecipeError(field, f"'{path}' has no rows", "give a non-empty data file")
    missing = [c for c in columns if c not in records[0]]
    if missing:
        present = ", ".join(sorted(records[0]))
        raise RecipeError(field, f"'{path}' has no column {', '.join(repr(m) for m in missing)} (columns: {present})",
                          "rename the column in the data or set the *_column option of the data module")
    for index, row in enumerate(records):
        for column in columns:
            if column not in row or row[column] is None:
                raise RecipeError(field, f"row {index} of '{path}' has no value for '{column}'",
                                  "fix or drop that row")
