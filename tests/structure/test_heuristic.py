"""The name/shape heuristic: which layers form chains, and why the rest is left out."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from tests.helpers import mlp_state, write_safetensors, write_torch
from weissi_cli.io import open_checkpoint
from weissi_cli.ir import Structure
from weissi_cli.structure import discover


def structure_of(path: Path) -> Structure:
    with open_checkpoint(path) as checkpoint:
        return discover(checkpoint)


def prefixes(structure: Structure) -> list[list[str]]:
    return [[layer.prefix for layer in chain.layers] for chain in structure.chains]


def reasons(structure: Structure) -> dict[str, str]:
    return {entry.name: entry.reason for entry in structure.unassigned}


def test_safetensors_layers_follow_natural_name_order(tmp_path: Path) -> None:
    state = mlp_state(sizes=(3,) * 13, step=1)  # net.0 ... net.11: plain sorting puts net.10 first
    structure = structure_of(write_safetensors(tmp_path / "m.safetensors", state))
    assert prefixes(structure) == [[f"net.{i}" for i in range(12)]]
    assert structure.origin == "heuristic"
    assert structure.chains[0].is_assumed
    assert structure.unassigned == ()


def test_pickle_layers_follow_state_dict_order(tmp_path: Path) -> None:
    state = OrderedDict()
    state["head.weight"] = torch.randn(4, 5)
    state["body.weight"] = torch.randn(3, 4)  # alphabetically first, but second in the file
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert prefixes(structure) == [["head", "body"]]


def test_chain_breaks_where_shapes_do_not_connect(tmp_path: Path) -> None:
    state = OrderedDict()
    state["a.weight"] = torch.randn(4, 3)
    state["b.weight"] = torch.randn(5, 4)
    state["c.weight"] = torch.randn(2, 7)  # takes 7 inputs, b gives 5
    state["d.weight"] = torch.randn(3, 2)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert prefixes(structure) == [["a", "b"], ["c", "d"]]
    assert [chain.id for chain in structure.chains] == ["chain0", "chain1"]


def test_single_layer_is_unassigned_with_the_reason(tmp_path: Path) -> None:
    state = OrderedDict()
    state["a.weight"] = torch.randn(4, 3)
    state["a.bias"] = torch.randn(4)
    state["b.weight"] = torch.randn(2, 9)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert structure.chains == ()
    assert reasons(structure)["a.weight"].startswith(
        "single layer: a outputs 4 channels but b takes 9"
    )
    assert reasons(structure)["a.bias"] == reasons(structure)["a.weight"]
    assert reasons(structure)["b.weight"].startswith("single layer")


def batch_norm_state() -> OrderedDict[str, torch.Tensor]:
    state = OrderedDict()
    state["conv1.weight"] = torch.randn(8, 3, 3, 3)
    state["bn1.weight"] = torch.randn(8)
    state["bn1.bias"] = torch.randn(8)
    state["bn1.running_mean"] = torch.randn(8)
    state["bn1.running_var"] = torch.rand(8)
    state["bn1.num_batches_tracked"] = torch.tensor(3)
    state["conv2.weight"] = torch.randn(8, 8, 3, 3)
    state["conv3.weight"] = torch.randn(4, 8, 3, 3)
    return state


def test_batch_norm_ends_a_chain_and_is_offered_as_assumed_symmetries(tmp_path: Path) -> None:
    structure = structure_of(write_torch(tmp_path / "m.pt", batch_norm_state()))
    # conv2 -> conv3 would be a chain, but conv2 also absorbs bn1's gain: one joint solve.
    assert structure.chains == ()
    found = {s.id: s for s in structure.symmetries}
    assert set(found) == {"conv1", "bn1", "chain0.0"}
    assert [(m.tensor, m.axis, m.exponent) for m in found["conv1"].members] == [
        ("conv1.weight", 0, 1),
        ("bn1.running_mean", 0, 1),
        ("bn1.running_var", 0, 2),
    ]
    assert not found["conv1"].exact
    assert [(m.tensor, m.axis, m.exponent) for m in found["bn1"].members] == [
        ("bn1.weight", 0, 1),
        ("bn1.bias", 0, 1),
        ("conv2.weight", 1, -1),
    ]
    assert all(s.origin == "heuristic" for s in found.values() if s.id != "chain0.0")
    assert structure.is_assumed
    assert reasons(structure) == {"bn1.num_batches_tracked": "int64 tensor: skipped"}


def test_batch_norm_to_a_layer_of_another_module_is_not_assumed(tmp_path: Path) -> None:
    """layer1.bn2 -> layer2.conv1 may have a residual add between them."""
    state = OrderedDict()
    state["layer1.conv2.weight"] = torch.randn(8, 8, 3, 3)
    state["layer1.bn2.weight"] = torch.randn(8)
    state["layer1.bn2.bias"] = torch.randn(8)
    state["layer1.bn2.running_mean"] = torch.randn(8)
    state["layer1.bn2.running_var"] = torch.rand(8)
    state["layer2.conv1.weight"] = torch.randn(8, 8, 3, 3)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert [s.id for s in structure.symmetries] == ["layer1.conv2"]
    assert "layer1.bn2.weight" in reasons(structure)


def test_layer_norm_recognised_by_name(tmp_path: Path) -> None:
    state = OrderedDict()
    state["fc1.weight"] = torch.randn(4, 4)
    state["LayerNorm.weight"] = torch.randn(4)
    state["fc2.weight"] = torch.randn(4, 4)
    state["ln_f.weight"] = torch.randn(4)
    state["fc3.weight"] = torch.randn(4, 4)
    state["fc4.weight"] = torch.randn(4, 4)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert prefixes(structure) == [["fc3", "fc4"]]
    assert reasons(structure)["ln_f.weight"] == "normalisation layer ln_f: ends a chain"


def test_unknown_one_dimensional_module_ends_a_chain(tmp_path: Path) -> None:
    state = OrderedDict()
    state["fc1.weight"] = torch.randn(4, 4)
    state["act.weight"] = torch.randn(4)  # a PReLU, say
    state["fc2.weight"] = torch.randn(4, 4)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert structure.chains == ()
    assert "not a linear or conv layer" in reasons(structure)["act.weight"]


def test_conv_flattened_into_linear_gets_a_block(tmp_path: Path) -> None:
    state = OrderedDict()
    state["features.0.weight"] = torch.randn(8, 1, 3, 3)
    state["features.2.weight"] = torch.randn(16, 8, 3, 3)
    state["classifier.weight"] = torch.randn(10, 16 * 64)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    chain = structure.chains[0]
    assert prefixes(structure) == [["features.0", "features.2", "classifier"]]
    assert chain.blocks == (1, 64)
    consumer = chain.symmetries()[1].members[-1]
    assert (consumer.tensor, consumer.axis, consumer.exponent, consumer.block) == (
        "classifier.weight",
        1,
        -1,
        64,
    )
    assert "64 inputs per channel" in chain.notes[0]


def test_linear_cannot_feed_a_conv_through_a_block(tmp_path: Path) -> None:
    state = OrderedDict()
    state["fc.weight"] = torch.randn(8, 4)
    state["conv.weight"] = torch.randn(
        4, 2, 3, 3
    )  # takes 2 channels; 8 is a multiple, but not a flatten
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert structure.chains == ()


def test_wrong_bias_shape_excludes_the_layer(tmp_path: Path) -> None:
    state = OrderedDict()
    state["a.weight"] = torch.randn(4, 3)
    state["b.weight"] = torch.randn(4, 4)
    state["b.bias"] = torch.randn(3)
    state["c.weight"] = torch.randn(2, 4)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert structure.chains == ()
    assert "b.bias has shape (3,), not (4,)" in reasons(structure)["b.bias"]


def test_tied_weights_are_not_rescaled(tmp_path: Path) -> None:
    shared = torch.randn(4, 4)
    state = OrderedDict()
    state["embed.weight"] = shared
    state["fc.weight"] = torch.randn(4, 4)
    state["head.weight"] = shared
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert structure.chains == ()
    assert "shares memory with head.weight" in reasons(structure)["embed.weight"]


def test_symmetries_of_a_chain_follow_the_ir(tmp_path: Path) -> None:
    structure = structure_of(write_torch(tmp_path / "m.pt", mlp_state(sizes=(3, 4, 5))))
    (symmetry,) = structure.chains[0].symmetries()
    assert symmetry.size == 4
    assert [(m.tensor, m.axis, m.exponent, m.block) for m in symmetry.members] == [
        ("net.0.weight", 0, 1, 1),
        ("net.0.bias", 0, 1, 1),
        ("net.2.weight", 1, -1, 1),
    ]
    assert symmetry.origin == "heuristic"


def test_a_top_level_layer_is_left_out_with_the_reason(tmp_path: Path) -> None:
    state = OrderedDict()
    state["weight"] = torch.randn(4, 4)
    state["fc.weight"] = torch.randn(4, 4)
    state["fc2.weight"] = torch.randn(4, 4)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert prefixes(structure) == [["fc", "fc2"]]
    assert "no module name" in reasons(structure)["weight"]


def test_names_with_non_ascii_digits_sort_without_error(tmp_path: Path) -> None:
    state = OrderedDict()
    state["a²1.weight"] = torch.randn(4, 4)
    state["a².weight"] = torch.randn(4, 4)
    structure = structure_of(write_safetensors(tmp_path / "m.safetensors", state))
    assert sorted(prefixes(structure)[0]) == ["a²", "a²1"]


def test_a_plain_mlp_has_nothing_to_refuse(tmp_path: Path, samples: Path) -> None:
    assert structure_of(write_safetensors(tmp_path / "m.safetensors", mlp_state())).refusals == ()
    # classifier sorts before the convs; it reads none of the chain's hidden spaces
    assert structure_of(samples / "cnn_digits.safetensors").refusals == ()


def test_a_sibling_head_is_refused(tmp_path: Path) -> None:
    """trunk.1 feeds two heads; by name the chain runs through one of them."""
    state = OrderedDict()
    state["trunk.0.weight"] = torch.randn(8, 6)
    state["trunk.1.weight"] = torch.randn(5, 8)
    state["trunk.1.bias"] = torch.randn(5)
    state["trunk.2.weight"] = torch.randn(3, 5)  # the classes
    state["trunk.3.weight"] = torch.randn(4, 5)  # the boxes: also reads trunk.1's output
    structure = structure_of(write_safetensors(tmp_path / "m.safetensors", state))
    assert prefixes(structure) == [["trunk.0", "trunk.1", "trunk.2"]]
    (refusal,) = structure.refusals
    assert refusal.startswith("trunk.3.weight takes 5 inputs but is in no chain")
    assert "the output of trunk.1 (chain0)" in refusal


def test_a_layer_of_another_chain_reading_a_hidden_width_is_refused(tmp_path: Path) -> None:
    state = OrderedDict()
    state["a.0.weight"] = torch.randn(8, 6)
    state["a.1.weight"] = torch.randn(3, 8)
    state["b.0.weight"] = torch.randn(4, 8)  # reads 8 inputs: a.0's output?
    state["b.1.weight"] = torch.randn(2, 4)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert prefixes(structure) == [["a.0", "a.1"], ["b.0", "b.1"]]
    assert any(r.startswith("b.0.weight takes 8 inputs") for r in structure.refusals)


def test_one_dimensional_tensors_that_are_no_bias_or_norm_are_refused(tmp_path: Path) -> None:
    """PReLU slopes sort after every layer in a safetensors file: the chain is unbroken, the
    slopes are unplaced."""
    state = OrderedDict()
    state["conv1.weight"] = torch.randn(8, 1, 3, 3)
    state["conv2.weight"] = torch.randn(4, 8, 3, 3)
    state["prelu1.weight"] = torch.rand(8)
    state["scale"] = torch.rand(())  # a learned scalar at the top level
    structure = structure_of(write_safetensors(tmp_path / "m.safetensors", state))
    assert prefixes(structure) == [["conv1", "conv2"]]
    assert structure.refusals == (
        "prelu1.weight (8,) is neither a layer's bias nor part of a normalisation layer (a "
        "PReLU's slopes, a gate, a learned shift?)",
        "scale () is neither a layer's bias nor part of a normalisation layer (a PReLU's "
        "slopes, a gate, a learned shift?)",
    )


def test_a_norm_sorted_away_from_its_place_is_refused(tmp_path: Path) -> None:
    """bn1 sits between conv1 and conv2, but sorts before them: the chain skips it."""
    state = OrderedDict()
    state["conv1.weight"] = torch.randn(8, 1, 3, 3)
    state["bn1.weight"] = torch.rand(8)
    state["bn1.bias"] = torch.rand(8)
    state["bn1.running_mean"] = torch.rand(8)
    state["bn1.running_var"] = torch.rand(8)
    state["conv2.weight"] = torch.randn(4, 8, 3, 3)
    structure = structure_of(write_safetensors(tmp_path / "m.safetensors", state))
    assert prefixes(structure) == [["conv1", "conv2"]]
    assert len(structure.refusals) == 4
    assert structure.refusals[0] == (
        "bn1.bias (8,) is in no chain but has a dimension of 8, the width of the output of "
        "conv1 (chain0): it may act on that space"
    )


def test_a_config_for_another_network_is_refused(tmp_path: Path) -> None:
    """A config.json whose architecture does not hold the checkpoint's tensors describes
    another network: tracing it says nothing about these weights."""
    import json

    from weissi_cli.structure.trace import TraceError

    write_safetensors(tmp_path / "model.safetensors", mlp_state())
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "phi3",
                "hidden_size": 32,
                "intermediate_size": 48,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "vocab_size": 64,
                "pad_token_id": 0,
            }
        )
    )
    with pytest.raises(TraceError, match="does not hold"):
        structure_of(tmp_path)


def test_a_guessed_flatten_is_marked_as_a_guess(tmp_path: Path) -> None:
    state = OrderedDict()
    state["features.0.weight"] = torch.randn(8, 1, 3, 3)
    state["classifier.weight"] = torch.randn(10, 8 * 16)
    structure = structure_of(write_torch(tmp_path / "m.pt", state))
    assert structure.guesses() == (
        "the flatten of features.0 into classifier is assumed channel-major (16 inputs per "
        "channel)",
    )
