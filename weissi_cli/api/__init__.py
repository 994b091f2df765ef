"""The library interface: one function per command, returning its payload."""

from __future__ import annotations

from weissi_cli.api.graph import graph_checkpoint
from weissi_cli.api.inspect import inspect_checkpoint
from weissi_cli.api.rebalance import rebalance_checkpoint

__all__ = ["graph_checkpoint", "inspect_checkpoint", "rebalance_checkpoint"]
