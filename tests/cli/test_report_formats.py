"""inspect --plot / --format markdown|html: shareable pictures and reports."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result


def test_plot_png_and_svg(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", "mlp_digits_shifted.safetensors", "--plot", "norms.png")
    assert result.exit_code == 0
    assert (workdir / "norms.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "wrote norms.png" in result.stderr
    assert run("inspect", "cnn_digits.pt", "--plot", "norms.svg").exit_code == 0
    assert "<svg" in (workdir / "norms.svg").read_text()


def test_plot_needs_a_picture_suffix(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", "mlp_digits.pt", "--plot", "norms.jpg")
    assert result.exit_code == 2
    assert "--plot writes .png or .svg files" in result.stderr


def test_plot_without_matplotlib_names_the_extra(
    run: Callable[..., Result], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def without_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", without_matplotlib)
    result = run("inspect", "mlp_digits.pt", "--plot", "norms.png")
    assert result.exit_code == 2
    assert "pip install 'weissi-cli[plot]'" in result.stderr
    assert not (workdir / "norms.png").exists()


def test_markdown_report(run: Callable[..., Result], workdir: Path) -> None:
    result = run("inspect", "mlp_digits.safetensors", "--format", "markdown")
    assert result.exit_code == 0
    assert result.stdout.startswith("# weissi inspect: `mlp_digits.safetensors`")
    assert "| `net.0` | 64×64 | 10.99 | 0.6738 | 7.405 |" in result.stdout


def test_html_report_is_self_contained_with_the_plot(
    run: Callable[..., Result], workdir: Path
) -> None:
    result = run("inspect", "cnn_digits.pt", "--format", "html")
    assert result.exit_code == 0
    page = result.stdout
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="data:image/png;base64,' in page
    assert "http://" not in page
    assert "https://" not in page
    assert "<code>features.2</code>" in page
