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
    # With fp16_headroom: how many non-zero values of a tensor may flush to zero in a 16-bit
    # dtype and still pass. Below 1, a fraction of the tensor's values; from 1 on, a count.
    # Overflow never passes.
    fp16_tolerance: float = 0.0

    def allowed_flushes(self, values: int) -> int:
        """How many of a tensor's `values` may flush to zero under `fp16_tolerance`."""
        if self.fp16_tolerance >= 1:
            return int(self.fp16_tolerance)
        return math.floor(self.fp16_tolerance * values)

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
        if table is None:  # a pyproject.toml without settings for weissi: the defaults
            return CheckSettings(), None
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
        elif name == "fp16_tolerance":
            try:
                values[name] = parse_tolerance(value)
            except ValueError as error:
                raise InputError(f"{path}: [tool.weissi.check] {key}: {error}") from None
        else:
            values[name] = _threshold(path, key, value)
    return CheckSettings(**values), path


def parse_tolerance(value: object) -> float:
    """A flush tolerance: a fraction below 1 (0.0001, or "0.01%"), or a whole count from 1
    on (10); ValueError saying what is accepted otherwise."""
    accepted = (
        'a fraction below 1 (0.0001, or "0.01%") or a whole count of values (10), '
        f"not {value!r:.40}"
    )
    number: float
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"the tolerance must be {accepted}") from None
        if text.endswith("%") and not number < 1:
            raise ValueError(f"a percentage must be below 100%: {accepted}")
    elif not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
    else:
        raise ValueError(f"the tolerance must be {accepted}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"the tolerance must be {accepted}")
    if number >= 1 and not number.is_integer():
        raise ValueError(f"a tolerance from 1 on counts values, so it must be whole: {accepted}")
    return number


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
