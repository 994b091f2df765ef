"""Tiny Hugging Face models built from each covered architecture's own transformers code."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

SEED = 0

# name -> (config class, model class, config fields). Sizes are the smallest that keep
# every feature the symmetries depend on: GQA (4 query heads over 2 key/value heads), RoPE
# (even head_dim), biases (qwen2's q/k/v), untied and tied embeddings.
TINY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "vocab_size": 96,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        },
    ),
    "llama_tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "vocab_size": 96,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 64,
            "tie_word_embeddings": True,
        },
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        {
            "vocab_size": 96,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "max_position_embeddings": 64,
            "sliding_window": 8,
        },
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {
            "vocab_size": 96,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        },
    ),
    "bert": (
        "BertConfig",
        "BertModel",
        {
            "vocab_size": 96,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
        },
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {
            "vocab_size": 96,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 64,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ),
}


def build(name: str, dtype: str = "float32", **sizes: int) -> Any:
    """A randomly initialised model whose weights are spread unevenly on purpose (each
    projection multiplied by its own factor), so that rebalancing has work to do. `sizes`
    override config fields (e.g. hidden_size)."""
    import torch

    config_class, model_class, fields = TINY[name]
    fields = {**fields, **sizes}
    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = getattr(transformers, config_class)(**fields)
        model = getattr(transformers, model_class)(config)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "emb" not in parameter_name and "wte" not in parameter_name:
                factor = 2.0 ** float(torch.empty(()).uniform_(-2.5, 2.5, generator=generator))
                parameter.mul_(factor)
            elif parameter.dim() == 1 and "norm" in parameter_name.lower():
                parameter.uniform_(0.5, 1.5, generator=generator)
    return model.to(getattr(torch, dtype)).eval()


def save(model: Any, folder: Path, **options: Any) -> Path:
    """save_pretrained (safetensors), plus the companion files a real model folder has."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, **options)
    (folder / "README.md").write_text("# a tiny test model\n", encoding="utf-8")
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    return folder


def load(folder: Path) -> Any:
    from weissi_cli.verify_transformers import _load

    return _load(transformers, folder)


def outputs(model: Any, seed: int = 1) -> Any:
    """Logits (or the last hidden state) on fixed random token ids."""
    import torch

    ids = torch.randint(
        model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        result = model(input_ids=ids)
    return result.logits if "logits" in result else result.last_hidden_state
