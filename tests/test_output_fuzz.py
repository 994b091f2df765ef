"""Fuzzed destinations and model folders: every run ends with exit 0 or a one-line error
(exit 2), never a traceback; nothing but the named output is ever replaced; no file from
outside an input folder is copied into an output. `pytest -m fuzz` runs the long mode.

Report destinations are drawn among existing files, links (to the checkpoint, to folders,
dangling), folders, pipes, missing and file parents, and names up to and over 255 bytes.
Model folders get links in and out of them (to a secret, to /dev/zero, in loops, to
folders), named pipes, sockets and nested folders added."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from tests.helpers import mlp_state, raised_within, write_safetensors
from weissi_cli.cli.app import app

FAST, LONG = 40, 2_000
SECRET = b"the contents of a private file outside every model folder"


def weissi(*args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "WEISSI_DEBUG": None})
    results: list[Result] = []
    raised = raised_within(120, lambda: results.append(runner.invoke(app, list(args))))
    assert not raised, raised
    return results[0]


def assert_clean_exit(result: Result) -> None:
    """Exit 0, or 2 with one error line; no traceback either way."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr


def snapshot(top: Path) -> dict[str, tuple[str, str]]:
    """Everything below `top` (never through a link): kind, and contents or link target."""
    found: dict[str, tuple[str, str]] = {}
    for folder, folders, files in os.walk(top):
        for name in [*folders, *files]:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[str(path.relative_to(top))] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(top))] = ("file", digest)
            else:
                found[str(path.relative_to(top))] = (stat.filemode(mode)[0], "")
    return found


def staging_leftovers(top: Path) -> list[str]:
    return [
        str(Path(folder, name))
        for folder, folders, files in os.walk(top)
        for name in [*folders, *files]
        if name.startswith(".weissi-tmp-")
    ]


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="weissi-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def tiny_checkpoint(path: Path) -> Path:
    return write_safetensors(path, mlp_state(sizes=(5, 4, 3), dtype=torch.float32, seed=7))


# --- report destinations ---------------------------------------------------------------------


def report_world(top: Path) -> None:
    """A working folder with one of everything a destination could name."""
    tiny_checkpoint(top / "model.safetensors")
    (top / "precious.txt").write_bytes(SECRET)
    (top / "dir").mkdir()
    (top / "dir" / "inner.json").write_text("{}")
    (top / "file").write_text("a file")
    (top / "link-to-model.json").symlink_to("model.safetensors")
    (top / "link-to-precious.json").symlink_to(top / "precious.txt")
    (top / "link-to-dir").symlink_to("dir")
    (top / "dangling.json").symlink_to("absent.json")
    (top / "loop.json").symlink_to("loop.json")
    os.mkfifo(top / "pipe.json")
    (top / ("l" * 250 + ".json")).write_text("long")


PARENTS = ["", "dir/", "file/", "absent/", "link-to-dir/", "dangling.json/", "pipe.json/"]
NAMES = [
    "report.json",
    "model.safetensors",
    "precious.txt",
    "dir",
    "file",
    "link-to-model.json",
    "link-to-precious.json",
    "link-to-dir",
    "dangling.json",
    "loop.json",
    "pipe.json",
    "inner.json",
    "l" * 250 + ".json",
    "n" * 255,
    "n" * 256,
    ".",
    "..",
    "with space and ünïcödé.json",
    "new\nline.json",
    "-starts-with-a-dash.json",
    ".weissi-tmp-1-abcd",
]


@st.composite
def report_runs(draw: st.DrawFn) -> tuple[str, bool, str]:
    parent = draw(st.sampled_from(PARENTS))
    name = draw(st.one_of(st.sampled_from(NAMES), st.text(min_size=1, max_size=12)))
    name = name.replace("/", "_").replace("\x00", "_")
    output_format = draw(st.sampled_from(["json", "text", "junit"]))
    return parent + name, draw(st.booleans()), output_format


def run_report(destination: str, force: bool, output_format: str) -> None:
    with scratch() as top:
        report_world(top)
        before = snapshot(top)
        existed = os.path.lexists(top / destination)
        previous = os.lstat(top / destination) if existed else None
        arguments = ["check", str(top / "model.safetensors"), "--format", output_format]
        result = weissi(*arguments, "--output", f"{top}/{destination}", *(["--force"] * force))
        assert_clean_exit(result)
        after = snapshot(top)
        written = None
        if result.exit_code == 0:  # the folders above the file may be reached through links
            final = top / destination
            real = Path(os.path.realpath(final.parent)) / final.name
            written = str(real.relative_to(top.resolve()))
        # (a report may itself be named like a staging folder)
        assert [p for p in staging_leftovers(top) if p != str(top / str(written))] == []
        for relative, entry in before.items():
            if relative != written:
                assert after.get(relative) == entry, relative
        if result.exit_code == 0:
            final = top / destination
            assert stat.S_ISREG(final.lstat().st_mode)
            assert final.read_bytes()
            if previous is not None:
                assert force
                assert stat.S_ISREG(previous.st_mode)


def _report_cases(examples: int) -> None:
    @settings(max_examples=examples, suppress_health_check=list(HealthCheck), deadline=None)
    @given(report_runs())
    def run(case: tuple[str, bool, str]) -> None:
        run_report(*case)

    run()


def test_fuzzed_report_destinations() -> None:
    _report_cases(FAST)


@pytest.mark.fuzz
def test_fuzzed_report_destinations_long() -> None:
    _report_cases(LONG)


# --- mutated model folders -------------------------------------------------------------------

MUTATIONS = [
    "link-inside",
    "link-into-subfolder",
    "link-outside",
    "link-outside-relative",
    "link-outside-named-like-weights",
    "link-to-dev-zero",
    "link-to-etc",
    "dangling-link",
    "link-loop",
    "link-to-folder-inside",
    "link-to-folder-outside",
    "fifo",
    "socket",
    "nested-folders",
    "empty-folder",
    "staging-named-folder",
    "git-folder",
    "odd-name",
    "hard-link-inside",
]


def model_world(top: Path) -> Path:
    folder = top / "model"
    folder.mkdir()
    tiny_checkpoint(folder / "model.safetensors")
    (folder / "README.md").write_text("a tiny model\n")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (top / "secret.txt").write_bytes(SECRET)
    (top / "outside").mkdir()
    (top / "outside" / "key.txt").write_bytes(SECRET)
    return folder


def mutate(folder: Path, top: Path, mutation: str, index: int) -> None:
    name = f"m{index}"
    additions = {
        "link-inside": lambda: (folder / f"{name}.md").symlink_to("README.md"),
        "link-into-subfolder": lambda: (folder / name).symlink_to("tokenizer/vocab.txt"),
        "link-outside": lambda: (folder / f"{name}.json").symlink_to(top / "secret.txt"),
        "link-outside-relative": lambda: (folder / "tokenizer" / name).symlink_to(
            "../../secret.txt"
        ),
        "link-outside-named-like-weights": lambda: (folder / f"{name}.bin").symlink_to(
            top / "secret.txt"
        ),
        "link-to-dev-zero": lambda: (folder / f"{name}.txt").symlink_to("/dev/zero"),
        "link-to-etc": lambda: (folder / f"{name}.txt").symlink_to("/etc/hostname"),
        "dangling-link": lambda: (folder / name).symlink_to("absent"),
        "link-loop": lambda: (
            (folder / f"{name}a").symlink_to(f"{name}b"),
            (folder / f"{name}b").symlink_to(f"{name}a"),
        ),
        "link-to-folder-inside": lambda: (folder / name).symlink_to("tokenizer"),
        "link-to-folder-outside": lambda: (folder / name).symlink_to(top / "outside"),
        "fifo": lambda: os.mkfifo(folder / name),
        "socket": lambda: _socket_file(folder / name),
        "nested-folders": lambda: _nested(folder / name),
        "empty-folder": lambda: (folder / name).mkdir(),
        "staging-named-folder": lambda: (folder / f".weissi-tmp-1-{name}").mkdir(),
        "git-folder": lambda: (folder / ".git" / name).mkdir(parents=True, exist_ok=True),
        "odd-name": lambda: (folder / f"{name} ünï\ncödé").write_text("odd"),
        "hard-link-inside": lambda: os.link(folder / "README.md", folder / f"{name}.txt"),
    }
    additions[mutation]()


def _socket_file(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))


def _nested(path: Path) -> None:
    deep = path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("deep")


def run_folder(mutations: list[str], force: bool) -> None:
    with scratch() as top:
        folder = model_world(top)
        for index, mutation in enumerate(mutations):
            mutate(folder, top, mutation, index)
        output = top / "out"
        if force:
            output.mkdir()
            tiny_checkpoint(output / "model.safetensors")
            (output / "old.txt").write_text("an earlier output")
        before = snapshot(top)
        arguments = [str(folder), "-o", str(output), "--assume-relu", *(["--force"] * force)]
        result = weissi("rebalance", *arguments)
        assert_clean_exit(result)
        after = snapshot(top)
        # (a folder named like a staging folder that a mutation put into the input stays)
        assert [p for p in staging_leftovers(top) if not Path(p).is_relative_to(folder)] == []
        assert not_output(after) == not_output(before)
        if result.exit_code == 0:
            written = snapshot(output)
            assert "model.safetensors" in written
            assert all(kind in ("file", "d") for kind, _ in written.values()), written
            for relative, (kind, _) in written.items():
                if kind == "file":
                    assert SECRET not in (output / relative).read_bytes(), relative
            assert "old.txt" not in written
        else:
            assert after.items() - not_output(after).items() == (
                before.items() - not_output(before).items()
            )


def not_output(found: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {k: v for k, v in found.items() if k != "out" and not k.startswith("out/")}


def _folder_cases(examples: int) -> None:
    @settings(max_examples=examples, suppress_health_check=list(HealthCheck), deadline=None)
    @given(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4), st.booleans())
    def run(mutations: list[str], force: bool) -> None:
        run_folder(mutations, force)

    run()


def test_fuzzed_model_folders() -> None:
    _folder_cases(FAST)


@pytest.mark.fuzz
def test_fuzzed_model_folders_long() -> None:
    _folder_cases(LONG)
