"""Running both models in ONNX Runtime: one at a time, with page-aligned external data mapped
from the files rather than copied into memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import weissi_cli.api.rebalance
from tests.onnx_models import large_mlp, run
from weissi_cli.api import rebalance_checkpoint
from weissi_cli.io import open_checkpoint
from weissi_cli.io.onnx_file import OnnxCheckpoint
from weissi_cli.verify_onnx import _session, private_bytes

WIDTH = 4096  # two 64 MiB matrices and a thin one, at 64 MiB-aligned offsets


def _rss_anon() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return large_mlp(tmp_path_factory.mktemp("external"), hidden=WIDTH, width=WIDTH)


def test_aligned_external_data_costs_no_private_memory(external: Path) -> None:
    with open_checkpoint(external) as checkpoint:
        assert isinstance(checkpoint, OnnxCheckpoint)
        assert private_bytes(checkpoint.model) == 0
        weights = sum(i.nbytes for i in checkpoint.model.initializers)
    assert weights > 128 * 2**20
    feed = {"x": np.random.default_rng(0).standard_normal((2, WIDTH), dtype=np.float32)}
    import onnxruntime

    before = _rss_anon()
    session = _session(onnxruntime, external)
    outputs = session.run(None, feed)
    grown = _rss_anon() - before
    assert outputs[0].shape == (2, 16)
    # the weights are read from the mapped data file: the process grows by ONNX Runtime's
    # own buffers (a few MiB), not by the 128 MiB of weights
    assert grown < 24 * 2**20, f"RssAnon grew by {grown / 2**20:.1f} MiB"
    # the same function as ONNX Runtime with its defaults (which packs the weights first,
    # so the sums may be taken in another order)
    np.testing.assert_allclose(outputs[0].ravel(), run(external, [feed]), rtol=1e-5, atol=1e-6)


def test_private_bytes_counts_inline_and_unaligned_initializers(tmp_path: Path) -> None:
    source = large_mlp(tmp_path / "aligned", hidden=64, width=64)
    model = onnx.load(source, load_external_data=False)
    data = (source.parent / "model.onnx.data").read_bytes()
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    (shifted / "model.onnx.data").write_bytes(b"\0" * 8 + data)
    inline = onnx.helper.make_tensor("unused", onnx.TensorProto.FLOAT, [10], np.ones(10))
    model.graph.initializer.append(inline)
    for initializer in model.graph.initializer:
        for entry in initializer.external_data:
            if entry.key == "offset":
                entry.value = str(int(entry.value) + 8)
    path = shifted / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with open_checkpoint(path) as checkpoint:
        assert isinstance(checkpoint, OnnxCheckpoint)
        every = sum(i.nbytes for i in checkpoint.model.initializers)
        assert private_bytes(checkpoint.model) == every  # nothing page-aligned
    with open_checkpoint(source) as checkpoint:
        assert isinstance(checkpoint, OnnxCheckpoint)
        assert private_bytes(checkpoint.model) == 0


def test_rebalance_asks_for_the_memory_onnxruntime_copies(
    external: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, int]] = []

    def fits(nbytes: int, copies: int) -> bool:
        asked.append((nbytes, copies))
        return True

    monkeypatch.setattr(weissi_cli.api.rebalance, "fits_in_memory", fits)
    output = tmp_path / "balanced" / "model.onnx"
    output.parent.mkdir()
    report = rebalance_checkpoint(external, output, scales="pow2")
    assert report.written
    assert report.group is not None
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    assert asked == [(0, 2)]  # mapped, not copied: one model at a time
    assert report.verification.level == "real_network"
    assert report.verification.max_abs_diff == 0.0
    feeds = [{"x": np.random.default_rng(1).standard_normal((3, WIDTH), dtype=np.float32)}]
    np.testing.assert_array_equal(run(external, feeds), run(output, feeds))


def test_a_model_that_does_not_fit_is_not_run(
    external: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weissi_cli.verify_onnx

    monkeypatch.setattr(weissi_cli.verify_onnx, "private_bytes", lambda model: 64 * 2**40)
    output = tmp_path / "balanced.onnx"
    report = rebalance_checkpoint(external, output, scales="pow2")
    assert report.written
    assert report.verification.level == "values_only"
    assert any("needs 65536.0 GiB of memory" in c for c in report.verification.caveats)
