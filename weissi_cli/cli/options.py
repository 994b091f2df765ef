"""Option and argument aliases shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Checkpoint = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint: .safetensors, a sharded *.safetensors.index.json, a model folder "
        "(with a Hugging Face config.json: the architecture's exact symmetries), a torch "
        "pickle (.pt/.pth/.bin) or a torch.export program (.pt2).",
        show_default=False,
    ),
]
Spec = Annotated[
    Path | None,
    typer.Option("--spec", help="Structure spec file (TOML); see `weissi graph --emit-spec`."),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print the JSON payload on stdout instead of tables.")
]
IncludeBias = Annotated[
    bool,
    typer.Option(
        "--include-bias",
        help="Penalise biases too (1-D parameters), with the exact bias-aware optimum.",
    ),
]
Granularity = Annotated[
    str,
    typer.Option(
        "--granularity",
        help="layer: one scale per layer; channel: one scale per hidden unit (per-channel "
        "rebalancing, which can only lower L2 further).",
    ),
]
AllowApproximate = Annotated[
    bool,
    typer.Option(
        "--allow-approximate",
        help="Include approximate symmetries (a transformer's GELU MLP); rebalance then "
        "measures the output change with transformers.",
    ),
]
