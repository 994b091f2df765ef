"""Rich renderings of the payloads, for people (JSON is in weissi_cli.report)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from weissi_cli.io.dtypes import is_16_bit
from weissi_cli.report.printable import printable

if TYPE_CHECKING:  # only annotations: a command imports the report modules it produces
    from weissi_cli.balance.analysis import ChainAnalysis
    from weissi_cli.balance.channelwise import ChannelSolution
    from weissi_cli.ir import Unassigned
    from weissi_cli.report.check import CheckError, CheckReport, CheckRun
    from weissi_cli.report.common import Source
    from weissi_cli.report.diff import DiffReport
    from weissi_cli.report.graph import GraphReport
    from weissi_cli.report.inspect import InspectReport
    from weissi_cli.report.rebalance import RebalanceReport
    from weissi_cli.report.symmetries import KindRow, SymmetryGroup
    from weissi_cli.verify import Verification

BAR_WIDTH = 12
EIGHTHS = " ▏▎▍▌▋▊▉█"
UNASSIGNED_SHOWN = 12


def escaped(text: str) -> str:
    """Text from a checkpoint or spec (names, notes, reasons) as Rich markup: every control
    character escaped (it could drive the terminal or forge a line), markup escaped."""
    return escape(printable(text))


def number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "non-finite"
    return f"{value:.{digits}g}"


def size(nbytes: int) -> str:
    amount = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def bar(value: float, largest: float) -> str:
    """A horizontal bar of `value / largest`, drawn in eighths of a cell."""
    if not (math.isfinite(largest) and math.isfinite(value)) or largest <= 0 or value <= 0:
        return ""
    eighths = round(min(value / largest, 1.0) * BAR_WIDTH * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[part] if part else "")


def source_line(source: Source) -> Text:
    return Text.assemble(
        (printable(source.path), "bold"),
        "\n",
        (
            f"{source.format} · {source.tensors} tensors · {source.parameters:,} parameters · "
            f"{size(source.bytes)}",
            "dim",
        ),
    )


def origin_label(origin: str) -> Text:
    if origin == "heuristic":
        return Text("heuristic (assumed)", style="yellow")
    return Text(printable(origin), style="green")


def render_inspect(report: InspectReport, console: Console) -> None:
    console.print(source_line(report.source))
    settings = report.settings
    console.print(
        f"λ1 = {number(settings.lambda1)}, λ2 = {number(settings.lambda2)}, penalties over "
        + ("weights and biases" if settings.include_bias else "weights (biases not penalised)"),
        style="dim",
    )
    if report.group is not None:
        _print_group(report.group, console)
    elif not report.chains:
        console.print(
            "\nNo chains found (see `weissi graph` and the unassigned tensors below). Export the "
            "model with torch.export for its exact structure, or pin one in a spec file."
        )
    for analysis in report.chains:
        console.print()
        title, table = _chain_table(analysis, report.dtypes)
        console.print(title)
        console.print(table)
        sixteen_bit = any(is_16_bit(report.dtypes[name]) for name in analysis.chain.tensor_names())
        console.print(_chain_totals(analysis, sixteen_bit))
        channel = report.channel.get(analysis.chain.id)
        if channel is not None:
            console.print(_channel_line(analysis, channel))
    _print_unassigned(report.unassigned, console)


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)


def _chain_table(analysis: ChainAnalysis, dtypes: dict[str, str]) -> tuple[Text, Table]:
    chain = analysis.chain
    layer_dtypes = [dtypes[layer.layer.weight] for layer in analysis.layers]
    one_dtype = len(set(layer_dtypes)) == 1
    title = Text.assemble(
        (printable(chain.id), "bold"),
        f" · {chain.activation} · {chain.depth} layers · ",
        f"{layer_dtypes[0]} · " if one_dtype else "",
        origin_label(chain.origin),
    )
    table = _table()
    table.add_column("layer", overflow="fold")
    table.add_column("shape", no_wrap=True)
    if not one_dtype:
        table.add_column("dtype", no_wrap=True)
    table.add_column("‖W‖", justify="right")
    if analysis.include_bias:
        table.add_column("‖b‖", justify="right")
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("γ*", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    if analysis.include_bias:
        table.add_column("‖b‖ after", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=BAR_WIDTH)
    largest = max(
        (n for layer in analysis.layers if math.isfinite(n := layer.fro_norm)), default=0.0
    )
    l2 = analysis.l2_penalty
    for layer in analysis.layers:
        share = f"{100 * layer.fro_norm**2 / l2:.1f}%" if l2 and math.isfinite(l2) else "—"
        table.add_row(
            escaped(layer.layer.prefix) + ("" if layer.layer.bias else " (no bias)"),
            "×".join(str(s) for s in layer.layer.shape),
            *([] if one_dtype else [dtypes[layer.layer.weight]]),
            number(layer.fro_norm),
            *([number(layer.bias_norm)] if analysis.include_bias else []),
            share,
            number(layer.gamma),
            number(layer.rebalanced_norm),
            *([number(layer.rebalanced_bias_norm)] if analysis.include_bias else []),
            Text(bar(layer.fro_norm, largest), style="cyan"),
        )
    return title, table


def _chain_totals(analysis: ChainAnalysis, sixteen_bit: bool) -> RenderableType:
    if analysis.problem:
        return Text(f"  degenerate: {printable(analysis.problem)}", style="red")
    l2, minimum, slack = analysis.l2_penalty, analysis.min_l2_penalty, analysis.l2_slack
    percent = f" ({100 * slack / l2:.1f}% of it)" if l2 and slack is not None else ""
    lines = [
        Text.assemble(
            "  L2 penalty ",
            (number(l2), "bold"),
            " → min ",
            (number(minimum), "bold green"),
            f" after rebalancing · slack {number(slack)}{percent}",
        ),
        *(
            [
                Text(
                    f"  16-bit tensors: power-of-two scales (the default, bit-identical outputs) "
                    f"reach {number(analysis.pow2_l2_penalty)}",
                    style="dim",
                )
            ]
            if sixteen_bit
            else []
        ),
        Text.assemble(
            "  imbalance ",
            (f"{number(analysis.imbalance, 3)}×", "bold"),
            f" · geometric mean G = {number(analysis.geometric_mean)}",
        ),
        Text.assemble(
            "  WEISSI ",
            (number(analysis.weissi_penalty), "bold"),
            f" = λ1·Σ ln‖W‖ {number(analysis.log_norm_sum)} + λ2·Σ ‖W/‖W‖‖₁ "
            f"{number(analysis.l1_direction_sum)} (invariant)",
        ),
    ]
    return Group(*lines)


def _print_group(group: SymmetryGroup, console: Console) -> None:
    chosen = group.channel or group.layer
    console.print()
    kinds = group.kinds()
    if kinds:
        _print_kinds(group, kinds, console)
    else:
        _print_symmetries(group, chosen, console)
    _print_totals(group, chosen, console)


def _print_symmetries(group: SymmetryGroup, chosen: ChannelSolution, console: Console) -> None:
    console.print(Text(f"Scale symmetries ({len(group.symmetries)})", style="bold"))
    table = _table()
    table.add_column("symmetry", overflow="fold")
    table.add_column("channels", justify="right")
    table.add_column("exact")
    table.add_column("scales at the optimum", no_wrap=True)
    table.add_column("note", overflow="fold")
    for symmetry in group.symmetries:
        found = chosen.symmetries.get(symmetry.id)
        if found is not None and found.unbounded:
            scales = Text("unbounded", style="yellow")
        elif found is not None:
            low, high = float(found.scales.min()), float(found.scales.max())
            scales = Text(number(low) if low == high else f"{number(low)} … {number(high)}")
        else:
            scales = Text("—")
        table.add_row(
            escaped(symmetry.id),
            str(symmetry.size),
            "yes" if symmetry.exact else "to first order",
            scales,
            escaped(symmetry.note),
        )
    console.print(table)


def _print_kinds(group: SymmetryGroup, kinds: list[KindRow], console: Console) -> None:
    """A transformer's symmetries, one row per block and kind (per-symmetry scales, and the
    two sums of each WEISSI value, are in --json)."""
    origins = sorted({s.origin for s in group.symmetries})
    console.print(
        Text.assemble(
            (f"Scale symmetries ({len(group.symmetries)}", "bold"),
            (f", {len(kinds)} kinds × blocks) ", "bold"),
            origin_label(origins[0]) if len(origins) == 1 else Text(printable(", ".join(origins))),
        )
    )
    table = _table()
    table.add_column("block", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("sym", justify="right")
    table.add_column("L2 now", justify="right", no_wrap=True)
    table.add_column("layer opt.", justify="right", no_wrap=True)
    if group.channel is not None:
        table.add_column("chan. opt.", justify="right", no_wrap=True)
    table.add_column("WEISSI", justify="right", no_wrap=True)
    for row in kinds:
        optimum: list[RenderableType] = (
            [Text("unbounded", style="yellow")]
            if row.unbounded
            else [Text(number(row.l2_layer), style="green" if group.channel is None else "")]
        )
        if group.channel is not None:
            optimum.append(
                Text("unbounded", style="yellow")
                if row.unbounded
                else Text(number(row.l2_channel), style="green")
            )
        kind = row.kind if row.exact else f"{row.kind} ≈"
        table.add_row(
            escaped(row.group),
            escaped(kind),
            str(row.symmetries),
            number(row.l2_now),
            *optimum,
            number(row.weissi_penalty),
        )
    console.print(table)
    for note in group.notes:
        console.print(Text(f"  {printable(note)}", style="dim"))


def _print_totals(group: SymmetryGroup, chosen: ChannelSolution, console: Console) -> None:
    line = Text.assemble(
        "  L2 now ",
        (number(group.l2_penalty), "bold"),
        " · layer-wise optimum ",
        (number(group.layer.l2_after), "bold green" if group.channel is None else "bold"),
    )
    if group.channel is not None:
        line.append_text(
            Text.assemble(
                " · channel-wise optimum ", (number(group.channel.l2_after), "bold green")
            )
        )
    console.print(line)
    unbounded = [key for key, item in chosen.symmetries.items() if item.unbounded]
    if unbounded:
        console.print(
            Text(
                f"  unbounded ({len(unbounded)}): their penalised weights can shrink without limit "
                "into unpenalised tensors (norm gains, running statistics): L2 says nothing there",
                style="yellow",
            )
        )
    for stop in group.stops:
        console.print(
            Text(
                f"  stopped: {printable('+'.join(stop.producers))} at {printable(stop.node)}: "
                f"{printable(stop.reason)}",
                style="dim",
            )
        )


def _channel_line(analysis: ChainAnalysis, solution: ChannelSolution) -> Text:
    dead = sum(len(item.dead) for item in solution.symmetries.values())
    notes = [f"{solution.sweeps} sweeps" + ("" if solution.converged else ", not converged")]
    if dead:
        notes.append(f"{dead} dead unit(s) left at 1")
    unbounded = [key for key, item in solution.symmetries.items() if item.unbounded]
    if unbounded:
        notes.append(f"unbounded: {printable(', '.join(unbounded))}")
    return Text.assemble(
        "  L2 now ",
        (number(analysis.l2_penalty), "bold"),
        " · layer-wise optimum ",
        (number(analysis.min_l2_penalty), "bold"),
        " · channel-wise optimum ",
        (number(solution.l2_after), "bold green"),
        f" ({'; '.join(notes)})",
    )


def _print_unassigned(unassigned: Sequence[Unassigned], console: Console) -> None:
    if not unassigned:
        return
    console.print()
    console.print(Text(f"Not in any chain ({len(unassigned)})", style="bold"))
    table = _table()
    table.add_column("tensor")
    table.add_column("reason")
    for entry in unassigned[:UNASSIGNED_SHOWN]:
        table.add_row(escaped(entry.name), escaped(entry.reason))
    console.print(table)
    if len(unassigned) > UNASSIGNED_SHOWN:
        console.print(
            f"  … and {len(unassigned) - UNASSIGNED_SHOWN} more (all of them in --json)",
            style="dim",
        )


def render_rebalance(report: RebalanceReport, console: Console) -> None:
    console.print(source_line(report.source))
    for result in report.chains:
        console.print()
        console.print(
            Text.assemble(
                (printable(result.id), "bold"),
                f" · scales {result.scales} · ",
                origin_label(result.origin),
            )
        )
        table = _table()
        table.add_column("layer")
        table.add_column("γ (weight)" if result.channel is None else "‖W‖ ratio", justify="right")
        table.add_column("Π (bias)" if result.channel is None else "‖b‖ ratio", justify="right")
        for layer, gamma, bias_scale in zip(
            result.layers, result.gammas, result.bias_scales, strict=True
        ):
            table.add_row(
                escaped(layer), _factor(gamma, result.scales), _factor(bias_scale, result.scales)
            )
        console.print(table)
        if result.skipped:
            console.print(Text(f"  left unchanged: {printable(result.skipped)}", style="red"))
            continue
        console.print(
            Text.assemble(
                "  L2 ",
                (number(result.l2_before), "bold"),
                " → ",
                (number(result.l2_after), "bold green"),
                f" ({'layer-wise ' if result.channel else ''}optimum "
                f"{number(result.min_l2_penalty)}) · "
                f"WEISSI {number(result.weissi_before)} → "
                f"{number(result.weissi_after)}",
            )
        )
        if result.channel is not None:
            channel = result.channel
            parts = [f"channel-wise: {channel.sweeps} sweeps"]
            dead = sum(len(units) for units in channel.dead_units.values())
            if dead:
                parts.append(f"{dead} dead unit(s) left at 1")
            if channel.unbounded:
                parts.append(f"unbounded: {printable(', '.join(channel.unbounded))}")
            if channel.path_norm_before is not None:
                parts.append(
                    f"path-norm {number(channel.path_norm_before, 10)} → "
                    f"{number(channel.path_norm_after, 10)}"
                )
            console.print(Text("  " + " · ".join(parts), style="dim"))
    if report.group is not None:
        _print_group(report.group, console)
        console.print(
            Text.assemble(
                f"  scales {report.group_scales} · L2 ",
                (number(report.group.l2_penalty), "bold"),
                " → ",
                (number(report.group.l2_after), "bold green"),
                " (measured in the written file)",
            )
        )
    console.print()
    if report.nothing_to_do:
        console.print(
            Text(
                f"nothing to do: every scale is 1; {report.output_path} was not written "
                "(--write-unchanged writes an unchanged copy)",
                style="bold",
            )
        )
        return
    _print_verdict(report.verification, console)
    if report.written:
        console.print(
            Text.assemble(
                "wrote ", (printable(report.output_path), "bold"), f" ({report.output_format})"
            )
        )
    else:
        console.print(Text(f"{printable(report.output_path)} was not written", style="bold red"))


def _print_verdict(verification: Verification, console: Console) -> None:
    """The verdict: its level's mark and claim, what the user must still check, then what
    each check found."""
    from weissi_cli.report.rebalance import verdict_line

    mark, words = verdict_line(verification)
    style = (
        "bold red"
        if not verification.passed
        else "bold green"
        if verification.level == "real_network"
        else "bold yellow"
    )
    console.print(Text.assemble((f"{mark} {words}", style), f" ({verification.method})"))
    for caveat in verification.caveats if verification.passed else ():
        console.print(Text.assemble(("  check: ", "yellow"), printable(caveat)))
    for check in verification.chains:
        first, *rest = check.detail.split("; ")
        console.print(f"  {escaped(check.chain_id)}: {escaped(first)}")
        for line in rest:
            console.print(f"    {escaped(line)}")


def _factor(value: float, mode: str) -> str:
    if mode == "pow2" and value > 0:
        mantissa, exponent = math.frexp(value)  # value = 0.5 · 2^exponent
        if mantissa == 0.5:
            return "1" if exponent == 1 else f"2^{exponent - 1}"
    return number(value, 6)


def render_graph(report: GraphReport, console: Console) -> None:
    structure = report.structure
    tree = Tree(source_line(report.source))
    for chain in structure.chains:
        branch = tree.add(
            Text.assemble(
                (printable(chain.id), "bold"),
                f" · {chain.activation} · ",
                origin_label(chain.origin),
            )
        )
        for layer in chain.layers:
            shape = "×".join(str(s) for s in layer.shape)
            bias = " + bias" if layer.bias else ""
            branch.add(
                f"{escaped(layer.prefix)}  {layer.kind} {shape} {report.dtypes[layer.weight]}{bias}"
            )
        for note in chain.notes:
            branch.add(Text(f"note: {printable(note)}", style="dim"))
    for symmetry in structure.symmetries:
        branch = tree.add(
            Text.assemble(
                (printable(symmetry.id), "bold"),
                f" · {symmetry.size} channels · ",
                origin_label(symmetry.origin),
                "" if symmetry.exact else " · to first order",
            )
        )
        for member in symmetry.members:
            sign = "×c" if member.exponent == 1 else f"×c^{member.exponent}"
            where = f"axis {member.axis}"
            if member.block != 1:
                where += f", {member.block} per channel"
            if member.offset:
                where += f", from {member.offset}"
            branch.add(f"{escaped(member.tensor)}  {sign}  ({where})")
        if symmetry.note:
            branch.add(Text(printable(symmetry.note), style="dim"))
        if symmetry.guess:
            branch.add(Text(f"guess: {printable(symmetry.guess)}", style="yellow"))
    if structure.stops:
        stops = tree.add(Text(f"stopped ({len(structure.stops)})", style="bold"))
        for stop in structure.stops:
            producers = escaped("+".join(stop.producers))
            stops.add(f"{producers} at {escaped(stop.node)}: {escaped(stop.reason)}")
    if structure.unassigned:
        rest = tree.add(Text(f"not in any chain ({len(structure.unassigned)})", style="bold"))
        for entry in structure.unassigned[:UNASSIGNED_SHOWN]:
            rest.add(f"{escaped(entry.name)}: {escaped(entry.reason)}")
        if len(structure.unassigned) > UNASSIGNED_SHOWN:
            rest.add(
                Text(
                    f"… and {len(structure.unassigned) - UNASSIGNED_SHOWN} more (--json)",
                    style="dim",
                )
            )
    for note in structure.notes:
        tree.add(Text(printable(note), style="dim"))
    console.print(tree)


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
    table = _table()
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


def render_diff(report: DiffReport, console: Console) -> None:
    console.print(Text.assemble("A ", source_line(report.first)))
    console.print(Text.assemble("B ", source_line(report.second)))
    style = "bold green" if report.same_function else "bold red"
    console.print()
    console.print(Text.assemble("verdict: ", (report.verdict, style)))
    basis = report.structure
    if report.qualifier:
        console.print(Text(f"  {report.qualifier}", style="yellow"))
    elif basis.level != "none":
        compared = "" if basis.compared else "; not used: it cannot place every tensor"
        console.print(
            Text(f"  structure: {basis.description} ({basis.level}){compared}", style="dim")
        )
    for reason in report.reasons:
        console.print(f"  {escaped(reason)}", style="red")
    for shift in report.shifts:
        factors = " · ".join(
            f"{escaped(name)} ×{number(value)}" for name, value in shift.factors.items()
        )
        console.print(f"  {escaped(shift.scope)}: {factors}")
    if report.tensors and report.verdict != "identical":
        table = _table()
        table.add_column("tensor", overflow="fold")
        table.add_column("max |A−B|", justify="right")
        table.add_column("relative", justify="right")
        table.add_column("after rebalancing both", justify="right")
        for item in report.most_different():
            table.add_row(
                escaped(item.name),
                number(item.max_abs_diff),
                number(item.max_rel_diff),
                number(item.canonical_rel_diff),
            )
        console.print()
        console.print(Text("Largest differences", style="bold"))
        console.print(table)
        console.print(f"  tolerance {number(report.tolerance)} relative", style="dim")
