"""Fuzz: data files. A bad data file (empty, wrongly typed, malformed, in another format or encoding, with
rows that cannot be trained on) ends in one clear message naming the recipe field or file and the fix, exit
code 2, no traceback, and the finished run in the folder (``run_root``, given ``overwrite: true``) is left whole.

Online cases run one rollout batch of REBEL on the tiny prompts (``faults.bare_run_args``) with the training
file replaced; offline cases run DPO, KTO or SFT on small files written here. Every file is written the way a
careless user would produce it. Rows that are unusable one by one are counted (``on_bad_row``): the cases that
train on the rest are at the end.
"""

from __future__ import annotations

import gzip
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytest

from faults import bare_run_args, expect_fault
from rlhf_lightning.cli import main
from runs import chat_model_dir, tiny_run_args
from tiny import make_chat_tokenizer, make_model_dir

OVERWRITE = ["--overwrite", "true"]
NOUNS = ["cat", "dog", "sun", "moon", "tree", "rock"]
REWARD = "tiny.good_word_reward"
# a template in the style of Llama 2 / Mistral: roles must alternate user, assistant, user, ...
STRICT_TEMPLATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
                   "{% endif %}<turn> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                   "{% if add_generation_prompt %}<turn> assistant {% endif %}")


def prompt_text(i: int) -> str:
    return f"say : {NOUNS[i % 6]} {NOUNS[(i // 6) % 6]}"


def prompt_rows(n: int = 64, **extra: Any) -> list[dict]:
    return [{"prompt": prompt_text(i), "reference": "good", **extra} for i in range(n)]


PAIRS = [{"prompt": prompt_text(i), "chosen": "good good", "rejected": "bad bad"} for i in range(16)]
SFT_ROWS = [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS]
KTO_ROWS = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
            for i, p in enumerate(PAIRS)]


# ----------------------------------------------------------------------------- writing files
def jsonl(path: Path, rows: Sequence[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def text(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def with_lines(path: Path, rows: Sequence[dict], at: int, line: str) -> Path:
    """``rows`` as JSON lines with ``line`` written as line ``at + 1``."""
    lines = [json.dumps(row) for row in rows]
    path.write_text("\n".join(lines[:at] + [line] + lines[at:]) + "\n")
    return path


def cut_parquet(tmp: Path) -> Path:
    whole = parquet(tmp / "whole.parquet", {"prompt": [prompt_text(i) for i in range(64)]}).read_bytes()
    return text(tmp / "cut.parquet", whole[:len(whole) // 2])


# ----------------------------------------------------------------------------- building runs
@dataclass
class Case:
    """What a case writes (``build`` returns the run's arguments) and the text its message must contain."""

    build: Callable[["Setting"], list[str]]
    text: str


@dataclass
class Setting:
    """Where a case runs: the tiny model and prompts, a folder for its files, the previous run's folder."""

    model: Path
    data: dict
    tmp: Path
    root: Path
    request: Any

    @property
    def chat(self) -> Path:
        return self.request.getfixturevalue("chat_model")

    @property
    def strict_chat(self) -> Path:
        return self.request.getfixturevalue("strict_chat_model")

    def online(self, train: Path, extra: Sequence[str] = (), model: Optional[Path] = None,
               reward: str = REWARD, evaluation: bool = False) -> list[str]:
        """One rollout batch of REBEL on ``train``."""
        model = model or self.model
        data = {**self.data, "train": train}
        args = (tiny_run_args(model, data, self.root, batches=1) if evaluation
                else bare_run_args(model, data, self.root))
        return [reward if arg == REWARD else arg for arg in args] + list(extra) + OVERWRITE

    def offline(self, kind: str, train: Path, extra: Sequence[str] = (), model: Optional[Path] = None) -> list[str]:
        """One batch of an offline objective (``pairs``: DPO, ``unpaired``: KTO, ``sft``: SFT) on ``train``."""
        model = model or self.model
        data, objective = OFFLINE[kind]
        return ["fit", "--seed_everything", "0",
                "--model", "rlhf_lightning.RLHFModule", "--model.policy.path", str(model),
                "--model.objective", objective, "--model.lr", "1e-3",
                "--data", data, "--data.train_file", str(train), "--data.tokenizer", str(model),
                "--data.batch_size", "4",
                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "false",
                "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir",
                str(self.root), "--trainer.default_root_dir", str(self.root),
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                *extra, *OVERWRITE]


OFFLINE = {"pairs": ("rlhf_lightning.data.PreferenceDataModule", "rlhf_lightning.objectives.DPO"),
           "unpaired": ("rlhf_lightning.data.UnpairedDataModule", "rlhf_lightning.objectives.KTO"),
           "sft": ("rlhf_lightning.data.SFTDataModule", "rlhf_lightning.objectives.SFT")}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return chat_model_dir(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def strict_chat_model(tmp_path_factory) -> Path:
    tokenizer = make_chat_tokenizer()
    tokenizer.chat_template = STRICT_TEMPLATE
    return make_model_dir(tmp_path_factory.mktemp("strict_chat") / "model", tokenizer=tokenizer)


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


# ----------------------------------------------------------------------------- online prompt files
ONLINE = {
    "empty file": Case(lambda s: s.online(text(s.tmp / "train.jsonl", "")), "has no rows"),
    "only blank lines": Case(lambda s: s.online(text(s.tmp / "train.jsonl", "\n\n   \n\n")), "has no rows"),
    "fewer prompts than batch_size": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", prompt_rows(3))),
        "data.init_args.batch_size: the training data of"),
    "CSV with an unclosed quote": Case(
        lambda s: s.online(text(s.tmp / "train.csv", "prompt,reference\nsay : cat,good\n\"say : dog,good\n"
                                + "say : sun,good\n" * 10)),
        "the quoted field that starts on line 3"),
    "CSV with an unquoted comma": Case(
        lambda s: s.online(text(s.tmp / "train.csv", "prompt,reference\nsay : cat,good\nsay : cat, dog,good\n")),
        "line 3 of"),
    "parquet prompts of int64": Case(
        lambda s: s.online(parquet(s.tmp / "train.parquet", {"prompt": list(range(64)), "reference": ["good"] * 64})),
        "64 of 64 prompts"),
    "parquet prompts of bytes": Case(
        lambda s: s.online(parquet(s.tmp / "train.parquet", {"prompt": [prompt_text(i).encode() for i in range(64)],
                                                             "reference": ["good"] * 64})),
        "(row 0: bytes (decode them as UTF-8"),
    "prompts that are lists of words": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", [{"prompt": prompt_text(i).split()} for i in range(64)])),
        "(row 0: a list of str)"),
    "prompt that is one message, not a list": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", [{"prompt": user(prompt_text(i))} for i in range(64)]),
                           model=s.chat),
        "one message object, not a list of them (wrap it in [...])"),
    "null prompts in some rows": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", prompt_rows(10) + [{"prompt": None}] + prompt_rows(50)
                                 + [{"reference": "good"}])),
        "2 of 62 rows in"),
    "JSON object with the rows under another key": Case(
        lambda s: s.online(text(s.tmp / "train.json", json.dumps({"rows": prompt_rows()}))),
        "its rows are under 'rows'"),
    "JSON of columns (pandas' default orient)": Case(
        lambda s: s.online(text(s.tmp / "train.json", json.dumps({"prompt": {str(i): prompt_text(i) for i in range(64)},
                                                                  "reference": {str(i): "good" for i in range(64)}}))),
        "it holds columns, not rows"),
    "JSON lines in a .json file": Case(
        lambda s: s.online(jsonl(s.tmp / "train.json", prompt_rows())), "rename it to 'train.jsonl'"),
    "indented JSON list in a .jsonl file": Case(
        lambda s: s.online(text(s.tmp / "train.jsonl", json.dumps(prompt_rows(), indent=2))),
        "holds one JSON document over several lines"),
    "JSON file cut short": Case(
        lambda s: s.online(text(s.tmp / "train.json", json.dumps(prompt_rows())[:-30])), "is not valid JSON"),
    "a line that is a string, not an object": Case(
        lambda s: s.online(with_lines(s.tmp / "train.jsonl", prompt_rows(), 5, json.dumps("say : cat dog"))),
        "line 6 of"),
    ".txt file": Case(lambda s: s.online(text(s.tmp / "prompts.txt", "say : cat\nsay : dog\n")),
                      "unsupported data file type '.txt'"),
    ".xlsx file": Case(lambda s: s.online(text(s.tmp / "prompts.xlsx", b"PK\x03\x04" + bytes(200))),
                       "export the sheet as .csv"),
    "gzip-compressed .jsonl.gz": Case(
        lambda s: s.online(text(s.tmp / "train.jsonl.gz", gzip.compress(s.data["train"].read_bytes()))),
        "decompress it first"),
    "binary garbage named .jsonl": Case(
        lambda s: s.online(text(s.tmp / "train.jsonl", bytes(range(256)) * 8)), "is a binary file"),
    "parquet file named .jsonl": Case(
        lambda s: s.online(parquet(s.tmp / "train.jsonl", {"prompt": [prompt_text(i) for i in range(64)]})),
        "rename it to 'train.parquet'"),
    "Latin-1 file": Case(
        lambda s: s.online(text(s.tmp / "train.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in
                                                               prompt_rows(2) + [{"prompt": "say : café"}])
                                .encode("latin-1"))),
        "line 3 of"),
    "UTF-16 file (Windows PowerShell)": Case(
        lambda s: s.online(text(s.tmp / "train.jsonl", s.data["train"].read_text().encode("utf-16"))),
        "is UTF-16 text"),
    "parquet file cut short": Case(lambda s: s.online(cut_parquet(s.tmp)), "damaged or cut short"),
    "folder of data files": Case(
        lambda s: s.online(Path(s.data["train"]).parent), "holds the data files"),
    "relative path with a typo": Case(
        lambda s: s.online(Path("data/trian.jsonl")), "did you mean 'data/train.jsonl'?"),
    "prompt_column with a typo": Case(
        lambda s: s.online(s.data["train"], ["--data.prompt_column", "promt"]),
        "set data.init_args.prompt_column to 'prompt'"),
    "test_file without the reference column": Case(
        lambda s: s.online(s.data["train"], ["--data.test_file", str(jsonl(s.tmp / "test.jsonl", [
            {"prompt": prompt_text(i)} for i in range(16)]))], evaluation=True),
        "data.init_args.test_file:"),
    "reward column missing in some rows": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", prompt_rows(10, answer="good") + prompt_rows(3)
                                 + prompt_rows(51, answer="good")), reward="tiny.answer_reward"),
        "which 3 of 64 rows of"),
    "reward column null in parquet rows": Case(
        lambda s: s.online(parquet(s.tmp / "train.parquet", {"prompt": [prompt_text(i) for i in range(64)],
                                                             "answer": ["good"] * 60 + [None] * 4}),
                           reward="tiny.answer_reward"),
        "which 4 of 64 rows of"),
    "ShareGPT conversations (from/value)": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", [{"prompt": [{"from": "human", "value": prompt_text(i)}]}
                                                         for i in range(64)]), model=s.chat),
        "(ShareGPT style)"),
    "messages with the role 'human'": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", [{"prompt": [{"role": "human", "content": prompt_text(i)}]}
                                                         for i in range(64)]), model=s.chat),
        "has the role 'human' (write 'user')"),
    "a conversation the chat template refuses": Case(
        lambda s: s.online(jsonl(s.tmp / "train.jsonl", [{"prompt": [user("say : cat"), user(prompt_text(i))]}
                                                         for i in range(64)]), model=s.strict_chat),
        "Conversation roles must alternate"),
}


# ----------------------------------------------------------------------------- offline files
def pairs(tmp: Path, change: Callable[[int, dict], dict]) -> Path:
    return jsonl(tmp / "pairs.jsonl", [change(i, dict(row)) for i, row in enumerate(PAIRS)])


OFFLINE_CASES = {
    "pairs without a chosen column": Case(
        lambda s: s.offline("pairs", jsonl(s.tmp / "pairs.jsonl", [{"prompt": p["prompt"], "response": p["chosen"],
                                                                    "rejected": p["rejected"]} for p in PAIRS])),
        "has no column 'chosen'"),
    "pairs whose chosen equals rejected": Case(
        lambda s: s.offline("pairs", pairs(s.tmp, lambda i, p: {**p, "rejected": p["chosen"]})),
        "no usable rows in"),
    "some identical pairs with on_bad_row error": Case(
        lambda s: s.offline("pairs", pairs(s.tmp, lambda i, p: {**p, "rejected": p["chosen"]} if i % 4 == 1 else p),
                            ["--data.on_bad_row", "error"]),
        "4 of 16 rows in"),
    "pairs of int responses": Case(
        lambda s: s.offline("pairs", pairs(s.tmp, lambda i, p: {**p, "chosen": 1, "rejected": 0})),
        "responses that are neither text nor chat messages (first: row 0: an int"),
    "pairs of word lists": Case(
        lambda s: s.offline("pairs", pairs(s.tmp, lambda i, p: {**p, "chosen": p["chosen"].split(),
                                                               "rejected": p["rejected"].split()})),
        "responses that are neither text nor chat messages (first: row 0: a list of str)"),
    "a null rejected with on_bad_row error": Case(
        lambda s: s.offline("pairs", pairs(s.tmp, lambda i, p: {**p, "rejected": None} if i == 5 else p),
                            ["--data.on_bad_row", "error"]),
        "1 rows with no value for 'rejected' (first: row 5)"),
    "margins written as words": Case(
        lambda s: s.offline("pairs", pairs(s.tmp, lambda i, p: {**p, "margin": "high"}),
                            ["--data.margin_column", "margin"]),
        "margins that are not finite numbers (first: row 0: 'high')"),
    "pairs in TRL's implicit-prompt format": Case(
        lambda s: s.offline("pairs", jsonl(s.tmp / "pairs.jsonl", [
            {"chosen": [user(p["prompt"]), assistant(p["chosen"])],
             "rejected": [user(p["prompt"]), assistant(p["rejected"])]} for p in PAIRS]), model=s.chat),
        "implicit-prompt format"),
    "chat pairs whose messages lack a role": Case(
        lambda s: s.offline("pairs", pairs(s.tmp, lambda i, p: {**p, "prompt": [{"content": p["prompt"]}]}),
                            model=s.chat),
        "message 0 has no 'role' and 'content'"),
    "KTO labels -1, 2 and 'maybe' with on_bad_row error": Case(
        lambda s: s.offline("unpaired", jsonl(s.tmp / "kto.jsonl", [
            {**row, "label": [-1, 2, "maybe"][i % 3]} if i % 4 == 3 else row for i, row in enumerate(KTO_ROWS)]),
            ["--data.on_bad_row", "error"]),
        "labels that are not true/false, 1/0 or desirable/undesirable"),
    "KTO labels that are all 'maybe'": Case(
        lambda s: s.offline("unpaired", jsonl(s.tmp / "kto.jsonl", [{**row, "label": "maybe"} for row in KTO_ROWS])),
        "no usable rows in"),
    "KTO with only undesirable rows": Case(
        lambda s: s.offline("unpaired", jsonl(s.tmp / "kto.jsonl", [{**row, "label": False} for row in KTO_ROWS])),
        "data.init_args.label_column: all 16 usable rows"),
    "SFT with empty completions": Case(
        lambda s: s.offline("sft", jsonl(s.tmp / "sft.jsonl", [{**row, "response": ""} for row in SFT_ROWS])),
        "16 empty responses"),
    "SFT rows all longer than max_length (packing)": Case(
        lambda s: s.offline("sft", jsonl(s.tmp / "sft.jsonl", SFT_ROWS), ["--data.packing", "true",
                                                                         "--data.max_length", "4"]),
        "16 examples longer than max_length=4 (packing)"),
    "SFT responses all over max_response_length": Case(
        lambda s: s.offline("sft", jsonl(s.tmp / "sft.jsonl", SFT_ROWS), ["--data.max_response_length", "2"]),
        "16 responses longer than max_response_length=2"),
    "SFT column of mixed types with on_bad_row error": Case(
        lambda s: s.offline("sft", jsonl(s.tmp / "sft.jsonl", [{**row, "response": 5} if i % 3 == 0 else row
                                                               for i, row in enumerate(SFT_ROWS)]),
                            ["--data.on_bad_row", "error"]),
        "6 responses that are neither text nor chat messages (first: row 0: an int"),
    "SFT messages that are strings": Case(
        lambda s: s.offline("sft", jsonl(s.tmp / "sft.jsonl", [{"messages": [user(r["prompt"]), r["response"]]}
                                                               for r in SFT_ROWS]),
                            ["--data.messages_column", "messages"], model=s.chat),
        "message 1 is a str, not a {'role', 'content'} object"),
    "SFT conversations that end with the user": Case(
        lambda s: s.offline("sft", jsonl(s.tmp / "sft.jsonl", [{"messages": [assistant(r["response"]),
                                                                             user(r["prompt"])]} for r in SFT_ROWS]),
                            ["--data.messages_column", "messages"], model=s.chat),
        "do not end with an assistant message"),
    "SFT with fewer rows than batch_size": Case(
        lambda s: s.offline("sft", jsonl(s.tmp / "sft.jsonl", SFT_ROWS[:3])),
        "has 3 usable rows, fewer than batch_size=4"),
}

CASES = {**ONLINE, **OFFLINE_CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_file_is_one_message(case, tiny_model, tiny_data, run_root, tmp_path, capsys, monkeypatch, request):
    files = tmp_path / "files"
    files.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_bytes(Path(tiny_data["train"]).read_bytes())
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the folder the run starts in
    setting = Setting(tiny_model, tiny_data, files, run_root, request)
    args = CASES[case].build(setting)
    message = expect_fault(args, capsys, CASES[case].text, protect=run_root)
    assert "data.init_args." in message, message  # names the recipe field
    assert "fix:" in message, message  # and what to do


# ----------------------------------------------------------------------------- rows skipped, the rest trained on
SKIPPED = {  # case → (kind, rows, text of the one warning)
    "a few identical pairs": ("pairs", [{**p, "rejected": p["chosen"]} if i % 4 == 1 else p
                                        for i, p in enumerate(PAIRS)], "skipped 4 of 16 rows"),
    "KTO labels -1, 2 and 'maybe'": ("unpaired", [{**row, "label": [-1, 2, "maybe"][i % 3]} if i % 4 == 3 else row
                                                  for i, row in enumerate(KTO_ROWS)], "skipped 4 of 16 rows"),
    "a null response": ("sft", [{**row, "response": None} if i == 2 else row for i, row in enumerate(SFT_ROWS)],
                        "1 rows with no value for 'response' (first: row 2)"),
}


@pytest.mark.parametrize("case", list(SKIPPED))
def test_unusable_rows_are_counted_and_skipped(case, tiny_model, tiny_data, tmp_path, request):
    kind, rows, text = SKIPPED[case]
    setting = Setting(tiny_model, tiny_data, tmp_path, tmp_path / "run", request)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(setting.offline(kind, jsonl(tmp_path / "rows.jsonl", rows)))
    skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 1 and text in skipped[0], skipped
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("name, content", [
    ("train.jsonl", "\ufeff" + "".join(json.dumps(row) + "\n" for row in prompt_rows())),  # Notepad's byte-order mark
    ("train.csv", "prompt,reference\n" + "".join(f'"{prompt_text(i)}",good\r\n' for i in range(64))),
    ("train.tsv", "prompt\treference\n" + "".join(f"{prompt_text(i)}\tgood\n" for i in range(64))),
], ids=["jsonl with a byte-order mark", "CSV with CRLF line ends", "TSV"])
def test_text_files_that_train(name, content, tiny_model, tiny_data, tmp_path, request):
    setting = Setting(tiny_model, tiny_data, tmp_path, tmp_path / "run", request)
    main(setting.online(text(tmp_path / name, content)))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["objective"] == "rebel"
