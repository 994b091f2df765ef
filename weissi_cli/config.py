"""Thresholds for `check` from the nearest pyproject.toml's [tool.weissi.check] table."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError
from weissi_cli.io.documents import read_toml


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
    table: Any = read_toml(path, "pyproject.toml")
    for depth, key in enumerate(("tool", "weissi", "check")):
        table = table.get(key)
        if table is None:
            return CheckSettings(), path
        if not isinstance(table, dict):
            name = ".".join(("tool", "weissi", "check")[: depth + 1])
            raise InputError(f"{path}: [{name}] must be a table, not {type(table).__name__}")
    known = {f.name: f for f in fields(CheckSettings)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            names = ", ".join(n.replace("_", "-") for n in known)
            raise InputError(
                f"{path}: [tool.weissi.check] has unknown key {key!r} (known: {names})"
            )
        if name in ("no_dead_units", "fp16_headroom"):
            if not isinstance(value, bool):
                raise InputError(f"{path}: [tool.weissi.check] {key} must be true or false")
            values[name] = value
        else:
            values[name] = _threshold(path, key, value)
    return CheckSettings(**values), path


def _threshold(path: Path, key: str, value: Any) -> float:
    """A threshold as a finite positive float (an integer beyond float's range is refused)."""
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and number > 0:
            return number
    raise InputError(
        f"{path}: [tool.weissi.check] {key} must be a finite positive number, not {value!r:.40}"
    )
