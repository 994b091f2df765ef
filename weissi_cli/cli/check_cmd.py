"""`weissi check`: gate a CI pipeline on an exported checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from weissi_cli.cli.console import print_warnings, progress_bar, stdout_console
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    Checkpoint,
    ExampleDtype,
    ExampleShape,
    ModelCode,
    Spec,
    structure_source,
)

FORMATS = ("text", "json", "junit", "github", "markdown")


@handle_errors
def check(
    checkpoint: Checkpoint,
    max_imbalance: Annotated[
        float | None,
        typer.Option(
            "--max-imbalance", help="Fail a chain whose largest/smallest layer norm exceeds R."
        ),
    ] = None,
    max_l2_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-l2-ratio", help="Fail where L2 / its minimum over scale shifts exceeds X."
        ),
    ] = None,
    max_abs: Annotated[
        float | None, typer.Option("--max-abs", help="Fail a tensor with |w| above V.")
    ] = None,
    max_norm: Annotated[
        float | None,
        typer.Option("--max-norm", help="Fail a tensor whose Frobenius norm exceeds V."),
    ] = None,
    no_dead_units: Annotated[
        bool | None,
        typer.Option(
            "--no-dead-units", help="Fail on all-zero rows or columns (otherwise a warning)."
        ),
    ] = None,
    fp16_headroom: Annotated[
        bool | None,
        typer.Option(
            "--fp16-headroom",
            help="Fail on values that overflow or flush to zero in float16/bfloat16.",
        ),
    ] = None,
    spec: Spec = None,
    model: ModelCode = None,
    example_shape: ExampleShape = None,
    example_dtype: ExampleDtype = "float32",
    output_format: Annotated[
        str,
        typer.Option("--format", help="text, json, junit, github (workflow commands) or markdown."),
    ] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", help="Write the report to FILE instead of stdout.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --output file.")
    ] = False,
) -> None:
    """Check thresholds from flags or [tool.weissi.check] in the nearest pyproject.toml.

    Non-finite values always fail. Exit 0: all rules pass; 1: one failed; 2: bad input.
    Example: weissi check model.safetensors --max-imbalance 10 --format junit > weissi.xml
    """
    from weissi_cli.api.check import check_checkpoint
    from weissi_cli.config import load_check_settings
    from weissi_cli.errors import UsageError
    from weissi_cli.output_files import check_file_destination, write_report_file

    if output_format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {output_format!r}")
    for name, value in (
        ("--max-imbalance", max_imbalance),
        ("--max-l2-ratio", max_l2_ratio),
        ("--max-abs", max_abs),
        ("--max-norm", max_norm),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a finite positive number, not {value}")
    if output is not None:  # refused before the pass over the checkpoint, not after it
        check_file_destination(output, force, protect=[checkpoint])
    configured, settings_file = load_check_settings(Path.cwd())
    settings = configured.merged(
        {
            "max_imbalance": max_imbalance,
            "max_l2_ratio": max_l2_ratio,
            "max_abs": max_abs,
            "max_norm": max_norm,
            "no_dead_units": no_dead_units,
            "fp16_headroom": fp16_headroom,
        }
    )
    with progress_bar(output_format == "text" and output is None):
        report = check_checkpoint(
            checkpoint,
            settings,
            settings_file,
            structure_source(spec, model, example_shape, example_dtype),
        )
    notes: list[str] = []
    if output_format == "text":
        from weissi_cli.cli.render import render_check

        if output is None:
            render_check(report, stdout_console())
        else:
            import io

            from rich.console import Console

            buffer = io.StringIO()
            render_check(report, Console(file=buffer, width=100, color_system=None))
            notes = write_report_file(
                output, buffer.getvalue().encode("utf-8"), force, protect=[checkpoint]
            )
    else:
        text = {
            "json": report.to_json,
            "junit": report.to_junit,
            "github": report.to_github,
            "markdown": report.to_markdown,
        }[output_format]()
        if output is None:
            typer.echo(text, nl=not text.endswith("\n"))
        else:
            notes = write_report_file(output, text.encode("utf-8"), force, protect=[checkpoint])
    print_warnings([*notes, *report.warnings])
    if not report.passed:
        raise typer.Exit(1)
