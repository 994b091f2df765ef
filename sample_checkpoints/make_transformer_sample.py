"""Train the bundled sample transformer: a tiny LLaMA (GQA, RoPE, SwiGLU) that predicts the
next character of the dataset descriptions scikit-learn ships (offline, no hub).

    python sample_checkpoints/make_transformer_sample.py

Writes sample_checkpoints/tiny_llama_chars/ (config.json, model.safetensors, README.md)
with transformers' own save_pretrained, and prints the loss before and after training.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import transformers
from sklearn.datasets import descr

OUT = Path(__file__).resolve().parent / "tiny_llama_chars"
SEED = 0
STEPS = 400
BATCH = 16
CONTEXT = 64
VOCAB = 128  # ASCII; anything else becomes "?"


def corpus() -> torch.Tensor:
    folder = Path(descr.__file__).parent
    text = "\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.rst")))
    codes = [ord(c) if ord(c) < VOCAB else ord("?") for c in text]
    return torch.tensor(codes, dtype=torch.long)


def batch(data: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(len(data) - CONTEXT - 1, (BATCH,), generator=generator)
    return torch.stack([data[s : s + CONTEXT + 1] for s in starts.tolist()])


def loss_of(model: transformers.LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids[:, :-1], labels=ids[:, :-1].clone()).loss


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    data = corpus()
    split = int(0.9 * len(data))
    train, held_out = data[:split], data[split:]
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=3,
    )
    model = transformers.LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(SEED)
    evaluation = batch(held_out, torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        initial = float(loss_of(model.eval(), evaluation))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(STEPS):
        loss = loss_of(model, batch(train, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(loss_of(model.eval(), evaluation))
    model.save_pretrained(OUT)
    (OUT / "README.md").write_text(
        "# tiny_llama_chars\n\n"
        "A 2-layer LLaMA (4 query heads over 2 key/value heads, RoPE, SwiGLU, untied "
        "embeddings) trained for real, by `sample_checkpoints/make_transformer_sample.py`, to "
        "predict the next ASCII character of the dataset descriptions bundled with "
        f"scikit-learn. {STEPS} AdamW steps of {BATCH}×{CONTEXT} characters; held-out "
        f"cross-entropy {initial:.3f} → {final:.3f} nats per character "
        f"(perplexity {math.exp(initial):.1f} → {math.exp(final):.1f}).\n",
        encoding="utf-8",
    )
    print(f"held-out loss {initial:.3f} -> {final:.3f}; wrote {OUT}")


if __name__ == "__main__":
    main()
