"""weissi: inspect and rebalance the weight scale of trained neural-network checkpoints."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
