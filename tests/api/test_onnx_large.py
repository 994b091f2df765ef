"""A model over 2 GB (external data, generated): inspected and rebalanced, verified in
ONNX Runtime. About 45 s here and 4.3 GB written to the temporary folder; ONNX Runtime maps
the models' data rather than holding it (`-m "not slow"` leaves it out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.onnx_models import large_mlp
from weissi_cli.api import inspect_checkpoint, rebalance_checkpoint

pytestmark = pytest.mark.slow


def test_a_model_over_2_gb(tmp_path: Path) -> None:
    path = large_mlp(tmp_path / "large")
    data = path.parent / "model.onnx.data"
    assert data.stat().st_size > 2_000_000_000
    report = inspect_checkpoint(path)
    assert report.source.format == "onnx"
    assert report.group is not None
    assert len(report.group.symmetries) == 2
    balanced = tmp_path / "balanced" / "model.onnx"
    balanced.parent.mkdir()
    result = rebalance_checkpoint(path, balanced, scales="pow2")
    assert result.written
    assert result.group is not None
    assert result.group.l2_after is not None
    assert result.group.l2_after < result.group.l2_penalty
    assert result.verification.level == "real_network"
    assert result.verification.max_abs_diff == 0.0  # power-of-two scales: bit-identical
    assert (balanced.parent / "model.onnx.data").stat().st_size == data.stat().st_size
