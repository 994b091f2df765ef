"""WEISSI against L2: the same ReLU MLP trained on scikit-learn's digits four ways.

    none    Adam, no regulariser
    l2      Adam, loss + a·Σ‖W‖²               (L2 as a loss term: Adam rescales its gradient)
    adamw   AdamW, decoupled weight decay a     (the decay is applied beside the Adam step)
    weissi  Adam, loss + a·weissi_penalty(model)  (λ1 = λ2 = 1)

and, at WEISSI's chosen strength, each of its two terms alone (weissi-log: λ2 = 0,
weissi-dir: λ1 = 0), to see which one does what.

Only weights (tensors with two or more dimensions) are penalised, as weissi reports them.
Each strength a is chosen on a validation split (mean accuracy over two selection seeds, ties
broken by the lower validation loss); the chosen strengths are then trained with the
evaluation seeds, saving a safetensors checkpoint every few epochs. Reported per method,
mean ± standard deviation over seeds: test accuracy, accuracy under FGSM at ε = 0.05 and 0.1
(inputs scaled to [0, 1]), and — read from the final checkpoint by weissi itself, as
`weissi trend` shows them — the final L2, its slack and WEISSI.

    python examples/weissi_vs_l2.py                      # the full run: ~3 min of CPU, 1 core
    python examples/weissi_vs_l2.py --quick              # end to end in seconds
    weissi trend weissi_vs_l2_runs/l2/seed0 --plot l2.png  # one run's trajectory
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from weissi_cli.api.trend import trend_checkpoints
from weissi_cli.penalty import weissi_penalty

METHODS = ("none", "l2", "adamw", "weissi")
# Each term of WEISSI alone, at the strength chosen for WEISSI: (λ1, λ2).
ABLATIONS = {"weissi-log": (1.0, 0.0), "weissi-dir": (0.0, 1.0)}
GRIDS: dict[str, tuple[float, ...]] = {
    "none": (0.0,),
    "l2": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "adamw": (0.1, 0.3, 1.0, 3.0, 10.0),
    "weissi": (1e-4, 1e-3, 3e-3, 1e-2, 3e-2),
}
QUICK_GRIDS: dict[str, tuple[float, ...]] = {
    "none": (0.0,),
    "l2": (1e-3,),
    "adamw": (1.0,),
    "weissi": (3e-3,),
}
SELECTION_SEEDS = (100, 101)
EVALUATION_SEEDS = (0, 1, 2, 3, 4)
FGSM_EPSILONS = (0.05, 0.1)
HIDDEN = (128, 64)
LEARNING_RATE = 1e-3
BATCH_SIZE = 64


@dataclass(frozen=True)
class Data:
    train: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


@dataclass
class Run:
    """One trained model: where its checkpoints are and what it measured."""

    method: str
    strength: float
    seed: int
    validation_accuracy: float
    validation_loss: float
    test_accuracy: float = math.nan
    fgsm_accuracy: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)  # from weissi trend's last point
    checkpoints: str | None = None


def load_data() -> Data:
    """Digits (1,797 8×8 images) scaled to [0, 1]; a fixed stratified 60/20/20 split."""
    inputs, labels = load_digits(return_X_y=True)
    inputs = (inputs / 16.0).astype(np.float32)
    rest_x, test_x, rest_y, test_y = train_test_split(
        inputs, labels, test_size=0.2, stratify=labels, random_state=0
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=0.25, stratify=rest_y, random_state=0
    )

    def pair(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(x), torch.from_numpy(y).long()

    return Data(pair(train_x, train_y), pair(val_x, val_y), pair(test_x, test_y))


def make_model() -> nn.Sequential:
    sizes = (64, *HIDDEN, 10)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def weights_of(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.dim() >= 2]


def train(
    method: str,
    strength: float,
    seed: int,
    data: Data,
    epochs: int,
    save_every: int = 0,
    folder: Path | None = None,
) -> tuple[nn.Module, Run]:
    """Train one model; with a folder, save `step_<n>.safetensors` at step 0, every
    `save_every` epochs and at the end (n = optimizer steps taken)."""
    lambdas = ABLATIONS.get(method, (1.0, 1.0))
    torch.manual_seed(seed)
    model = make_model()
    weights = weights_of(model)
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer: torch.optim.Optimizer
    if method == "adamw":
        optimizer = torch.optim.AdamW(
            [{"params": weights, "weight_decay": strength}, {"params": others, "weight_decay": 0}],
            lr=LEARNING_RATE,
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(seed)
    inputs, labels = data.train
    step = 0

    def save() -> None:
        if folder is not None:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(folder / f"step_{step}.safetensors"))

    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("step_*.safetensors"):
            old.unlink()
    save()
    for epoch in range(1, epochs + 1):
        model.train()
        permutation = torch.randperm(len(inputs), generator=order)
        for start in range(0, len(inputs), BATCH_SIZE):
            batch = permutation[start : start + BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            if method == "l2":
                loss = loss + strength * sum((w * w).sum() for w in weights)
            elif method.startswith("weissi"):
                loss = loss + strength * weissi_penalty(model, *lambdas)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if save_every and (epoch % save_every == 0 or epoch == epochs):
            save()
    model.eval()
    val_x, val_y = data.validation
    with torch.no_grad():
        logits = model(val_x)
        run = Run(
            method,
            strength,
            seed,
            validation_accuracy=accuracy(logits, val_y),
            validation_loss=float(nn.functional.cross_entropy(logits, val_y)),
            checkpoints=str(folder) if folder is not None else None,
        )
    return model, run


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def fgsm_accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, epsilon: float) -> float:
    """Accuracy on x + ε·sign(∇ₓ loss), clipped to the pixel range [0, 1]."""
    attacked = inputs.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(attacked), labels)
    (gradient,) = torch.autograd.grad(loss, attacked)
    perturbed = (inputs + epsilon * gradient.sign()).clamp(0.0, 1.0)
    with torch.no_grad():
        return accuracy(model(perturbed), labels)


def select(
    data: Data, grids: dict[str, tuple[float, ...]], seeds: Sequence[int], epochs: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per method, the strength with the best mean validation accuracy (ties: lower loss)."""
    chosen: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    for method in METHODS:
        scores = []
        for strength in grids[method]:
            runs = [train(method, strength, seed, data, epochs)[1] for seed in seeds]
            accuracy_mean = statistics.fmean(r.validation_accuracy for r in runs)
            loss_mean = statistics.fmean(r.validation_loss for r in runs)
            scores.append((accuracy_mean, -loss_mean, strength))
            table.append(
                {
                    "method": method,
                    "strength": strength,
                    "validation_accuracy": accuracy_mean,
                    "validation_loss": loss_mean,
                }
            )
            print(
                f"  select {method:6} a={strength:<8g} val acc {accuracy_mean:.4f} "
                f"loss {loss_mean:.4f}",
                file=sys.stderr,
            )
        chosen[method] = max(scores)[2]
    return chosen, table


def evaluate(
    data: Data,
    chosen: dict[str, float],
    seeds: Sequence[int],
    epochs: int,
    save_every: int,
    out: Path,
) -> list[Run]:
    runs = []
    test_x, test_y = data.test
    strengths = {**chosen, **dict.fromkeys(ABLATIONS, chosen["weissi"])}
    for method, strength in strengths.items():
        for seed in seeds:
            folder = out / method / f"seed{seed}"
            model, run = train(method, strength, seed, data, epochs, save_every, folder)
            with torch.no_grad():
                run.test_accuracy = accuracy(model(test_x), test_y)
            run.fgsm_accuracy = {
                f"{eps:g}": fgsm_accuracy(model, test_x, test_y, eps) for eps in FGSM_EPSILONS
            }
            last = trend_checkpoints([folder]).points[-1]
            run.final = {
                "l2_penalty": _number(last.l2_penalty),
                "min_l2_penalty": _number(last.min_l2_penalty),
                "l2_slack": _number(last.l2_slack),
                "weissi_penalty": _number(last.weissi_penalty),
                "imbalance": _number(last.imbalance),
            }
            runs.append(run)
            print(
                f"  {method:10} seed {seed}: test {run.test_accuracy:.4f} "
                f"fgsm {run.fgsm_accuracy} L2 {run.final['l2_penalty']:.4g} "
                f"slack {run.final['l2_slack']:.4g} WEISSI {run.final['weissi_penalty']:.4g}",
                file=sys.stderr,
            )
    return runs


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """Per method: mean, standard deviation (n − 1) and range over seeds of each measure."""
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        measures = {
            "test_accuracy": [r.test_accuracy for r in mine],
            **{f"fgsm_{e}": [r.fgsm_accuracy[e] for r in mine] for e in mine[0].fgsm_accuracy},
            **{key: [r.final[key] for r in mine] for key in mine[0].final},
        }
        rows.append(
            {
                "method": method,
                "strength": mine[0].strength,
                "seeds": [r.seed for r in mine],
                **{key: _spread(values) for key, values in measures.items()},
            }
        )
    return rows


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(entry: dict[str, float], percent: bool = False, digits: int = 4) -> str:
        if percent:
            return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"
        return f"{entry['mean']:.{digits}g} ± {entry['std']:.2g}"

    epsilons = [key.removeprefix("fgsm_") for key in rows[0] if key.startswith("fgsm_")]
    head = (
        "| method | strength | test acc. % | "
        + " | ".join(f"FGSM ε={e} acc. %" for e in epsilons)
        + " | final L2 | L2 slack | WEISSI |"
    )
    lines = [head, "|" + "---|" * (6 + len(epsilons))]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['strength']:g} | {cell(row['test_accuracy'], True)} | "
            + " | ".join(cell(row[f"fgsm_{e}"], True) for e in epsilons)
            + f" | {cell(row['l2_penalty'])} | {cell(row['l2_slack'])} | "
            f"{cell(row['weissi_penalty'])} |"
        )
    return "\n".join(lines)


def trajectories(out: Path, seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per method, `weissi trend` over each seed's checkpoints: steps and the series."""
    found: dict[str, dict[str, Any]] = {}
    keys = ("l2_penalty", "l2_slack", "slack_share", "weissi_penalty")
    for method in METHODS:
        series: dict[str, list[list[float]]] = {key: [] for key in keys}
        steps: list[int] = []
        for seed in seeds:
            report = trend_checkpoints([out / method / f"seed{seed}"])
            steps = report.x_values()
            for key in keys:
                series[key].append([_number(getattr(p, key)) for p in report.points])
        found[method] = {"steps": steps, **series}
    return found


def plot(found: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter, PercentFormatter

    colours = {"none": "#4c72b0", "l2": "#dd8452", "adamw": "#55a868", "weissi": "#8172b2"}
    panels = (
        ("l2_penalty", "L2 = Σ‖W‖²", "log"),
        ("l2_slack", "L2 slack (what a rescaling removes)", "log"),
        ("slack_share", "slack / L2", "percent"),
        ("weissi_penalty", "WEISSI (λ1 = λ2 = 1)", "linear"),
    )
    figure, axes = pyplot.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for axis, (key, title, scale) in zip(axes.flat, panels, strict=True):
        for method, data in found.items():
            values = np.array(data[key])
            axis.plot(data["steps"], values.mean(axis=0), color=colours[method], label=method)
            axis.fill_between(
                data["steps"],
                values.min(axis=0),
                values.max(axis=0),
                color=colours[method],
                alpha=0.15,
                linewidth=0,
            )
        if scale == "log":
            axis.set_yscale("log")
            axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            axis.yaxis.set_minor_formatter(NullFormatter())
        elif scale == "percent":
            axis.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        axis.set_title(title, fontsize=10)
        axis.grid(True, alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("optimizer step")
    axes[0, 0].legend(fontsize=8)
    seeds = len(next(iter(found.values()))["l2_penalty"])
    figure.suptitle(
        f"digits MLP 64-128-64-10, {seeds} seed{'s' if seeds != 1 else ''} each: mean, band = "
        "min–max (read from the checkpoints by weissi trend)",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one strength, one seed, few epochs")
    parser.add_argument("--out", type=Path, default=Path("weissi_vs_l2_runs"))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="trajectories figure (.png)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    epochs = args.epochs or (6 if args.quick else 60)
    save_every = 2 if args.quick else 5
    grids = QUICK_GRIDS if args.quick else GRIDS
    selection_seeds = SELECTION_SEEDS[:1] if args.quick else SELECTION_SEEDS
    seeds = EVALUATION_SEEDS[:1] if args.quick else EVALUATION_SEEDS
    data = load_data()
    print(f"selecting strengths ({epochs} epochs, seeds {selection_seeds})", file=sys.stderr)
    chosen, selection = select(data, grids, selection_seeds, epochs)
    print(f"chosen: {chosen}; evaluating with seeds {seeds}", file=sys.stderr)
    runs = evaluate(data, chosen, seeds, epochs, save_every, args.out)
    rows = summary(runs)
    found = trajectories(args.out, seeds)
    if args.plot is not None:
        plot(found, args.plot)
    results = {
        "epochs": epochs,
        "quick": args.quick,
        "selection_seeds": list(selection_seeds),
        "evaluation_seeds": list(seeds),
        "grids": {k: list(v) for k, v in grids.items()},
        "chosen": chosen,
        "selection": selection,
        "runs": [asdict(run) for run in runs],
        "summary": rows,
        "trajectories": found,
        "seconds": time.perf_counter() - began,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    print(markdown_table(rows))
    print(
        f"\n{len(runs)} evaluation runs in {results['seconds']:.0f} s; checkpoints under "
        f"{args.out}/<method>/seed<n>/ — e.g. weissi trend {args.out}/l2/seed{seeds[0]}",
        file=sys.stderr,
    )
    return results


if __name__ == "__main__":
    main()
