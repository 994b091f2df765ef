"""Report files (`check --output`, `inspect --plot`): never over a file without --force, never
through a link, written whole or not at all, a one-line error for every place that cannot
take them."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from tests.helpers import sha256

CHECKPOINT = "mlp_digits.safetensors"


def one_line_error(result: Result) -> str:
    """The error line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "weissi-tmp" in p.name)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


REPORTS = [
    ("check", CHECKPOINT, "--format", "json", "--output"),
    ("inspect", CHECKPOINT, "--plot"),
]
SUFFIX = {"check": ".json", "inspect": ".png"}


def report_command(kind: tuple[str, ...], destination: str, *extra: str) -> list[str]:
    return [*kind, destination, *extra]


@pytest.fixture(params=REPORTS, ids=["check-output", "inspect-plot"])
def kind(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return tuple(request.param)


def test_check_output_onto_the_checkpoint_never_replaces_it(
    run: Callable[..., Result], workdir: Path
) -> None:
    before = sha256(workdir / CHECKPOINT)
    for extra in ((), ("--force",)):
        result = run("check", CHECKPOINT, "--format", "json", "--output", CHECKPOINT, *extra)
        assert CHECKPOINT in one_line_error(result)
        assert sha256(workdir / CHECKPOINT) == before
    assert leftovers(workdir) == []


def test_an_existing_report_file_needs_force(
    run: Callable[..., Result], workdir: Path, kind: tuple[str, ...]
) -> None:
    destination = workdir / f"report{SUFFIX[kind[0]]}"
    destination.write_bytes(b"an earlier report")
    result = run(*report_command(kind, destination.name))
    assert "already exists; pass --force" in one_line_error(result)
    assert destination.read_bytes() == b"an earlier report"
    forced = run(*report_command(kind, destination.name, "--force"))
    assert forced.exit_code == 0, forced.output
    assert destination.read_bytes() != b"an earlier report"
    assert leftovers(workdir) == []


def test_force_keeps_the_mode_of_the_replaced_report(
    run: Callable[..., Result], workdir: Path, kind: tuple[str, ...]
) -> None:
    destination = workdir / f"report{SUFFIX[kind[0]]}"
    destination.write_bytes(b"an earlier report")
    destination.chmod(0o640)
    with umask(0o022):
        assert run(*report_command(kind, destination.name, "--force")).exit_code == 0
    assert mode(destination) == 0o640


@pytest.mark.parametrize(
    ("mask", "expected"),
    [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
    ids=["umask-022", "umask-002", "umask-077"],
)
def test_a_new_report_respects_the_umask(
    run: Callable[..., Result], workdir: Path, kind: tuple[str, ...], mask: int, expected: int
) -> None:
    destination = workdir / f"report{SUFFIX[kind[0]]}"
    with umask(mask):
        assert run(*report_command(kind, destination.name)).exit_code == 0
    assert mode(destination) == expected


@pytest.mark.parametrize("force", [False, True])
def test_a_report_is_never_written_through_a_symlink(
    run: Callable[..., Result], workdir: Path, kind: tuple[str, ...], force: bool
) -> None:
    """The link points at the checkpoint: writing through it would turn the model into a
    report or a picture."""
    link = workdir / f"link{SUFFIX[kind[0]]}"
    link.symlink_to(workdir / CHECKPOINT)
    before = sha256(workdir / CHECKPOINT)
    result = run(*report_command(kind, link.name, *(("--force",) if force else ())))
    one_line_error(result)
    assert sha256(workdir / CHECKPOINT) == before
    assert link.is_symlink()
    assert leftovers(workdir) == []


@pytest.mark.parametrize("place", ["missing parent", "a folder", "parent is a file", "too long"])
def test_a_place_that_cannot_take_the_report_is_one_line(
    run: Callable[..., Result], workdir: Path, kind: tuple[str, ...], place: str
) -> None:
    suffix = SUFFIX[kind[0]]
    (workdir / f"folder{suffix}").mkdir()
    (workdir / "file").write_text("x")
    destination = {
        "missing parent": f"absent/report{suffix}",
        "a folder": f"folder{suffix}",
        "parent is a file": f"file/report{suffix}",
        "too long": "r" * 256 + suffix,
    }[place]
    for extra in ((), ("--force",)):
        one_line_error(run(*report_command(kind, destination, *extra)))
    assert (workdir / "file").read_text() == "x"
    assert (workdir / f"folder{suffix}").is_dir()
    assert leftovers(workdir) == []


def test_an_unwritable_place_is_one_line(
    run: Callable[..., Result], workdir: Path, kind: tuple[str, ...]
) -> None:
    destination = Path("/sys") / f"weissi-report{SUFFIX[kind[0]]}"
    if os.access("/sys", os.W_OK) and not _creation_fails(destination):
        pytest.skip("/sys takes new files here")
    line = one_line_error(run(*report_command(kind, str(destination))))
    assert str(destination) in line


def _creation_fails(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return True
    path.unlink()
    return False


def test_a_name_of_255_bytes_works(
    run: Callable[..., Result], workdir: Path, kind: tuple[str, ...]
) -> None:
    suffix = SUFFIX[kind[0]]
    name = "r" * (255 - len(suffix)) + suffix
    result = run(*report_command(kind, name))
    assert result.exit_code == 0, result.output
    assert (workdir / name).stat().st_size > 0
    assert leftovers(workdir) == []


def test_a_report_interrupted_before_its_rename_leaves_the_old_one(
    run: Callable[..., Result],
    workdir: Path,
    kind: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    destination = workdir / f"report{SUFFIX[kind[0]]}"
    destination.write_bytes(b"an earlier report")
    from weissi_cli import output_files

    def fail(step: str, path: Path) -> None:
        if step == "staged":
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(output_files, "step_hook", fail)
    one_line_error(run(*report_command(kind, destination.name, "--force")))
    assert destination.read_bytes() == b"an earlier report"
    assert leftovers(workdir) == []


def test_a_report_file_created_during_the_run_is_not_replaced(
    run: Callable[..., Result],
    workdir: Path,
    kind: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check at the start is not enough: the file appears while the report is computed
    (another process, a second run), and the final rename must not replace it."""
    destination = workdir / f"report{SUFFIX[kind[0]]}"
    if kind[0] == "check":
        import weissi_cli.api.check as api
    else:
        import weissi_cli.api.inspect as api  # type: ignore[no-redef]
    name = "check_checkpoint" if kind[0] == "check" else "inspect_checkpoint"
    real = getattr(api, name)

    def computing(*args: object, **kwargs: object) -> object:
        report = real(*args, **kwargs)
        destination.write_bytes(b"someone else's file")
        return report

    monkeypatch.setattr(api, name, computing)
    line = one_line_error(run(*report_command(kind, destination.name)))
    assert destination.name in line
    assert destination.read_bytes() == b"someone else's file"
    assert leftovers(workdir) == []
