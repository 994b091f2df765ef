"""Thresholds for `check` from the nearest pyproject.toml's [tool.weissi.check] table."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError


@dataclass(frozen=True)
class CheckSettings:
    """What `check` enforces; None: not checked. Non-finite values always fail."""

    max_imbalance: float | None = None
    max_l2_ratio: float | None = None
    max_abs: float | None = None
    max_norm: float | None = None
    no_dead_units: bool = False
    fp16_headroom: bool = False

    def merged(self, flags: dict[str, Any]) -> CheckSettings:
        """These settings with every flag that was given (not None) taking precedence."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({key: value for key, value in flags.items() if value is not None})
        return CheckSettings(**values)


def nearest_pyproject(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_check_settings(start: Path) -> tuple[CheckSettings, Path | None]:
    """The [tool.weissi.check] table of the nearest pyproject.toml (keys with dashes or
    underscores), or defaults when there is none."""
    path = nearest_pyproject(start)
    if path is None:
        return CheckSettings(), None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"{path}: cannot read [tool.weissi.check] ({error})") from None
    table = document.get("tool", {}).get("weissi", {}).get("check")
    if table is None:
        return CheckSettings(), path
    if not isinstance(table, dict):
        raise InputError(f"{path}: [tool.weissi.check] must be a table")
    known = {f.name: f for f in fields(CheckSettings)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            names = ", ".join(n.replace("_", "-") for n in known)
            raise InputError(
                f"{path}: [tool.weissi.check] has unknown key {key!r} (known: {names})"
            )
        boolean = name in ("no_dead_units", "fp16_headroom")
        if boolean and not isinstance(value, bool):
            raise InputError(f"{path}: [tool.weissi.check] {key} must be true or false")
        if not boolean and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise InputError(f"{path}: [tool.weissi.check] {key} must be a positive number")
        values[name] = float(value) if not boolean else value
    return CheckSettings(**values), path
