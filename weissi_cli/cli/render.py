"""Rich renderings of the payloads, for people (JSON is in weissi_cli.report)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from weissi_cli.io.dtypes import is_16_bit
from weissi_cli.report.printable import printable

if TYPE_CHECKING:  # only annotations: a command imports the report modules it produces
    from weissi_cli.balance.analysis import ChainAnalysis
    from weissi_cli.balance.channelwise import ChannelSolution
    from weissi_cli.ir import Unassigned
    from weissi_cli.report.common import Source
    from weissi_cli.report.diff import DiffReport
    from weissi_cli.report.graph import GraphReport
    from weissi_cli.report.inspect import InspectReport
    from weissi_cli.report.rebalance import RebalanceReport
    from weissi_cli.verification import Verification

BAR_WIDTH = 12
EIGHTHS = " ▏▎▍▌▋▊▉█"
UNASSIGNED_SHOWN = 12  # reasons
UNASSIGNED_NAMES = 6  # tensors per reason


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


def say(console: Console, content: Text | str, style: str = "") -> None:
    """A line that may wrap: its leading spaces become an indent that every wrapped line
    keeps (a string is Rich markup, as console.print takes it)."""
    text = content if isinstance(content, Text) else Text.from_markup(content, style=style)
    indent = len(text.plain) - len(text.plain.lstrip(" "))
    for line in text[indent:].wrap(console, max(console.width - indent, 20)):
        line.rstrip()
        console.print(Text.assemble(" " * indent, line))


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
        from weissi_cli.cli.render_symmetries import print_group

        print_group(report.group, console)
    elif not report.chains:
        console.print(
            "\nNo chains found (see `weissi graph` and the unassigned tensors below). Export the "
            "model with torch.export for its exact structure, or pin one in a spec file."
        )
    for analysis in report.chains:
        console.print()
        title, table = _chain_table(analysis, report.dtypes)
        if _width(console, table) > console.width:  # the bars are the first to go
            title, table = _chain_table(analysis, report.dtypes, bars=False)
        console.print(title)
        console.print(table)
        sixteen_bit = any(is_16_bit(report.dtypes[name]) for name in analysis.chain.tensor_names())
        for line in _chain_totals(analysis, sixteen_bit):
            say(console, line)
        channel = report.channel.get(analysis.chain.id)
        if channel is not None:
            say(console, _channel_line(analysis, channel))
    _print_unassigned(report.unassigned, console)


def plain_table() -> Table:
    """The tables of every report: a rule under the header, no frame."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)


def _width(console: Console, renderable: RenderableType) -> int:
    """The width `renderable` takes when nothing wraps."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), renderable).maximum


def _chain_table(
    analysis: ChainAnalysis, dtypes: dict[str, str], bars: bool = True
) -> tuple[Text, Table]:
    chain = analysis.chain
    layer_dtypes = [dtypes[layer.layer.weight] for layer in analysis.layers]
    one_dtype = len(set(layer_dtypes)) == 1
    title = Text.assemble(
        (printable(chain.id), "bold"),
        f" · {chain.activation} · {chain.depth} layers · ",
        f"{layer_dtypes[0]} · " if one_dtype else "",
        origin_label(chain.origin),
    )
    table = plain_table()
    table.add_column("layer", overflow="fold")
    table.add_column("shape", no_wrap=True)
    if not one_dtype:
        table.add_column("dtype", no_wrap=True)
    table.add_column("‖W‖", justify="right", no_wrap=True)
    if analysis.include_bias:
        table.add_column("‖b‖", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("γ*", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    if analysis.include_bias:
        table.add_column("‖b‖ after", justify="right", no_wrap=True)
    if bars:
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
            *([Text(bar(layer.fro_norm, largest), style="cyan")] if bars else []),
        )
    return title, table


def _chain_totals(analysis: ChainAnalysis, sixteen_bit: bool) -> list[Text]:
    if analysis.problem:
        return [Text(f"  degenerate: {printable(analysis.problem)}", style="red")]
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
    return lines


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
    """The tensors in no chain, grouped by the reason, each reason below its tensors."""
    if not unassigned:
        return
    console.print()
    console.print(Text(f"Not in any chain ({len(unassigned)})", style="bold"))
    by_reason: dict[str, list[str]] = {}
    for entry in unassigned:
        by_reason.setdefault(entry.reason, []).append(entry.name)
    for reason, names in list(by_reason.items())[:UNASSIGNED_SHOWN]:
        shown = ", ".join(printable(name) for name in names[:UNASSIGNED_NAMES])
        if len(names) > UNASSIGNED_NAMES:
            shown += f" and {len(names) - UNASSIGNED_NAMES} more"
        say(console, Text(f"  {shown}"))
        say(console, Text(f"    {printable(reason)}", style="dim"))
    if len(by_reason) > UNASSIGNED_SHOWN:
        hidden = sum(len(names) for names in list(by_reason.values())[UNASSIGNED_SHOWN:])
        say(console, f"  … and {hidden} more (all of them in --json)", style="dim")


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
        table = plain_table()
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
            say(console, Text(f"  left unchanged: {printable(result.skipped)}", style="red"))
            continue
        say(
            console,
            Text.assemble(
                "  L2 ",
                (number(result.l2_before), "bold"),
                " → ",
                (number(result.l2_after), "bold green"),
                f" ({'layer-wise ' if result.channel else ''}optimum "
                f"{number(result.min_l2_penalty)}) · "
                f"WEISSI {number(result.weissi_before)} → "
                f"{number(result.weissi_after)}",
            ),
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
            say(console, Text("  " + " · ".join(parts), style="dim"))
    if report.group is not None:
        from weissi_cli.cli.render_symmetries import print_group

        print_group(report.group, console)
        say(
            console,
            Text.assemble(
                f"  scales {report.group_scales} · L2 ",
                (number(report.group.l2_penalty), "bold"),
                " → ",
                (number(report.group.l2_after), "bold green"),
                " (measured in the written file)",
            ),
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
        say(console, Text.assemble(("  check: ", "yellow"), printable(caveat)))
    for check in verification.chains:
        first, *rest = check.detail.split("; ")
        say(console, f"  {escaped(check.chain_id)}: {escaped(first)}")
        for line in rest:
            say(console, f"    {escaped(line)}")


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


def render_diff(report: DiffReport, console: Console) -> None:
    console.print(Text.assemble("A ", source_line(report.first)))
    console.print(Text.assemble("B ", source_line(report.second)))
    style = "bold green" if report.same_function else "bold red"
    console.print()
    console.print(Text.assemble("verdict: ", (report.verdict, style)))
    basis = report.structure
    if report.qualifier:
        say(console, Text(f"  {report.qualifier}", style="yellow"))
    elif basis.level != "none":
        compared = "" if basis.compared else "; not used: it cannot place every tensor"
        say(
            console,
            Text(f"  structure: {basis.description} ({basis.level}){compared}", style="dim"),
        )
    for reason in report.reasons:
        say(console, f"  {escaped(reason)}", style="red")
    for shift in report.shifts:
        factors = " · ".join(
            f"{escaped(name)} ×{number(value)}" for name, value in shift.factors.items()
        )
        say(console, f"  {escaped(shift.scope)}: {factors}")
    if report.tensors and report.verdict != "identical":
        table = plain_table()
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
        say(console, f"  tolerance {number(report.tolerance)} relative", style="dim")
