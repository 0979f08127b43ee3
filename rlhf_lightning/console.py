"""Console entry point ``rlhf-lightning``: usage and ``--help`` without importing torch or Lightning."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from rlhf_lightning.usage import answer_help


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Print the usage at once for no arguments (exit code 2) or a bare ``-h``/``--help`` (exit code 0);
    anything else goes to :func:`rlhf_lightning.cli.main`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    answer_help(argv)
    from rlhf_lightning.cli import main as run

    run(argv)
