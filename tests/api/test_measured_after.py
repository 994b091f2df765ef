"""The L2 and WEISSI penalties a rebalance reports after the rewrite are measured in the
written file: they equal an independent sum over the file as torch or safetensors reads
it, for every format, with tensors below and above 65,536 values (where readers and the
compiled kernel take other paths)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.helpers import mlp_state, write_safetensors, write_sharded, write_torch
from weissi_cli.api import rebalance_checkpoint
from weissi_cli.cli.app import app
from weissi_cli.cli.render import number

SIZES = {
    "small": (16, 12, 8, 4),  # every tensor below 65,536 values
    "large": (64, 300, 300, 10),  # a 300 × 300 weight: 90,000 values
}


def _state(size: str) -> OrderedDict[str, torch.Tensor]:
    state = mlp_state(sizes=SIZES[size], seed=7, dtype=torch.float32)
    for index, name in enumerate(n for n in state if n.endswith("weight")):
        state[name] = state[name] * 4.0 ** (1 - index)  # unbalanced: rebalancing moves them
    return state


def _program(state: OrderedDict[str, torch.Tensor], folder: Path) -> Path:
    path = folder / "in.pt2"
    sizes = [state["net.0.weight"].shape[1]] + [
        state[n].shape[0] for n in state if n.endswith("weight")
    ]
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if index:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    model = torch.nn.Sequential(*layers)
    model.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    program = torch.export.export(model.eval(), (torch.randn(2, sizes[0]),))
    torch.export.save(program, path)
    return path


WRITERS: dict[str, tuple[Callable[[OrderedDict[str, torch.Tensor], Path], Path], str]] = {
    "safetensors": (lambda s, d: write_safetensors(d / "in.safetensors", s), "out.safetensors"),
    "sharded": (
        lambda s, d: write_sharded(
            d / "in",
            {
                "model-00001-of-00002.safetensors": {
                    k: v for k, v in s.items() if k.startswith("net.0")
                },
                "model-00002-of-00002.safetensors": {
                    k: v for k, v in s.items() if not k.startswith("net.0")
                },
            },
        ),
        "out",
    ),
    "torch": (lambda s, d: write_torch(d / "in.pt", dict(s)), "out.pt"),
    "pt2": (_program, "out.pt2"),
}


def _written(path: Path) -> dict[str, torch.Tensor]:
    """The rewritten tensors, read by torch or safetensors themselves."""
    if path.suffix == ".pt2":
        program = torch.export.load(path)
        return {f"net.{k}": v for k, v in program.state_dict.items()}
    if path.suffix == ".pt":
        return dict(torch.load(path, weights_only=True))
    if path.is_dir():
        found: dict[str, torch.Tensor] = {}
        for shard in sorted(path.glob("*.safetensors")):
            found.update(load_file(str(shard)))
        return found
    return load_file(str(path))


def _independent(tensors: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(L2, WEISSI with λ1 = λ2 = 1) of the weights, summed in float64."""
    weights = [
        t.detach().double() for name, t in sorted(tensors.items()) if name.endswith("weight")
    ]
    l2 = math.fsum(float((w * w).sum()) for w in weights)
    norms = [math.sqrt(float((w * w).sum())) for w in weights]
    weissi = math.fsum(math.log(n) for n in norms) + math.fsum(
        float(w.abs().sum()) / n for w, n in zip(weights, norms, strict=True)
    )
    return l2, weissi


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_reported_penalties_after_equal_an_independent_sum(
    tmp_path: Path, fmt: str, size: str
) -> None:
    write, out_name = WRITERS[fmt]
    state = _state(size)
    source = write(state, tmp_path)
    if fmt == "sharded":
        source = source.parent
    output = tmp_path / out_name
    report = rebalance_checkpoint(source, output, assume_relu=fmt != "pt2")
    assert report.written
    l2, weissi = _independent(_written(output))
    before, _ = _independent(dict(state))
    if fmt == "pt2":  # a graph's symmetries: one group, measured in the written file
        assert report.group is not None
        printed = report.group.l2_after
        assert printed == pytest.approx(l2, rel=1e-9)
        assert printed < before
    else:
        (chain,) = report.chains
        assert chain.l2_after == pytest.approx(l2, rel=1e-9)
        assert chain.min_l2_penalty is not None
        assert chain.l2_after == pytest.approx(chain.min_l2_penalty, rel=1e-5)
        assert chain.weissi_after == pytest.approx(weissi, rel=1e-9)
        printed = chain.l2_after
    # what a person reads: the number rendered from that value
    result = CliRunner(env={"COLUMNS": "120", "NO_COLOR": "1"}).invoke(
        app,
        ["rebalance", str(source), "-o", str(tmp_path / ("again" + out_name.removeprefix("out")))]
        + ([] if fmt == "pt2" else ["--assume-relu"]),
    )
    assert result.exit_code == 0
    assert f"→ {number(l2)}" in result.stdout
    assert printed is not None
