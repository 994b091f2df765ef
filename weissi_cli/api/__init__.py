"""The library interface: one function per command, returning its payload, with the settings
and payload types they take and give.

    from weissi_cli.api import CheckSettings, check_checkpoints, inspect_checkpoint

    report = inspect_checkpoint("model.safetensors")
    run = check_checkpoints(["models/"], CheckSettings(max_imbalance=10))

Paths may be `str` or any `os.PathLike`. Every payload has `to_dict()` (the JSON the CLI
prints); errors are `WeissiError` subclasses carrying their exit code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weissi_cli.api.check import (
        check_checkpoint,
        check_checkpoints,
        expand_checkpoints,
        iter_checks,
    )
    from weissi_cli.api.diff import diff_checkpoints
    from weissi_cli.api.graph import graph_checkpoint
    from weissi_cli.api.inspect import inspect_checkpoint
    from weissi_cli.api.rebalance import rebalance_checkpoint
    from weissi_cli.api.trend import trend_checkpoints
    from weissi_cli.config import CheckSettings, load_check_settings
    from weissi_cli.errors import WeissiError
    from weissi_cli.report.check import CheckError, CheckReport, CheckRun, RuleResult
    from weissi_cli.report.diff import DiffReport
    from weissi_cli.report.graph import GraphReport
    from weissi_cli.report.inspect import InspectReport, InspectSettings
    from weissi_cli.report.rebalance import RebalanceReport
    from weissi_cli.report.trend import TrendReport, TrendSettings
    from weissi_cli.structure.source import StructureSource

# Where each name lives: imported when first used, so that a command loads only what it runs.
_EXPORTS = {
    "check_checkpoint": "weissi_cli.api.check",
    "check_checkpoints": "weissi_cli.api.check",
    "expand_checkpoints": "weissi_cli.api.check",
    "iter_checks": "weissi_cli.api.check",
    "diff_checkpoints": "weissi_cli.api.diff",
    "graph_checkpoint": "weissi_cli.api.graph",
    "inspect_checkpoint": "weissi_cli.api.inspect",
    "rebalance_checkpoint": "weissi_cli.api.rebalance",
    "trend_checkpoints": "weissi_cli.api.trend",
    "CheckSettings": "weissi_cli.config",
    "load_check_settings": "weissi_cli.config",
    "StructureSource": "weissi_cli.structure.source",
    "InspectSettings": "weissi_cli.report.inspect",
    "TrendSettings": "weissi_cli.report.trend",
    "CheckReport": "weissi_cli.report.check",
    "CheckRun": "weissi_cli.report.check",
    "CheckError": "weissi_cli.report.check",
    "RuleResult": "weissi_cli.report.check",
    "DiffReport": "weissi_cli.report.diff",
    "GraphReport": "weissi_cli.report.graph",
    "InspectReport": "weissi_cli.report.inspect",
    "RebalanceReport": "weissi_cli.report.rebalance",
    "TrendReport": "weissi_cli.report.trend",
    "WeissiError": "weissi_cli.errors",
}

__all__ = [
    "CheckError",
    "CheckReport",
    "CheckRun",
    "CheckSettings",
    "DiffReport",
    "GraphReport",
    "InspectReport",
    "InspectSettings",
    "RebalanceReport",
    "RuleResult",
    "StructureSource",
    "TrendReport",
    "TrendSettings",
    "WeissiError",
    "check_checkpoint",
    "check_checkpoints",
    "diff_checkpoints",
    "expand_checkpoints",
    "graph_checkpoint",
    "inspect_checkpoint",
    "iter_checks",
    "load_check_settings",
    "rebalance_checkpoint",
    "trend_checkpoints",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
