"""`--model FILE.py:NAME`: a state dict from a training script gets its exact structure from
the model's own code, and rebalance runs that code on both files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import trained_models as trained
from weissi_cli.api import graph_checkpoint, rebalance_checkpoint
from weissi_cli.errors import InputError, UsageError
from weissi_cli.structure.source import StructureSource

TRAINED = Path(trained.__file__)


def source(name: str, *shapes: tuple[int, ...]) -> StructureSource:
    return StructureSource(model=f"{TRAINED}:{name}", example_shapes=shapes)


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, trained.TwoHeadPReLU]:
    model = trained.two_head_prelu()
    path = tmp_path_factory.mktemp("two_heads") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def outputs(model: torch.nn.Module, path: Path) -> torch.Tensor:
    model.load_state_dict(load_file(str(path)))
    images, _ = trained.digits()
    with torch.no_grad():
        return torch.cat([part.flatten() for part in model(images[-300:])])


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).abs().max() / before.abs().max())


def test_the_model_code_gives_the_two_heads_and_leaves_the_slopes(
    two_heads: tuple[Path, trained.TwoHeadPReLU],
) -> None:
    path, _ = two_heads
    structure = graph_checkpoint(path, source("TwoHeadPReLU", (1, 1, 8, 8))).structure
    assert not structure.is_assumed
    last = next(s for s in structure.symmetries if s.id == "conv3")
    assert {(m.tensor, m.axis, m.exponent) for m in last.members} == {
        ("conv3.weight", 0, 1),
        ("conv3.bias", 0, 1),
        ("conv4_1.weight", 1, -1),
        ("conv4_2.weight", 1, -1),
    }
    claimed = {m.tensor for s in structure.symmetries for m in s.members}
    assert not claimed & {"prelu1.weight", "prelu2.weight", "prelu3.weight"}


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_rebalance_runs_the_model_code_on_both_files(
    two_heads: tuple[Path, trained.TwoHeadPReLU], tmp_path: Path, granularity: str
) -> None:
    path, model = two_heads
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(
        path, output, source("TwoHeadPReLU", (1, 1, 8, 8)), granularity=granularity
    )
    assert report.written
    assert report.verification.level == "real_network"
    assert report.verification.chains[-1].method == "model"
    assert report.group is not None
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    changed = [
        name
        for name, value in load_file(str(output)).items()
        if not torch.equal(value, load_file(str(path))[name])
    ]
    assert {"conv1.weight", "conv3.weight", "conv4_1.weight", "conv4_2.weight"} <= set(changed)
    assert not {"prelu1.weight", "prelu2.weight", "prelu3.weight"} & set(changed)
    assert relative_change(outputs(model, path), outputs(model, output)) < 1e-5


def test_a_flatten_the_graph_proves_is_rebalanced_per_channel(tmp_path: Path) -> None:
    """A channel-last flatten: the traced graph says which inputs each channel feeds."""
    model = trained.flatten_net("channel-last", batch_norm=False)
    path = tmp_path / "flatten.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    code = tmp_path / "net.py"
    code.write_text(
        "from tests.trained_models import FlattenNet\n\n\n"
        "def channel_last():\n    return FlattenNet('channel-last', batch_norm=False)\n"
    )
    structure_source = StructureSource(model=f"{code}:channel_last", example_shapes=((1, 1, 8, 8),))
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(path, output, structure_source, granularity="channel")
    assert report.verification.level == "real_network"
    images, _ = trained.digits()
    with torch.no_grad():
        before = model(images[-300:])
        model.load_state_dict(load_file(str(output)))
        after = model(images[-300:])
    assert relative_change(before, after) < 1e-5


def test_model_code_problems_are_bad_input(tmp_path: Path, two_heads: tuple[Path, object]) -> None:
    path, _ = two_heads
    with pytest.raises(UsageError, match="--example-shape"):
        graph_checkpoint(path, StructureSource(model=f"{TRAINED}:TwoHeadPReLU"))
    with pytest.raises(UsageError, match="no callable"):
        graph_checkpoint(path, source("NoSuchModel", (1, 1, 8, 8)))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('this file does not import')\n")
    with pytest.raises(InputError, match="importing"):
        graph_checkpoint(path, StructureSource(model=f"{broken}:Net", example_shapes=((1,),)))
    with pytest.raises(InputError, match="could not be exported"):
        graph_checkpoint(path, source("TwoHeadPReLU", (1, 3, 8, 8)))  # three channels, not one
