"""Fixtures of the fuzz suite: a finished run that every case must leave whole (see ``tests/faults.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults import finished_run_args, previous_run_folder
from rlhf_lightning.cli import main


@pytest.fixture(scope="session")
def finished_run(tiny_model, tiny_data, tmp_path_factory) -> Path:
    """A finished tiny run (2 rollout batches): summary, samples, evaluation history, checkpoints, policy/."""
    root = tmp_path_factory.mktemp("finished") / "run"
    main(finished_run_args(tiny_model, tiny_data, root))
    return root


@pytest.fixture
def run_root(finished_run, tmp_path) -> Path:
    """A copy of :func:`finished_run` for one case to run into (with ``--overwrite true``)."""
    return previous_run_folder(finished_run, tmp_path)
