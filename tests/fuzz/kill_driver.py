"""Run the CLI with one kill armed, for ``test_fuzz_kills.py``: ``python kill_driver.py FAULT CLI-ARGS...``.

FAULT is one of
  ``save:N``        SIGKILL halfway through writing the N-th checkpoint (half its bytes are on disk),
  ``export``        SIGKILL halfway through writing the exported weights.
"""

from __future__ import annotations

import io
import os
import signal
import sys


def _die_halfway(write_half) -> None:
    write_half()
    os.kill(os.getpid(), signal.SIGKILL)


def arm_save(n: int) -> None:
    import torch

    real_save, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] != n:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()

        def write_half():
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        _die_halfway(write_half)

    torch.save = save


def arm_export() -> None:
    import transformers.modeling_utils as modeling

    real = modeling.safe_save_file

    def save_file(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        data = open(filename, "rb").read()

        def write_half():
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
        _die_halfway(write_half)

    modeling.safe_save_file = save_file


def main() -> None:
    fault, args = sys.argv[1], sys.argv[2:]
    kind, *params = fault.split(":")
    if kind == "save":
        arm_save(int(params[0]))
    elif kind == "export":
        arm_export()
    else:
        raise SystemExit(f"unknown fault {fault}")
    from rlhf_lightning.cli import main as cli

    cli(args)


if __name__ == "__main__":
    main()
