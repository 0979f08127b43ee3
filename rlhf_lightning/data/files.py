"""Read records from JSON, JSONL, CSV/TSV, Parquet files or a ``datasets`` directory saved with ``save_to_disk``
(a ``Dataset``, or one split of a ``DatasetDict``).

A file that cannot be read ends in one :class:`RecipeError` that names the file, what is wrong with it
(with the line where it helps) and how to fix it: a binary or non-UTF-8 file, a JSON document in a
``.jsonl`` file (or JSON lines in a ``.json`` one), a ragged CSV row or an unclosed quote, a row that is
not an object, a path that is neither a file nor a hub id.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from rlhf_lightning.data.encoding import describe
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.models import is_hub_id

FORMATS = ("a .jsonl, .json, .csv, .tsv or .parquet file, or a folder written by save_to_disk (a datasets.Dataset, "
           "or a DatasetDict)")
TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
DATA_SUFFIXES = TEXT_SUFFIXES + (".parquet", ".arrow", ".txt", ".xlsx", ".xls", ".gz", ".zip", ".bz2", ".xz", ".zst")
COMPRESSED = (".gz", ".zip", ".bz2", ".xz", ".zst")


def read_records(path: str, field: str, split: str = "train") -> list[dict]:
    """All rows of a data file as dicts: a local file or ``save_to_disk`` directory (of a ``DatasetDict``: its
    split ``split``, or the one named as ``folder:split``), or a hub data set id (``org/name``, or
    ``org/name:split`` to name the split; otherwise ``split``); a clear error for a missing or unreadable one."""
    p = Path(path)
    repo, _, named_split = path.rpartition(":") if ":" in path else (path, "", "")
    if not p.exists() and repo and named_split and Path(repo).is_dir():  # a saved DatasetDict's split, folder:split
        p, split, named = Path(repo), named_split, True
    else:
        repo, _, named_split = path.partition(":")
        named = False
        if not p.exists() and is_hub_id(repo) and not looks_local(p):
            return hub_records(repo, named_split or split, field)
    if not p.exists():
        raise RecipeError(field, f"data file '{path}' does not exist", missing_fix(p))
    try:
        if p.is_dir():
            return folder_records(p, field, split, named)
        suffix = p.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            return text_records(p, suffix, field)
        if suffix == ".parquet":
            import pyarrow.parquet as pq  # optional dependency

            return pq.read_table(p).to_pylist()
    except ImportError as error:
        raise RecipeError(field, f"reading '{path}' needs an optional package ({error.name})",
                          f"pip install {error.name} (or pip install rlhf-lightning[data])") from None
    except RecipeError:
        raise
    except PermissionError as error:
        raise RecipeError(field, f"cannot read '{path}': {first_line(error)}",
                          "make it readable to the user the run starts as (chmod +r)") from None
    except (ValueError, KeyError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise RecipeError(field, f"cannot read '{path}': {first_line(error)}", "the file is damaged or cut short: "
                          "write it again (e.g. pandas.DataFrame.to_parquet)") from None
    raise RecipeError(field, f"unsupported data file type '{p.suffix}' ('{path}')", unsupported_fix(suffix))


def looks_local(p: Path) -> bool:
    """Whether a path that does not exist was meant as a local file: a data file suffix, or a folder that exists."""
    return p.suffix.lower() in DATA_SUFFIXES or (str(p.parent) not in ("", ".") and p.parent.is_dir())


def missing_fix(p: Path) -> str:
    """The fix for a data file that does not exist: the closest file name in its folder, if there is one."""
    folder = p.parent if str(p.parent) else Path(".")
    names = sorted(child.name for child in folder.iterdir()) if folder.is_dir() else []
    close = difflib.get_close_matches(p.name, names, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{folder / close[0]}'?"
    return f"give {FORMATS} (a relative path is relative to the folder the run starts in)"


def unsupported_fix(suffix: str) -> str:
    if suffix in COMPRESSED:
        return "decompress it first (gunzip, unzip, ...) and give the file it holds"
    if suffix in (".xlsx", ".xls"):
        return "export the sheet as .csv (or .parquet) and give that file"
    return f"give {FORMATS}"


def folder_records(p: Path, field: str, split: str = "train", named: bool = False) -> list[dict]:
    """The rows of a ``save_to_disk`` folder: a ``Dataset``'s rows, or split ``split`` of a ``DatasetDict`` (the
    field's own split, or the one the path names as ``folder:split`` when ``named``), with an error listing the
    splits it holds when that one is absent; a folder of loose data files names them (and the one of ``split``,
    if one is named so)."""
    from datasets import DatasetDict, load_from_disk  # optional dependency

    try:
        data = load_from_disk(str(p))
    except FileNotFoundError:
        files = sorted(child.name for child in p.iterdir() if child.suffix.lower() in DATA_SUFFIXES)
        if files:
            listed = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
            best = next((name for name in files if split in name.lower()), files[0])
            raise RecipeError(field, f"'{p}' is a folder but not a data set written by save_to_disk; it holds the "
                                     f"data files {listed}", f"give one of them, e.g. '{p / best}'") from None
        what = "it is empty" if not any(p.iterdir()) else "it holds no data files"
        raise RecipeError(field, f"'{p}' is a folder but not a data set written by save_to_disk ({what})",
                          f"give {FORMATS}") from None
    if isinstance(data, DatasetDict):
        if split not in data:
            splits = list(data)
            held = f"the splits {', '.join(repr(name) for name in splits)}" if splits else "no splits"
            asked = f"the split '{split}' named in the path" if named else f"the '{split}' split that {field} reads"
            fix = (f"name one of its splits as '{p}:SPLIT' (e.g. '{p}:{splits[0]}'), or save the rows as a split "
                   f"named '{split}'" if splits else "save the data set with its splits again")
            raise RecipeError(field, f"'{p}' is a DatasetDict written by save_to_disk that holds {held}, not "
                                     f"{asked}", fix)
        return [dict(row) for row in data[split]]
    if named:
        raise RecipeError(field, f"'{p}' is a single Dataset written by save_to_disk, which has no splits, but the "
                                 f"path names the split '{split}'", f"give '{p}' without ':{split}'")
    return [dict(row) for row in data]


# ----------------------------------------------------------------------------- text files
def text_records(path: Path, suffix: str, field: str) -> list[dict]:
    """The rows of a JSON lines, JSON, CSV or TSV file (UTF-8, with or without a byte-order mark)."""
    text = read_text(path, field)
    if suffix == ".jsonl":
        return jsonl_records(path, field, text)
    if suffix == ".json":
        return json_records(path, field, text)
    return csv_records(path, field, text, "\t" if suffix == ".tsv" else ",")


def read_text(path: Path, field: str) -> str:
    """The file as text; a binary, UTF-16 or otherwise non-UTF-8 file is an error naming the line."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RecipeError(field, f"'{path}' is UTF-16 text (as Windows PowerShell and Notepad write it), not UTF-8",
                          f"save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8 '{path.name}' > NEW{path.suffix})")
    if data.startswith(b"PAR1"):
        raise RecipeError(field, f"'{path}' is a Parquet file with a {path.suffix} name",
                          f"rename it to '{path.stem}.parquet'")
    if b"\x00" in data[:8192]:
        raise RecipeError(field, f"'{path}' is a binary file, not {path.suffix} text",
                          "check that the path names the data file (a text file of rows)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise RecipeError(field, f"line {line} of '{path}' is not UTF-8 text (byte 0x{data[error.start]:02x})",
                          f"save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 '{path.name}' > NEW{path.suffix})"
                          ) from None


def jsonl_records(path: Path, field: str, text: Optional[str] = None) -> list[dict]:
    """The rows of a JSON-lines file; a bad line is named by its line number in the file."""
    text = read_text(path, field) if text is None else text
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            if not rows and one_json_document(text):
                raise RecipeError(field, f"'{path}' holds one JSON document over several lines, not one JSON object "
                                         "per line", f"rename it to '{path.stem}.json', or write one object per line"
                                  ) from None
            raise RecipeError(field, f"line {number} of '{path}' is not valid JSON ({error.args[0].split(':')[0]})",
                              f"fix or remove line {number}") from None
        if not isinstance(row, dict):
            raise RecipeError(field, f"line {number} of '{path}' holds {describe(row)}, not an object with named "
                                     "columns", f"write one JSON object per line, e.g. {{\"prompt\": \"...\"}}, or "
                                                f"remove line {number}")
        rows.append(row)
    return rows


def one_json_document(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def json_records(path: Path, field: str, text: str) -> list[Any]:
    """The rows of a JSON file: a list of objects, or such a list under the key ``data``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and all(one_json_document(line) for line in text.splitlines() if line.strip()):
            raise RecipeError(field, f"'{path}' holds one JSON value per line (JSON lines), not one JSON document",
                              f"rename it to '{path.stem}.jsonl'") from None
        raise RecipeError(field, f"'{path}' is not valid JSON ({error.msg}: line {error.lineno}, column "
                                 f"{error.colno})", "fix the JSON there (a file cut short must be written again)"
                          ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return data["data"]
    if isinstance(data, dict):
        keys = ", ".join(list(map(str, data))[:6]) or "none"
        raise RecipeError(field, f"'{path}' holds a JSON object (keys: {keys}), not a list of rows",
                          json_object_fix(data))
    if not isinstance(data, list):
        raise RecipeError(field, f"'{path}' holds {describe(data)}, not a list of rows",
                          "write a JSON list of row objects [{\"prompt\": \"...\"}, ...]")
    return data


def json_object_fix(data: dict) -> str:
    """How to turn a JSON object into rows: rows under another key, or columns (pandas' default orient)."""
    nested = [key for key, value in data.items() if isinstance(value, list) and value and isinstance(value[0], dict)]
    if nested:
        return f"its rows are under '{nested[0]}': put them under 'data', or write the list alone"
    if data and all(isinstance(value, (list, dict)) for value in data.values()):
        return "it holds columns, not rows: write a list of row objects (pandas: df.to_json(path, orient='records'))"
    return "write a JSON list of row objects [{\"prompt\": \"...\"}, ...]"


def csv_records(path: Path, field: str, text: str, delimiter: str) -> list[dict]:
    """The rows of a CSV/TSV file with a header line, as text values (an empty cell is null, as pandas reads
    it); a ragged row or an unclosed quote is named by its line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[dict] = []
    header: Optional[list[str]] = None
    start = 1
    try:
        for values in reader:
            if not values:  # a blank line
                start = reader.line_num + 1
                continue
            if header is None:
                header = check_header(values, path, field)
            elif len(values) != len(header):
                raise RecipeError(field, f"line {start} of '{path}' has {len(values)} fields, the header has "
                                         f"{len(header)}", "quote fields that hold the delimiter or a line break "
                                                           f"(\"...\"), or fix line {start}")
            else:
                rows.append({name: value if value != "" else None for name, value in zip(header, values)})
            start = reader.line_num + 1
    except csv.Error as error:
        if "end of data" in str(error):
            raise RecipeError(field, f"the quoted field that starts on line {start} of '{path}' is never closed",
                              "close the quote; a quote inside a quoted field is written twice (\"\")") from None
        raise RecipeError(field, f"line {start} of '{path}' is not valid CSV ({error})",
                          "a quote inside a quoted field is written twice (\"\"); fix that line") from None
    return rows


def check_header(names: list[str], path: Path, field: str) -> list[str]:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RecipeError(field, f"the header of '{path}' names the column '{repeated[0]}' twice",
                          "give every column its own name")
    return names


# ----------------------------------------------------------------------------- hub data sets
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
        raise RecipeError(field, f"cannot get the hub data set '{repo}': {first_line(error)}",
                          "check the id; offline (HF_HUB_OFFLINE=1) it must be in the Hugging Face cache already "
                          "(huggingface-cli download --repo-type dataset NAME)") from None
    try:
        return [dict(row) for row in load_dataset(local, split=split)]
    except ValueError as error:
        raise RecipeError(field, f"the hub data set '{repo}' has no split '{split}' ({str(error).splitlines()[0]})",
                          f"name the split as {repo}:SPLIT") from None


# ----------------------------------------------------------------------------- columns
def require_columns(records: list[dict], columns: Sequence[str], field: str, path: str,
                    options: Optional[Mapping[str, str]] = None, values: bool = True) -> None:
    """Every needed column must be present (checked on the first row), every row an object, and (with
    ``values``) every row must hold a value (not null) in each column; without ``values`` the caller
    handles rows that lack one (see :func:`lacking_value`).

    ``options`` maps a column to the recipe key that names it (e.g. ``prompt`` →
    ``data.init_args.prompt_column``), so the error can say which option to change.
    """
    if not records:
        raise RecipeError(field, f"'{path}' has no rows", "give a non-empty data file")
    other = next((index for index, row in enumerate(records) if not isinstance(row, dict)), None)
    if other is not None:
        raise RecipeError(field, f"row {other} of '{path}' is {describe(records[other])}, not an object with named "
                                 "columns", "write one JSON object per row, e.g. {\"prompt\": \"...\"}")
    missing = [c for c in columns if c not in records[0]]
    if missing:
        raise missing_columns(records[0], missing, field, path, options or {})
    if not values:
        return
    for column in columns:
        lacking = [index for index, row in enumerate(records) if lacking_value(row, column)]
        if lacking:
            raise RecipeError(field, f"{len(lacking)} of {len(records)} rows in '{path}' have no value for "
                                     f"'{column}' (the first is row {lacking[0]})", "fill or drop those rows")


def lacking_value(row: dict, column: str) -> bool:
    """Whether ``row`` has no value for ``column`` (absent or null)."""
    return row.get(column) is None


def missing_columns(first: dict, missing: Sequence[str], field: str, path: str,
                    options: Mapping[str, str]) -> RecipeError:
    """The error for columns the data lacks: the columns it has; for the first, the closest one and the option
    that names it."""
    present = ", ".join(sorted(first)) or "none"
    column = missing[0]
    option = options.get(column)
    close = difflib.get_close_matches(column, list(first), n=1)
    if close and option:
        fix = f"did you mean '{close[0]}'? set {option} to '{close[0]}', or rename the column in the data"
    else:
        fix = f"rename the column to '{column}' in the data"
        fix += (f", or set {option} to the column that holds it" if option
                else ", or set the data module's *_column option")
        if close:
            fix = f"did you mean '{close[0]}'? " + fix
    named = ", ".join(repr(name) for name in missing)
    return RecipeError(field, f"'{path}' has no column {named} (columns: {present})", fix)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

