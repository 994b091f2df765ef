"""The check report's JUnit XML is a well-formed document whatever the tensor names hold."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import example, given
from hypothesis import strategies as st

from weissi_cli.config import CheckSettings
from weissi_cli.report.check import CheckReport, RuleResult
from weissi_cli.report.common import Source
from weissi_cli.report.printable import xml_text

# Every code point, surrogates and controls included, with the awkward ones made likely.
ANY_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=()),
        st.sampled_from("\x00\x1b\x07\x0b\x0c\r\n\t\x7f\x85\x9b\ud800\udfff\ufffe\uffff<>&\"'"),
    ),
    max_size=24,
)


def report(scope: str, message: str, source: str) -> CheckReport:
    results = (
        RuleResult("max-abs", scope, 2.0, 1.0, "fail", (scope,), message),
        RuleResult("dead-units", scope, None, None, "warn", (scope,), message),
        RuleResult("non-finite", scope, None, None, "pass", (scope,), message),
    )
    return CheckReport(Source(source, "safetensors", 1, 1, 4), CheckSettings(), None, results, ())


@given(ANY_TEXT, ANY_TEXT, ANY_TEXT)
@example("n\x1b[2J\x00\r\n\ud800\ufffe<&>", "\x07\x0b\x9b\"'\t", "f\x1b]0;t\x07.pt")
def test_junit_parses_for_any_name_and_message(scope: str, message: str, source: str) -> None:
    root = ET.fromstring(report(scope, message, source).to_junit().encode("utf-8"))
    cases = [case for suite in root.findall("testsuite") for case in suite.findall("testcase")]
    assert len(cases) == 3
    # attribute values come back as written, but for what XML cannot carry (escaped)
    assert {case.get("name") for case in cases} == {xml_text(scope)}
    failure = cases[0].find("failure")
    assert failure is not None
    assert failure.get("message") == xml_text(message)


@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=24))
def test_names_without_controls_come_back_unchanged(scope: str) -> None:
    root = ET.fromstring(report(scope, "m", "f").to_junit().encode("utf-8"))
    names = {case.get("name") for suite in root for case in suite.findall("testcase")}
    assert names == {xml_text(scope)}
