"""The weissi CLI in a process of its own, with one fault injected where a test asks.

    python -m tests.fault_driver FAULT [FAULT ...] -- weissi arguments

FAULT is one of
    step:NAME:SIGNAL     at the commit step NAME (weissi_cli.output_files), send SIGNAL to this
                         process (KILL, TERM or INT)
    rename:K             SIGKILL just before the K-th os.rename / os.replace of the run
    written:SIGNAL       send SIGNAL once the first safetensors file of the output is written
    rescaled:SIGNAL      send SIGNAL as soon as rebalance has the pending output in hand
    torch-write:SIGNAL   send SIGNAL halfway through the writes of torch.save
    no-exchange          make renameat2's RENAME_EXCHANGE unavailable (the rename-aside path)

A signal is sent with os.kill, so it arrives as a real one would: SIGKILL ends the process at
once; SIGTERM and SIGINT run whatever handlers the CLI installed.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Any

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


def _send(name: str) -> None:
    os.kill(os.getpid(), SIGNALS[name])


def _at_step(name: str, signal_name: str) -> None:
    from weissi_cli import output_files

    def hook(step: str, destination: object) -> None:
        if step == name:
            _send(signal_name)

    output_files.step_hook = hook


def _at_rename(count: int) -> None:
    calls = [0]
    for function in ("rename", "replace"):
        real = getattr(os, function)

        def counted(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == count:
                _send("KILL")
            return _real(*args, **kwargs)

        setattr(os, function, counted)


def _after_first_write(signal_name: str) -> None:
    from weissi_cli.writers import safetensors

    real = safetensors.write_safetensors_copy

    def written(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        _send(signal_name)

    safetensors.write_safetensors_copy = written  # type: ignore[assignment]


def _after_write_rescaled(signal_name: str) -> None:
    from weissi_cli.api import rebalance

    real = rebalance.write_rescaled

    def rescaled(*args: Any, **kwargs: Any) -> Any:
        pending = real(*args, **kwargs)
        _send(signal_name)
        return pending

    rebalance.write_rescaled = rescaled  # type: ignore[assignment]


def _inside_torch_save(signal_name: str) -> None:
    import torch

    real = torch.save

    class Halfway:
        """A file that torch writes to, sending the signal at its third write."""

        def __init__(self, handle: Any) -> None:
            self.handle, self.writes = handle, 0

        def write(self, data: Any) -> int:
            self.writes += 1
            if self.writes == 3:
                _send(signal_name)
            return int(self.handle.write(data))

        def flush(self) -> None:
            self.handle.flush()

    def save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        real(obj, Halfway(handle), *args, **kwargs)

    torch.save = save


def _without_exchange() -> None:
    from weissi_cli import output_files

    real = output_files.renameat2

    def renameat2(source: Any, target: Any, flags: int) -> None:
        if flags & output_files.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE made unavailable by the test")
        real(source, target, flags)

    output_files.renameat2 = renameat2


def main() -> None:
    separator = sys.argv.index("--")
    for fault in sys.argv[1:separator]:
        kind, _, argument = fault.partition(":")
        if kind == "step":
            name, _, signal_name = argument.partition(":")
            _at_step(name, signal_name)
        elif kind == "rename":
            _at_rename(int(argument))
        elif kind == "written":
            _after_first_write(argument)
        elif kind == "rescaled":
            _after_write_rescaled(argument)
        elif kind == "torch-write":
            _inside_torch_save(argument)
        elif kind == "no-exchange":
            _without_exchange()
        else:
            raise SystemExit(f"unknown fault {fault!r}")
    sys.argv = ["weissi", *sys.argv[separator + 1 :]]
    from weissi_cli.cli.app import main as weissi_main

    weissi_main()


if __name__ == "__main__":
    main()
