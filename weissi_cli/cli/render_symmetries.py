"""Rich renderings of the scale symmetries that are not chains (a graph's, a config's, a
spec's): one row per symmetry, or for a model of repeated blocks one row per block and kind."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from weissi_cli.cli.render import escaped, number, origin_label, plain_table, say
from weissi_cli.report.printable import printable

if TYPE_CHECKING:
    from weissi_cli.balance.channelwise import ChannelSolution
    from weissi_cli.report.symmetries import KindRow, SymmetryGroup


def print_group(group: SymmetryGroup, console: Console) -> None:
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
    table = plain_table()
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
    """A transformer's symmetries: one row per block and kind for a few blocks; for more,
    one row per kind (summed over the blocks) and the blocks where rebalancing lowers L2
    most (every row, the per-symmetry scales and the sums of each WEISSI value are in
    --json, and the block-by-kind table in --format markdown)."""
    origins = sorted({s.origin for s in group.symmetries})
    blocks = list(dict.fromkeys(row.group for row in kinds))
    console.print(
        Text.assemble(
            (f"Scale symmetries ({len(group.symmetries)} in {len(blocks)} blocks) ", "bold"),
            origin_label(origins[0]) if len(origins) == 1 else Text(printable(", ".join(origins))),
        )
    )
    channel = group.channel is not None
    if len(blocks) <= KIND_BLOCKS_SHOWN:
        console.print(_kinds_table(kinds, channel, by_block=True))
    else:
        by_kind: dict[str, list[KindRow]] = {}
        for row in kinds:
            by_kind.setdefault(row.kind if row.exact else f"{row.kind} ≈", []).append(row)
        console.print(_kinds_table([_kind_total(rows) for rows in by_kind.values()], channel))
        console.print()
        console.print(
            Text(f"Blocks where rebalancing lowers L2 most (of {len(blocks)})", style="bold")
        )
        console.print(_top_blocks(kinds, blocks))
        say(console, "  every block and kind: --json, or --format markdown", style="dim")
    for note in group.notes:
        say(console, Text(f"  {printable(note)}", style="dim"))


# A transformer of more blocks than this is shown by kind, with its top blocks.
KIND_BLOCKS_SHOWN = 8
TOP_BLOCKS = 5


def _kinds_table(kinds: list[KindRow], channel: bool, by_block: bool = False) -> Table:
    table = plain_table()
    if by_block:
        table.add_column("block", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("sym", justify="right", no_wrap=True)
    table.add_column("L2 now", justify="right", no_wrap=True)
    table.add_column("layer opt.", justify="right", no_wrap=True)
    if channel:
        table.add_column("chan. opt.", justify="right", no_wrap=True)
    table.add_column("WEISSI", justify="right", no_wrap=True)
    for row in kinds:
        optimum: list[RenderableType] = (
            [Text("unbounded", style="yellow")]
            if row.unbounded
            else [Text(number(row.l2_layer), style="" if channel else "green")]
        )
        if channel:
            optimum.append(
                Text("unbounded", style="yellow")
                if row.unbounded
                else Text(number(row.l2_channel), style="green")
            )
        kind = row.kind if row.exact else f"{row.kind} ≈"
        table.add_row(
            *([escaped(row.group)] if by_block else []),
            escaped(kind),
            str(row.symmetries),
            number(row.l2_now),
            *optimum,
            number(row.weissi_penalty),
        )
    return table


def _kind_total(rows: list[KindRow]) -> KindRow:
    """The rows of one kind over every block, summed (unbounded only if all of them are)."""
    from dataclasses import replace

    bounded = [row for row in rows if not row.unbounded]

    def total(values: list[float | None]) -> float | None:
        return None if not values or None in values else math.fsum(v for v in values if v)

    return replace(
        rows[0],
        group="",
        symmetries=sum(row.symmetries for row in rows),
        unbounded=not bounded,
        l2_now=math.fsum(row.l2_now for row in rows),
        l2_layer=total([row.l2_layer for row in bounded]),
        l2_channel=total([row.l2_channel for row in bounded]),
        log_norm_sum=total([row.log_norm_sum for row in rows]),
        l1_direction_sum=total([row.l1_direction_sum for row in rows]),
    )


def _top_blocks(kinds: list[KindRow], blocks: list[str]) -> Table:
    """The blocks whose L2 the layer-wise optimum lowers most (unbounded kinds kept at
    their L2, as the optimum leaves them)."""
    now = dict.fromkeys(blocks, 0.0)
    after = dict.fromkeys(blocks, 0.0)
    for row in kinds:
        now[row.group] += row.l2_now
        after[row.group] += row.l2_now if row.unbounded or row.l2_layer is None else row.l2_layer
    ranked = sorted(blocks, key=lambda block: now[block] - after[block], reverse=True)
    table = plain_table()
    table.add_column("block", no_wrap=True)
    table.add_column("L2 now", justify="right", no_wrap=True)
    table.add_column("layer opt.", justify="right", no_wrap=True)
    table.add_column("slack", justify="right", no_wrap=True)
    for block in ranked[:TOP_BLOCKS]:
        slack = now[block] - after[block]
        share = f" ({100 * slack / now[block]:.0f}%)" if now[block] > 0 else ""
        table.add_row(
            escaped(block), number(now[block]), number(after[block]), number(slack) + share
        )
    return table


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
    say(console, line)
    unbounded = [key for key, item in chosen.symmetries.items() if item.unbounded]
    if unbounded:
        say(
            console,
            Text(
                f"  unbounded ({len(unbounded)}): their penalised weights can shrink without limit "
                "into unpenalised tensors (norm gains, running statistics): L2 says nothing there",
                style="yellow",
            ),
        )
    for stop in group.stops:
        say(
            console,
            Text(
                f"  stopped: {printable('+'.join(stop.producers))} at {printable(stop.node)}: "
                f"{printable(stop.reason)}",
                style="dim",
            ),
        )
