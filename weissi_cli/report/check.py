"""The `check` payloads: one record per rule per scope for a checkpoint (weissi.check/1), a
run over several checkpoints (weissi.checks/1), and their formats for machines and CI views
(JSON, JUnit XML, GitHub workflow commands, Markdown for a job summary)."""

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
RUN_SCHEMA = "weissi.checks/1"
# skip: the rule was asked for but could not be evaluated (the message says why).
VERDICTS = ("pass", "warn", "fail", "skip")
# Rules whose passing values say something (how close to the threshold); the others pass
# with nothing to add ("all values finite").
MEASURED_RULES = ("max-abs", "max-norm", "max-imbalance", "max-l2-ratio")
SHOWN_TENSORS = 8


@dataclass(frozen=True)
class RuleResult:
    """One rule on one scope (a tensor, a chain, `symmetries`): its value, threshold, verdict,
    the tensors involved, a message and the fix."""

    rule: str  # "non-finite" | "max-abs" | "max-norm" | "max-imbalance" | ...
    scope: str  # the tensor, chain or group the rule looked at
    value: float | None
    threshold: float | None
    verdict: str  # pass | warn | fail | skip
    tensors: tuple[str, ...]
    message: str
    fix: str = ""  # what to do about a failure or warning

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON."""
        return {
            "rule": self.rule,
            "scope": self.scope,
            "value": finite_or_none(self.value),
            "threshold": finite_or_none(self.threshold),
            "verdict": self.verdict,
            "tensors": list(self.tensors),
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class CheckReport:
    """The rules checked on one checkpoint."""

    source: Source
    settings: CheckSettings
    settings_file: str | None
    results: tuple[RuleResult, ...]
    warnings: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not any(result.verdict == "fail" for result in self.results)

    def count(self, verdict: str) -> int:
        """How many results have `verdict` (pass, warn, fail or skip)."""
        return sum(1 for result in self.results if result.verdict == verdict)

    def by_rule(self) -> dict[str, list[RuleResult]]:
        """The results grouped by rule, in the order the rules first appear."""
        grouped: dict[str, list[RuleResult]] = {}
        for result in self.results:
            grouped.setdefault(result.rule, []).append(result)
        return grouped

    def counts(self) -> str:
        """`2 failed · 1 warning · 30 passed` (skipped only when there are some)."""
        warnings = self.count("warn")
        parts = [
            f"{self.count('fail')} failed",
            f"{warnings} warning{'' if warnings == 1 else 's'}",
            f"{self.count('pass')} passed",
        ]
        if self.count("skip"):
            parts.append(f"{self.count('skip')} not evaluated")
        return " · ".join(parts)

    def summary_line(self) -> str:
        """One line for a log: the checkpoint, its verdict and the counts."""
        return (
            f"{printable(self.source.path)}: {'passed' if self.passed else 'failed'} · "
            f"{self.counts()}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The weissi.check/1 JSON payload."""
        settings = {
            "max_imbalance": self.settings.max_imbalance,
            "max_l2_ratio": self.settings.max_l2_ratio,
            "max_abs": self.settings.max_abs,
            "max_norm": self.settings.max_norm,
            "no_dead_units": self.settings.no_dead_units,
            "fp16_headroom": self.settings.fp16_headroom,
            "fp16_tolerance": self.settings.fp16_tolerance,
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
        """The weissi.check/1 payload as one line of JSON."""
        return to_json(self.to_dict())

    def to_junit(self) -> str:
        """JUnit XML of this checkpoint (see `CheckRun.to_junit`)."""
        return CheckRun((self,)).to_junit()

    def to_github(self) -> str:
        """GitHub workflow commands for this checkpoint (see `CheckRun.to_github`)."""
        return CheckRun((self,)).to_github()

    def to_markdown(self) -> str:
        """A Markdown summary of this checkpoint (see `CheckRun.to_markdown`)."""
        return CheckRun((self,)).to_markdown()


@dataclass(frozen=True)
class CheckError:
    """A checkpoint that could not be checked (unreadable, malformed): its message and the
    exit code the error carries."""

    path: str
    message: str
    exit_code: int = 2

    def summary_line(self) -> str:
        """One line for a log: the checkpoint and why it was not checked."""
        message = self.message.removeprefix(f"{self.path}: ")
        return f"{printable(self.path)}: not checked · {printable(message)}"

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON."""
        return {"path": self.path, "message": self.message, "exit_code": self.exit_code}


@dataclass(frozen=True)
class CheckRun:
    """`check` over one or more checkpoints, in the order they were given: every report
    format is made from this one record."""

    entries: tuple[CheckReport | CheckError, ...]

    @property
    def reports(self) -> tuple[CheckReport, ...]:
        return tuple(entry for entry in self.entries if isinstance(entry, CheckReport))

    @property
    def errors(self) -> tuple[CheckError, ...]:
        return tuple(entry for entry in self.entries if isinstance(entry, CheckError))

    @property
    def passed(self) -> bool:
        return not self.errors and all(report.passed for report in self.reports)

    @property
    def exit_code(self) -> int:
        """2 when a checkpoint could not be checked, 1 when a rule failed, else 0."""
        if self.errors:
            return max(error.exit_code for error in self.errors)
        return 0 if self.passed else 1

    def count(self, verdict: str) -> int:
        """How many results of all checkpoints have `verdict`."""
        return sum(report.count(verdict) for report in self.reports)

    def verdict_line(self) -> str:
        """The whole run in one line."""
        failed = sum(1 for report in self.reports if not report.passed)
        total = len(self.entries)
        if total == 1 and self.reports:
            return (
                f"weissi check {'passed' if self.passed else 'failed'}: {self.reports[0].counts()}"
            )
        parts = [f"{total - failed - len(self.errors)} of {total} checkpoints passed"]
        if failed:
            parts.append(f"{failed} failed")
        if self.errors:
            parts.append(f"{len(self.errors)} could not be checked")
        return f"weissi check {'passed' if self.passed else 'failed'}: {', '.join(parts)}"

    # --- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """weissi.check/1 for one checkpoint; weissi.checks/1 (one weissi.check/1 per
        checkpoint, and the errors) for several."""
        if len(self.entries) == 1 and self.reports:
            return self.reports[0].to_dict()
        return {
            "schema": RUN_SCHEMA,
            "tool_version": TOOL_VERSION,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "summary": {
                "checkpoints": len(self.entries),
                "failed_checkpoints": sum(1 for report in self.reports if not report.passed),
                "errors": len(self.errors),
                **{verdict: self.count(verdict) for verdict in VERDICTS},
            },
            "checkpoints": [report.to_dict() for report in self.reports],
            "errors": [error.to_dict() for error in self.errors],
        }

    def to_json(self) -> str:
        """`to_dict()` as one line of JSON."""
        return to_json(self.to_dict())

    # --- JUnit ---------------------------------------------------------------------------

    def to_junit(self) -> str:
        """JUnit XML as pytest writes it: one testsuite per checkpoint, named by its path; one
        testcase per rule per scope (classname `weissi.<rule>`). A failure carries the
        tensors, value, threshold and fix; a rule that could not be evaluated is skipped with
        the reason; warnings are the testcase's system-out (JUnit has no warning state); a
        checkpoint that could not be read is one failing testcase of type `error`. Characters
        XML cannot carry (controls in a tensor name) are written as their escapes, so the
        document always parses."""
        suites: list[str] = []
        tests = failures = 0
        for entry in self.entries:
            if isinstance(entry, CheckError):
                tests += 1
                failures += 1
                message = xml_text(entry.message)
                suites += [
                    f'  <testsuite name={quoteattr(xml_text(entry.path))} tests="1" '
                    'failures="1" errors="0" skipped="0">',
                    '    <testcase classname="weissi.read" name="read the checkpoint">',
                    f'      <failure type="error" message={quoteattr(message)}>'
                    f"{escape(message)}</failure>",
                    "    </testcase>",
                    "  </testsuite>",
                ]
                continue
            tests += len(entry.results)
            failures += entry.count("fail")
            suites += _junit_suite(entry)
        head = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<testsuites name="weissi check" tests="{tests}" failures="{failures}" errors="0">',
        ]
        return "\n".join([*head, *suites, "</testsuites>"]) + "\n"

    # --- GitHub workflow commands --------------------------------------------------------

    def to_github(self) -> str:
        """GitHub Actions workflow commands: ::error per failure (with the fix), ::warning per
        warning or rule not evaluated, ::notice with each checkpoint's counts."""
        lines = []
        for entry in self.entries:
            if isinstance(entry, CheckError):
                lines.append(
                    f"::error file={_github_property(entry.path)},title=weissi check: not "
                    f"checked::{_github_data(entry.message)}"
                )
                continue
            for result in entry.results:
                if result.verdict == "pass":
                    continue
                level = "error" if result.verdict == "fail" else "warning"
                title = _github_property(f"weissi {result.rule}: {result.scope}")
                message = result.message + (f" — {result.fix}" if result.fix else "")
                lines.append(
                    f"::{level} file={_github_property(entry.source.path)},title={title}::"
                    f"{_github_data(message)}"
                )
            lines.append(
                f"::notice file={_github_property(entry.source.path)},title=weissi check::"
                f"{_github_data(entry.summary_line())}"
            )
        if len(self.entries) > 1:
            lines.append(f"::notice title=weissi check::{_github_data(self.verdict_line())}")
        return "\n".join(lines) + "\n"

    # --- Markdown ------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """A job summary: the verdict and failures first, then a compact table per rule;
        passing values folded in <details>, so a passing model of hundreds of tensors is a
        few dozen lines."""
        mark = "✅" if self.passed else "❌"
        several = len(self.entries) > 1
        lines = [f"## {mark} {self.verdict_line()}", ""]
        if several:
            lines += [
                "| | checkpoint | failed | warnings | not evaluated | passed |",
                "|---|---|--:|--:|--:|--:|",
            ]
            for entry in self.entries:
                if isinstance(entry, CheckError):
                    lines.append(f"| ⛔ | {_code(entry.path)} | not checked | — | — | — |")
                    continue
                lines.append(
                    f"| {'✅' if entry.passed else '❌'} | {_code(entry.source.path)} | "
                    f"{entry.count('fail')} | {entry.count('warn')} | {entry.count('skip')} | "
                    f"{entry.count('pass')} |"
                )
            lines.append("")
        lines += _markdown_findings(self.reports, several)
        for entry in self.entries:
            if isinstance(entry, CheckError):
                lines += [
                    f"### ⛔ {_code(entry.path)}",
                    "",
                    f"Not checked: {_cell(entry.message)}",
                    "",
                ]
                continue
            lines += _markdown_checkpoint(entry, heading=several)
        return "\n".join(lines).rstrip("\n") + "\n"


def _junit_suite(report: CheckReport) -> list[str]:
    source = report.source
    lines = [
        f'  <testsuite name={quoteattr(xml_text(source.path))} tests="{len(report.results)}" '
        f'failures="{report.count("fail")}" errors="0" skipped="{report.count("skip")}">',
        "    <properties>",
        *(
            f"      <property name={quoteattr(name)} value={quoteattr(xml_text(value))} />"
            for name, value in (
                ("format", source.format),
                ("tensors", str(source.tensors)),
                ("parameters", str(source.parameters)),
                ("thresholds", report.settings_file or "flags"),
                ("tool_version", TOOL_VERSION),
            )
        ),
        "    </properties>",
    ]
    for result in report.results:
        rule = xml_text(f"weissi.{result.rule}")
        case = f"    <testcase classname={quoteattr(rule)} name={quoteattr(xml_text(result.scope))}"
        if result.verdict == "pass":
            lines.append(case + " />")
            continue
        lines.append(case + ">")
        message = xml_text(result.message)
        if result.verdict == "fail":
            attributes = f"message={quoteattr(message)} type={quoteattr(xml_text(result.rule))}"
            lines.append(f"      <failure {attributes}>{escape(_failure_text(result))}</failure>")
        elif result.verdict == "skip":
            lines.append(f'      <skipped type="not-evaluated" message={quoteattr(message)} />')
        else:
            lines.append(
                f"      <system-out>{escape(_failure_text(result, 'warning'))}</system-out>"
            )
        lines.append("    </testcase>")
    if report.warnings:
        text = "\n".join(f"warning: {xml_text(warning)}" for warning in report.warnings)
        lines.append(f"    <system-err>{escape(text)}</system-err>")
    lines.append("  </testsuite>")
    return lines


def _failure_text(result: RuleResult, first: str = "failed") -> str:
    """What a CI view shows of a failure: the finding, the tensors, value, threshold, fix."""
    shown = ", ".join(result.tensors[:SHOWN_TENSORS])
    if len(result.tensors) > SHOWN_TENSORS:
        shown += f", … ({len(result.tensors) - SHOWN_TENSORS} more)"
    lines = [
        f"{first}: {result.message}",
        f"tensor{'s' if len(result.tensors) != 1 else ''}: {shown}",
        f"value: {_number(result.value)}",
        f"threshold: {_number(result.threshold)}",
    ]
    if result.fix:
        lines.append(f"fix: {result.fix}")
    return xml_text("\n".join(lines))


def _markdown_findings(reports: tuple[CheckReport, ...], several: bool) -> list[str]:
    """Every failure (a table with the fix), then warnings and rules not evaluated, of all
    checkpoints: what a reader of a job summary looks for first."""
    lines: list[str] = []
    where = "| checkpoint " if several else ""
    failed = [(report, r) for report in reports for r in report.results if r.verdict == "fail"]
    if failed:
        lines += [
            "**Failures**",
            "",
            f"{where}| rule | scope | value | threshold | fix |",
            f"{'|---' if several else ''}|---|---|--:|--:|---|",
        ]
        lines += [
            (f"| {_code(report.source.path)} " if several else "")
            + f"| {r.rule} | {_code(r.scope)} | {_number(r.value)} | {_number(r.threshold)} | "
            f"{_cell(r.fix or r.message)} |"
            for report, r in failed
        ]
        lines.append("")
    for verdict, title in (("warn", "Warnings"), ("skip", "Not evaluated")):
        found = [(report, r) for report in reports for r in report.results if r.verdict == verdict]
        if found:
            lines += [f"**{title}**", ""]
            lines += [
                "- "
                + (f"{_code(report.source.path)} " if several else "")
                + f"{r.rule} {_code(r.scope)}: {_cell(r.message)}"
                for report, r in found
            ]
            lines.append("")
    return lines


def _markdown_checkpoint(report: CheckReport, heading: bool) -> list[str]:
    source = report.source
    lines: list[str] = []
    if heading:
        lines += [f"### {'✅' if report.passed else '❌'} {_code(source.path)}", ""]
    lines += [
        f"{_code(source.path)} · {source.format} · {source.tensors} tensors · "
        f"{source.parameters:,} parameters · thresholds from "
        f"{_cell(report.settings_file or 'flags')}",
        "",
    ]
    lines += [
        "| rule | checked | ❌ failed | ⚠️ warnings | ⏭️ not evaluated | ✅ passed | largest value |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    grouped = report.by_rule()
    for rule, results in grouped.items():
        counts = [
            sum(1 for r in results if r.verdict == v) for v in ("fail", "warn", "skip", "pass")
        ]
        lines.append(
            f"| {rule} | {len(results)} | {' | '.join(str(c) for c in counts)} | "
            f"{_largest(results)} |"
        )
    lines.append("")
    for rule, results in grouped.items():
        passing = [r for r in results if r.verdict == "pass"]
        if rule not in MEASURED_RULES or len(passing) < 2:
            continue  # one passing value is the table's largest
        values = " · ".join(f"{_code(r.scope)} {_number(r.value)}" for r in passing)
        lines += [
            f"<details><summary>{rule}: {len(passing)} passed (≤ "
            f"{_number(passing[0].threshold)})</summary>",
            "",
            values,
            "",
            "</details>",
            "",
        ]
    if report.warnings:
        lines += [f"> {_cell(warning)}" for warning in report.warnings]
        lines.append("")
    return lines


def _largest(results: list[RuleResult]) -> str:
    measured = [r for r in results if r.value is not None and math.isfinite(r.value)]
    if not measured or results[0].rule not in MEASURED_RULES:
        return "—"
    top = max(measured, key=lambda r: r.value if r.value is not None else -math.inf)
    return f"{_number(top.value)} ({_code(top.scope)})"


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}"


def _cell(text: str) -> str:
    """Text in a Markdown table cell: one line, no HTML, no column breaks."""
    return escape(printable(text)).replace("|", "\\|")


def _code(text: str) -> str:
    """`text` as inline code, fenced with enough backticks for any it holds."""
    text = printable(text).replace("|", "\\|")
    longest = 0
    run = 0
    for character in text:
        run = run + 1 if character == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    padding = " " if longest else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _github_data(text: str) -> str:
    # Control characters escaped (a CI log is a terminal), line breaks encoded as GitHub asks.
    return xml_text(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _github_property(text: str) -> str:
    return _github_data(text).replace(":", "%3A").replace(",", "%2C")
