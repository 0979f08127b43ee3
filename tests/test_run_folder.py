"""One run, one folder: a new run does not replace another run's outputs unless told to, and two runs never
write into one folder at once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlhf_lightning.cli import main
from runs import tiny_run_args, without_evaluation


def _args(tiny_model, tiny_data, root, seed: int = 0) -> list[str]:
    args = tiny_run_args(tiny_model, tiny_data, root, batches=1)
    args[args.index("--seed_everything") + 1] = str(seed)
    return args


def _error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def test_a_second_run_does_not_replace_the_first(tiny_model, tiny_data, tmp_path, capsys):
    main(_args(tiny_model, tiny_data, tmp_path))
    first = (tmp_path / "summary.json").read_text()
    first_samples = len((tmp_path / "samples.jsonl").read_text().splitlines())
    err = _error(_args(tiny_model, tiny_data, tmp_path, seed=1), capsys)
    assert "rlhf-lightning: error in the recipe: trainer.default_root_dir:" in err
    assert "summary.json" in err and "--overwrite true" in err
    assert (tmp_path / "summary.json").read_text() == first  # nothing of the first run was lost

    main(_args(tiny_model, tiny_data, tmp_path, seed=1) + ["--overwrite", "true"])
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 1
    # the old run's sample rows were removed, not appended to
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == first_samples > 0
    assert not (tmp_path / ".run.lock").exists()  # released at the end


def test_a_folder_in_use_is_refused(tiny_model, tiny_data, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".run.lock").write_text(str(holder.pid))
        err = _error(without_evaluation(_args(tiny_model, tiny_data, tmp_path)), capsys)
        assert f"another run (process {holder.pid}) is writing into" in err, err
    finally:
        holder.kill()
        holder.wait()
    main(without_evaluation(_args(tiny_model, tiny_data, tmp_path)))  # a lock of an ended process is taken over
    assert (tmp_path / "summary.json").exists()
