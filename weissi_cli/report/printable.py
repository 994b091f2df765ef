"""Text from a checkpoint made safe to show: control characters escaped, never passed on.

Tensor names, metadata and file names come from the file. Shown raw, an escape sequence in
one could recolour, retitle or rewrite a terminal, a line break could forge a line of the
report, and a bidirectional override could reorder what is read. Each such character is
written as its Python escape (`\\x1b`, `\\u202e`, `\\n`) instead.
"""

from __future__ import annotations

import re

# C0 controls other than tab, line feed and carriage return; DEL and the C1 controls;
# bidirectional marks, embeddings, overrides and isolates; lone surrogates; the two
# noncharacters XML forbids. Tab, line feed and carriage return are added per use.
_ALWAYS = (
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff\ufffe\uffff"
)
_IN_A_LINE = re.compile(f"[{_ALWAYS}\t\n\r]")
_ACROSS_LINES = re.compile(f"[{_ALWAYS}\t\r]")
_IN_XML = re.compile(f"[{_ALWAYS}]")


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    character = match.group()
    code = ord(character)
    if character in _SHORT:
        return _SHORT[character]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` on one line with every control character escaped (line breaks included)."""
    return text if _IN_A_LINE.search(text) is None else _IN_A_LINE.sub(_escaped, text)


def printable_lines(text: str) -> str:
    """`text` with every control character escaped except the line feeds that break it."""
    return text if _ACROSS_LINES.search(text) is None else _ACROSS_LINES.sub(_escaped, text)


def xml_text(text: str) -> str:
    """`text` with every character XML 1.0 cannot carry, and every terminal control, escaped;
    tab and line breaks stay (XML escaping encodes them in attributes)."""
    return text if _IN_XML.search(text) is None else _IN_XML.sub(_escaped, text)
