"""The library interface: one function per command, returning its payload."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weissi_cli.api.check import check_checkpoint
    from weissi_cli.api.diff import diff_checkpoints
    from weissi_cli.api.graph import graph_checkpoint
    from weissi_cli.api.inspect import inspect_checkpoint
    from weissi_cli.api.rebalance import rebalance_checkpoint

__all__ = [
    "check_checkpoint",
    "diff_checkpoints",
    "graph_checkpoint",
    "inspect_checkpoint",
    "rebalance_checkpoint",
]


def __getattr__(name: str) -> Any:
    # Lazy, so that a command imports only the modules it runs.
    if name == "graph_checkpoint":
        from weissi_cli.api.graph import graph_checkpoint

        return graph_checkpoint
    if name == "inspect_checkpoint":
        from weissi_cli.api.inspect import inspect_checkpoint

        return inspect_checkpoint
    if name == "rebalance_checkpoint":
        from weissi_cli.api.rebalance import rebalance_checkpoint

        return rebalance_checkpoint
    if name == "check_checkpoint":
        from weissi_cli.api.check import check_checkpoint

        return check_checkpoint
    if name == "diff_checkpoints":
        from weissi_cli.api.diff import diff_checkpoints

        return diff_checkpoints
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
