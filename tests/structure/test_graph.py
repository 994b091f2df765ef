"""The graph walk over `torch.export` programs: symmetries and stops of small real models.

The golden lists below are worked out by hand from each architecture (see
tests/exported_models.py): a producer's output channels are scaled by `c` (weight rows and
bias × c), the scale passes through ReLU, pooling, flatten and concatenation, and is absorbed
by the next layer's columns (× 1/c) or by a batch norm's running statistics (mean × c,
var × c², exact only up to eps). Each golden is also checked against the models themselves:
applying every found symmetry with random scales must leave the outputs unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.exported_models import BUILDERS, export_all, member_factors
from weissi_cli.io import open_checkpoint
from weissi_cli.ir import Structure
from weissi_cli.structure import discover

MemberTuple = tuple[str, int, int, int, int]
Golden = dict[str, tuple[int, bool, set[MemberTuple]]]  # id -> size, exact, members


def rows(name: str, exponent: int = 1) -> MemberTuple:
    return (name, 0, exponent, 1, 0)


def columns(name: str, block: int = 1, offset: int = 0) -> MemberTuple:
    return (name, 1, -1, block, offset)


def statistics(norm: str) -> set[MemberTuple]:
    """A batch norm consuming a scaled input: mean × c, var × c²."""
    return {rows(f"{norm}.running_mean"), rows(f"{norm}.running_var", 2)}


def affine(prefix: str) -> set[MemberTuple]:
    return {rows(f"{prefix}.weight"), rows(f"{prefix}.bias")}


RESNET: Golden = {
    # every conv has bias=False and feeds a batch norm: rows of the conv, the norm's stats
    "stem.0": (8, False, {rows("stem.0.weight")} | statistics("stem.1")),
    # the identity block adds relu(stem BN) to its second BN: one space; it is read by the
    # block's first conv, then (after the add and ReLU) by the next block's first conv and
    # by its projection shortcut. The add's first operand is the block's BN, so it is first.
    "layer1.bn2+stem.1": (
        8,
        True,
        affine("layer1.bn2")
        | affine("stem.1")
        | {
            columns("layer1.conv1.weight"),
            columns("layer2.conv1.weight"),
            columns("layer2.shortcut.0.weight"),
        },
    ),
    "layer1.conv1": (8, False, {rows("layer1.conv1.weight")} | statistics("layer1.bn1")),
    "layer1.bn1": (8, True, affine("layer1.bn1") | {columns("layer1.conv2.weight")}),
    "layer1.conv2": (8, False, {rows("layer1.conv2.weight")} | statistics("layer1.bn2")),
    "layer2.conv1": (16, False, {rows("layer2.conv1.weight")} | statistics("layer2.bn1")),
    "layer2.bn1": (16, True, affine("layer2.bn1") | {columns("layer2.conv2.weight")}),
    "layer2.conv2": (16, False, {rows("layer2.conv2.weight")} | statistics("layer2.bn2")),
    "layer2.shortcut.0": (
        16,
        False,
        {rows("layer2.shortcut.0.weight")} | statistics("layer2.shortcut.1"),
    ),
    # the projection block's BN and its shortcut BN meet in the add; global average pooling
    # to 1x1 and flatten give one feature per channel (block 1) of the head
    "layer2.bn2+layer2.shortcut.1": (
        16,
        True,
        affine("layer2.bn2") | affine("layer2.shortcut.1") | {columns("fc.weight")},
    ),
}

CONCAT_CONV: Golden = {
    # channels 0-3 of the concatenation are `left`'s, 4-9 are `right`'s
    "left": (4, True, affine("left") | {columns("mix.weight", offset=0)}),
    "right": (6, True, affine("right") | {columns("mix.weight", offset=4)}),
    "mix": (5, True, affine("mix") | {columns("fc.weight")}),
}

CONCAT_FLATTEN: Golden = {
    # 4x4 maps: each channel is 16 consecutive features; `right` starts at feature 4 * 16
    "left": (4, True, affine("left") | {columns("fc.weight", block=16, offset=0)}),
    "right": (6, True, affine("right") | {columns("fc.weight", block=16, offset=64)}),
}

RELU_BEFORE_BN: Golden = {
    # conv1's scale passes the ReLU and is absorbed by the batch norm's statistics
    "conv1": (6, False, affine("conv1") | statistics("bn")),
    "bn": (6, True, affine("bn") | {columns("conv2.weight")}),
    "conv2": (5, True, affine("conv2") | {columns("fc.weight", block=16)}),
}

RELU_MLP: Golden = {
    "0": (8, True, affine("0") | {columns("2.weight")}),
    "2": (5, True, affine("2") | {columns("4.weight")}),
}

GOLDEN: dict[str, Golden] = {
    "resnet": RESNET,
    "concat_conv": CONCAT_CONV,
    "concat_flatten": CONCAT_FLATTEN,
    "relu_before_bn": RELU_BEFORE_BN,
    "relu_mlp": RELU_MLP,
    "gelu_mlp": {},
    "relu6_mlp": {},
}

OUTPUT = "reaches the graph output"
# producers, node, a word the reason must contain
STOPS: dict[str, list[tuple[tuple[str, ...], str, str]]] = {
    "resnet": [(("fc",), "output", OUTPUT)],
    "concat_conv": [(("fc",), "output", OUTPUT)],
    "concat_flatten": [(("fc",), "output", OUTPUT)],
    "relu_before_bn": [(("fc",), "output", OUTPUT)],
    "relu_mlp": [(("4",), "output", OUTPUT)],
    "gelu_mlp": [(("0",), "gelu", "gelu"), (("2",), "output", OUTPUT)],
    "relu6_mlp": [(("0",), "hardtanh", "hardtanh"), (("2",), "output", OUTPUT)],
}

UNASSIGNED_PARAMETERS = {  # trainable tensors in no symmetry (num_batches_tracked aside)
    "resnet": {"fc.bias"},
    "concat_conv": {"fc.bias"},
    "concat_flatten": {"fc.bias"},
    "relu_before_bn": {"fc.bias"},
    "relu_mlp": {"4.bias"},
    "gelu_mlp": {"0.weight", "0.bias", "2.weight", "2.bias"},
    "relu6_mlp": {"0.weight", "0.bias", "2.weight", "2.bias"},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_all(tmp_path_factory.mktemp("exported"))


@pytest.fixture(scope="module")
def structures(exported: dict[str, Path]) -> dict[str, Structure]:
    found = {}
    for name, path in exported.items():
        with open_checkpoint(path) as checkpoint:
            found[name] = discover(checkpoint)
    return found


@pytest.mark.parametrize("model", sorted(GOLDEN))
def test_symmetries_match_the_hand_derived_golden(
    model: str, structures: dict[str, Structure]
) -> None:
    structure = structures[model]
    found = {
        symmetry.id: (
            symmetry.size,
            symmetry.exact,
            {(m.tensor, m.axis, m.exponent, m.block, m.offset) for m in symmetry.members},
        )
        for symmetry in structure.symmetries
    }
    assert len(found) == len(structure.symmetries), "duplicate symmetry ids"
    assert sorted(found) == sorted(GOLDEN[model])
    for key, golden in GOLDEN[model].items():
        assert found[key] == golden, key
    for symmetry in structure.symmetries:
        assert len(set(symmetry.members)) == len(symmetry.members)
        assert (symmetry.origin, symmetry.tie) == ("graph", 1)
        if not symmetry.exact:
            assert "eps" in symmetry.note
    assert structure.origin == "graph"
    assert structure.chains == ()


@pytest.mark.parametrize("model", sorted(STOPS))
def test_stops_name_the_op_that_dropped_the_space(
    model: str, structures: dict[str, Structure]
) -> None:
    stops = structures[model].stops
    assert sorted((s.producers, s.node) for s in stops) == sorted(
        (producers, node) for producers, node, _ in STOPS[model]
    )
    reasons = {(s.producers, s.node): s.reason for s in stops}
    for producers, node, word in STOPS[model]:
        assert word in reasons[(producers, node)].lower(), reasons[(producers, node)]


@pytest.mark.parametrize("model", sorted(UNASSIGNED_PARAMETERS))
def test_tensors_in_no_symmetry_are_reported_unassigned(
    model: str, structures: dict[str, Structure]
) -> None:
    structure = structures[model]
    unassigned = {u.name for u in structure.unassigned}
    claimed = {m.tensor for s in structure.symmetries for m in s.members}
    assert not unassigned & claimed
    assert {n for n in unassigned if not n.endswith("num_batches_tracked")} == (
        UNASSIGNED_PARAMETERS[model]
    )


def test_gelu_and_relu6_stop_the_space_but_relu_does_not(
    structures: dict[str, Structure],
) -> None:
    assert structures["gelu_mlp"].symmetries == ()
    assert structures["relu6_mlp"].symmetries == ()
    assert [s.id for s in structures["relu_mlp"].symmetries] == ["0", "2"]
    gelu = next(s for s in structures["gelu_mlp"].stops if s.producers == ("0",))
    relu6 = next(s for s in structures["relu6_mlp"].stops if s.producers == ("0",))
    assert "gelu" in gelu.reason
    assert "does not commute" in gelu.reason
    assert "hardtanh" in relu6.reason
    assert "does not commute" in relu6.reason


def _outputs(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        result = module(*args)
    assert isinstance(result, torch.Tensor)
    return result


@pytest.mark.parametrize(
    ("model", "exact"),
    sorted({(model, exact) for model, golden in GOLDEN.items() for _, exact, _ in golden.values()}),
)
def test_found_symmetries_leave_the_function_unchanged(
    model: str, exact: bool, exported: dict[str, Path], structures: dict[str, Structure]
) -> None:
    """Independent of the goldens: scale every found symmetry by random factors in [1/4, 4]
    at once, straight from the members' definition, and run the model."""
    chosen = [s for s in structures[model].symmetries if s.exact is exact]
    program = torch.export.load(exported[model])
    module = program.module()
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    scales = {
        s.id: torch.exp2(torch.rand(s.size, generator=generator, dtype=torch.float64) * 4 - 2)
        for s in chosen
    }
    factors = member_factors(chosen, scales, {k: tuple(v.shape) for k, v in state.items()})
    assert any(not torch.all(f == 1) for f in factors.values())
    _, build_args = BUILDERS[model]()
    inputs = tuple(torch.randn(a.shape, generator=generator) for a in build_args)
    before = _outputs(module, inputs)
    module.load_state_dict(
        {k: (v.double() * factors[k]).to(v.dtype) if k in factors else v for k, v in state.items()}
    )
    after = _outputs(module, inputs)
    relative = float((after - before).abs().max() / before.abs().max())
    # batch norm: (c·x − c·μ)/√(c²σ² + eps) moves by about eps/σ² (1 − 1/c²) (~5e-6 here)
    assert relative <= (1e-5 if exact else 1e-4)
