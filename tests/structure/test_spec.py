"""Spec files: strict reading, clear errors, and emit -> read round trips."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from tests.helpers import mlp_state, write_safetensors, write_torch
from weissi_cli.errors import InputError, StructureError
from weissi_cli.io import open_checkpoint
from weissi_cli.ir import Structure
from weissi_cli.structure import discover, emit_spec


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "mlp.safetensors", mlp_state(sizes=(6, 5, 4, 3)))


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def from_spec(checkpoint_path: Path, spec: Path) -> Structure:
    with open_checkpoint(checkpoint_path) as checkpoint:
        return discover(checkpoint, spec)


def test_spec_chain_is_taken_as_declared(tmp_path: Path, mlp_file: Path) -> None:
    spec = spec_file(
        tmp_path, 'version = 1\n[[chain]]\nactivation = "leaky_relu"\nlayers = ["net.2", "net.4"]\n'
    )
    structure = from_spec(mlp_file, spec)
    (chain,) = structure.chains
    assert [layer.prefix for layer in chain.layers] == ["net.2", "net.4"]
    assert chain.origin == "spec"
    assert chain.activation == "leaky_relu"
    assert not structure.is_assumed
    assert {entry.name: entry.reason for entry in structure.unassigned} == {
        "net.0.bias": "not in the spec file",
        "net.0.weight": "not in the spec file",
    }


def test_emitted_spec_reads_back_as_the_same_chains(tmp_path: Path, mlp_file: Path) -> None:
    with open_checkpoint(mlp_file) as checkpoint:
        inferred = discover(checkpoint)
    spec = spec_file(tmp_path, emit_spec(inferred, "mlp.safetensors"))
    pinned = from_spec(mlp_file, spec)
    assert [(c.id, c.activation, c.layers, c.blocks) for c in pinned.chains] == [
        (c.id, c.activation, c.layers, c.blocks) for c in inferred.chains
    ]
    assert [c.origin for c in pinned.chains] == ["spec"]


def test_emitted_spec_of_a_conv_chain_round_trips(tmp_path: Path) -> None:
    state = OrderedDict()
    state["features.0.weight"] = torch.randn(8, 1, 3, 3)
    state["features.0.bias"] = torch.randn(8)
    state["classifier.weight"] = torch.randn(10, 8 * 4)
    path = write_torch(tmp_path / "cnn.pt", state)
    with open_checkpoint(path) as checkpoint:
        inferred = discover(checkpoint)
    text = emit_spec(inferred, "cnn.pt")
    assert "# features.0 (8 channels) is flattened into classifier (32 inputs)" in text
    pinned = from_spec(path, spec_file(tmp_path, text))
    assert pinned.chains[0].blocks == (4,)
    assert pinned.chains[0].symmetries()[0].members == inferred.chains[0].symmetries()[0].members


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[chain]]\nlayers = ["net.0", "net.2"]\n', "`version = 2` is required"),
        ('version = 3\n[[chain]]\nlayers = ["net.0", "net.2"]\n', "`version = 2` is required"),
        (
            'version = 1\n[[chain]]\nlayers = ["net.0", "net.2"]\nflatten = "channel-last"\n',
            "flatten need(s) `version = 2`",
        ),
        ("version = 1\n", "declares no [[chain]] or [[symmetry]] tables"),
        ('version = 1\nextra = 3\n[[chain]]\nlayers = ["net.0"]\n', "unknown key(s) extra"),
        ('version = 1\n[[chain]]\nlayer = ["net.0"]\n', "unknown key(s) layer"),
        (
            'version = 1\n[[chain]]\nactivation = "gelu"\nlayers = ["net.0", "net.2"]\n',
            "'gelu' is not positively homogeneous",
        ),
        ("version = 1\n[[chain]]\nlayers = []\n", "`layers` must be a non-empty list"),
        ('version = 1\n[[chain\nlayers = ["net.0"]\n', "not valid TOML"),
    ],
)
def test_malformed_spec_is_refused(tmp_path: Path, mlp_file: Path, text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        from_spec(mlp_file, spec_file(tmp_path, text))
    assert message in str(caught.value)
    assert str(tmp_path / "spec.toml") in str(caught.value)


def test_unknown_layer_is_refused_with_a_suggestion(tmp_path: Path, mlp_file: Path) -> None:
    spec = spec_file(tmp_path, 'version = 1\n[[chain]]\nlayers = ["net.0", "net.3"]\n')
    with pytest.raises(StructureError) as caught:
        from_spec(mlp_file, spec)
    assert "unknown layer 'net.3': the checkpoint has no tensor 'net.3.weight'" in str(caught.value)
    assert "did you mean" in str(caught.value)
    assert caught.value.exit_code == 2


def test_layers_that_do_not_connect_are_refused(tmp_path: Path, mlp_file: Path) -> None:
    spec = spec_file(tmp_path, 'version = 1\n[[chain]]\nlayers = ["net.0", "net.4"]\n')
    with pytest.raises(StructureError) as caught:
        from_spec(mlp_file, spec)
    assert "net.0 outputs 5 channels but net.4 takes 4 inputs" in str(caught.value)


def test_a_layer_in_two_chains_is_refused(tmp_path: Path, mlp_file: Path) -> None:
    text = (
        'version = 1\n[[chain]]\nlayers = ["net.0", "net.2"]\n'
        '[[chain]]\nlayers = ["net.2", "net.4"]\n'
    )
    with pytest.raises(StructureError) as caught:
        from_spec(mlp_file, spec_file(tmp_path, text))
    assert "layer 'net.2' is in both chain0 and chain1" in str(caught.value)


def test_missing_spec_file_is_an_input_error(tmp_path: Path, mlp_file: Path) -> None:
    with pytest.raises(InputError, match="spec file not found"):
        from_spec(mlp_file, tmp_path / "absent.toml")


def test_one_layer_chain_is_accepted_with_a_note(tmp_path: Path, mlp_file: Path) -> None:
    structure = from_spec(
        mlp_file, spec_file(tmp_path, 'version = 1\n[[chain]]\nlayers = ["net.4"]\n')
    )
    assert structure.chains[0].notes == ("a chain of one layer (net.4) has no scale symmetry",)
    assert structure.chains[0].symmetries() == ()


@pytest.mark.parametrize("version", ["true", "1.0", '"1"'])
def test_version_must_be_the_integer_1(tmp_path: Path, mlp_file: Path, version: str) -> None:
    spec = spec_file(tmp_path, f'version = {version}\n[[chain]]\nlayers = ["net.0", "net.2"]\n')
    with pytest.raises(InputError, match="`version = 2` is required"):
        from_spec(mlp_file, spec)


def test_a_layer_twice_in_one_chain_is_refused(tmp_path: Path, mlp_file: Path) -> None:
    spec = spec_file(tmp_path, 'version = 1\n[[chain]]\nlayers = ["net.0", "net.2", "net.0"]\n')
    with pytest.raises(StructureError, match="net.0 appear more than once"):
        from_spec(mlp_file, spec)


SYMMETRY_SPEC = """version = 1
[[symmetry]]
id = "hidden"
size = 5
members = [
  { tensor = "net.0.weight", axis = 0, exponent = 1 },
  { tensor = "net.0.bias", axis = 0, exponent = 1 },
  { tensor = "net.2.weight", axis = 1, exponent = -1 },
]
"""


def test_symmetry_tables_are_read_as_declared(tmp_path: Path, mlp_file: Path) -> None:
    structure = from_spec(mlp_file, spec_file(tmp_path, SYMMETRY_SPEC))
    (symmetry,) = structure.symmetries
    assert (symmetry.id, symmetry.size, symmetry.tie, symmetry.exact, symmetry.origin) == (
        "hidden",
        5,
        1,
        True,
        "spec",
    )
    assert [(m.tensor, m.axis, m.exponent, m.block, m.offset) for m in symmetry.members] == [
        ("net.0.weight", 0, 1, 1, 0),
        ("net.0.bias", 0, 1, 1, 0),
        ("net.2.weight", 1, -1, 1, 0),
    ]
    assert structure.chains == ()


def test_emitted_symmetries_read_back_identically(tmp_path: Path, mlp_file: Path) -> None:
    first = from_spec(mlp_file, spec_file(tmp_path, SYMMETRY_SPEC))
    again = from_spec(mlp_file, spec_file(tmp_path, emit_spec(first, "mlp.safetensors")))
    assert again.symmetries == first.symmetries


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ('{ tensor = "net.9.weight", axis = 0, exponent = 1 }', "unknown tensor 'net.9.weight'"),
        ('{ tensor = "net.0.weight", axis = 2, exponent = 1 }', "axis 2 does not exist"),
        ('{ tensor = "net.0.weight", axis = 0, exponent = 1, offset = 1 }', "run past axis 0"),
        ('{ tensor = "net.0.weight", axis = 0, exponent = 0 }', "exponent must be non-zero"),
        ('{ tensor = "net.0.weight", axis = 0 }', "a member needs `tensor`"),
    ],
)
def test_malformed_symmetry_members_are_refused(
    tmp_path: Path, mlp_file: Path, member: str, message: str
) -> None:
    text = f"version = 1\n[[symmetry]]\nsize = 5\nmembers = [ {member} ]\n"
    with pytest.raises((InputError, StructureError)) as caught:
        from_spec(mlp_file, spec_file(tmp_path, text))
    assert message in str(caught.value)


def test_tie_must_divide_the_size(tmp_path: Path, mlp_file: Path) -> None:
    text = SYMMETRY_SPEC.replace("size = 5", "size = 5\ntie = 2")
    with pytest.raises(InputError, match="`tie` must be a positive integer that divides size 5"):
        from_spec(mlp_file, spec_file(tmp_path, text))


@pytest.fixture
def cnn_file(tmp_path: Path) -> Path:
    """conv1d (8 channels over 6 steps) → linear: 48 inputs; a conv2d over a 3x4 map → linear."""
    state = OrderedDict()
    state["seq.weight"] = torch.randn(8, 2, 3)
    state["seq.bias"] = torch.randn(8)
    state["fc.weight"] = torch.randn(5, 48)
    state["img.weight"] = torch.randn(4, 1, 3, 3)
    state["head.weight"] = torch.randn(3, 48)  # 4 channels × 12 (a 3 × 4 map)
    state["side.0.weight"] = torch.randn(8, 5)
    state["side.1.weight"] = torch.randn(3, 48)
    return write_torch(tmp_path / "cnn.pt", state)


def _consumers(structure: Structure, chain: int = 0) -> list[tuple[int, int]]:
    members = structure.chains[chain].symmetries()[0].members
    return [(m.block, m.offset) for m in members if m.exponent < 0]


@pytest.mark.parametrize(
    ("flatten", "expected"),
    [
        ('"channel-major"', [(6, 0)]),
        ('"channel-last"', [(1, 8 * step) for step in range(6)]),
        ('"time-major"', [(1, 8 * step) for step in range(6)]),  # a conv1d's [C, T]: F = 1
        ('{ seq = "channel-last" }', [(1, 8 * step) for step in range(6)]),
    ],
)
def test_a_stated_flatten_lays_out_each_channel(
    tmp_path: Path, cnn_file: Path, flatten: str, expected: list[tuple[int, int]]
) -> None:
    text = f'version = 2\n[[chain]]\nlayers = ["seq", "fc"]\nflatten = {flatten}\n'
    structure = from_spec(cnn_file, spec_file(tmp_path, text))
    assert _consumers(structure) == expected
    assert structure.guesses() == ()
    assert "seq is flattened into fc" in structure.chains[0].notes[0]


def test_a_time_major_flatten_of_a_conv2d_needs_its_features_per_step(
    tmp_path: Path, cnn_file: Path
) -> None:
    text = 'version = 2\n[[chain]]\nlayers = ["img", "head"]\nflatten = "time-major"\n'
    with pytest.raises(InputError, match="needs `features_per_step`"):
        from_spec(cnn_file, spec_file(tmp_path, text))
    structure = from_spec(cnn_file, spec_file(tmp_path, text + "features_per_step = 4\n"))
    assert _consumers(structure) == [(4, 0), (4, 16), (4, 32)]  # 3 steps of 4 channels × 4


def test_an_unstated_flatten_stays_a_guess(tmp_path: Path, cnn_file: Path) -> None:
    text = 'version = 2\n[[chain]]\nlayers = ["seq", "fc"]\n'
    structure = from_spec(cnn_file, spec_file(tmp_path, text))
    assert _consumers(structure) == [(6, 0)]
    assert structure.guesses() == (
        "the flatten of seq into fc is assumed channel-major (6 inputs per channel)",
    )


@pytest.mark.parametrize(
    ("chain", "error", "message"),
    [
        ('layers = ["seq", "fc"]\nflatten = "row-major"', InputError, "unknown flatten order"),
        ('layers = ["seq", "fc"]\nflatten = 3', InputError, "`flatten` is one of"),
        ('layers = ["seq", "fc"]\nflatten = { fc = "channel-last" }', StructureError, "names fc"),
        (
            'layers = ["seq", "fc"]\nfeatures_per_step = 2',
            InputError,
            '`features_per_step` goes with flatten = "time-major"',
        ),
        (
            'layers = ["seq", "fc"]\nflatten = "time-major"\nfeatures_per_step = 5',
            StructureError,
            "5 features per step do not divide 6 inputs",
        ),
        ('activation = "relu"\nlayers = ["seq", "fc"]\nslope = 0.2', InputError, "`slope`"),
        (
            'activation = "prelu"\nlayers = ["seq", "fc"]',
            InputError,
            "`slopes` lists one per hidden space (1 here)",
        ),
        (
            'activation = "prelu"\nlayers = ["seq", "fc"]\nslopes = ["fc.weight"]',
            StructureError,
            "cannot be the PReLU after seq",
        ),
        (
            'activation = "prelu"\nlayers = ["seq", "fc"]\nslopes = ["seq.bias"]',
            StructureError,
            "is a PReLU slope of chain0 and a weight or bias of chain0",
        ),
    ],
)
def test_malformed_version_2_keys_are_refused(
    tmp_path: Path, cnn_file: Path, chain: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_spec(cnn_file, spec_file(tmp_path, f"version = 2\n[[chain]]\n{chain}\n"))


def test_prelu_slopes_are_claimed_never_scaled(tmp_path: Path) -> None:
    state = mlp_state(sizes=(6, 5, 4, 3))
    state["act.0.weight"] = torch.rand(5, dtype=torch.float64)
    state["act.1.weight"] = torch.rand(1, dtype=torch.float64)  # one slope for all channels
    path = write_safetensors(tmp_path / "m.safetensors", state)
    text = (
        'version = 2\n[[chain]]\nactivation = "prelu"\nlayers = ["net.0", "net.2", "net.4"]\n'
        'slopes = ["act.0.weight", "act.1.weight"]\n'
    )
    structure = from_spec(path, spec_file(tmp_path, text))
    (chain,) = structure.chains
    assert chain.slopes == ("act.0.weight", "act.1.weight")
    assert structure.unassigned == ()
    scaled = {m.tensor for s in chain.symmetries() for m in s.members}
    assert not scaled & set(chain.slopes)


def test_a_leaky_slope_is_kept(tmp_path: Path, mlp_file: Path) -> None:
    text = (
        'version = 2\n[[chain]]\nactivation = "leaky_relu"\nslope = 0.2\n'
        'layers = ["net.0", "net.2"]\n'
    )
    (chain,) = from_spec(mlp_file, spec_file(tmp_path, text)).chains
    assert chain.slope == 0.2


def test_version_2_chains_and_symmetries_round_trip(tmp_path: Path, cnn_file: Path) -> None:
    text = """version = 2
[[chain]]
id = "a"
activation = "leaky_relu"
slope = 0.25
layers = ["seq", "fc"]
flatten = "channel-last"

[[chain]]
id = "b"
layers = ["img", "head"]
flatten = { img = "time-major" }
features_per_step = 4

[[symmetry]]
id = "s"
size = 8
guess = "the order of fc's inputs is taken for granted"
members = [
  { tensor = "side.0.weight", axis = 0, exponent = 1 },
  { tensor = "side.1.weight", axis = 1, exponent = -1, block = 2, repeat = 3 },
]
"""
    first = from_spec(cnn_file, spec_file(tmp_path, text))
    emitted = emit_spec(first, "cnn.pt")
    (tmp_path / "again.toml").write_text(emitted)
    second = from_spec(cnn_file, tmp_path / "again.toml")
    assert "repeat = 3" in emitted
    assert 'flatten = "channel-last"' in emitted
    assert second.chains == first.chains
    assert second.symmetries == first.symmetries
    assert second.guesses() == first.guesses()
    assert [m.offset for m in second.symmetries[0].members[1:]] == [0, 16, 32]


def test_an_emitted_guess_lists_what_rebalance_refuses(tmp_path: Path) -> None:
    state = mlp_state(sizes=(6, 5, 4))
    state["act.weight"] = torch.rand(5, dtype=torch.float64)
    path = write_safetensors(tmp_path / "m.safetensors", state)
    with open_checkpoint(path) as checkpoint:
        text = emit_spec(discover(checkpoint), "m.safetensors")
    assert "# not placed (rebalance --assume-relu refuses): act.weight (5,) is neither" in text
