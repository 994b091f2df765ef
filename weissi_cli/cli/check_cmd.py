"""`weissi check`: gate a CI pipeline on exported checkpoints, every report from one pass."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weissi_cli.cli.console import (
    check_destinations,
    emit,
    print_note,
    print_warnings,
    progress_bar,
    set_quiet,
    stdout_console,
)
from weissi_cli.cli.errors import handle_errors
from weissi_cli.cli.options import (
    ExampleDtype,
    ExampleShape,
    Force,
    ModelCode,
    Output,
    Quiet,
    Spec,
    structure_source,
)

if TYPE_CHECKING:
    from weissi_cli.report.check import CheckError, CheckReport, CheckRun

FORMATS = ("text", "json", "junit", "github", "markdown")


@handle_errors
def check(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoints: files, model folders, folders holding checkpoints, or quoted "
            "glob patterns ('models/*.safetensors').",
            show_default=False,
        ),
    ],
    max_imbalance: Annotated[
        float | None,
        typer.Option(
            "--max-imbalance",
            help="Fail a chain (or a model's symmetries) whose largest/smallest layer norm "
            "exceeds R.",
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
            help="Fail on values that overflow, or flush to zero, in float16/bfloat16.",
        ),
    ] = None,
    fp16_tolerance: Annotated[
        str | None,
        typer.Option(
            "--fp16-tolerance",
            help="With --fp16-headroom: how many values of a tensor may flush to zero, as a "
            "fraction (0.0001 or 0.01%) or a count (10). Overflow always fails.",
            show_default=False,
        ),
    ] = None,
    spec: Spec = None,
    model: ModelCode = None,
    example_shape: ExampleShape = None,
    example_dtype: ExampleDtype = "float32",
    output_format: Annotated[
        str,
        typer.Option("--format", help="What stdout shows: text, json, junit, github or markdown."),
    ] = "text",
    output: Output = None,
    junit: Annotated[
        Path | None,
        typer.Option(
            "--junit",
            help="Also write JUnit XML to FILE (one testsuite per checkpoint).",
            show_default=False,
        ),
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            "--markdown",
            help="Also write a Markdown summary to FILE (a CI job summary).",
            show_default=False,
        ),
    ] = None,
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the JSON report to FILE (weissi.check/1; weissi.checks/1 for "
            "several checkpoints).",
            show_default=False,
        ),
    ] = None,
    github: Annotated[
        bool,
        typer.Option("--github", help="Also print GitHub workflow annotations on stdout."),
    ] = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Check thresholds from flags or [tool.weissi.check] in the nearest pyproject.toml.

    Non-finite values always fail. One pass over each checkpoint makes every report asked
    for. Exit 0: all rules pass; 1: a rule failed; 2: bad usage or a checkpoint that
    cannot be read (the others are still checked and reported).

    Example: weissi check 'models/*.safetensors' --max-imbalance 10 --junit weissi.xml
    --markdown summary.md --github
    """
    from weissi_cli.api.check import expand_checkpoints, iter_checks
    from weissi_cli.config import load_check_settings, parse_tolerance
    from weissi_cli.errors import UsageError
    from weissi_cli.report.check import CheckRun

    set_quiet(quiet)
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
    tolerance = None
    if fp16_tolerance is not None:
        try:
            tolerance = parse_tolerance(fp16_tolerance)
        except ValueError as error:
            raise UsageError(f"--fp16-tolerance: {error}") from None
    found = expand_checkpoints(checkpoints)
    # Every destination is refused before the first pass, not after the last.
    destinations = [
        ("--output", output),
        ("--junit", junit),
        ("--markdown", markdown),
        ("--json", json_file),
    ]
    check_destinations(destinations, force, protect=found)
    configured, settings_file = load_check_settings(Path.cwd())
    settings = configured.merged(
        {
            "max_imbalance": max_imbalance,
            "max_l2_ratio": max_l2_ratio,
            "max_abs": max_abs,
            "max_norm": max_norm,
            "no_dead_units": no_dead_units,
            "fp16_headroom": fp16_headroom,
            "fp16_tolerance": tolerance,
        }
    )
    if settings.fp16_tolerance and not settings.fp16_headroom:
        raise UsageError("--fp16-tolerance applies to --fp16-headroom; pass both")
    text_on_stdout = output_format == "text" and output is None
    console = stdout_console() if text_on_stdout else None
    entries: list[CheckReport | CheckError] = []
    source = structure_source(spec, model, example_shape, example_dtype)
    with progress_bar():
        for entry in iter_checks(found, settings, settings_file, source):
            entries.append(entry)
            if console is not None:
                from weissi_cli.cli.render_check import render_check_entry

                render_check_entry(entry, console, detailed=len(found) == 1)
            elif not quiet:
                _summary_to_stderr(entry)
    run = CheckRun(tuple(entries))
    notes: list[str] = []
    if console is not None:
        from weissi_cli.cli.render_check import render_check_summary

        render_check_summary(run, console)
    elif output_format != "github" or output is not None:
        text = _formatted(run, output_format, console_width=100)
        notes += emit(text, output, force, found)
    if github or (output_format == "github" and output is None):
        emit(run.to_github(), None, force, found)
    for destination, text_of in (
        (junit, run.to_junit),
        (markdown, run.to_markdown),
        (json_file, run.to_json),
    ):
        if destination is not None:
            notes += emit(text_of(), destination, force, found)
    several = len(run.entries) > 1
    print_warnings(
        [
            *notes,
            *(
                f"{report.source.path}: {warning}" if several else warning
                for report in run.reports
                for warning in report.warnings
            ),
        ]
    )
    if run.exit_code:
        raise typer.Exit(run.exit_code)


def _formatted(run: CheckRun, output_format: str, console_width: int) -> str:
    """The run in a --format other than text on a terminal (text goes to a file here)."""
    if output_format == "text":
        import io

        from rich.console import Console

        from weissi_cli.cli.render_check import render_check_entry, render_check_summary

        buffer = io.StringIO()
        console = Console(file=buffer, width=console_width, color_system=None)
        for entry in run.entries:
            render_check_entry(entry, console, detailed=len(run.entries) == 1)
        render_check_summary(run, console)
        return buffer.getvalue()
    return {
        "json": run.to_json,
        "junit": run.to_junit,
        "github": run.to_github,
        "markdown": run.to_markdown,
    }[output_format]()


def _summary_to_stderr(entry: CheckReport | CheckError) -> None:
    """One line per checkpoint on stderr while stdout carries a machine format."""
    passed = getattr(entry, "passed", False)
    print_note(f"{'✓' if passed else '✗'} {entry.summary_line()}")
