"""Command line: ``rlhf-lightning run RECIPE.yaml [MORE.yaml ...] [--key value ...]`` (a LightningCLI).

``run A B`` is shorthand for ``fit --config A --config B`` (later files override earlier ones); the
folder of every recipe goes on the import path. ``fit`` and its flags (``--print_config``, ``--help``) work as
in any LightningCLI. ``evaluate A ...`` runs LightningCLI's ``validate`` on the recipe to evaluate a checkpoint or
an exported policy (:mod:`rlhf_lightning.evaluate`); ``generate`` samples from one (:mod:`rlhf_lightning.generate`).
``validate``, ``test`` and ``predict`` typed as such are refused with one message naming these commands.

Bad input (an unknown key, a wrong type, a missing model or data file, ...) ends in one message
naming the recipe key and the fix, with exit code 2 and no traceback: parse errors of jsonargparse
are translated by :func:`explain_parse_error`; :class:`RecipeError` raised by the library while the
recipe is instantiated or trained is printed by :func:`main`.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import importlib
import os
import re
import signal
import sys
import warnings
from argparse import ArgumentError
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rlhf_lightning import __version__
from rlhf_lightning.callbacks import Rollout, WinRateEvaluation
from rlhf_lightning.checkpoint_io import OutputNotWritten, read_problem
from rlhf_lightning.distributed.strategies import strategy_from_flag
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.evaluate import EvaluationRun, attach_validation_loop, nothing_to_evaluate, prepare_evaluation
from rlhf_lightning.guards import TrainingInterrupted, TrainingStopped
from rlhf_lightning.imports import import_object
from rlhf_lightning.module import RLHFModule
from rlhf_lightning.run_folder import acquire_lock, finish_run_folder, prepare_run_folder, release_lock
from rlhf_lightning.usage import NOT_OFFERED, USAGE, answer_help, not_offered_message


class SaveRunConfig(SaveConfigCallback):
    """The resolved recipe as ``<trainer.default_root_dir>/config.yaml``, whatever the logger (LightningCLI writes
    it to the logger's ``log_dir``, for CSV and TensorBoard ``lightning_logs/version_N``), so that every run
    folder holds its recipe next to its outputs. Written when training (or ``evaluate``) starts, once a resumed
    checkpoint has loaded: a resume that fails leaves the folder as it was."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pass

    def on_train_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.training and not trainer.sanity_checking:  # evaluate; not the validations during fit
            self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            root = Path(trainer.default_root_dir)
            root.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(root / self.config_filename), skip_none=False, overwrite=True,
                             multifile=self.multifile)
            self.save_config(trainer, pl_module, "fit" if trainer.training else "validate")
        self.already_saved = True


class RLHFCLI(LightningCLI):
    """LightningCLI with the library's defaults: any ``RLHFModule`` subclass and any data module."""

    def __init__(self, args: Optional[Sequence[str]] = None, run: bool = True) -> None:
        from rlhf_lightning.progress import DefaultProgressBar

        super().__init__(
            RLHFModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            # DefaultProgressBar: plain progress lines instead of Lightning's default bar outside a terminal; not a
            # progress bar itself, so a recipe's own bar and enable_progress_bar: false work as in Lightning
            trainer_defaults={"use_distributed_sampler": False, "callbacks": [DefaultProgressBar()]},
            parser_kwargs={"default_env": False},
            args=args,
            run=run,
        )

    def init_parser(self, **kwargs):
        # parse errors raise (turned into one RecipeError below) instead of printing usage and exiting;
        # no abbreviations, so a misspelt --trainer.max_epoch is an error, not silently max_epochs
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        skip_none = print_config_request(args)
        given = args
        if skip_none is not None:  # shown below, once the run's folders are filled in
            args = [arg for arg in args if not str(arg).startswith("--print_config")]
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            problem = explain_parse_error(str(error), _subcommand_parser(parser, args))
            if problem.field == LOGGER_SAVE_DIR and "required" in problem.problem and isinstance(args, list):
                # CSVLogger, TensorBoardLogger: no default save_dir; it becomes the run folder, as W&B's does
                return self.parse_arguments(parser, [*given, f"--{LOGGER_SAVE_DIR}", "."])
            raise problem from None
        if skip_none is not None:
            self._print_resolved_config(skip_none)

    def _print_resolved_config(self, skip_none: bool) -> None:
        """``--print_config``: the resolved recipe with the folders the run will use (the logger's save_dir, the
        checkpoints' dirpath), then exit."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if subcommand == "validate" and config.get("trainer") is not None:
            prepare_evaluation(config, Path(default_root_dir(config)))
        apply_output_defaults(config)
        shown = config.clone()
        for key in ("config", "print_config"):
            if key in shown:
                del shown[key]
        print(self._parser(subcommand).dump(shown, skip_none=skip_none, skip_validation=True), end="")
        raise SystemExit(0)

    def before_fit(self) -> None:
        """Keep the run folder to this run (see :mod:`rlhf_lightning.run_folder`), and record in ``summary.json``
        where the run came from: seed, a hash of the resolved recipe, version."""
        config = self.config.get(str(self.subcommand), self.config)
        check_ckpt_path(config.get("ckpt_path"), Path(self.trainer.default_root_dir))
        if rank_zero_only.rank == 0:
            root = Path(self.trainer.default_root_dir)
            resuming = resumes(config.get("ckpt_path"), self.trainer)
            prepare_run_folder(root, resuming=resuming, overwrite=bool(config.get("overwrite")),
                               no_last_checkpoint=config.get("ckpt_path") == "last" and not resuming)
            self._lock = acquire_lock(root)
        self._record_recipe(config)

    def before_validate(self) -> None:
        """``rlhf-lightning evaluate`` (see :mod:`rlhf_lightning.evaluate`): the evaluation folder is a run folder
        of its own; the recipe's evaluations run once at the end of a validation loop."""
        config = self.config.get(str(self.subcommand), self.config)
        objective = self.model.objective
        validation_loss = not objective.needs.rollout and bool(getattr(self.datamodule, "validation_file", None))
        problem = nothing_to_evaluate(type(objective).__name__, validation_loss,
                                      any(isinstance(c, WinRateEvaluation) for c in self.trainer.callbacks))
        if problem is not None:
            raise problem
        if config.get("ckpt_path") and isinstance(self.trainer.strategy, DeepSpeedStrategy):
            raise RecipeError("ckpt_path", "evaluate cannot load a DeepSpeed checkpoint: DeepSpeed restores ZeRO "
                              "checkpoints into a training engine only, not into the engine of a validation loop",
                              "evaluate the exported policy instead: --policy_dir <run folder>/policy (written by "
                              "ExportPolicy at the end of training), under any strategy")
        if rank_zero_only.rank == 0:
            root = Path(self.trainer.default_root_dir)
            prepare_run_folder(root, resuming=False, overwrite=bool(config.get("overwrite")))
            self._lock = acquire_lock(root)
        source = ({"evaluated_checkpoint": str(config.get("ckpt_path"))} if config.get("ckpt_path")
                  else {"evaluated_policy_dir": str(config.get("policy_dir"))})
        self.trainer.callbacks.append(EvaluationRun(source))
        attach_validation_loop(self.datamodule)
        self._record_recipe(config)

    def _record_recipe(self, config) -> None:
        """The resolved recipe to the trackers, and in ``summary.json`` where the run came from: seed, a hash of
        the resolved recipe, version."""
        text = self._parser(self.subcommand).dump(config, skip_none=False, skip_validation=True)
        log_hyperparameters(self.trainer.loggers, text)
        self.model.summary.update(seed=config.get("seed_everything"),
                                  config_sha256=hashlib.sha256(text.encode()).hexdigest(),
                                  rlhf_lightning_version=__version__)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit as stop:  # Lightning's answer to SIGTERM, and to Ctrl-C (after its own shutdown)
            self._end_run(succeeded=False)
            interrupted = self._interruption(stop)
            if interrupted is None:
                raise
            raise interrupted from None
        except BaseException:
            self._end_run(succeeded=False)
            raise
        self._end_run(succeeded=True)

    def _interruption(self, stop: SystemExit) -> Optional[TrainingInterrupted]:
        step = self.model._batch_number if getattr(self, "model", None) is not None else 0
        if isinstance(stop, SIGTERMException):
            return TrainingInterrupted("SIGTERM", signal.SIGTERM, step)
        if stop.code == 1 and self.trainer.state.status == TrainerStatus.INTERRUPTED:
            return TrainingInterrupted("SIGINT (Ctrl-C)", signal.SIGINT, step)
        return None

    def _end_run(self, succeeded: bool) -> None:
        """Settle the run folder (the outputs a run with ``overwrite`` replaced) and release its lock."""
        if getattr(self, "_lock", None) is None:
            return
        finish_run_folder(Path(self.trainer.default_root_dir), succeeded)
        release_lock(self._lock)
        self._lock = None

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint once for its hyperparameters, before the trainer does
        try:
            super()._parse_ckpt_path()
        except Exception as error:
            path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
            problem = read_problem(Path(path), error) if path else None
            if problem is None:
                raise
            raise problem from None

    def add_arguments_to_parser(self, parser) -> None:
        # the rollout callback at its own top-level key (LightningCLI adds it to the trainer's callbacks), so
        # that --rollout.kl_coef works and a second recipe can change one setting without replacing the list
        parser.add_lightning_class_args(Rollout, "rollout", subclass_mode=True, required=False)
        parser.set_defaults({"rollout": {"class_path": f"{Rollout.__module__}.{Rollout.__name__}"}})
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="a new run in a trainer.default_root_dir that holds another run's outputs replaces them (otherwise "
                 "that is an error): they are moved into .replaced/, deleted when this run succeeds and put back "
                 "if it fails before writing outputs; a resume (--ckpt_path) continues in its folder either way")
        parser.add_argument(
            "--policy_dir", type=Optional[str], default=None,
            help="evaluate only: an exported policy directory (e.g. runs/NAME/policy) to evaluate instead of a "
                 "checkpoint; the recipe's policy is then the reference the win rate and KL compare with")
        parser.add_argument(
            "--cpu_threads", type=Optional[int], default=None,
            help="torch intra-op threads (torch.set_num_threads). Tiny models on a CPU run far faster "
                 "with 1 thread; null keeps torch's default.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("cpu_threads")
        if threads is not None:
            if threads < 1:
                raise RecipeError("cpu_threads", f"must be ≥ 1 or null, got {threads}")
            torch.set_num_threads(threads)
        reject_rollout_in_callbacks(config)
        raise_all(logger_problems(config.get("trainer") or {}) + optimizer_problems(config))
        if self.subcommand == "fit":
            raise_all(trainer_problems(config.get("trainer") or {}))
            if config.get("policy_dir"):
                raise RecipeError("policy_dir", "is an option of evaluate and generate, not of training",
                                  "to train from an exported policy set model.init_args.policy.path")
        if self.subcommand == "validate" and config.get("trainer") is not None:
            prepare_evaluation(config, Path(default_root_dir(config)))
        apply_output_defaults(config)
        if config.get("trainer") is not None:
            config["trainer"]["strategy"] = strategy_from_flag(config["trainer"].get("strategy", "auto"))


LOGGER_SAVE_DIR = "trainer.logger.init_args.save_dir"


def print_config_request(args) -> Optional[bool]:
    """``--print_config`` (→ ``False``) or ``--print_config=skip_null`` (→ ``True``: leave out null values) among
    ``args``; ``None`` without it, or with another of jsonargparse's variants (jsonargparse prints those)."""
    if not isinstance(args, list):
        return None
    flags = [str(arg) for arg in args if str(arg).startswith("--print_config")]
    if not flags or any(flag not in ("--print_config", "--print_config=skip_null") for flag in flags):
        return None
    return "--print_config=skip_null" in flags


NOT_HYPERPARAMETERS = ("config", "print_config", "overwrite", "ckpt_path")
"""Top-level keys of the resolved recipe that say how a run is launched, not what it trains."""


def hyperparameters_of(recipe_text: str) -> dict:
    """The resolved recipe (YAML text, as ``--print_config`` shows it) as the nested dict a tracker records:
    ``model`` (policy, objective, lr, …), ``data``, ``rollout``, ``trainer`` and ``seed_everything``."""
    import yaml

    recipe = yaml.safe_load(recipe_text) or {}
    return {key: value for key, value in recipe.items() if key not in NOT_HYPERPARAMETERS}


def log_hyperparameters(loggers, recipe_text: str) -> None:
    """Record the run's resolved hyperparameters in every logger (W&B run config, TensorBoard and CSV
    ``hparams.yaml``), so that runs can be compared by learning rate, β, γ or objective."""
    if not loggers:
        return
    hyperparameters = hyperparameters_of(recipe_text)
    for logger in loggers:
        logger.log_hyperparams(hyperparameters)


NO_LIMIT = {"max_epochs": " (or null)", "max_steps": " (or -1: no limit)",
            "limit_train_batches": " (batches, or a fraction > 0 of them)"}


def trainer_problems(trainer) -> list[RecipeError]:
    """Trainer settings that would train nothing, or that Lightning refuses under the module's manual
    optimisation (it steps, accumulates and clips itself)."""
    problems = []
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if trainer.get(key) is not None and not isinstance(trainer.get(key), bool) and trainer.get(key) == 0:
            problems.append(RecipeError(f"trainer.{key}", "is 0, so the run would train on nothing",
                                        f"set trainer.{key} ≥ 1" + NO_LIMIT[key]))
    if (trainer.get("accumulate_grad_batches") or 1) != 1:
        problems.append(RecipeError("trainer.accumulate_grad_batches", "is not used: the module steps the optimizer "
                                    "itself (one step per minibatch of a rollout batch)",
                                    "remove it; to fit a minibatch in memory set model.init_args.micro_batch_size "
                                    "(same update, gradients added over the micro-batches)"))
    if trainer.get("gradient_clip_val") is not None:
        problems.append(RecipeError("trainer.gradient_clip_val", "is not used: the module clips the gradients itself",
                                    "remove it and set model.init_args.max_grad_norm (default 1.0)"))
    return problems


CKPT_NAMES = ("last", "best", "hpc", "registry")  # resolved by Lightning
DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def resumes(ckpt_path: Optional[str], trainer) -> bool:
    """Whether the run loads a checkpoint: ``--ckpt_path last`` with no last checkpoint yet starts a new run
    (Lightning allows it, so that a job script can always pass it), which the run-folder rules then treat as
    new."""
    if not ckpt_path:
        return False
    if ckpt_path != "last":
        return True
    found: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        finder = getattr(callback, "_find_last_checkpoints", None)
        found |= set(finder(trainer)) if finder is not None else set()
    return bool(found)


def check_ckpt_path(ckpt_path: Optional[str], root: Path) -> None:
    """``--ckpt_path`` must name an existing checkpoint (or one of Lightning's names, e.g. ``last``)."""
    found = sorted((root / "checkpoints").glob("*.ckpt")) if (root / "checkpoints").is_dir() else []
    fix = (f"checkpoints of this run: {', '.join(str(p) for p in found[:5])}" if found
           else "give the path of a checkpoint file, or --ckpt_path last")
    if ckpt_path == "best":  # the best path of the current process's ModelCheckpoint: empty in a new process
        raise RecipeError("ckpt_path", "'best' names the best checkpoint this process has written, and a new run "
                                       "has written none", fix)
    if ckpt_path == "hpc" and not list(root.glob("hpc_ckpt_*.ckpt")):
        raise RecipeError("ckpt_path", f"'hpc': no SLURM checkpoint (hpc_ckpt_*.ckpt) in '{root}'", fix)
    if not ckpt_path or ckpt_path in CKPT_NAMES or ckpt_path.startswith("registry") or Path(ckpt_path).exists():
        return
    raise RecipeError("ckpt_path", f"'{ckpt_path}' does not exist", fix)


def run_name(recipe: str) -> str:
    """``recipes/pipeline/sft.yaml`` → ``pipeline/sft``; a recipe outside a ``recipes`` folder → its stem."""
    parts = os.path.normpath(os.path.abspath(recipe)).split(os.sep)
    stem = os.path.splitext(parts[-1])[0]
    if "recipes" in parts[:-1]:
        below = parts[len(parts) - 1 - parts[::-1].index("recipes") + 1:-1]
        return os.path.join(*below, stem) if below else stem
    return stem


def reject_rollout_in_callbacks(config) -> None:
    """A rollout callback in ``trainer.callbacks`` (the old place) is an error naming the ``rollout:`` key."""
    for index, callback in enumerate((config.get("trainer") or {}).get("callbacks") or []):
        class_path = str(callback.get("class_path", "")) if hasattr(callback, "get") else ""
        try:
            cls = import_object(class_path, f"trainer.callbacks[{index}].class_path") if class_path else None
        except RecipeError:
            continue  # jsonargparse has already checked the class path
        if isinstance(cls, type) and issubclass(cls, Rollout):
            raise RecipeError(f"trainer.callbacks[{index}]",
                              f"{class_path} is a rollout callback, which is configured at the top-level key "
                              "'rollout:' (not in trainer.callbacks)",
                              "move it out of trainer.callbacks to `rollout: {class_path: ..., init_args: {...}}` "
                              "(or set single values with --rollout.<key>)")


VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")  # they write to <save_dir>/<name>/version_N


def logger_problems(trainer) -> list[RecipeError]:
    """A logger whose package is missing: one message (Lightning's would come inside a long traceback)."""
    import importlib.util

    loggers = trainer.get("logger")
    problems = []
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        class_path = str(logger.get("class_path", "")) if hasattr(logger, "get") else ""
        if class_path.endswith("TensorBoardLogger") and not any(
                importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
            problems.append(RecipeError("trainer.logger", "TensorBoardLogger needs the tensorboard package, which is "
                                        "not installed", "pip install -e '.[tensorboard]' (or pip install tensorboard),"
                                        " or log with lightning.pytorch.loggers.CSVLogger or WandbLogger"))
    return problems


def optimizer_problems(config) -> list[RecipeError]:
    """LightningCLI's top-level ``optimizer``/``lr_scheduler`` would replace the module's own optimisation (AdamW
    over the policy and critic with its schedule, stepped by the module), and fail far from the recipe."""
    fixes = {"optimizer": "set model.init_args.lr, critic_lr and weight_decay (AdamW)",
             "lr_scheduler": "set model.init_args.lr_schedule (constant, linear, cosine) and warmup_steps"}
    return [RecipeError(key, "is not used: RLHFModule builds and steps its own optimizer and schedule", fix)
            for key, fix in fixes.items() if config.get(key) is not None]


def default_root_dir(config) -> str:
    """``trainer.default_root_dir``, set to ``runs/<name of the last recipe>`` when the recipe leaves it unset."""
    trainer = config["trainer"]
    if not trainer.get("default_root_dir"):
        recipes = [str(path) for path in (config.get("config") or [])]
        trainer["default_root_dir"] = os.path.join("runs", run_name(recipes[-1]) if recipes else "default")
    return trainer["default_root_dir"]


def apply_output_defaults(config) -> None:
    """Put every output of a run under ``trainer.default_root_dir``, by default ``runs/<recipe name>``.

    Unset paths get defaults: the W&B/CSV/TensorBoard logger's ``save_dir``, ``ModelCheckpoint``'s
    ``dirpath`` (``<root>/checkpoints``) and ``ExportPolicy``'s (``<root>/policy``). A CSV or TensorBoard logger
    whose ``name`` is the run folder's own (carried over from the W&B logger's run name when a recipe switches
    loggers on the command line) writes to ``<root>/lightning_logs/version_N``, not ``<root>/<name>/version_N``.
    Explicit values are kept. Checkpoints are loaded with ``weights_only=True`` unless the recipe says otherwise.
    """
    trainer = config.get("trainer")
    if trainer is None:
        return
    root = default_root_dir(config)
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is None:
            continue
        if "save_dir" in init_args and init_args.get("save_dir") in (None, "", "."):
            init_args["save_dir"] = root
        versioned = str(logger.get("class_path", "")).endswith(VERSIONED_LOGGERS)
        if versioned and init_args.get("name") == os.path.basename(os.path.normpath(root)):
            init_args["name"] = "lightning_logs"
    defaults = {"ModelCheckpoint": "checkpoints", "ExportPolicy": "policy"}
    for callback in trainer.get("callbacks") or []:
        if not hasattr(callback, "get"):
            continue
        folder = next((name for kind, name in defaults.items()
                       if str(callback.get("class_path", "")).endswith(kind)), None)
        init_args = callback.get("init_args")
        if folder is not None and init_args is not None and not init_args.get("dirpath"):
            init_args["dirpath"] = os.path.join(root, folder)
    if "weights_only" in config and config.get("weights_only") is None:
        config["weights_only"] = True


# ----------------------------------------------------------------------------- parse errors
# jsonargparse reports a bad value deep in a recipe as an indented tree, e.g.
#     Parser key "model":
#       Does not validate against any of the Union subtypes
#       Subtypes: [...]
#       Errors:
#         - Problem with given class_path 'rlhf_lightning.RLHFModule':
#             Parser key "lr":
#               Expected a <class 'float'>. Got value: abc
#         - Expected a <class 'NoneType'>
#       Given value: ...
# explain_parse_error follows the informative branch down to the leaf and names the recipe key
# (``model.init_args.lr``), the problem and a fix; anything it does not recognise is passed on as is.

HINT = "run with --print_config to see the full recipe with every valid key"

_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_CLASS_PROBLEM = re.compile(r"^Problem with given class_path '([^']+)':\s*(.*)$")
_OPTION = re.compile(r"^Option '([^']+)' is not accepted")
_GROUP = re.compile(r"^Group '([^']+)' does not accept option '([^']+)'")
_SUBCOMMAND = re.compile(r"^Subcommand '[^']+' does not accept option '([^']+)'")
_EXPECTED = re.compile(r"^Expected an? (.+?)(?:\. Got value: (.*))?$")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (\S+)")
_REQUIRED = re.compile(r"^the following arguments are required: (.+)$")
_UNLOADABLE = re.compile(r"""^Unable to load config ['"](.*)['"]$""")
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Given value type:", "Given value:")


@dataclass(frozen=True)
class _Where:
    """A position in the recipe: the key shown to the user, and the class whose arguments it is in."""

    key: tuple[str, ...] = ()
    cls: Optional[str] = None     # class_path whose init_args we are in (None: the top-level parser)
    rel: tuple[str, ...] = ()     # key relative to that class (or to the top-level parser)

    def child(self, name: str) -> "_Where":
        parts = tuple(p for p in name.split(".") if p)
        return _Where(self.key + parts, self.cls, self.rel + parts)

    def init_args_of(self, class_path: str) -> "_Where":
        return _Where(self.key + ("init_args",), class_path, ())

    @property
    def name(self) -> str:
        return ".".join(self.key) or "recipe"


def _tree(text: str) -> list:
    """Lines of a message as ``(text, children)`` nodes by indentation."""
    root: list = []
    stack = [(-1, root)]
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        node = (line.strip(), [])
        while stack[-1][0] >= indent:
            stack.pop()
        stack[-1][1].append(node)
        stack.append((indent, node[1]))
    return root


def _flat(nodes: list) -> str:
    return " ".join(t + (" " + _flat(kids) if kids else "") for t, kids in nodes)


def _type_name(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = text.replace("NoneType", "null").replace("typing.", "")
    literal = re.fullmatch(r"Literal\[(.*)\]", text)
    return f"one of {literal.group(1)}" if literal else text


def _all_dests(parser) -> set[str]:
    dests = set()
    for action in getattr(parser, "_actions", []):
        if action.dest and action.dest != "==SUPPRESS==":
            dests.add(action.dest)
        for name in ("_actions", "_group_actions"):
            for sub in getattr(action, name, []) or []:
                dests.add(sub.dest)
    return dests


@lru_cache(maxsize=64)
def _class_dests(class_path: str) -> frozenset[str]:
    """Every key a class accepts in ``init_args`` (as jsonargparse sees its signature)."""
    from jsonargparse import ArgumentParser

    try:
        cls = import_object(class_path, "class_path")
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False, sub_configs=True)
        return frozenset(_all_dests(parser))
    except Exception:  # best effort: only used for suggestions
        return frozenset()


def _valid_names(where: _Where, parser) -> list[str]:
    dests = _class_dests(where.cls) if where.cls else _all_dests(parser)
    prefix = ".".join(where.rel)
    names = set()
    for dest in dests:
        if not prefix:
            names.add(dest.split(".")[0])
        elif dest.startswith(prefix + "."):
            names.add(dest[len(prefix) + 1:].split(".")[0])
    return sorted(n for n in names if n not in {"help", "__default_config__"})


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'? ({HINT})"
    if valid and len(valid) <= 15:
        return f"valid keys here: {', '.join(valid)}"
    return HINT


def _unknown_key(where: _Where, option: str, parser) -> RecipeError:
    """``option`` (maybe dotted, e.g. ``polcy.path``) is not accepted at ``where``: name its first bad part."""
    for part in [p for p in option.split(".") if p]:
        valid = _valid_names(where, parser)
        child = where.child(part)
        if part not in valid or not valid:
            if where.cls and not where.rel:
                owner = f" (not an argument of {where.cls})"
            else:
                owner = f" in {where.name}" if where.key else " at the top level"
            return RecipeError(child.name, f"unknown key '{part}'{owner}", _suggest(part, valid))
        where = child
    return RecipeError(where.name, "this key is not accepted", HINT)


def _bad_class(where: _Where, class_path: str, detail: str) -> RecipeError:
    fix = "check the spelling and that the module can be imported (PYTHONPATH)"
    module, _, name = class_path.rpartition(".")
    try:
        names = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            fix = f"did you mean '{module}.{close[0]}'?"
    except Exception:
        pass
    return RecipeError(where.child("class_path").name, f"cannot import '{class_path}': {detail}", fix)


def _wrong_type(where: _Where, kind: str, got: str) -> RecipeError:
    fix = f"set {where.name} to {kind}" if kind.startswith("one of") else f"set {where.name} to a value of type {kind}"
    return RecipeError(where.name, f"expected {kind}{got}", fix)


def _leaf(text: str, kids: list, where: _Where, parser, given: Optional[str] = None) -> RecipeError:
    if m := _OPTION.match(text):
        return _unknown_key(where, m.group(1), parser)
    if m := _SUBCOMMAND.match(text):
        return _unknown_key(where, m.group(1), parser)
    if m := _GROUP.match(text):
        return _unknown_key(where, f"{m.group(1)}.{m.group(2)}", parser)
    if m := _EXPECTED.match(text):
        value = m.group(2) if m.group(2) is not None else given
        got = f", got '{value}'" if value is not None else ""
        return _wrong_type(where, _type_name(m.group(1)), got)
    if m := _REQUIRED.match(text):
        missing = where.child(m.group(1).split(",")[0].strip())
        return RecipeError(missing.name, "is required but not set", f"set {missing.name} in the recipe")
    if m := _UNRECOGNIZED.match(text):
        option = m.group(1).lstrip("-").split("=")[0]
        return _unknown_key(where, option, parser)
    if m := _UNLOADABLE.match(text):  # a string where a group of settings goes (jsonargparse tried it as a file)
        keys = _valid_names(where, parser)
        example = f"{where.key[-1]}: {{path: {m.group(1)}}}" if "path" in keys else f"{where.key[-1]}: {{key: value}}"
        shown = f" ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})" if keys else ""
        return RecipeError(where.name, f"takes a mapping of settings{shown}, got the string '{m.group(1)}'",
                           f"write it as `{example}`")
    detail = text + (" " + _flat(kids) if kids else "")
    return RecipeError(where.name, detail, HINT)


def _explain(nodes: list, where: _Where, parser) -> RecipeError:
    given = next((t[len("Given value:"):].strip() for t, _ in nodes if t.startswith("Given value:")), None)
    errors = next((kids for t, kids in nodes if t == "Errors:"), None)
    if errors is not None:  # a Union: follow the class_path branch, or list the expected types
        items = [(t[2:] if t.startswith("- ") else t, kids) for t, kids in errors]
        for text, kids in items:
            if m := _CLASS_PROBLEM.match(text):
                return _explain_class(m.group(1), m.group(2), kids, where, parser)
        kinds = [m.group(1) for t, _ in items if (m := _EXPECTED.match(t))]
        if kinds and len(kinds) == len(items):
            got = f", got '{given}'" if given is not None else ""
            return _wrong_type(where, " or ".join(_type_name(k) for k in kinds), got)
        useful = [(t, k) for t, k in items if not t.startswith(("Expected a <class 'NoneType'>", "Not a valid subclass"))]
        if useful:
            return _leaf(*useful[0], where, parser, given)
    for index, (text, kids) in enumerate(nodes):
        if text.startswith(_NOISE) or text == "Errors:":
            continue
        if m := _PARSER_KEY.match(text):
            inner = where.child(m.group(1))
            if m.group(2):
                return _leaf(m.group(2), kids, inner, parser, given)
            return _explain(kids or nodes[index + 1:], inner, parser)  # its problem may follow at the same depth
        if m := _CLASS_PROBLEM.match(text):
            return _explain_class(m.group(1), m.group(2), kids, where, parser)
        return _leaf(text, kids, where, parser, given)
    return RecipeError(where.name, "invalid value", HINT)


def _explain_class(class_path: str, rest: str, kids: list, where: _Where, parser) -> RecipeError:
    detail = (rest + " " + _flat(kids)).strip()
    first = kids[0][0] if kids else rest
    if first.startswith(("module ", "No module named", "Import path", "Unable to import", "cannot import")) or \
            "has no attribute" in first:
        return _bad_class(where, class_path, detail)
    return _explain(kids, where.init_args_of(class_path), parser) if kids else \
        RecipeError(where.name, f"{class_path}: {detail}", HINT)


def explain_parse_error(message: str, parser=None) -> RecipeError:
    """One :class:`RecipeError` (key, problem, fix) from a jsonargparse error message."""
    if message.startswith("Problems parsing config"):
        return RecipeError("recipe", " ".join(message.split()), "fix the YAML syntax at the line shown")
    try:
        return _explain(_tree(message), _Where(), parser)
    except Exception:  # never hide the original message behind a bug in this translation
        return RecipeError("recipe", " ".join(message.split()), HINT)


def _subcommand_parser(parser, args):
    action = getattr(parser, "_subcommands_action", None)
    if action is None:
        return parser
    names = action._name_parser_map
    chosen = next((a for a in (args or []) if isinstance(a, str) and a in names), None)
    return names.get(chosen or "fit", parser)


def find_recipe_error(error: BaseException) -> Optional[RecipeError]:
    """``error`` itself or the RecipeError it was raised from (``__cause__``/``__context__`` chain)."""
    seen, todo = set(), [error]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RecipeError):
            return current
        if isinstance(current, MisconfigurationException):  # Lightning refused a trainer setting
            return RecipeError("trainer", " ".join(str(current).split()),
                               "check the trainer settings (--print_config shows them)")
        todo += [current.__cause__, current.__context__]
    return None


COMMANDS = {"run": "fit", "evaluate": "validate"}
"""The library's commands that take recipe files first, and the LightningCLI subcommand each one runs."""


def translate_args(argv: Sequence[str]) -> list[str]:
    """``run R1.yaml [R2.yaml ...] [--key value ...]`` → ``fit --config R1.yaml --config R2.yaml ...``, and
    ``evaluate R1.yaml ...`` → ``validate --config R1.yaml ...`` (see :mod:`rlhf_lightning.evaluate`).

    Later recipes override earlier ones. Anything else is passed through.
    """
    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        return argv
    recipes = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            break
        recipes.append(arg)
    if not recipes:
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    for recipe in recipes:
        if not os.path.isfile(recipe):
            problem = "is a directory, not a recipe file" if os.path.isdir(recipe) else "does not exist"
            raise RecipeError("RECIPE", f"recipe file '{recipe}' {problem}",
                              "give the path of a recipe .yaml file, e.g. recipes/quickstart.yaml")
    for recipe in recipes:
        check_recipe_file(recipe)
    configs = [item for recipe in recipes for item in ("--config", recipe)]
    return [COMMANDS[argv[0]], *configs, *argv[1 + len(recipes):]]


def check_recipe_file(path: str) -> None:
    """A recipe file must be YAML holding a mapping of keys: its own error (with the file, line and column)
    otherwise, before the parser's less telling one."""
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError("RECIPE", f"'{path}' is not valid YAML: {problem}{where}",
                          "fix the indentation or quoting there") from None
    if content is None:
        raise RecipeError("RECIPE", f"'{path}' is empty", "a recipe sets model:, data:, trainer:, ... (see "
                          "recipes/quickstart.yaml)")
    if not isinstance(content, dict):
        raise RecipeError("RECIPE", f"'{path}' holds a {type(content).__name__}, not a mapping of keys",
                          "a recipe is a mapping: model: ..., data: ..., trainer: ... (see recipes/quickstart.yaml)")


def recipe_dirs(args: Sequence[str]) -> list[str]:
    """Folders of the ``--config`` files, so a module next to a recipe imports by its name."""
    dirs = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isfile(path) and folder not in dirs:
            dirs.append(folder)
    return dirs


def recipe_classes(recipes: Sequence[str], overrides: Sequence[str]) -> RLHFCLI:
    """The recipes' classes, parsed and checked as ``run`` parses them, instantiated, nothing run (used by
    ``generate``); a class next to a recipe imports by its name, as in ``run``."""
    args = translate_args(["run", *recipes, *overrides])
    for folder in recipe_dirs(args):
        if folder not in sys.path:
            sys.path.append(folder)
    return RLHFCLI(args=args[1:], run=False)  # without a subcommand: run=False parses the recipe alone


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point; bad input ends in one clear message and exit code 2, a run stopped by a non-finite
    reward, loss or gradient in one message and exit code 3."""
    os.environ.setdefault("WANDB_SILENT", "true")
    argv = sys.argv[1:] if argv is None else argv
    answer_help(argv)
    if argv[0] in NOT_OFFERED:
        print(not_offered_message(argv[0]), file=sys.stderr)
        raise SystemExit(2)
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    from rlhf_lightning.quiet import silence_known_noise

    silence_known_noise()  # the known irrelevant warnings of every run (see rlhf_lightning.quiet)
    try:
        if argv[0] == "generate":
            from rlhf_lightning.generate import main as generate

            generate(argv[1:], recipe_classes=recipe_classes)
            return
        args = translate_args(argv)
        for folder in recipe_dirs(args):
            if folder not in sys.path:
                sys.path.append(folder)
        RLHFCLI(args=args)
    except ArgumentError as error:  # a parser error not raised through RLHFCLI.parse_arguments
        print(f"rlhf-lightning: error in the recipe: {explain_parse_error(str(error))}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingStopped as error:  # a non-finite reward/loss/gradient, a policy beyond its limits, a signal
        print(f"rlhf-lightning: training stopped: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        print(f"rlhf-lightning: training stopped: {OutputNotWritten(Path(error.filename or '?'), error)}",
              file=sys.stderr)
        raise SystemExit(3) from None
    except Exception as error:
        # A RecipeError arrives as is from Lightning hooks (configure_model, datamodule setup: Lightning
        # tears the run down and re-raises it), but wrapped in a ValueError when a class's __init__
        # raises it while jsonargparse instantiates the recipe: look for it along the exception chain.
        recipe_error = find_recipe_error(error)
        if recipe_error is None:
            raise
        print(f"rlhf-lightning: error in the recipe: {recipe_error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
