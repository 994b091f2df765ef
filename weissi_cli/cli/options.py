"""Option and argument aliases shared by the commands.

Output options have one spelling everywhere: `--format` chooses what stdout carries (`--json`
is `--format json`), `-o/--output FILE` sends that to a file instead (for `rebalance`, the
rebalanced checkpoint), a report with its own option names its file (`--plot FILE`;
`check --junit/--markdown/--json FILE`), and `--force` lets any of them replace a file.
Every file is written atomically and never through a link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from weissi_cli import choices

Checkpoint = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint: .safetensors, a sharded *.safetensors.index.json, a model folder "
        "(with a Hugging Face config.json: the architecture's exact symmetries), a torch "
        "pickle (.pt/.pth/.bin), a torch.export program (.pt2) or an ONNX model (.onnx, or a "
        "folder holding one with its external data).",
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
    choices.Granularity,
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
ModelCode = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="FILE.py:NAME, the model's own code (NAME: a class or function returning the "
        "nn.Module): weissi exports it on the meta device and reads the exact structure of "
        "the checkpoint from its graph. Needs --example-shape.",
    ),
]
ExampleShape = Annotated[
    list[str] | None,
    typer.Option(
        "--example-shape",
        help="With --model: the shape of one input, like 1x3x48x48 (repeat for several inputs).",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress, warnings or notes on stderr (errors still show)."
    ),
]
Force = Annotated[
    bool, typer.Option("--force", help="Replace existing output files (never the input).")
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write what stdout would show (in --format) to FILE instead, atomically.",
        show_default=False,
    ),
]
Plot = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Also draw the report to FILE.png or .svg (needs matplotlib).",
        show_default=False,
    ),
]
ExampleDtype = Annotated[
    str,
    typer.Option("--example-dtype", help="With --model: the dtype of the example inputs."),
]


def structure_source(
    spec: Path | None,
    model: str | None,
    example_shape: list[str] | None,
    example_dtype: str,
    allow_approximate: bool = False,
) -> Any:
    """The `StructureSource` the structure options describe (validated once, here)."""
    from weissi_cli.errors import UsageError
    from weissi_cli.structure.source import StructureSource

    if model is None and example_shape:
        raise UsageError("--example-shape is for --model; pass the model's code with --model")
    if model is not None and spec is not None:
        raise UsageError("--spec and --model both give the structure; pass one of them")
    shapes: tuple[tuple[int, ...], ...] = ()
    if example_shape:  # the tracing module loads only for a model's code
        from weissi_cli.structure.trace import parse_shape

        shapes = tuple(parse_shape(text) for text in example_shape)
    return StructureSource(
        spec=spec,
        model=model,
        example_shapes=shapes,
        example_dtype=example_dtype,
        allow_approximate=allow_approximate,
    )
