"""The documentation pages under ``docs/`` stay in step with the code.

The pages keep their facts in machine-readable tables, which these tests read:

* argument tables (header ``| argument | default | ... |``) under a heading that names a class by its dotted
  path: every argument exists in the class's signature with the documented default, and every argument of the
  class is documented (arguments a subclass forwards through ``**kwargs`` may be documented for its base);
* recipe key tables (``| key | ... |``) in ``recipes.md``: every key exists in the resolved quickstart recipe
  (as ``--print_config`` prints it), and every top-level key of that recipe is documented;
* the metric glossary (``| metric | ... |``) and the ``summary.json`` fields (``| field | ... |``) in
  ``metrics.md``: every name occurs in the library's source, literally or as the parts it is built from at run
  time, and every name the code logs is in the glossary (string literals of the source, every objective's
  metric keys from running its ``prepare`` and ``loss`` on tiny tensors, the evaluation's result keys from
  running ``WinRateEvaluation.evaluate`` with its model calls stubbed);
* the run-folder table (``| path | ... |``) and the ``samples.jsonl`` columns (``| column | ... |``) in
  ``outputs.md`` against ``rlhf_lightning/run_folder.py`` and the evaluation callback.

Also: every page exists, README's Documentation section links each one, and every relative link of README.md and
docs/*.md (anchors included) resolves.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ("recipes.md", "data.md", "rewards.md", "objectives.md", "metrics.md", "outputs.md")
SOURCE_DIRS = (ROOT / "rlhf_lightning", ROOT / "callbacks")


# ----------------------------------------------------------------------------------------------- parsing
def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def cells(line: str) -> list[str]:
    """The cells of a table row, split on pipes that are not escaped (``\\|`` stays inside its cell)."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    return [part.strip().replace("\\|", "|") for part in parts[1:-1]]


def tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(heading, header cells, rows)`` of every Markdown table, with the nearest heading above it."""
    found, heading, lines = [], "", without_code_blocks(text).split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line
        if line.startswith("|") and index + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[index + 1]):
            header = [c.lower() for c in cells(line)]
            rows, index = [], index + 2
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(cells(lines[index]))
                index += 1
            found.append((heading, header, rows))
            continue
        index += 1
    return found


def code(cell: str) -> str | None:
    """The first backticked text of a cell."""
    match = re.search(r"`([^`]+)`", cell)
    return match.group(1) if match else None


def first_column(name: str, kind: str) -> list[str]:
    """The backticked names in the first column of every ``kind`` table of page ``name``."""
    names = [code(row[0]) for _, header, rows in tables(page(name)) if header[0] == kind for row in rows]
    assert all(names), f"{name}: a {kind} table row has no backticked name in its first column"
    return names


def documented_class(heading: str):
    """The class a heading names by a backticked dotted path, e.g. ``### `rlhf_lightning.data.SFTDataModule```."""
    for path in re.findall(r"`([\w.]+\.[A-Z]\w*)`", heading):
        module, _, attribute = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
    return None


def source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for d in SOURCE_DIRS for p in sorted(d.rglob("*.py")))


SOURCE = source_text()
LITERALS = set(re.findall(r'"([^"\n]*)"', SOURCE)) | set(re.findall(r"'([^'\n]*)'", SOURCE))
PREFIXES = set(re.findall(r'f"([a-z_]+)/\{', SOURCE))  # f"val/{key}", f"eval/{k}", f"loss/{ns}", f"reward/{name}"
SUFFIXES = set(re.findall(r'f"\{\w+\}/([a-z_]+)"', SOURCE))  # f"{ns}/accuracy", f"{namespace}/logprob"


# ----------------------------------------------------------------------------------------------- pages and links
def test_every_page_exists_and_the_readme_links_it():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Documentation\n(.*?)(?=^## )", readme, flags=re.M | re.S)
    assert section, "README.md has no '## Documentation' section"
    for name in PAGES:
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
        assert f"(docs/{name})" in section.group(1), f"README's Documentation section does not link docs/{name}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^#+\s*", "", heading).strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in without_code_blocks(path.read_text(encoding="utf-8")).split("\n"):
        if re.match(r"^#{1,6} ", line):
            base = slug(line)
            count = seen.get(base, 0)
            seen[base] = count + 1
            seen.setdefault(f"{base}-{count}" if count else base, 1)
    return set(seen)


@pytest.mark.parametrize("document", ["README.md", *(f"docs/{name}" for name in PAGES)])
def test_relative_links_resolve(document):
    path = ROOT / document
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or document == "README.md"
    for link in links:
        if re.match(r"^[a-z]+:", link):  # https:, mailto:
            continue
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"{document}: the link '{link}' points to a missing file"
        if fragment and file.suffix == ".md":
            assert fragment in anchors(file), f"{document}: the link '{link}' names no heading of {file.name}"


# ----------------------------------------------------------------------------------------------- class arguments
def argument_tables() -> list[tuple[str, type, list[list[str]]]]:
    found = []
    for name in PAGES:
        for heading, header, rows in tables(page(name)):
            if header[0] != "argument":
                continue
            cls = documented_class(heading)
            assert cls is not None, f"docs/{name}: the argument table under '{heading}' names no importable class"
            assert header[:2] == ["argument", "default"], f"docs/{name}, '{heading}': columns argument, default, ..."
            found.append((name, cls, rows))
    return found


def documented_default(cell: str):
    if cell.strip() == "required":
        return inspect.Parameter.empty
    text = code(cell)
    assert text is not None, f"default '{cell}' is neither 'required' nor a backticked value"
    if text == "()":
        return ()
    value = yaml.safe_load(text)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def own_parameters(cls) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(cls).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def takes_kwargs(cls) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())


def test_documented_arguments_exist_with_their_defaults():
    documented: dict[type, set[str]] = {}
    for name, cls, rows in argument_tables():
        for row in rows:
            argument = code(row[0])
            bases = [base for base in cls.__mro__[1:] if takes_kwargs(cls) and base is not object]
            owner = next((c for c in (cls, *bases) if argument in own_parameters(c)), None)
            assert owner is not None, f"docs/{name}: {cls.__name__} has no argument '{argument}'"
            expected = own_parameters(owner)[argument].default
            given = documented_default(row[1])
            same = (list(given) == list(expected)) if isinstance(expected, tuple) else given == expected
            assert same, f"docs/{name}: {cls.__name__}.{argument} defaults to {expected!r}, documented {row[1]}"
            documented.setdefault(cls, set()).add(argument)
    # the converse: every argument of a documented class is documented (for it, or for a base it forwards to)
    for cls, names in documented.items():
        inherited = set().union(*(documented.get(base, set()) for base in cls.__mro__[1:]))
        missing = set(own_parameters(cls)) - names - inherited
        assert not missing, f"{cls.__name__}'s arguments {sorted(missing)} are not documented"


def test_every_objective_and_data_module_has_an_argument_table():
    from lightning.pytorch import LightningDataModule

    import rlhf_lightning.data as data
    import rlhf_lightning.objectives as objectives
    from rlhf_lightning.tasks import summarize

    documented = {cls for _, cls, _ in argument_tables()}
    wanted = [getattr(objectives, n) for n in objectives.__all__]
    wanted += [getattr(module, n) for module in (data, summarize) for n in module.__all__
               if isinstance(getattr(module, n), type) and issubclass(getattr(module, n), LightningDataModule)]
    no_arguments = {objectives.SFT}  # SFT() takes none: its page says so in prose
    missing = [cls.__name__ for cls in wanted if cls not in documented and cls not in no_arguments]
    assert not missing, f"no argument table for {missing}"


# ----------------------------------------------------------------------------------------------- recipe keys
@pytest.fixture(scope="module")
def resolved_recipe() -> dict:
    """recipes/quickstart.yaml as ``rlhf-lightning run recipes/quickstart.yaml --print_config`` prints it."""
    from rlhf_lightning.cli import RLHFCLI, translate_args

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        RLHFCLI(args=translate_args(["run", str(ROOT / "recipes" / "quickstart.yaml"), "--print_config"]))
    return yaml.safe_load(printed.getvalue())


def test_documented_recipe_keys_exist(resolved_recipe):
    keys = first_column("recipes.md", "key")
    for key in keys:
        node = resolved_recipe
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"docs/recipes.md: '{key}' is not a key of a recipe"
            node = node[part]
    missing = set(resolved_recipe) - set(keys)
    assert not missing, f"top-level recipe keys {sorted(missing)} are not in docs/recipes.md"


def test_every_shipped_recipe_and_base_part_is_named():
    text = page("recipes.md")
    for recipe in [*sorted((ROOT / "recipes").glob("*.yaml")), *sorted((ROOT / "recipes" / "base").glob("*.yaml"))]:
        name = recipe.relative_to(ROOT).as_posix()
        assert f"`{name}`" in text, f"docs/recipes.md does not name {name}"


# ----------------------------------------------------------------------------------------------- metric names
PLACEHOLDER = re.compile(r"^<[\w ]+>$")


def glossary() -> list[str]:
    return first_column("metrics.md", "metric")


def metric_in_source(name: str, documented: set[str]) -> bool:
    """``name`` occurs as a string in the source, or is built at run time from parts that do: a literal prefix
    (``f"eval/{k}"``) and a tail that is itself a string of the source (a result key, a namespace) or a
    documented metric (``val/loss/dpo``), or a namespace string and a literal suffix (``f"{ns}/accuracy"``)."""
    if name in LITERALS:
        return True
    head, _, tail = name.partition("/")
    if head in PREFIXES and (PLACEHOLDER.match(tail) or tail in LITERALS
                             or (tail in documented and metric_in_source(tail, documented))):
        return True
    return tail in SUFFIXES and head in LITERALS


def test_every_documented_metric_occurs_in_the_source():
    names = glossary()
    assert len(names) == len(set(names)), "a metric is listed twice in docs/metrics.md"
    missing = [name for name in names if not metric_in_source(name, set(names))]
    assert not missing, f"docs/metrics.md lists names the code never logs: {missing}"


def test_every_metric_name_literal_of_the_source_is_documented():
    """Every ``"namespace/key"`` string of the library is a metric it logs (module, rollout, objectives)."""
    literals = {s for s in LITERALS if re.fullmatch(r"[a-z_]+/[a-z_]+", s)}
    missing = sorted(literals - set(glossary()))
    assert not missing, f"metrics the code logs but docs/metrics.md lacks: {missing}"


def test_runtime_built_metric_families_are_documented():
    names = set(glossary())
    for prefix in PREFIXES:  # val/<metric>, reward/<name>: documented as a placeholder row, or name by name
        assert any(n.startswith(f"{prefix}/") for n in names), f"no '{prefix}/...' metric in docs/metrics.md"
    assert any(n.startswith("val/<") for n in names) and any(n.startswith("reward/<") for n in names)


def tiny_rollout(group: int, prompts: int = 3, prompt_width: int = 2, width: int = 4, critic: bool = False):
    from rlhf_lightning.rollout import Rollout

    generator = torch.Generator().manual_seed(0)
    n = prompts * group
    mask = torch.ones(n, prompt_width + width, dtype=torch.long)
    mask[::2, -1] = 0  # some responses end early
    return Rollout(input_ids=torch.randint(3, 9, mask.shape, generator=generator), attention_mask=mask,
                   prompt_length=prompt_width, ref_logprobs=-torch.rand(n, width, generator=generator),
                   rewards=torch.randn(n, generator=generator), group_size=group, kl_coef=0.05,
                   values=torch.randn(n, width, generator=generator) if critic else None,
                   old_logprobs=-torch.rand(n, width, generator=generator),
                   shaped_rewards=torch.randn(n, generator=generator))


def tiny_sequence_batch(group: int, with_reference: bool, pairs: int = 3, width: int = 4):
    from rlhf_lightning.batches import SequenceBatch

    generator = torch.Generator().manual_seed(1)
    n = pairs * group
    mask = torch.ones(n, 2 + width, dtype=torch.long)
    mask[1::2, -1] = 0
    extras = {"label": torch.tensor([1.0, 0.0]).repeat_interleave(group).repeat(pairs)[:n],
              "margin": torch.rand(pairs, generator=generator).repeat_interleave(group)}
    return SequenceBatch(torch.randint(3, 9, mask.shape, generator=generator), mask, 2, group_size=group,
                         ref_logprobs=-torch.rand(n, width, generator=generator) if with_reference else None,
                         extras=extras)


def objective_metric_keys(objective) -> set[str]:
    """The metric keys ``objective`` logs: those its ``prepare`` adds and those its ``loss`` returns."""
    needs = objective.needs
    generator = torch.Generator().manual_seed(2)
    if needs.rollout:
        rollout = tiny_rollout(needs.group_size, critic=needs.critic)
        prepared = objective.prepare(rollout, lambda t: t)
        n, width = prepared.old_logprobs.shape
        logprobs = (prepared.old_logprobs + 0.1 * torch.randn(n, width, generator=generator)).requires_grad_()
        outputs = {}
        if needs.critic:
            outputs["values"] = torch.randn(n, width, generator=generator).requires_grad_()
        if needs.entropy:
            outputs["entropy"] = torch.rand(n, width, generator=generator).requires_grad_()
        loss, metrics = objective.loss(logprobs, prepared, **outputs)
        keys = set(prepared.metrics) | set(metrics)
    else:
        batch = tiny_sequence_batch(2 if objective.name != "sft" else 1, with_reference=needs.reference)
        n, width = batch.input_ids.shape[0], batch.response_mask.shape[1]
        if needs.head == "scalar":
            loss, metrics = objective.loss(None, batch, scores=torch.randn(n, generator=generator).requires_grad_())
        else:
            loss, metrics = objective.loss(-torch.rand(n, width, generator=generator).requires_grad_(), batch)
        keys = set(metrics)
    assert loss.dim() == 0 and loss.requires_grad
    return keys


def objective_variants() -> list:
    from rlhf_lightning import objectives as o

    return [o.REBEL(), o.REBEL(pairs="best_worst", num_samples=3), o.REBEL(pairs="dataset"), o.PPO(), o.APA(), o.APA(value_clip=0.2),
            o.PPO(entropy_coef=0.01, ptx_coef=0.1), o.REINFORCE(), o.REINFORCE(whiten_advantages=True), o.RLOO(k=3),
            o.GRPO(), o.GRPO(scale_rewards=False, loss_reduction="constant"), o.OnlineDPO(), o.DPO(),
            o.DPO(reference_free=True, length_normalized=True), o.IPO(), o.SLiC(), o.SLiC(sft_weight=0.1),
            o.SimPO(), o.ORPO(), o.KTO(), o.BradleyTerry(margin=True, center_coef=0.01), o.SFT()]


def test_every_objective_metric_is_documented():
    from rlhf_lightning import objectives

    variants = objective_variants()
    exported = {getattr(objectives, n) for n in objectives.__all__} - {objectives.Needs, objectives.Objective}
    assert exported <= {type(v) for v in variants}, "a new objective: add it to objective_variants()"
    names = set(glossary())
    missing = {key: type(v).__name__ for v in variants for key in objective_metric_keys(v) if key not in names}
    assert not missing, f"objective metrics missing from docs/metrics.md: {missing}"


def evaluation_result_keys(monkeypatch) -> set[str]:
    """The keys ``WinRateEvaluation.evaluate`` reports, with every key present: rows with references and a
    separate judge, so that the training reward is tracked as the proxy."""
    from rlhf_lightning.callbacks import evaluation
    from rlhf_lightning.rewards import RewardSource

    class Judge(RewardSource):
        def score(self, prompts, responses):
            return torch.tensor([float(len(r)) for r in responses])

        def best_responses(self, prompts):
            return ["x" * 9 for _ in prompts]

    rows = [{"prompt": "p0", "reference": "aaa"}, {"prompt": "p1", "reference": "b"}]
    callback = evaluation.WinRateEvaluation(judge=Judge())
    reported: dict[str, float] = {}
    callback._rank_rows = lambda trainer, split: (rows, len(rows))
    callback._responses = lambda module, rows, use_reference: ["xy" * (i + 1 + use_reference) for i in range(len(rows))]
    callback._kl = lambda module, rows: torch.zeros(len(rows))
    callback._log = lambda trainer, results, step, split: reported.update(results)
    callback._log_samples = lambda *args, **kwargs: None
    monkeypatch.setattr(evaluation, "trainer_collate", lambda module, rows: {"columns": {}})
    module = SimpleNamespace(reward=Judge(), trainer=SimpleNamespace(world_size=1), _batch_number=0)
    results = callback.evaluate(SimpleNamespace(), module, "test", step=1)
    assert results == reported and callback.history[-1]["split"] == "test"
    return set(results)


def test_every_evaluation_metric_is_documented(monkeypatch):
    keys = evaluation_result_keys(monkeypatch)
    assert {"win_rate_vs_sft", "reward", "kl", "win_rate_vs_reference", "oracle_reward", "proxy_reward"} <= keys
    names = set(glossary())
    missing = sorted(f"eval/{key}" for key in keys if f"eval/{key}" not in names)
    assert not missing, f"evaluation metrics missing from docs/metrics.md: {missing}"
    documented_eval = {n for n in names if n.startswith("eval/")}
    image_only = {"eval/judge", "eval/images"}  # ImageEvaluation's (its eval/reward and eval/kl are shared names)
    image_source = (ROOT / "callbacks" / "image_evaluation.py").read_text()
    assert 'for key in ("judge", "reward", "kl")' in image_source and 'key="eval/images"' in image_source
    assert documented_eval == {f"eval/{key}" for key in keys} | {"eval/samples"} | image_only


# ----------------------------------------------------------------------------------------------- summary.json
def module_summary_keys(objective) -> set[str]:
    """The fields ``RLHFModule`` puts in the summary at the end of training and after a validation epoch, for
    ``objective`` (its hooks run on a stand-in holding just what they read)."""
    from rlhf_lightning.module import RLHFModule

    metrics = {f"val/{key}": torch.tensor(0.5) for key in objective_metric_keys(objective)}
    module = SimpleNamespace(summary={}, objective=objective, _fit_started=0.0, _samples_generated=4,
                             _busy_seconds=1.0, _rollout_batches=2, device=torch.device("cpu"),
                             trainer=SimpleNamespace(callback_metrics=metrics))
    module._train_seconds = lambda: 1.0
    RLHFModule.on_train_end(module)
    RLHFModule.on_validation_epoch_end(module)
    return set(module.summary)


def keyword_arguments(call: str) -> list[str]:
    """The keyword names of every call in the source that starts with ``call`` (its top-level arguments only)."""
    names = []
    for match in re.finditer(re.escape(call), SOURCE):
        depth, segment, segments = 1, "", []
        for char in SOURCE[match.end():]:
            depth += char in "([{"
            depth -= char in ")]}"
            if depth == 0:
                break
            if depth == 1 and char == ",":
                segments.append(segment)
                segment = ""
            else:
                segment += char
        segments.append(segment)
        names += [m.group(1) for part in segments if (m := re.match(r"\s*(\w+)\s*=(?!=)", part))]
    return names


def test_summary_fields_are_documented_both_ways(monkeypatch):
    fields = first_column("metrics.md", "field")
    eval_keys = evaluation_result_keys(monkeypatch)
    keywords = set(keyword_arguments("summary.update("))  # summary.update(seed=..., config_sha256=...)
    unknown = [f for f in fields if f not in LITERALS and f not in eval_keys and f not in keywords]
    assert not unknown, f"docs/metrics.md lists summary.json fields the code never writes: {unknown}"
    written = set(re.findall(r'summary\["(\w+)"\]', SOURCE)) | set(eval_keys) | keywords | {"objective"}
    written |= {key for v in objective_variants() for key in module_summary_keys(v)}
    missing = sorted(written - set(fields))
    assert not missing, f"summary.json fields missing from docs/metrics.md: {missing}"


# ----------------------------------------------------------------------------------------------- run folder
def test_run_folder_and_samples_columns_are_documented():
    from rlhf_lightning import run_folder

    paths = {p.rstrip("/") for p in first_column("outputs.md", "path")}
    expected = {*run_folder.OUTPUTS, run_folder.LOCK, run_folder.REPLACED, run_folder.CONFIG}
    assert expected <= paths, f"docs/outputs.md lacks {sorted(expected - paths)}"
    listed = re.search(r'columns = (\["rollouts".*?\])', (ROOT / "callbacks" / "evaluation.py").read_text())
    assert listed, "samples.jsonl's column list moved: update this test"
    assert first_column("outputs.md", "column") == yaml.safe_load(listed.group(1))
