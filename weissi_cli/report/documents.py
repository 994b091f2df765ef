"""Shareable inspect reports: Markdown, and self-contained HTML with the plot inlined, made
from one outline (headings, paragraphs, lists, tables, folded sections) so both say the same.

A model of repeated blocks gets its symmetry table as one row per kind (summed over the
blocks) with the full block-by-kind table folded below it, so a 100-layer transformer reads
in a screen and keeps every number.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from weissi_cli.errors import UsageError
from weissi_cli.report.inspect import InspectReport
from weissi_cli.report.printable import printable
from weissi_cli.report.symmetries import KindRow, SymmetryGroup

# Tables longer than this are folded (Markdown <details>, HTML <details>).
FOLD_ROWS = 12


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]  # right-aligned columns


@dataclass(frozen=True)
class Details:
    summary: str
    parts: tuple[Part, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


Part = Heading | Paragraph | Bullets | Table | Details


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}"


def _code(text: str) -> str:
    quoted = printable(text).replace("`", "'")
    return f"`{quoted}`"


def outline(report: InspectReport) -> list[Part]:
    """The report's content, in reading order."""
    source = report.source
    parts: list[Part] = [
        Heading(1, f"weissi inspect: {_code(source.path)}"),
        Paragraph(f"{source.format} · {source.tensors} tensors · {source.parameters:,} parameters"),
    ]
    for analysis in report.chains:
        chain = analysis.chain
        parts += [
            Heading(
                2,
                f"{printable(chain.id)} · {chain.activation} · {chain.depth} layers · "
                f"{printable(chain.origin)}",
            ),  # fmt: skip
            _fold(
                Table(
                    ("layer", "shape", "‖W‖", "γ*", "‖W‖ after"),
                    tuple(
                        (
                            _code(layer.layer.prefix),
                            "×".join(str(s) for s in layer.layer.shape),
                            _number(layer.fro_norm),
                            _number(layer.gamma),
                            _number(layer.rebalanced_norm),
                        )
                        for layer in analysis.layers
                    ),
                    (False, False, True, True, True),
                ),
                f"{chain.depth} layers",
            ),
        ]
        if analysis.problem:
            parts.append(Paragraph(f"Degenerate: {printable(analysis.problem)}"))
        else:
            parts.append(
                Bullets(
                    (
                        f"L2 penalty **{_number(analysis.l2_penalty)}** → min "
                        f"**{_number(analysis.min_l2_penalty)}** (slack "
                        f"{_number(analysis.l2_slack)})",
                        f"imbalance {_number(analysis.imbalance)}×, geometric mean G = "
                        f"{_number(analysis.geometric_mean)}",
                        f"WEISSI {_number(analysis.weissi_penalty)} (invariant under rebalancing)",
                    )
                )
            )
    if report.group is not None:
        parts += _symmetries(report.group)
    if report.unassigned:
        by_reason: dict[str, list[str]] = {}
        for entry in report.unassigned:
            by_reason.setdefault(printable(entry.reason), []).append(entry.name)
        parts += [
            Heading(2, f"Not in any chain or symmetry ({len(report.unassigned)})"),
            Bullets(
                tuple(
                    f"{reason}: " + ", ".join(_code(name) for name in names)
                    for reason, names in by_reason.items()
                )
            ),
        ]
    if report.warnings:
        parts += [
            Heading(2, "Warnings"),
            Bullets(tuple(printable(warning) for warning in report.warnings)),
        ]
    return parts


def _symmetries(group: SymmetryGroup) -> list[Part]:
    """The symmetry table: by kind (and the full block-by-kind table, folded) for a model of
    repeated blocks; one row per symmetry otherwise."""
    chosen = group.channel or group.layer
    totals = (
        f"L2 now **{_number(group.l2_penalty)}** · layer-wise optimum "
        f"**{_number(group.layer.l2_after)}**"
        + (
            f" · channel-wise optimum **{_number(group.channel.l2_after)}**"
            if group.channel
            else ""
        )
    )
    parts: list[Part] = [
        Heading(2, f"Scale symmetries ({len(group.symmetries)})"),
        Paragraph(totals),
    ]
    kinds = group.kinds()
    if kinds:
        parts += _kind_tables(kinds, group.channel is not None)
    else:
        rows = []
        for symmetry in group.symmetries:
            found = chosen.symmetries.get(symmetry.id)
            if found is not None and found.unbounded:
                scales = "unbounded"
            elif found is not None and found.scales.size:
                low, high = float(found.scales.min()), float(found.scales.max())
                scales = _number(low) if low == high else f"{_number(low)} … {_number(high)}"
            else:
                scales = "—"
            rows.append(
                (
                    _code(symmetry.id),
                    str(symmetry.size),
                    "yes" if symmetry.exact else "to first order",
                    scales,
                    printable(symmetry.note),
                )
            )
        parts.append(
            _fold(
                Table(
                    ("symmetry", "channels", "exact", "scales at the optimum", "note"),
                    tuple(rows),
                    (False, True, False, False, False),
                ),
                f"{len(rows)} symmetries",
            )
        )
    unbounded = sum(1 for item in chosen.symmetries.values() if item.unbounded)
    notes = [printable(note) for note in group.notes]
    if unbounded:
        notes.append(
            f"unbounded ({unbounded}): their penalised weights can shrink without limit into "
            "unpenalised tensors (norm gains, running statistics): L2 says nothing there"
        )
    notes += [
        f"stopped: {printable('+'.join(stop.producers))} at {printable(stop.node)}: "
        f"{printable(stop.reason)}"
        for stop in group.stops
    ]
    if notes:
        parts.append(Bullets(tuple(notes)))
    return parts


def _kind_tables(kinds: list[KindRow], channel: bool) -> list[Part]:
    by_kind: dict[str, list[KindRow]] = {}
    for row in kinds:
        by_kind.setdefault(row.kind if row.exact else f"{row.kind} ≈", []).append(row)

    def total(values: Sequence[float | None]) -> float | None:
        return None if any(v is None for v in values) else math.fsum(v for v in values if v)

    def optimum(rows: Sequence[KindRow], attribute: str) -> str:
        if all(row.unbounded for row in rows):
            return "unbounded"
        return _number(total([getattr(row, attribute) for row in rows if not row.unbounded]))

    header: tuple[str, ...] = ("kind", "blocks", "symmetries", "L2 now", "layer-wise optimum")
    header += ("channel-wise optimum",) if channel else ()
    header += ("WEISSI",)
    summary_rows = []
    for kind, rows in by_kind.items():
        summary_rows.append(
            (
                printable(kind),
                str(len({row.group for row in rows})),
                str(sum(row.symmetries for row in rows)),
                _number(math.fsum(row.l2_now for row in rows)),
                optimum(rows, "l2_layer"),
                *((optimum(rows, "l2_channel"),) if channel else ()),
                _number(total([row.weissi_penalty for row in rows])),
            )
        )
    numeric: tuple[bool, ...] = (False, True, True, True, True)
    numeric += ((True,) if channel else ()) + (True,)
    full_header = ("block", *header[:1], *header[2:])
    full_rows = tuple(
        (
            _code(row.group),
            printable(row.kind if row.exact else f"{row.kind} ≈"),
            str(row.symmetries),
            _number(row.l2_now),
            "unbounded" if row.unbounded else _number(row.l2_layer),
            *(("unbounded" if row.unbounded else _number(row.l2_channel),) if channel else ()),
            _number(row.weissi_penalty),
        )
        for row in kinds
    )
    blocks = len({row.group for row in kinds})
    return [
        Table(header, tuple(summary_rows), numeric),
        Details(
            f"per block: {len(full_rows)} rows ({blocks} blocks × kinds)",
            (Table(full_header, full_rows, (False, False, *numeric[2:])),),
        ),
    ]


def _fold(table: Table, what: str) -> Part:
    return table if len(table.rows) <= FOLD_ROWS else Details(what, (table,))


# --- Markdown ------------------------------------------------------------------------------


def to_markdown(report: InspectReport) -> str:
    return _markdown(outline(report))


def _markdown(parts: Sequence[Part]) -> str:
    lines: list[str] = []
    for part in parts:
        if isinstance(part, Heading):
            lines += ["#" * part.level + " " + part.text, ""]
        elif isinstance(part, Paragraph):
            lines += [part.text, ""]
        elif isinstance(part, Bullets):
            lines += [f"- {item}" for item in part.items] + [""]
        elif isinstance(part, Table):
            lines += [
                "| " + " | ".join(part.header) + " |",
                "|" + "|".join("---:" if n else "---" for n in part.numeric) + "|",
                *("| " + " | ".join(_cell(c) for c in row) + " |" for row in part.rows),
                "",
            ]
        else:
            lines += [
                f"<details><summary>{html.escape(part.summary)}</summary>",
                "",
                _markdown(part.parts).rstrip("\n"),
                "",
                "</details>",
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# --- HTML ----------------------------------------------------------------------------------


def to_html(report: InspectReport) -> str:
    """One file, no external resources: the outline as HTML, the plot as a data URI (or a
    note naming the extra when matplotlib is missing)."""
    try:
        from weissi_cli.report.plot import render_plot

        picture = base64.b64encode(render_plot(report, "png")).decode("ascii")
        figure = (
            '<img alt="layer norms before and after rebalancing" '
            f'src="data:image/png;base64,{picture}">'
        )
    except UsageError as error:
        figure = f"<p><em>{html.escape(str(error))}</em></p>"
    parts = outline(report)
    content = _html(parts[:2]) + f"\n{figure}\n" + _html(parts[2:])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>weissi inspect: {html.escape(printable(report.source.path))}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.2em .6em}td.n,th.n{text-align:right}"
        "img{max-width:100%}summary{cursor:pointer}</style></head>"
        f"<body>\n{content}\n</body></html>\n"
    )


def _html(parts: Sequence[Part]) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, Heading):
            out.append(f"<h{part.level}>{_inline(part.text)}</h{part.level}>")
        elif isinstance(part, Paragraph):
            out.append(f"<p>{_inline(part.text)}</p>")
        elif isinstance(part, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in part.items) + "</ul>")
        elif isinstance(part, Table):
            classes = [' class="n"' if n else "" for n in part.numeric]
            head = "".join(
                f"<th{c}>{_inline(h)}</th>" for h, c in zip(part.header, classes, strict=True)
            )
            body = "\n".join(
                "<tr>"
                + "".join(f"<td{c}>{_inline(v)}</td>" for v, c in zip(row, classes, strict=True))
                + "</tr>"
                for row in part.rows
            )
            out.append(f"<table>\n<tr>{head}</tr>\n{body}\n</table>")
        else:
            out.append(
                f"<details><summary>{html.escape(part.summary)}</summary>\n"
                f"{_html(part.parts)}\n</details>"
            )
    return "\n".join(out)


def _inline(text: str) -> str:
    """Markdown's `code` and **bold**, escaped for HTML."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
