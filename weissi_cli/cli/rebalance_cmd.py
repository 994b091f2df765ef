"""`weissi rebalance`: write the L2-optimal, functionally identical checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weissi_cli.choices import Granularity as GranularityChoice
from weissi_cli.choices import OutputFormat, Scales, VerifyWith
from weissi_cli.cli.console import print_warnings, progress_bar, set_quiet, stdout_console
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    AllowApproximate,
    Checkpoint,
    ExampleDtype,
    ExampleShape,
    Granularity,
    IncludeBias,
    Json,
    ModelCode,
    Quiet,
    Spec,
    structure_source,
)


@handle_errors
def rebalance(
    checkpoint: Checkpoint,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Where to write the rebalanced checkpoint (same format)."
        ),
    ],
    spec: Spec = None,
    model: ModelCode = None,
    example_shape: ExampleShape = None,
    example_dtype: ExampleDtype = "float32",
    assume_relu: Annotated[
        bool,
        typer.Option(
            "--assume-relu",
            help="Act on structure inferred from names and shapes (activations assumed ReLU).",
        ),
    ] = False,
    scales: Annotated[
        Scales,
        typer.Option(
            "--scales",
            help="real: exact scales; pow2: powers of two (bit-identical outputs); "
            "auto: pow2 for 16-bit tensors.",
        ),
    ] = Scales.AUTO,
    include_bias: IncludeBias = False,
    granularity: Granularity = GranularityChoice.LAYER,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output (never the input).")
    ] = False,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="same: the input's format; safetensors: just the tensors of a pickle or .pt2.",
        ),
    ] = OutputFormat.SAME,
    allow_approximate: AllowApproximate = False,
    verify_with: Annotated[
        VerifyWith | None,
        typer.Option(
            "--verify-with",
            help="transformers: load both model folders with the architecture's own class and "
            "compare outputs (the default for a Hugging Face folder when transformers is "
            "installed and both models fit in memory); none: do not run the model.",
        ),
    ] = None,
    write_unchanged: Annotated[
        bool,
        typer.Option(
            "--write-unchanged",
            help="Write the output even when every scale is 1 (by default nothing is written "
            "then, and the exit code is 0).",
        ),
    ] = False,
    hold_activations: Annotated[
        bool,
        typer.Option(
            "--hold-activations",
            help="With power-of-two scales, never scale a chain's hidden activations down (so "
            "none that is a normal float16 becomes subnormal), at some cost in L2.",
        ),
    ] = False,
    hold_headroom: Annotated[
        bool,
        typer.Option(
            "--hold-headroom",
            help="With power-of-two scales, never scale an activation up (so a float16 model "
            "overflows no sooner than before), at some cost in L2.",
        ),
    ] = False,
    drop_optimizer_state: Annotated[
        bool,
        typer.Option(
            "--drop-optimizer-state",
            help="A training checkpoint (torch pickle) with optimizer state: write the "
            "rebalanced weights without it (Adam's moments do not fit rescaled weights).",
        ),
    ] = False,
    allow_unread: Annotated[
        bool,
        typer.Option(
            "--allow-unread",
            help="With --model: rebalance although the traced forward pass reads some of the "
            "checkpoint's tensors not at all (a head only training uses); the module's runs in "
            "eval and train mode and at a second batch size are then all that checks them.",
        ),
    ] = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> None:
    """Rescale layers to the L2 optimum without changing the function, then verify.

    Example: weissi rebalance model.safetensors -o balanced.safetensors --spec spec.toml

    A model folder in (a Hugging Face checkpoint) gives a model folder out. The verdict
    names what it proved: ✓ only when the real network ran on both files (a .pt2, or
    --verify-with transformers); otherwise its own mark and what is left to check. Exit 0:
    written (or nothing to do); 1: verification failed, nothing written; 2: refused
    (unplaceable structure, bad input), nothing written.
    """
    from weissi_cli.api.rebalance import rebalance_checkpoint
    from weissi_cli.report.common import to_json

    set_quiet(quiet)
    with progress_bar():
        report = rebalance_checkpoint(
            checkpoint,
            output,
            structure_source(spec, model, example_shape, example_dtype, allow_approximate),
            assume_relu,
            scales,
            include_bias,
            force,
            granularity=granularity,
            extra_flags=("--json",) if json_output else (),
            output_format=output_format,
            allow_approximate=allow_approximate,
            verify_with=verify_with,
            write_unchanged=write_unchanged,
            hold_activations=hold_activations,
            drop_optimizer_state=drop_optimizer_state,
            allow_unread=allow_unread,
            hold_headroom=hold_headroom,
        )
    if json_output:
        typer.echo(to_json(report.to_dict()))
    else:
        from weissi_cli.cli.render import render_rebalance

        render_rebalance(report, stdout_console())
    print_warnings(report.warnings)
    if not report.verification.passed:
        raise typer.Exit(1)
