"""The README: short, opening with the commands CI runs, every link resolving."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_at_most_10_kib() -> None:
    assert len(README.read_bytes()) <= 10 * 1024


def test_the_readme_opens_with_the_install_and_test_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line for line in ci.splitlines() if "python -m pytest" in line)
    run_command = (
        "pip install torch==2.13.0 -e . && weissi inspect sample_checkpoints/mlp_digits.safetensors"
    )
    assert run_command in first_block.splitlines()
    assert test_command in first_block.splitlines()
    assert (ROOT / "sample_checkpoints" / "mlp_digits.safetensors").is_file()


def test_every_relative_link_in_the_readme_resolves() -> None:
    links = LINK.findall(README.read_text(encoding="utf-8"))
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local
    missing = [link for link in local if not (ROOT / link.split("#")[0]).exists()]
    assert missing == []
