"""Train small digits models deterministically and write the sample checkpoints next to this file.

The models are trained for real on scikit-learn's bundled 8x8 digits dataset (no download),
with fixed seeds, a fixed train/test split, a fixed minibatch order, one thread and
deterministic algorithms, so running the script twice produces byte-identical files.

Run from anywhere:  python sample_checkpoints/make_samples.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

OUT_DIR = Path(__file__).resolve().parent
SOURCE = "weissi sample_checkpoints/make_samples.py"
DATASET = "sklearn digits"

SEED = 0
BATCH_SIZE = 64
MLP_EPOCHS = 60
MLP_LR = 1e-3
CNN_EPOCHS = 30
CNN_LR = 2e-3
MIN_ACCURACY = 0.95

# Power-of-two per-layer weight factors with product 1: the function is unchanged bit for bit.
SHIFT_FACTORS = {"net.0": 8.0, "net.2": 0.25, "net.4": 0.5}


class DigitsMLP(nn.Module):
    """64 -> 64 -> 32 -> 10 ReLU MLP; state-dict keys are ``net.{0,2,4}.{weight,bias}``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class DigitsCNN(nn.Module):
    """Two 3x3 ReLU convs (no normalisation) feeding a linear layer through a channel-major flatten.

    Each of the 16 channels of ``features.2`` covers 64 consecutive inputs of ``classifier``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x.view(-1, 1, 8, 8))
        return self.classifier(torch.flatten(x, 1))


def configure_determinism() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)``; pixels scaled to [0, 1], shape (N, 64)."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=SEED, stratify=digits.target
    )
    return (
        torch.tensor(x_train / 16.0, dtype=torch.float32),
        torch.tensor(y_train, dtype=torch.long),
        torch.tensor(x_test / 16.0, dtype=torch.float32),
        torch.tensor(y_test, dtype=torch.long),
    )


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float) -> None:
    """Adam (weight decay 0) on cross-entropy, minibatches drawn from a seeded generator."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for batch in order.split(BATCH_SIZE):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()


@torch.no_grad()
def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    return model(x)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return (logits_of(model, x).argmax(dim=1) == y).float().mean().item()


def metadata(test_accuracy: float, **extra: str) -> dict[str, str]:
    return {
        "source": SOURCE,
        "dataset": DATASET,
        "test_accuracy": f"{test_accuracy:.4f}",
        **extra,
    }


def save_safetensors(state: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    """``save_file`` plus a canonical header, so the file bytes are reproducible.

    safetensors keeps ``__metadata__`` in a Rust HashMap, so its key order in the JSON header
    changes from run to run. Re-serialise the header with the metadata in the given order; the
    tensor entries and data are untouched and the header length is preserved.
    """
    save_file(state, path, metadata=meta)
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    header.pop("__metadata__")
    canonical = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    assert len(canonical) <= header_len, "canonical safetensors header grew"
    path.unlink()  # save_file creates the file 0600; a fresh file follows the umask like .pt
    path.write_bytes(raw[:8] + canonical.ljust(header_len, b" ") + raw[8 + header_len :])


def shifted_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Scale each layer's weight by its factor and its bias by the cumulative product."""
    shifted: dict[str, Tensor] = {}
    cumulative = 1.0
    for layer, factor in SHIFT_FACTORS.items():
        cumulative *= factor
        shifted[f"{layer}.weight"] = state[f"{layer}.weight"] * factor
        shifted[f"{layer}.bias"] = state[f"{layer}.bias"] * cumulative
    assert list(shifted) == list(state), "shift must cover every tensor in the original order"
    return shifted


def detached(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def report_file(path: Path) -> None:
    print(f"  wrote {path.name:<32} {path.stat().st_size:>8} bytes")


def make_mlp(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> None:
    configure_determinism()
    model = DigitsMLP()
    train(model, x_train, y_train, MLP_EPOCHS, MLP_LR)
    acc = accuracy(model, x_test, y_test)
    print(f"mlp_digits test accuracy: {acc:.4f}")
    assert acc >= MIN_ACCURACY, f"MLP accuracy {acc:.4f} below {MIN_ACCURACY}"
    for name, tensor in model.state_dict().items():
        if name.endswith("weight"):
            print(f"  ||{name}||_F = {tensor.norm().item():.4f}")

    state = detached(model.state_dict())
    st_path = OUT_DIR / "mlp_digits.safetensors"
    save_safetensors(state, st_path, metadata(acc))
    report_file(st_path)
    pt_path = OUT_DIR / "mlp_digits.pt"
    torch.save(model.state_dict(), pt_path)
    report_file(pt_path)

    shifted = shifted_state_dict(state)
    shifted_model = DigitsMLP()
    shifted_model.load_state_dict(shifted)
    assert torch.equal(logits_of(shifted_model, x_test), logits_of(model, x_test)), (
        "scale shift changed the logits"
    )
    note = ", ".join(f"{layer}.weight x{f:g}" for layer, f in SHIFT_FACTORS.items())
    variant = f"function-preserving scale shift of mlp_digits ({note}; biases x cumulative)"
    path = OUT_DIR / "mlp_digits_shifted.safetensors"
    save_safetensors(shifted, path, metadata(acc, variant=variant))
    report_file(path)

    bf16 = {name: tensor.to(torch.bfloat16) for name, tensor in state.items()}
    path = OUT_DIR / "mlp_digits_bf16.safetensors"
    save_safetensors(bf16, path, metadata(acc, variant="bfloat16 cast of mlp_digits"))
    report_file(path)

    path = OUT_DIR / "mlp_digits_wrapped.pt"
    torch.save({"epoch": MLP_EPOCHS, "model_state": model.state_dict(), "test_accuracy": acc}, path)
    report_file(path)


def make_cnn(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> None:
    configure_determinism()
    model = DigitsCNN()
    train(model, x_train, y_train, CNN_EPOCHS, CNN_LR)
    acc = accuracy(model, x_test, y_test)
    print(f"cnn_digits test accuracy: {acc:.4f}")
    assert acc >= MIN_ACCURACY, f"CNN accuracy {acc:.4f} below {MIN_ACCURACY}"

    path = OUT_DIR / "cnn_digits.safetensors"
    save_safetensors(detached(model.state_dict()), path, metadata(acc))
    report_file(path)
    path = OUT_DIR / "cnn_digits.pt"
    torch.save(model.state_dict(), path)
    report_file(path)


def main() -> None:
    configure_determinism()
    data = load_data()
    make_mlp(*data)
    make_cnn(*data)


if __name__ == "__main__":
    main()
