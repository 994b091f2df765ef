"""LLaMA-shaped model folders of 2 to 100 layers with tiny hidden sizes, built and saved by
transformers' own classes, for reports at the scale of a real language model."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SIZES = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 32,
}


def save_llama(folder: Path, layers: int, seed: int = 0) -> Path:
    """A LlamaForCausalLM of `layers` blocks saved with save_pretrained. Each block's
    projections get their own scale (a few powers of two apart), as trained blocks do, so
    the norms, the imbalance and the optimal factors differ from block to block."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(num_hidden_layers=layers, **TINY_SIZES)
    model = transformers.LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".layers." in name and name.endswith("proj.weight"):
                exponent = int(torch.randint(-3, 4, (), generator=generator))
                parameter.mul_(2.0**exponent)
    model.save_pretrained(folder)
    return folder
