"""The `check` payload (weissi.check/1): one record per rule per scope, and its formats
for machines (JSON, JUnit XML, GitHub workflow commands, Markdown)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from weissi_cli.config import CheckSettings
from weissi_cli.report.common import TOOL_VERSION, Source, finite_or_none, to_json
from weissi_cli.report.printable import printable, xml_text


# xml.sax.saxutils' escape and quoteattr, without the 20 ms it takes to import (it pulls in
# urllib.request, http and ssl): every command imports this module for its report type.
def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    text = escape(text).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    return '"{}"'.format(text.replace('"', "&quot;"))


SCHEMA = "weissi.check/1"
VERDICTS = ("pass", "warn", "fail")


@dataclass(frozen=True)
class RuleResult:
    rule: str  # "non-finite" | "max-abs" | "max-norm" | "max-imbalance" | ...
    scope: str  # the tensor, chain or group the rule looked at
    value: float | None
    threshold: float | None
    verdict: str  # pass | warn | fail
    tensors: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "scope": self.scope,
            "value": finite_or_none(self.value),
            "threshold": finite_or_none(self.threshold),
            "verdict": self.verdict,
            "tensors": list(self.tensors),
            "message": self.message,
        }


@dataclass(frozen=True)
class CheckReport:
    source: Source
    settings: CheckSettings
    settings_file: str | None
    results: tuple[RuleResult, ...]
    warnings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not any(result.verdict == "fail" for result in self.results)

    def count(self, verdict: str) -> int:
        return sum(1 for result in self.results if result.verdict == verdict)

    def to_dict(self) -> dict[str, Any]:
        settings = {
            "max_imbalance": self.settings.max_imbalance,
            "max_l2_ratio": self.settings.max_l2_ratio,
            "max_abs": self.settings.max_abs,
            "max_norm": self.settings.max_norm,
            "no_dead_units": self.settings.no_dead_units,
            "fp16_headroom": self.settings.fp16_headroom,
            "from": self.settings_file,
        }
        return {
            "schema": SCHEMA,
            "tool_version": TOOL_VERSION,
            "source": self.source.to_dict(),
            "settings": settings,
            "passed": self.passed,
            "summary": {verdict: self.count(verdict) for verdict in VERDICTS},
            "rules": [result.to_dict() for result in self.results],
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def to_junit(self) -> str:
        """JUnit XML: one testcase per rule per scope; failures as <failure>, warnings as
        <system-out> (JUnit has no warning state). Characters XML cannot carry (controls in a
        tensor name) are written as their escapes, so the document always parses."""
        by_rule: dict[str, list[RuleResult]] = {}
        for result in self.results:
            by_rule.setdefault(result.rule, []).append(result)
        lines = ['<?xml version="1.0" encoding="UTF-8"?>']
        failures = self.count("fail")
        lines.append(
            f'<testsuites name="weissi check" tests="{len(self.results)}" failures="{failures}" '
            f'errors="0">'
        )
        for rule, results in by_rule.items():
            failed = sum(1 for r in results if r.verdict == "fail")
            lines.append(
                f'  <testsuite name={quoteattr(xml_text(f"weissi.{rule}"))} tests="{len(results)}" '
                f'failures="{failed}" errors="0" skipped="0">'
            )
            for result in results:
                case = (
                    f"    <testcase classname={quoteattr(xml_text(f'weissi.{rule}'))} "
                    f"name={quoteattr(xml_text(result.scope))}"
                )
                if result.verdict == "pass":
                    lines.append(case + " />")
                    continue
                lines.append(case + ">")
                if result.verdict == "fail":
                    message = xml_text(result.message)
                    attributes = f"message={quoteattr(message)} type={quoteattr(xml_text(rule))}"
                    lines.append(f"      <failure {attributes}>{escape(message)}</failure>")
                else:
                    message = escape(xml_text(result.message))
                    lines.append(f"      <system-out>warning: {message}</system-out>")
                lines.append("    </testcase>")
            lines.append("  </testsuite>")
        lines.append("</testsuites>")
        return "\n".join(lines) + "\n"

    def to_github(self) -> str:
        """GitHub Actions workflow commands: ::error / ::warning per finding, ::notice total."""
        lines = []
        for result in self.results:
            if result.verdict == "pass":
                continue
            level = "error" if result.verdict == "fail" else "warning"
            title = _github_property(f"weissi {result.rule}: {result.scope}")
            lines.append(
                f"::{level} file={_github_property(self.source.path)},title={title}::"
                f"{_github_data(result.message)}"
            )
        summary = (
            f"weissi check {'passed' if self.passed else 'failed'}: {self.count('fail')} failed, "
            f"{self.count('warn')} warnings, {self.count('pass')} passed"
        )
        lines.append(f"::notice title=weissi check::{_github_data(summary)}")
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        mark = {"pass": "✅", "warn": "⚠️", "fail": "❌"}
        lines = [
            f"### weissi check: {'passed' if self.passed else 'failed'} — "
            f"`{printable(self.source.path)}`",
            "",
            f"{self.count('fail')} failed · {self.count('warn')} warnings · "
            f"{self.count('pass')} passed",
            "",
            "| | rule | scope | value | threshold | message |",
            "|---|---|---|---|---|---|",
        ]
        ordered = sorted(self.results, key=lambda r: VERDICTS.index(r.verdict), reverse=True)
        for result in ordered:
            lines.append(
                f"| {mark[result.verdict]} | {result.rule} | `{_cell(result.scope)}` | "
                f"{_number(result.value)} | {_number(result.threshold)} | {_cell(result.message)} |"
            )
        return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}"


def _cell(text: str) -> str:
    return printable(text).replace("|", "\\|")


def _github_data(text: str) -> str:
    # Control characters escaped (a CI log is a terminal), line breaks encoded as GitHub asks.
    return xml_text(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _github_property(text: str) -> str:
    return _github_data(text).replace(":", "%3A").replace(",", "%2C")
