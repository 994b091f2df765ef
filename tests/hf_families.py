"""Tiny models of the transformer families the engine covers, built with transformers' own
classes: configs small enough to export in a second, with every feature the symmetries
depend on (GQA, RoPE and partial rotary, q/k norms, fused projections, biases, tied and
untied embeddings, post-norms, multipliers, encoder-decoder, patch embeddings)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

DECODER = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}

# family -> (config class, model class, config fields on top of DECODER or alone)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", DECODER),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**DECODER, "sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", DECODER),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**DECODER, "head_dim": 8}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {**DECODER, "head_dim": 8, "sliding_window": 8},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {**DECODER, "head_dim": 8, "sliding_window": 8},
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**DECODER, "pad_token_id": 0}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {**DECODER, "pad_token_id": 0}),
    "granite": (
        "GraniteConfig",
        "GraniteForCausalLM",
        {
            **DECODER,
            "embedding_multiplier": 2.0,
            "residual_multiplier": 0.5,
            "attention_multiplier": 0.3,
            "logits_scaling": 4.0,
        },
    ),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", DECODER),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {**DECODER, "rotary_pct": 0.5, "use_parallel_residual": True},
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
    "t5": (
        "T5Config",
        "T5ForConditionalGeneration",
        {
            "vocab_size": 96,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 48,
            "num_layers": 2,
            "num_heads": 4,
            "decoder_start_token_id": 0,
        },
    ),
    "vit": (
        "ViTConfig",
        "ViTModel",
        {
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 16,
            "patch_size": 4,
            "num_channels": 3,
        },
    ),
}


def build(family: str, seed: int = 0, dtype: str = "float64", spread: float = 0.0) -> Any:
    """The model with weights spread unevenly (each entry times e^N(0, 0.1), gains and
    biases shifted), so that symmetries are visible in its outputs; with `spread`, each
    matrix is also multiplied by its own 2^U(-spread, spread), so that the symmetries are
    far from balanced (power-of-two scales then have work to do)."""
    import torch

    config_class, model_class, fields = FAMILIES[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = getattr(transformers, config_class)(**fields)
        torch.manual_seed(seed)
        model = getattr(transformers, model_class)(config)
    model = model.to(getattr(torch, dtype)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.mul_(torch.exp(noise * 0.1).to(parameter.dtype))
            if parameter.dim() == 1:
                shift = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.add_((shift * 0.3).to(parameter.dtype))
            elif spread:
                exponent = float(torch.empty(()).uniform_(-spread, spread, generator=generator))
                parameter.mul_(2.0 ** round(exponent))
    return model


def example_input(family: str, model: Any) -> dict[str, Any]:
    """Keyword inputs for the model's forward (a fixed seed)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    if family == "vit":
        pixels = torch.randn((2, 3, 16, 16), generator=generator, dtype=torch.float64)
        return {"pixel_values": pixels.to(model.dtype)}
    ids = torch.randint(0, 96, (2, 6), generator=generator)
    if family == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids}
    return {"input_ids": ids}


class Outputs:
    """A module around a transformers model that takes positional inputs and returns its
    main output, for torch.export and for before/after comparisons."""

    def __new__(cls, model: Any, names: tuple[str, ...]) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, *inputs: Any) -> Any:
                kwargs = dict(zip(names, inputs, strict=True))
                if "input_ids" in kwargs and "use_cache" in model.forward.__code__.co_varnames:
                    kwargs["use_cache"] = False
                result = self.m(**kwargs)
                return result.logits if "logits" in result else result.last_hidden_state

        return Wrapped()
