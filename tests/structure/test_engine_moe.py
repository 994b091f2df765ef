"""Mixture-of-experts families through the real front-end: a folder saved by transformers
(experts stored one matrix each), traced from its config, rescaled along every symmetry
found, and loaded again by transformers: the logits stay the same."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from tests.exported_models import member_factors  # noqa: E402
from tests.structure.engine_helpers import channels  # noqa: E402
from weissi_cli.io import open_checkpoint  # noqa: E402
from weissi_cli.structure import discover  # noqa: E402

MOE: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {"num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"moe_intermediate_size": 24, "num_experts": 4, "num_experts_per_tok": 2, "head_dim": 8},
    ),
}
BASE = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def saved(family: str, folder: Path) -> Any:
    config_class, model_class, fields = MOE[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = getattr(transformers, config_class)(**BASE, **fields)
        torch.manual_seed(0)
        model = getattr(transformers, model_class)(config)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(torch.exp(torch.randn(parameter.shape, generator=generator) * 0.3))
        model.save_pretrained(folder)
    return getattr(transformers, model_class)


def logits(model_class: Any, folder: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_class.from_pretrained(folder).eval()
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", sorted(MOE))
def test_expert_symmetries_hold_when_transformers_loads_the_rescaled_folder(
    family: str, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    model_class = saved(family, tmp_path / "a")
    with open_checkpoint(tmp_path / "a") as checkpoint:
        structure = discover(checkpoint)
        shapes = {info.name: info.shape for info in checkpoint.tensors}
    assert not structure.is_assumed
    assert structure.origin == f"graph:{family}"
    # each expert keeps its own hidden units: up rows ↔ down columns, expert by expert
    experts = [s for s in structure.symmetries if ".experts.0." in s.id]
    assert experts
    expert_zero = {t for t in shapes if ".experts.0." in t}
    assert all({m.tensor for m in s.members} <= expert_zero for s in experts)
    # the MLP norm's gain feeds the router and every expert's input columns
    router = [s for s in structure.symmetries if "post_attention_layernorm" in s.id]
    assert router
    assert all(any("gate.weight" in m.tensor for m in s.members) for s in router)
    weights = load_file(tmp_path / "a" / "model.safetensors")
    generator = torch.Generator().manual_seed(2)
    scales = {
        s.id: torch.exp(torch.randn(s.size, generator=generator, dtype=torch.float64))
        for s in structure.symmetries
    }
    factors = member_factors(structure.symmetries, scales, shapes)
    rescaled = {
        name: (value.double() * factors[name]).float() if name in factors else value
        for name, value in weights.items()
    }
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "config.json", tmp_path / "b" / "config.json")
    save_file(rescaled, tmp_path / "b" / "model.safetensors", metadata={"format": "pt"})
    before, after = logits(model_class, tmp_path / "a"), logits(model_class, tmp_path / "b")
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5
    assert len(channels(structure.symmetries)) > 0
