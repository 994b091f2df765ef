"""The architecture registry: the symmetries found from config.json equal golden lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.hf_models import TINY, build, save
from weissi_cli.errors import StructureError
from weissi_cli.io import open_checkpoint
from weissi_cli.ir import Structure
from weissi_cli.structure import discover, emit_spec
from weissi_cli.structure.spec import structure_from_spec

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: save(build(name), root / name) for name in TINY}


def listing(structure: Structure) -> str:
    """One line per symmetry: id, kind, channels, exactness, then its members as
    tensor:axis:exponent[@offset]; then the stops and the untouched tensors."""
    lines = [f"origin {structure.origin}"]
    for symmetry in structure.symmetries:
        members = " ".join(
            f"{m.tensor}:{m.axis}:{m.exponent:+d}" + (f"@{m.offset}" if m.offset else "")
            for m in symmetry.members
        )
        exact = "exact" if symmetry.exact else "approximate"
        lines.append(f"{symmetry.id} [{symmetry.kind}] {symmetry.size} {exact}: {members}")
    lines += [f"stop {stop.node}: {stop.reason}" for stop in structure.stops]
    lines += [f"untouched {entry.name}: {entry.reason}" for entry in structure.unassigned]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(TINY))
def test_structure_matches_golden(folders: dict[str, Path], name: str) -> None:
    with open_checkpoint(folders[name]) as checkpoint:
        text = listing(discover(checkpoint))
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("WEISSI_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_gqa_key_head_is_matched_by_every_query_head_of_its_group(
    folders: dict[str, Path],
) -> None:
    # llama: 4 query heads over 2 key/value heads, head_dim 8, RoPE halves of 4.
    with open_checkpoint(folders["llama"]) as checkpoint:
        found = {s.id: s for s in discover(checkpoint).symmetries}
    qk = found["model.layers.0.qk.kv1"]
    query = [m.offset for m in qk.members if m.tensor.endswith("q_proj.weight")]
    key = [m.offset for m in qk.members if m.tensor.endswith("k_proj.weight")]
    assert qk.size == 4  # one scale per RoPE pair
    assert sorted(query) == [16, 20, 24, 28]  # heads 2 and 3, both halves
    assert sorted(key) == [8, 12]  # key head 1, both halves
    vo = found["model.layers.0.vo.kv1"]
    assert [m.offset for m in vo.members if m.tensor.endswith("o_proj.weight")] == [16, 24]


def test_tied_embeddings_leave_the_final_norm_alone(folders: dict[str, Path]) -> None:
    with open_checkpoint(folders["llama_tied"]) as checkpoint:
        ids = {s.id for s in discover(checkpoint).symmetries}
    assert "final_norm" not in ids
    with open_checkpoint(folders["llama"]) as checkpoint:
        assert "final_norm" in {s.id for s in discover(checkpoint).symmetries}


def test_approximate_symmetries_only_on_request(folders: dict[str, Path]) -> None:
    with open_checkpoint(folders["gpt2"]) as checkpoint:
        default = discover(checkpoint)
        allowed = discover(checkpoint, allow_approximate=True)
    assert not any(s.kind == "mlp (GELU)" for s in default.symmetries)
    assert [stop.node for stop in default.stops] == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    approximate = [s for s in allowed.symmetries if not s.exact]
    assert [s.id for s in approximate] == ["transformer.h.0.mlp", "transformer.h.1.mlp"]


def test_emitted_spec_reads_back_to_the_same_symmetries(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    with open_checkpoint(folders["qwen2"]) as checkpoint:
        structure = discover(checkpoint)
        spec = tmp_path / "spec.toml"
        spec.write_text(emit_spec(structure, "qwen2"), encoding="utf-8")
        again = structure_from_spec(spec, checkpoint)
    strip = [
        (s.id, s.size, s.members, s.tie, s.exact, s.kind, s.group) for s in structure.symmetries
    ]
    assert [
        (s.id, s.size, s.members, s.tie, s.exact, s.kind, s.group) for s in again.symmetries
    ] == strip


def with_config(source: Path, folder: Path, **changes: object) -> Path:
    """A copy of the model folder `source` whose config.json has `changes`."""
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_an_architecture_transformers_does_not_know_is_bad_input(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from weissi_cli.structure.trace import TraceError

    folder = with_config(
        folders["llama"], tmp_path / "odd", model_type="notamodel", architectures=["NotAModel"]
    )
    with open_checkpoint(folder) as checkpoint, pytest.raises(TraceError) as raised:
        discover(checkpoint)
    assert "spec file" in str(raised.value)
    assert raised.value.exit_code == 2


def test_an_unregistered_architecture_is_traced_not_guessed(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """A LLaMA checkpoint whose config says granite (same tensor layout, not in the registry)
    is traced from transformers' own code."""
    folder = with_config(
        folders["llama"],
        tmp_path / "traced",
        model_type="granite",
        architectures=["GraniteForCausalLM"],
    )
    with open_checkpoint(folder) as checkpoint:
        structure = discover(checkpoint)
    assert not structure.is_assumed
    assert structure.origin == "graph:granite"
    assert {s.origin for s in structure.symmetries} == {"graph:granite"}


def test_a_config_that_disagrees_with_the_shapes_is_refused(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    folder = with_config(folders["llama"], tmp_path / "wrong", num_key_value_heads=4)
    with open_checkpoint(folder) as checkpoint, pytest.raises(StructureError, match="k_proj"):
        discover(checkpoint)


def test_a_config_beside_a_single_file_is_used(folders: dict[str, Path]) -> None:
    with open_checkpoint(folders["bert"] / "model.safetensors") as checkpoint:
        assert discover(checkpoint).origin == "config:bert"


def test_a_broken_config_is_bad_input(folders: dict[str, Path], tmp_path: Path) -> None:
    from weissi_cli.errors import InputError

    folder = with_config(folders["gpt2"], tmp_path / "broken")
    (folder / "config.json").write_text("{ not json")
    with (
        open_checkpoint(folder) as checkpoint,
        pytest.raises(InputError, match="malformed config .not valid JSON"),
    ):
        discover(checkpoint)
