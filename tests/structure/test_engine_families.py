"""The engine on transformer families built with transformers' own classes: every symmetry
it finds holds when the model's own code runs before and after a random rescaling, each is
tight, and for the registered families the registry lists exactly the traced channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hf_families import FAMILIES, Outputs, build, example_input
from tests.structure.engine_helpers import assert_exact_and_tight, channels, engine_structure

torch = pytest.importorskip("torch")

# What each family must show (channels grouped by kind), so that a rule that stops too much
# fails here too: (symmetries at least, kinds that must appear).
MUST_FIND: dict[str, tuple[int, tuple[str, ...]]] = {
    "llama": (
        15,
        (
            "q_proj → self_attn.k_proj",
            "v_proj → self_attn.o_proj",
            "up_proj → mlp.down_proj",
            "input_layernorm",
            "norm",
        ),
    ),
    "mistral": (11, ("q_proj", "v_proj", "up_proj", "input_layernorm")),
    "qwen2": (15, ("q_proj", "v_proj", "up_proj", "input_layernorm")),
    "qwen3": (13, ("v_proj", "up_proj", "input_layernorm")),
    "gemma2": (10, ("q_proj", "v_proj", "up_proj")),
    "gemma3": (6, ("v_proj", "up_proj")),
    "phi3": (15, ("qkv_proj", "gate_up_proj")),
    "olmo2": (11, ("v_proj", "up_proj")),
    "granite": (15, ("q_proj", "v_proj", "up_proj", "input_layernorm")),
    "starcoder2": (12, ("q_proj", "v_proj", "input_layernorm")),
    "gpt_neox": (12, ("query_key_value", "input_layernorm")),
    "gpt2": (8, ("c_attn", "ln_1", "ln_2")),
    "bert": (4, ("query", "value")),
    "t5": (20, ("q", "v", "wi", "layer_norm")),
    "vit": (8, ("q_proj", "v_proj", "layernorm_before", "layernorm_after")),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_traced_symmetries_hold_with_the_models_own_code(family: str) -> None:
    model = build(family)
    inputs = example_input(family, model)
    wrapped = Outputs(model, tuple(inputs))
    args = tuple(inputs.values())
    structure = engine_structure(wrapped, args)
    assert not structure.is_assumed
    least, kinds = MUST_FIND[family]
    assert len(structure.symmetries) >= least
    found_kinds = " ".join(s.kind for s in structure.symmetries)
    for kind in kinds:
        assert kind in found_kinds, kind
    assert_exact_and_tight(wrapped, args, structure)


REGISTERED = ("llama", "llama_tied", "mistral", "qwen2", "bert", "gpt2")


@pytest.mark.parametrize("name", REGISTERED)
def test_the_registry_lists_exactly_the_traced_channels(name: str, tmp_path: Path) -> None:
    """The hand-written families are the fast path without torch: they must agree with the
    engine channel by channel (the registry's approximate GELU symmetries aside)."""
    from tests import hf_models
    from weissi_cli.io import open_checkpoint
    from weissi_cli.structure import structure_from_traced
    from weissi_cli.structure.architectures import family_for, find_config, structure_from_config
    from weissi_cli.structure.trace import from_transformers

    folder = hf_models.save(hf_models.build(name), tmp_path / name)
    with open_checkpoint(folder) as checkpoint:
        config = find_config(checkpoint.path)
        assert config is not None
        family = family_for(config)
        assert family is not None
        shapes = {info.name: info.shape for info in checkpoint.tensors}
        registry = structure_from_config(config, family, shapes)
        traced = structure_from_traced(
            from_transformers(config.path, [info.name for info in checkpoint.tensors]), checkpoint
        )
    exact = [s for s in registry.symmetries if s.exact]
    assert channels(exact) == channels(traced.symmetries)
