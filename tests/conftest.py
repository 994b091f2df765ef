"""Test-wide settings: one torch thread, a derandomised hypothesis profile, shared fixtures."""

from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # as the CLI does; before anything loads numpy

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "weissi",
    deadline=None,
    derandomize=True,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "weissi"))

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # On 2 cores torch's default threading makes tiny models ~30x slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def llama_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """LLaMA model folders of 2, 32 and 100 layers (tiny hidden sizes), built once."""
    from tests.llama_models import save_llama

    root = tmp_path_factory.mktemp("llama")
    return {layers: save_llama(root / f"llama{layers}", layers) for layers in (2, 32, 100)}
