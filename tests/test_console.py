"""The ``rlhf-lightning`` console: instant usage and help, and the LightningCLI commands it does not offer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlhf_lightning.cli import main
from rlhf_lightning.console import main as console_main


def test_help_lists_the_commands_and_where_the_options_are(capsys):
    with pytest.raises(SystemExit) as exit_info:
        console_main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for text in ("commands:", "  run ", "  fit ", "fit --help", "--model.help", "--print_config", "WinRateEvaluation"):
        assert text in shown, text
    with pytest.raises(SystemExit) as exit_info:
        console_main([])
    assert exit_info.value.code == 2 and "usage: rlhf-lightning run" in capsys.readouterr().out


def test_help_imports_neither_torch_nor_lightning():
    code = ("import sys\nfrom rlhf_lightning.console import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_package_names_still_import():
    import rlhf_lightning
    from rlhf_lightning import REBEL, RLHFModule

    assert RLHFModule.__module__ == "rlhf_lightning.module" and REBEL.__name__ == "REBEL"
    assert {"RLHFModule", "REBEL", "ModelConfig"} <= set(dir(rlhf_lightning))
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        rlhf_lightning.Missing  # noqa: B018


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_commands_without_a_loop_are_refused_in_one_message(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        console_main([command, "--config", "recipes/quickstart.yaml"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"'{command}' is not a command of rlhf-lightning" in err and "rlhf-lightning run RECIPE.yaml" in err
    with pytest.raises(SystemExit):
        main([command])
