"""The pre-commit hook (.pre-commit-hooks.yaml), run by pre-commit itself from the
documented .pre-commit-config.yaml, in a temporary git repository: pre-commit installs the
hook from a snapshot of this tree and runs it on the checkpoints a commit changes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci.ci_helpers import ROOT, documented, environment, write_checkpoints, yaml

pytest.importorskip("pre_commit")

# What pip needs to install weissi from a snapshot of this tree.
SNAPSHOT = ("pyproject.toml", "setup.py", "README.md", ".pre-commit-hooks.yaml", "weissi_cli")


def git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=folder, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def snapshot(destination: Path) -> str:
    """This tree's package and hook definition as a git repository; its commit."""
    for name in SNAPSHOT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.so")
            )
        else:
            shutil.copy(source, destination / name)
    git(destination, "init", "-q")
    git(destination, "add", ".")
    git(destination, "commit", "-q", "-m", "snapshot")
    return git(destination, "rev-parse", "HEAD").strip()


def pre_commit(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = environment(
        PRE_COMMIT_HOME=str(home),
        # the hook's environment sees this machine's torch and numpy, so pip installs only
        # weissi there (and builds it offline, with the setuptools installed here)
        VIRTUALENV_SYSTEM_SITE_PACKAGES="1",
        PIP_NO_BUILD_ISOLATION="0",
        PIP_NO_DEPS="1",
    )
    env.pop("PYTHONPATH")  # the hook runs the weissi pre-commit installed
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_the_documented_hook_checks_the_changed_checkpoints(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    revision = snapshot(hooks)
    config = documented("repos:")
    assert "https://github.com/OWNER/weissi" in config
    config = config.replace("https://github.com/OWNER/weissi", str(hooks))
    config = re.sub(r"rev: \S+", f"rev: {revision}", config)
    repository = tmp_path / "project"
    repository.mkdir()
    git(repository, "init", "-q")
    (repository / ".pre-commit-config.yaml").write_text(config)
    checkpoints = write_checkpoints(repository / "models")
    (repository / "notes.txt").write_text("not a checkpoint")
    home = tmp_path / "pre-commit-home"

    git(repository, "add", "models/good.safetensors", "notes.txt", ".pre-commit-config.yaml")
    passing = pre_commit(repository, home, "run")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert re.search(r"weissi check\.+Passed", passing.stdout)

    pythons = list(home.glob("repo*/py_env-*/bin/python"))
    assert len(pythons) == 1
    imported = subprocess.run(
        [str(pythons[0]), "-c", "import weissi_cli; print(weissi_cli.__file__)"],
        cwd=tmp_path, env=environment(PYTHONPATH=""), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert imported.startswith(str(home))  # the hook's own install of the snapshot

    git(repository, "add", "models/bad.safetensors")
    failing = pre_commit(repository, home, "run")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert re.search(r"weissi check\.+Failed", failing.stdout)
    assert "non-finite net.0.weight: 1 NaN/Inf value(s)" in failing.stdout
    assert "✗ models/bad.safetensors: failed" in failing.stdout
    assert "✓ models/good.safetensors: passed" in failing.stdout  # each changed file checked

    git(repository, "rm", "-q", "--cached", "models/bad.safetensors")
    checkpoints["bad"].unlink()
    git(repository, "commit", "-q", "-m", "good model")  # the hook runs as a git hook too
    installed = pre_commit(repository, home, "install")
    assert installed.returncode == 0, installed.stderr
    config_hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert [hook["id"] for hook in config_hooks] == ["weissi-check"]
    assert os.path.exists(repository / ".git" / "hooks" / "pre-commit")


def test_the_hook_selects_checkpoint_files_only() -> None:
    hook = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())[0]
    pattern = re.compile(hook["files"])
    chosen = [
        "model.safetensors",
        "run/model.safetensors.index.json",
        "weights.pt",
        "weights.pth",
        "program.pt2",
        "last.ckpt",
    ]
    left = ["notes.txt", "config.json", "model.safetensors.bak", "data.bin", "script.py"]
    assert all(pattern.search(name) for name in chosen)
    assert not any(pattern.search(name) for name in left)
    assert hook["entry"] == "weissi check"
    assert hook["language"] == "python"
