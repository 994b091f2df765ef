"""Every transformer family the engine covers, end to end: a folder saved by transformers,
rebalanced with default flags (structure traced from config.json, or the registry for the
families it holds), and loaded again by transformers: L2 went down, the tensors outside
every symmetry are bit-equal, and the architecture's own code gives the same outputs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.hf_families import FAMILIES, build
from weissi_cli.api.rebalance import rebalance_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TRACED_ONLY = sorted(set(FAMILIES) - {"llama", "mistral", "qwen2", "bert", "gpt2"})


def save(model: Any, folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return folder


def run(folder: Path, family: str) -> Any:
    from tests.hf_families import example_input

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.AutoConfig.from_pretrained(folder)
        model_class = getattr(transformers, config.architectures[0])
        model = model_class.from_pretrained(folder, dtype="auto").eval()
    inputs = example_input(family, model)
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if "logits" in result else result.last_hidden_state


def weights(folder: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(safetensors_torch.load_file(path))
    return found


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_rebalance_with_default_flags_keeps_the_function(
    family: str, tmp_path: Path
) -> None:
    source = save(build(family, dtype="float32"), tmp_path / "in")
    report = rebalance_checkpoint(source, tmp_path / "out")
    assert report.written
    assert report.verification.passed
    assert report.group is not None
    origins = {s.origin for s in report.group.symmetries}
    assert origins
    assert all(o.startswith(("graph:", "config:")) for o in origins)
    if family in TRACED_ONLY:
        assert report.verification.level == "real_network"
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    before, after = weights(source), weights(tmp_path / "out")
    moved = {m.tensor for s in report.group.symmetries for m in s.members}
    assert moved & set(before)
    for name, value in before.items():
        if name not in moved:
            assert torch.equal(value, after[name]), name
    logits_before, logits_after = run(source, family), run(tmp_path / "out", family)
    change = (logits_after - logits_before).abs().max() / logits_before.abs().max()
    assert float(change) < 1e-5


@pytest.mark.parametrize("family", ["gemma2", "phi3", "qwen3", "gpt_neox", "t5"])
def test_bfloat16_pow2_rebalance_is_bit_identical(family: str, tmp_path: Path) -> None:
    source = save(build(family, dtype="bfloat16", spread=3.0), tmp_path / "in")
    report = rebalance_checkpoint(source, tmp_path / "out")
    assert report.written
    assert report.group is not None
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    assert torch.equal(run(source, family), run(tmp_path / "out", family))


def test_a_vision_model_is_said_to_run_on_pixels(tmp_path: Path) -> None:
    source = save(build("vit", dtype="float32"), tmp_path / "in")
    report = rebalance_checkpoint(source, tmp_path / "out")
    assert report.written
    [run_check] = [c for c in report.verification.chains if c.method == "transformers"]
    assert "random pixel values (2×3×" in run_check.detail
    assert "token ids" not in run_check.detail
