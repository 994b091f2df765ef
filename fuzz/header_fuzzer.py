"""Coverage-guided fuzzing (atheris) of the safetensors header parser.

Every input must be parsed or refused with InputError; anything else is a finding.
Usage: python fuzz/header_fuzzer.py [corpus dir] -max_total_time=600
The corpus it grows is kept in tests/io/fuzz_corpus as regression inputs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from weissi_cli.errors import InputError
    from weissi_cli.io.safetensors_file import parse_header

NAME = Path("<fuzz input>")


def one_input(data: bytes) -> None:
    descriptor = os.memfd_create("fuzz")
    try:
        os.write(descriptor, data)
        with contextlib.suppress(InputError):
            parse_header(NAME, descriptor)
    finally:
        os.close(descriptor)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
