"""Shareable inspect reports: Markdown, and self-contained HTML with the plot inlined."""

from __future__ import annotations

import base64
import html
import re

from weissi_cli.errors import UsageError
from weissi_cli.report.inspect import InspectReport


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def to_markdown(report: InspectReport) -> str:
    source = report.source
    lines = [
        f"# weissi inspect: `{source.path}`",
        "",
        f"{source.format} · {source.tensors} tensors · {source.parameters:,} parameters",
        "",
    ]
    for analysis in report.chains:
        chain = analysis.chain
        lines += [
            f"## {chain.id} · {chain.activation} · {chain.depth} layers · {chain.origin}",
            "",
            "| layer | shape | ‖W‖ | γ* | ‖W‖ after |",
            "|---|---|---:|---:|---:|",
        ]
        for layer in analysis.layers:
            shape = "×".join(str(s) for s in layer.layer.shape)
            lines.append(
                f"| `{layer.layer.prefix}` | {shape} | {_number(layer.fro_norm)} | "
                f"{_number(layer.gamma)} | {_number(layer.rebalanced_norm)} |"
            )
        lines += [""]
        if analysis.problem:
            lines += [f"Degenerate: {analysis.problem}", ""]
        else:
            lines += [
                f"- L2 penalty **{_number(analysis.l2_penalty)}** → min "
                f"**{_number(analysis.min_l2_penalty)}** (slack {_number(analysis.l2_slack)})",
                f"- imbalance {_number(analysis.imbalance)}×, geometric mean G = "
                f"{_number(analysis.geometric_mean)}",
                f"- WEISSI {_number(analysis.weissi_penalty)} (invariant under rebalancing)",
                "",
            ]
    if report.group is not None:
        group = report.group
        lines += [
            f"## Scale symmetries ({len(group.symmetries)})",
            "",
            f"L2 now {_number(group.l2_penalty)} · layer-wise optimum "
            f"{_number(group.layer.l2_after)}"
            + (
                f" · channel-wise optimum {_number(group.channel.l2_after)}"
                if group.channel
                else ""
            ),
            "",
        ]
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in report.warnings] + [""]
    return "\n".join(lines) + "\n"


def to_html(report: InspectReport) -> str:
    """One file, no external resources: the Markdown content as HTML, the plot as a data URI
    (or a note naming the extra when matplotlib is missing)."""
    try:
        from weissi_cli.report.plot import render_plot

        picture = base64.b64encode(render_plot(report, "png")).decode("ascii")
        figure = (
            '<img alt="layer norms before and after rebalancing" '
            f'src="data:image/png;base64,{picture}">'
        )
    except UsageError as error:
        figure = f"<p><em>{html.escape(str(error))}</em></p>"
    body = []
    for line in to_markdown(report).splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            cells = [_inline(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if "layer" in cells[0] else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    content = "\n".join(_wrap(_wrap(body, "<tr>", "table"), "<li>", "ul"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>weissi inspect: {html.escape(report.source.path)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head>"
        f"<body>\n{content}\n{figure}\n</body></html>\n"
    )


def _inline(text: str) -> str:
    """Markdown's `code` and **bold**, escaped for HTML."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _wrap(lines: list[str], start: str, tag: str) -> list[str]:
    """Runs of lines starting with `start` inside <tag>...</tag>."""
    wrapped: list[str] = []
    inside = False
    for line in lines:
        member = line.startswith(start)
        if member and not inside:
            wrapped.append(f"<{tag}>")
        if not member and inside:
            wrapped.append(f"</{tag}>")
        inside = member
        wrapped.append(line)
    if inside:
        wrapped.append(f"</{tag}>")
    return wrapped
