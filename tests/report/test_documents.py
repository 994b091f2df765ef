"""inspect's Markdown and HTML reports: a model folder's symmetry table is in both, by kind
with the block-by-kind table folded, so the visible report has the same length at 2, 32
and 100 layers."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from weissi_cli.api import inspect_checkpoint
from weissi_cli.report.documents import to_html, to_markdown

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"

# Lines of the Markdown report (all of them; outside <details>) of the LLaMA test models.
GOLDEN_LINES = {2: (41, 25), 32: (191, 25), 100: (531, 25)}
KINDS = ("norm→qkv", "q↔k", "v→o", "norm→mlp", "up→down", "norm→lm_head")


def visible(markdown: str) -> list[str]:
    return re.sub(r"<details>.*?</details>", "<details/>", markdown, flags=re.DOTALL).splitlines()


class Balance(HTMLParser):
    """Checks that every element opened is closed, in order."""

    VOID = {"meta", "img", "br"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(tag)


@pytest.mark.parametrize("layers", [2, 32, 100])
def test_the_symmetry_table_is_in_both_and_reads_at_any_depth(
    llama_folders: dict[int, Path], layers: int
) -> None:
    pytest.importorskip("matplotlib")
    report = inspect_checkpoint(llama_folders[layers])
    markdown = to_markdown(report)
    lines = markdown.splitlines()
    assert (len(lines), len(visible(markdown))) == GOLDEN_LINES[layers]
    assert "## Scale symmetries (" in markdown
    cells = [line.split(" | ") for line in visible(markdown) if line.startswith("| ")]
    summary = [" | ".join(c) for c in cells if c[0].removeprefix("| ") in KINDS]
    assert [line.split(" | ")[0].removeprefix("| ") for line in summary] == list(KINDS)
    assert f"| {layers} | {layers} |" in summary[0]  # norm→qkv: one per block
    folded = re.findall(r"^\| `model\.layers\.\d+` \|", markdown, re.MULTILINE)
    assert len(folded) == 5 * layers  # every block and kind, inside <details>

    page = to_html(report)
    checker = Balance()
    checker.feed(page)
    assert checker.errors == []
    assert checker.open == []
    for kind in KINDS:
        assert f"<td>{kind}</td>" in page
    assert page.count("<details>") == 1
    assert 'src="data:image/png;base64,' in page
    assert page.count("<tr>") == len(re.findall(r"^\| (?!---)", markdown, re.MULTILINE))


def test_chains_keep_their_tables() -> None:
    report = inspect_checkpoint(SAMPLES / "mlp_digits.safetensors")
    markdown = to_markdown(report)
    assert "| `net.0` | 64×64 |" in markdown
    assert "L2 penalty **206.6** → min **164.5**" in markdown
    assert "Scale symmetries" not in markdown
    page = to_html(report)
    assert "<td><code>net.0</code></td>" in page
    assert "<strong>206.6</strong>" in page


def test_markdown_and_html_escape_what_the_file_names(tmp_path: Path) -> None:
    import torch

    from tests.helpers import write_safetensors

    odd = "layer|<b>x</b>`$a$\x1b[2J"
    path = write_safetensors(
        tmp_path / "odd.safetensors", {f"{odd}.weight": torch.ones(3, 3), "w2": torch.ones(3)}
    )
    report = inspect_checkpoint(path)
    markdown = to_markdown(report)
    assert "\x1b" not in markdown
    page = to_html(report)
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
