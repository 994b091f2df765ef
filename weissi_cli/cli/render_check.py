"""Rich renderings of `check`: each checkpoint's findings with their fixes, its table of
rules, and one line per checkpoint with the verdict of the run."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from weissi_cli.cli.render import escaped, number, plain_table, source_line
from weissi_cli.report.printable import printable

if TYPE_CHECKING:
    from weissi_cli.report.check import CheckError, CheckReport, CheckRun


CHECK_MARKS = {
    "pass": ("✓", "green"),
    "warn": ("!", "yellow"),
    "fail": ("✗", "bold red"),
    "skip": ("-", "dim"),
}


def render_check(report: CheckReport, console: Console) -> None:
    """One checkpoint's check in full: findings, the table per rule, the verdict."""
    from weissi_cli.report.check import CheckRun

    render_check_entry(report, console, detailed=True)
    render_check_summary(CheckRun((report,)), console)


def render_check_entry(report: CheckReport | CheckError, console: Console, detailed: bool) -> None:
    """A checkpoint's findings (failures, warnings, rules not evaluated), each with its fix
    below it; with `detailed` (one checkpoint), its source and the table of rules too.
    Among several checkpoints, one without findings shows only its summary line later."""
    from weissi_cli.report.check import CheckError

    if isinstance(report, CheckError):
        console.print(Text.assemble(("✗ ", "bold red"), (printable(report.path), "bold")))
        message = report.message.removeprefix(f"{report.path}: ")
        console.print(Padding(Text(f"not checked: {printable(message)}", "red"), (0, 0, 0, 2)))
        console.print()
        return
    findings = [r for r in report.results if r.verdict != "pass"]
    findings.sort(key=lambda r: ("fail", "warn", "skip").index(r.verdict))
    if not detailed and not findings:
        return
    if detailed:
        console.print(source_line(report.source))
        console.print(f"thresholds from {escaped(report.settings_file or 'flags')}", style="dim")
        console.print()
    else:
        console.print(Text(printable(report.source.path), style="bold"))
    if findings:
        # a grid keeps wrapped lines under the text, not under the mark
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for result in findings:
            mark, style = CHECK_MARKS[result.verdict]
            text = Text.assemble(
                (result.rule, "bold"), " ", printable(result.scope), ": ", printable(result.message)
            )
            if result.fix:
                text.append(f"\nfix: {printable(result.fix)}", style="dim")
            grid.add_row(Text(mark, style=style), text)
        console.print(grid)
        console.print()
    if detailed:
        console.print(_check_rules_table(report))


def _check_rules_table(report: CheckReport) -> Table:
    table = plain_table()
    table.add_column("rule", no_wrap=True)
    table.add_column("checked", justify="right", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    table.add_column("warn.", justify="right", no_wrap=True)
    table.add_column("not eval.", justify="right", no_wrap=True)
    table.add_column("passed", justify="right", no_wrap=True)
    table.add_column("largest", justify="right", no_wrap=True)
    table.add_column("limit", justify="right", no_wrap=True)
    for rule, results in report.by_rule().items():
        counts = [
            sum(1 for r in results if r.verdict == v) for v in ("fail", "warn", "skip", "pass")
        ]
        values = [r.value for r in results if r.value is not None and math.isfinite(r.value)]
        limits = {r.threshold for r in results if r.threshold is not None}
        table.add_row(
            rule,
            str(len(results)),
            *(
                Text(str(c), style=s if c else "")
                for c, s in zip(counts, ("bold red", "yellow", "dim", "green"), strict=True)
            ),
            number(max(values)) if values else "—",
            number(limits.pop()) if len(limits) == 1 else "—",
        )
    return table


def render_check_summary(run: CheckRun, console: Console) -> None:
    """One line per checkpoint (when there are several), then the verdict of the run."""
    from weissi_cli.report.check import CheckError

    if len(run.entries) > 1:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for entry in run.entries:
            passed = not isinstance(entry, CheckError) and entry.passed
            mark, style = CHECK_MARKS["pass" if passed else "fail"]
            grid.add_row(Text(mark, style=style), Text(entry.summary_line()))
        console.print(grid)
    verdict = Text("passed", style="bold green") if run.passed else Text("failed", style="bold red")
    words = run.verdict_line().split(": ", 1)[1]
    console.print(Text.assemble("\nweissi check ", verdict, f": {words}"))
