"""`--model`: train mode, other batch sizes, and tensors the traced pass does not read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import mode_models
from weissi_cli.api import graph_checkpoint, rebalance_checkpoint
from weissi_cli.errors import ConsentError
from weissi_cli.structure.source import StructureSource

CODE = Path(mode_models.__file__)


def saved(name: str, folder: Path) -> Path:
    path = folder / f"{name}.pt"
    torch.save(mode_models.trained(name).state_dict(), path)
    return path


def source(name: str, shape: tuple[int, ...] = (4, 64)) -> StructureSource:
    return StructureSource(model=f"{CODE}:{name}", example_shapes=(shape,))


def relative(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).abs().max() / before.abs().max())


def run(name: str, path: Path, train: bool, rows: int = 300) -> list[torch.Tensor]:
    model = type(mode_models.trained(name))()
    model.load_state_dict(torch.load(path, weights_only=True))
    model.train(train)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(mode_models.pixels()[:rows])
    return list(out) if isinstance(out, tuple) else [out]


def test_graph_names_the_tensors_the_traced_forward_does_not_read(tmp_path: Path) -> None:
    structure = graph_checkpoint(saved("AuxNet", tmp_path), source("AuxNet")).structure
    reasons = {entry.name: entry.reason for entry in structure.unassigned}
    assert reasons["aux.weight"] == "not read by the traced graph (eval mode, input 4x64 float32)"
    assert reasons["aux.bias"].startswith("not read by the traced graph")
    assert reasons["fc3.bias"] == "in no scale symmetry of the graph"


def test_a_head_only_training_reads_is_refused_without_consent(tmp_path: Path) -> None:
    path = saved("AuxNet", tmp_path)
    output = tmp_path / "out.pt"
    with pytest.raises(ConsentError, match=r"does not read aux\.weight, aux\.bias.*--allow-unread"):
        rebalance_checkpoint(path, output, source("AuxNet"))
    assert not output.exists()


def test_a_head_only_training_reads_fails_the_train_mode_run(tmp_path: Path) -> None:
    """With consent, the run in train mode sees the auxiliary logits change: nothing is
    written. (The same rescaling moves them by about 40% of their largest.)"""
    path = saved("AuxNet", tmp_path)
    output = tmp_path / "out.pt"
    report = rebalance_checkpoint(path, output, source("AuxNet"), allow_unread=True)
    assert not report.written
    assert not output.exists()
    model_check = report.verification.chains[-1]
    assert model_check.method == "model"
    assert not model_check.passed
    assert model_check.max_rel_diff is not None
    assert model_check.max_rel_diff > 0.05
    assert "train mode" in model_check.detail


def test_a_branch_only_batches_take_fails_the_second_batch_size(tmp_path: Path) -> None:
    path = saved("BatchDependent", tmp_path)
    output = tmp_path / "out.pt"
    with pytest.raises(ConsentError, match="skip.weight"):
        rebalance_checkpoint(path, output, source("BatchDependent", (1, 64)))
    report = rebalance_checkpoint(
        path, output, source("BatchDependent", (1, 64)), allow_unread=True
    )
    assert not report.written
    assert not output.exists()
    model_check = report.verification.chains[-1]
    assert not model_check.passed
    assert "1 of 2x64" in model_check.detail


def test_dropout_and_batch_norm_pass_in_both_modes(tmp_path: Path) -> None:
    path = saved("DropoutNorm", tmp_path)
    output = tmp_path / "out.pt"
    report = rebalance_checkpoint(path, output, source("DropoutNorm", (8, 64)))
    assert report.written, report.verification.chains[-1].detail
    assert report.verification.level == "real_network"
    assert not report.verification.caveats
    detail = report.verification.chains[-1].detail
    assert "eval mode: 4 of 8x64, 1 of 1x64, 1 of 9x64" in detail
    assert "train mode (dropout and other randomness seeded alike for both files): " in detail
    for train in (False, True):
        for old, new in zip(
            run("DropoutNorm", path, train), run("DropoutNorm", output, train), strict=True
        ):
            assert relative(old, new) < 1e-5


def test_with_consent_an_unread_head_stays_in_the_verdict(tmp_path: Path) -> None:
    path = saved("Unused", tmp_path)
    output = tmp_path / "out.pt"
    report = rebalance_checkpoint(path, output, source("Unused"), allow_unread=True)
    assert report.written
    assert report.verification.level == "real_network"
    (caveat,) = report.verification.caveats
    assert caveat.startswith(
        "the traced forward pass (eval mode, input 4x64 float32) does not read spare.weight, "
        "spare.bias, so nothing proves how they relate to the rescaled tensors"
    )
