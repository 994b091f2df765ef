"""What the CI integration tests share: the repository, the documented YAML, checkpoints to
check, and GitHub's expression syntax for the few forms the action uses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import mlp_state, write_safetensors

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "ci.md"


def yaml_blocks() -> list[str]:
    """The ```yaml blocks of docs/ci.md, as written."""
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)


def documented(marker: str) -> str:
    """The one documented YAML block holding `marker`."""
    found = [block for block in yaml_blocks() if marker in block]
    assert len(found) == 1, f"{len(found)} blocks of docs/ci.md hold {marker!r}"
    return found[0]


def write_checkpoints(folder: Path) -> dict[str, Path]:
    """A passing MLP and one whose weights hold NaN, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_safetensors(
        folder / "good.safetensors", mlp_state(sizes=(6, 8, 3), dtype=torch.float32, seed=1)
    )
    state = mlp_state(sizes=(6, 8, 3), dtype=torch.float32, seed=2)
    state["net.0.weight"][1, 2] = float("nan")
    bad = write_safetensors(folder / "bad.safetensors", state)
    return {"good": good, "bad": bad}


def environment(**extra: str) -> dict[str, str]:
    """This process's environment for a subprocess running the `weissi` of this tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def weissi_on_path(bin_folder: Path) -> Path:
    """A `weissi` command running this tree's code with this Python, first on a PATH."""
    bin_folder.mkdir(parents=True, exist_ok=True)
    script = bin_folder / "weissi"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m weissi_cli "$@"\n')
    script.chmod(0o755)
    return bin_folder


# --- GitHub expressions ------------------------------------------------------------------

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def context_value(name: str, context: Mapping[str, Any]) -> Any:
    """`inputs.paths`, `steps.check.outputs.junit`, `github.action_path`: a dotted lookup,
    '' for what is not set (as GitHub gives)."""
    value: Any = context
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    return value


def substitute(text: str, context: Mapping[str, Any]) -> str:
    """`${{ name }}` replaced by its value."""
    return _EXPRESSION.sub(lambda m: str(context_value(m.group(1), context)), text)


def condition(expression: str | None, context: Mapping[str, Any]) -> bool:
    """A step's `if:` of the forms the action uses: always(), comparisons of contexts with
    quoted strings, joined by && and ||."""
    if expression is None:
        return True
    text = _EXPRESSION.sub(lambda m: m.group(1), str(expression))
    tokens = re.findall(r"always\(\)|&&|\|\||==|!=|'[^']*'|[A-Za-z_][\w.-]*", text)
    assert "".join(tokens) == re.sub(r"\s+", "", text), f"unsupported expression: {expression}"
    python = []
    for token in tokens:
        if token == "always()":
            python.append("True")
        elif token in ("&&", "||"):
            python.append(" and " if token == "&&" else " or ")
        elif token in ("==", "!="):
            python.append(f" {token} ")
        elif token.startswith("'"):
            python.append(repr(token[1:-1]))
        else:
            python.append(repr(str(context_value(token, context))))
    return bool(eval("".join(python), {"__builtins__": {}}))  # noqa: S307 - our own tokens


def run_bash(script: str, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`script` as GitHub runs a `run:` step with `shell: bash`."""
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
