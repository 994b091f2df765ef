"""The library's surface: what weissi_cli.api exports, documented and typed; paths as `str` or
any os.PathLike; the examples of docs/api.md run as written."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import weissi_cli.api as api

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_checkpoints"


class Location(os.PathLike[str]):
    """A path-like that is not a pathlib.Path (as a user's own type would be)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __fspath__(self) -> str:
        return self.path


def test_everything_exported_resolves() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None
    for name in ("CheckSettings", "StructureSource", "InspectSettings", "TrendSettings"):
        assert name in api.__all__
    assert "trend_checkpoints" in api.__all__
    with pytest.raises(AttributeError):
        _ = api.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", api.__all__)
def test_every_export_is_documented_and_typed(name: str) -> None:
    exported: Any = getattr(api, name)
    if inspect.isclass(exported):
        assert exported.__doc__, name
        assert not exported.__doc__.startswith(f"{name}("), name  # not dataclass' own
        members = [
            member
            for key, member in vars(exported).items()
            if not key.startswith("_") and inspect.isfunction(member)
        ]
    else:
        members = [exported]
    for function in members:
        assert inspect.getdoc(function), f"{name}.{function.__name__} has no docstring"
        signature = inspect.signature(function)
        for parameter in signature.parameters.values():
            if parameter.name != "self":
                assert parameter.annotation is not inspect.Parameter.empty, (
                    f"{function.__qualname__}({parameter.name}) has no type"
                )
        assert signature.return_annotation is not inspect.Signature.empty


def test_the_package_is_marked_typed() -> None:
    assert (ROOT / "weissi_cli" / "py.typed").is_file()
    assert 'weissi_cli = ["py.typed"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("kind", [str, Path, Location], ids=["str", "Path", "PathLike"])
def test_paths_may_be_str_or_pathlike(kind: Any, tmp_path: Path) -> None:
    mlp = kind(SAMPLES / "mlp_digits.safetensors")
    shifted = kind(SAMPLES / "mlp_digits_shifted.safetensors")
    assert api.inspect_checkpoint(mlp).chains
    assert api.graph_checkpoint(mlp).structure.chains
    assert api.check_checkpoint(mlp).passed
    assert len(api.check_checkpoints([mlp, shifted]).reports) == 2
    assert api.diff_checkpoints(mlp, shifted).same_function
    assert len(api.trend_checkpoints([mlp, shifted], order="given").points) == 2
    output = kind(tmp_path / "balanced.safetensors")
    report = api.rebalance_checkpoint(mlp, output, assume_relu=True)
    assert report.written
    assert Path(os.fspath(output)).is_file()


def test_a_spec_may_be_a_str_path(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'version = 1\n[[chain]]\nactivation = "relu"\nlayers = ["net.0", "net.2", "net.4"]\n'
    )
    report = api.inspect_checkpoint(str(SAMPLES / "mlp_digits.safetensors"), spec=str(spec))
    assert report.chains[0].chain.origin == "spec"


def test_a_settings_type_from_the_api_drives_check() -> None:
    run = api.check_checkpoints(
        [str(SAMPLES / "mlp_digits.safetensors")], api.CheckSettings(max_imbalance=1.5)
    )
    assert run.exit_code == 1
    failed = [r for r in run.reports[0].results if r.verdict == "fail"]
    assert [r.rule for r in failed] == ["max-imbalance"]
    assert failed[0].fix.startswith("`weissi rebalance ")


def test_the_api_docs_run_as_written(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """Every ```python block of docs/api.md, in the repository folder (its paths are the
    samples'); the pandas example prints the tables it promises."""
    pytest.importorskip("pandas")
    monkeypatch.chdir(ROOT)
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), {})  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out
    assert "rebalanced_norm" in printed  # the layers' frame
    assert "net.0.weight" in printed  # the tensors' frame
    assert "up→down" in printed  # the kinds pivoted by block
    assert printed.rstrip().endswith("0")  # the gate's exit code


@pytest.mark.slow
def test_a_user_program_type_checks_against_the_api(tmp_path: Path) -> None:
    """mypy --strict on a program using the API with str and PathLike paths: the exports
    are typed (py.typed), so mypy checks the calls rather than taking them as Any."""
    program = tmp_path / "use.py"
    program.write_text(
        "from pathlib import Path\n"
        "from weissi_cli.api import CheckSettings, check_checkpoints, inspect_checkpoint\n"
        "report = inspect_checkpoint('model.safetensors', lambda1=0.5)\n"
        "slack: float | None = report.chains[0].l2_slack\n"
        "run = check_checkpoints([Path('a.safetensors'), 'b'], CheckSettings(max_abs=1.0))\n"
        "code: int = run.exit_code\n"
        "wrong: str = run.exit_code\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(program)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout
    assert (
        'use.py:7: error: Incompatible types in assignment (expression has type "int"'
        in (errors[0])
    )
