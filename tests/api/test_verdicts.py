"""Trained networks whose structure names and shapes get wrong, rebalanced and run with their
own code before and after: weissi either refuses (exit 2, nothing written, the tensors and
the way forward named) or the outputs agree within what the verdict claims, at the level
it names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import trained_models as trained
from weissi_cli.api import inspect_checkpoint, rebalance_checkpoint
from weissi_cli.errors import StructureError
from weissi_cli.io import open_checkpoint

transformers = pytest.importorskip("transformers")


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """Largest |after − before| over the largest |before|, in float64."""
    before, after = before.double(), after.double()
    return float((after - before).abs().max() / before.abs().max())


def state_of(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".pt2":
        return dict(torch.export.load(path).state_dict)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return state


def nothing_written(folder: Path, name: str) -> bool:
    return not [p for p in folder.iterdir() if name in p.name]


def save_state(model: torch.nn.Module, path: Path) -> Path:
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


# 1. Sibling heads with PReLU slopes -------------------------------------------------------


@pytest.fixture(scope="module")
def two_heads() -> trained.TwoHeadPReLU:
    return trained.two_head_prelu()


def run_two_heads(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    model = trained.TwoHeadPReLU()
    model.load_state_dict(state)
    with torch.no_grad():
        scores, boxes = model.eval()(trained.digits()[0])
    return scores, boxes


def test_two_heads_with_prelu_as_safetensors_are_refused(
    two_heads: trained.TwoHeadPReLU, tmp_path: Path
) -> None:
    """Sorted by name, the PReLU slopes come after every conv and conv4_2 after conv4_1: the
    guess chains conv1 → conv2 → conv3 → conv4_1 and leaves the box head unscaled."""
    source = save_state(two_heads, tmp_path / "pnet.safetensors")
    for granularity in ("layer", "channel"):
        with pytest.raises(StructureError) as caught:
            rebalance_checkpoint(
                source, tmp_path / "out.safetensors", assume_relu=True, granularity=granularity
            )
        message = str(caught.value)
        assert caught.value.exit_code == 2
        for tensor in ("conv4_2.weight", "prelu1.weight", "prelu2.weight", "prelu3.weight"):
            assert tensor in message
        assert "a second head" in message
        assert "--emit-spec" in message
        assert ".pt2" in message
        assert nothing_written(tmp_path, "out")
    # inspect still reports the guess, labelled
    report = inspect_checkpoint(source)
    assert report.chains[0].chain.origin == "heuristic"
    assert any("rebalance refuses this guessed structure" in w for w in report.warnings)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_two_heads_exported_are_verified_on_the_real_network(
    two_heads: trained.TwoHeadPReLU, tmp_path: Path, granularity: str
) -> None:
    """The way forward: a .pt2's graph sees both heads and the PReLUs, and the program is
    run before and after."""
    images = trained.digits()[0]
    batch = torch.export.Dim("batch")
    program = torch.export.export(two_heads, (images[:4],), dynamic_shapes=({0: batch},))
    source = tmp_path / "pnet.pt2"
    torch.export.save(program, source)
    output = tmp_path / "out.pt2"
    report = rebalance_checkpoint(source, output, granularity=granularity)
    assert report.written
    assert report.verification.passed
    assert report.verification.level == "real_network"
    assert report.verification.caveats == ()
    assert report.group is not None
    conv3 = next(s for s in report.group.symmetries if s.id == "conv3")
    assert {m.tensor for m in conv3.members if m.exponent < 0} == {
        "conv4_1.weight",
        "conv4_2.weight",
    }
    before, after = state_of(source), state_of(output)
    assert not torch.equal(before["conv3.weight"], after["conv3.weight"])
    for name in ("prelu1.weight", "prelu2.weight", "prelu3.weight"):
        assert torch.equal(before[name], after[name])  # slopes are never scaled
    for old, new in zip(run_two_heads(before), run_two_heads(after), strict=True):
        assert relative_change(old, new) < 1e-5


def test_two_heads_with_a_spec_that_states_the_branch(
    two_heads: trained.TwoHeadPReLU, tmp_path: Path
) -> None:
    """The other way forward: a spec with the PReLU chain (its slopes named, never scaled)
    and conv3's output feeding both heads."""
    source = save_state(two_heads, tmp_path / "pnet.safetensors")
    text = """version = 2
[[chain]]
id = "trunk"
activation = "prelu"
layers = ["conv1", "conv2", "conv3"]
slopes = ["prelu1.weight", "prelu2.weight"]

[[symmetry]]
id = "heads"
size = 16
note = "conv3 → PReLU → conv4_1 and conv4_2"
members = [
  { tensor = "conv3.weight", axis = 0, exponent = 1 },
  { tensor = "conv3.bias", axis = 0, exponent = 1 },
  { tensor = "conv4_1.weight", axis = 1, exponent = -1 },
  { tensor = "conv4_2.weight", axis = 1, exponent = -1 },
]
"""
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(source, output, spec=spec(tmp_path, text), granularity="channel")
    assert report.written
    assert report.verification.passed
    assert report.verification.level == "declared_structure"  # values checked, no probes
    assert any("spec.toml declares" in caveat for caveat in report.verification.caveats)
    before, after = state_of(source), state_of(output)
    assert not torch.equal(before["conv4_2.weight"], after["conv4_2.weight"])
    for name in ("prelu1.weight", "prelu2.weight", "prelu3.weight"):
        assert torch.equal(before[name], after[name])
    for old, new in zip(run_two_heads(before), run_two_heads(after), strict=True):
        assert relative_change(old, new) < 1e-5


def test_a_prelu_chain_in_a_spec_is_probed_with_its_slopes(tmp_path: Path) -> None:
    model = trained.prelu_mlp()
    source = save_state(model, tmp_path / "mlp.safetensors")
    text = (
        'version = 2\n[[chain]]\nactivation = "prelu"\nlayers = ["fc1", "fc2", "fc3"]\n'
        'slopes = ["act1.weight", "act2.weight"]\n'
    )
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(source, output, spec=spec(tmp_path, text), granularity="channel")
    assert report.written
    assert report.verification.level == "declared_structure"
    check = report.verification.chains[0]
    assert check.method == "probe"
    assert check.passed
    assert check.max_rel_diff is not None
    assert check.max_rel_diff < 1e-5
    before, after = state_of(source), state_of(output)
    assert torch.equal(before["act1.weight"], after["act1.weight"])
    assert report.chains[0].l2_after < report.chains[0].l2_before
    inputs = trained.digits()[0].flatten(1)
    rewritten = trained.PReLUMLP()
    rewritten.load_state_dict(after)
    with torch.no_grad():
        assert relative_change(model(inputs), rewritten.eval()(inputs)) < 1e-5


# 2. Flatten orders ------------------------------------------------------------------------

FLATTENS = {
    # order: (batch norm, file suffix, include_bias: a batch norm's gain is 1-D)
    "time-major": (True, ".pt", True),
    "channel-last": (False, ".safetensors", False),
}


@pytest.fixture(scope="module")
def flatten_nets() -> dict[str, trained.FlattenNet]:
    return {order: trained.flatten_net(order, bn) for order, (bn, _, _) in FLATTENS.items()}


def run_flatten(order: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
    model = trained.FlattenNet(order, FLATTENS[order][0])
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(trained.digits()[0])


@pytest.mark.parametrize("order", sorted(FLATTENS))
def test_a_flatten_order_is_never_guessed_per_channel(
    flatten_nets: dict[str, trained.FlattenNet], tmp_path: Path, order: str
) -> None:
    _, suffix, include_bias = FLATTENS[order]
    source = save_state(flatten_nets[order], tmp_path / f"net{suffix}")
    output = tmp_path / f"out{suffix}"
    with pytest.raises(StructureError) as caught:
        rebalance_checkpoint(
            source, output, assume_relu=True, granularity="channel", include_bias=include_bias
        )
    message = str(caught.value)
    assert "into fc1 is assumed channel-major" in message
    assert 'flatten = "channel-major"' in message
    assert "--granularity layer" in message
    assert nothing_written(tmp_path, "out")
    # one scale for all of a layer's channels is right in any order
    report = rebalance_checkpoint(source, output, assume_relu=True, include_bias=include_bias)
    assert report.written
    assert report.verification.passed
    assert report.verification.level == "declared_structure"
    before = run_flatten(order, state_of(source))
    assert relative_change(before, run_flatten(order, state_of(output))) < 1e-5


def test_a_stated_channel_last_flatten_rebalances_per_channel(
    flatten_nets: dict[str, trained.FlattenNet], tmp_path: Path
) -> None:
    source = save_state(flatten_nets["channel-last"], tmp_path / "net.safetensors")
    text = 'version = 2\n[[chain]]\nlayers = ["conv", "fc1", "fc2"]\nflatten = "channel-last"\n'
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(source, output, spec=spec(tmp_path, text), granularity="channel")
    assert report.written
    assert report.verification.passed
    chain = report.chains[0]
    assert chain.l2_after is not None
    assert chain.min_l2_penalty is not None
    assert chain.l2_after < chain.min_l2_penalty  # per channel beats the layer-wise optimum
    before = run_flatten("channel-last", state_of(source))
    assert relative_change(before, run_flatten("channel-last", state_of(output))) < 1e-5


def test_a_stated_time_major_flatten_rebalances_per_channel(
    flatten_nets: dict[str, trained.FlattenNet], tmp_path: Path
) -> None:
    """conv → ReLU → batch norm → max-pool → [C, T, F] permuted to [T, C, F]: the norm's gain
    feeds fc1 in runs of F = 4 inputs per channel, once per step (T = 4)."""
    source = save_state(flatten_nets["time-major"], tmp_path / "net.pt")
    text = """version = 2
[[chain]]
layers = ["fc1", "fc2"]

[[symmetry]]
id = "conv"
size = 6
exact = false
members = [
  { tensor = "conv.weight", axis = 0, exponent = 1 },
  { tensor = "conv.bias", axis = 0, exponent = 1 },
  { tensor = "bn.running_mean", axis = 0, exponent = 1 },
  { tensor = "bn.running_var", axis = 0, exponent = 2 },
]

[[symmetry]]
id = "bn"
size = 6
members = [
  { tensor = "bn.weight", axis = 0, exponent = 1 },
  { tensor = "bn.bias", axis = 0, exponent = 1 },
  { tensor = "fc1.weight", axis = 1, exponent = -1, block = 4, repeat = 4 },
]
"""
    output = tmp_path / "out.pt"
    report = rebalance_checkpoint(
        source, output, spec=spec(tmp_path, text), granularity="channel", include_bias=True
    )
    assert report.written
    assert report.verification.passed
    before, after = state_of(source), state_of(output)
    assert not torch.equal(before["bn.weight"], after["bn.weight"])
    assert relative_change(run_flatten("time-major", before), run_flatten("time-major", after)) < (
        1e-5
    )


def test_the_emitted_spec_keeps_a_guessed_flatten_a_guess(
    flatten_nets: dict[str, trained.FlattenNet], tmp_path: Path
) -> None:
    from weissi_cli.api import graph_checkpoint

    source = save_state(flatten_nets["time-major"], tmp_path / "net.pt")
    emitted = graph_checkpoint(source).spec
    assert "guess = " in emitted
    pinned = spec(tmp_path, emitted)
    with pytest.raises(StructureError, match="assumed channel-major"):
        rebalance_checkpoint(
            source, tmp_path / "out.pt", spec=pinned, granularity="channel", include_bias=True
        )
    cut = "\n".join(line for line in emitted.splitlines() if not line.startswith("guess = "))
    # Deleting the guess declares the order: here wrongly (the map is time-major), and only
    # the run of the real network could show it, so the verdict says what to confirm.
    report = rebalance_checkpoint(
        source,
        tmp_path / "out.pt",
        spec=spec(tmp_path, cut),
        granularity="channel",
        include_bias=True,
    )
    assert report.verification.level == "declared_structure"
    assert any("confirm it matches" in caveat for caveat in report.verification.caveats)
    before, after = state_of(source), state_of(tmp_path / "out.pt")
    assert relative_change(run_flatten("time-major", before), run_flatten("time-major", after)) > (
        1e-3
    )


# 3. A transformer outside the registry ----------------------------------------------------


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qwen3") / "model"
    trained.language_model("qwen3").save_pretrained(folder)
    return folder


def logits(folder: Path) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=trained.held_out_tokens()).logits


def test_an_unregistered_architecture_is_traced_and_run_with_its_own_code(
    qwen3: Path, tmp_path: Path
) -> None:
    """qwen3 has no registry entry: its structure is traced from transformers' code, and
    that code runs on both folders, so the verdict is about the real network."""
    output = tmp_path / "out"
    report = rebalance_checkpoint(qwen3, output, granularity="channel")
    assert report.written
    assert report.verification.level == "real_network"
    assert report.verification.chains[-1].method == "transformers"
    assert report.group is not None
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    assert relative_change(logits(qwen3), logits(output)) < 1e-5


def test_an_unregistered_architecture_is_refused_without_tracing(
    qwen3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where torch or transformers cannot be imported, names and shapes cannot tell the
    projections apart: the guess is refused, naming the way forward."""
    import weissi_cli.structure as structure_module

    monkeypatch.setattr(structure_module, "tracing_available", lambda: False)
    output = tmp_path / "out"
    with pytest.raises(StructureError) as caught:
        rebalance_checkpoint(qwen3, output, assume_relu=True)
    message = str(caught.value)
    assert "architecture 'qwen3'" in message
    assert "has no exact structure" in message
    assert "--emit-spec" in message
    assert not output.exists()
    report = inspect_checkpoint(qwen3)
    assert any("has no exact structure" in w for w in report.warnings)


def test_an_unregistered_architecture_with_a_spec_runs_its_own_code(
    qwen3: Path, tmp_path: Path
) -> None:
    """SwiGLU's up → down is exact (the SiLU is on the gate branch): a spec states it, and
    transformers runs both folders."""
    config = json.loads((qwen3 / "config.json").read_text())
    tables = [
        f"""[[symmetry]]
id = "up_down.{layer}"
size = {config["intermediate_size"]}
members = [
  {{ tensor = "model.layers.{layer}.mlp.up_proj.weight", axis = 0, exponent = 1 }},
  {{ tensor = "model.layers.{layer}.mlp.down_proj.weight", axis = 1, exponent = -1 }},
]
"""
        for layer in range(config["num_hidden_layers"])
    ]
    pinned = spec(tmp_path, "version = 2\n\n" + "\n".join(tables))
    output = tmp_path / "out"
    report = rebalance_checkpoint(
        qwen3, output, spec=pinned, granularity="channel", verify_with="transformers"
    )
    assert report.written
    assert report.verification.passed
    assert report.verification.level == "real_network"
    assert report.verification.chains[-1].method == "transformers"
    assert relative_change(logits(qwen3), logits(output)) < 1e-5


# 4. float16 with power-of-two scales -------------------------------------------------------


@pytest.fixture(scope="module")
def half_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = trained.small_activation_mlp()
    path = tmp_path_factory.mktemp("half") / "mlp.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def run_half(state: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    model = trained.SmallMLP()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model = model.half().eval()
    with torch.no_grad():
        return model((trained.digits()[0].flatten(1) * scale).half())


def test_float16_power_of_two_reports_the_subnormal_change(half_mlp: Path, tmp_path: Path) -> None:
    """Real digits make first-layer activations below 2^-14: after a power-of-two shift the
    model's own float16 forward pass rounds them differently. The verdict must not call the
    outputs bit-identical; its probes reach such activations and report the change."""
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(half_mlp, output, assume_relu=True)
    assert report.chains[0].scales == "pow2"
    check = report.verification.chains[0]
    assert report.verification.level == "declared_structure"
    assert check.bit_identical is False
    assert "bit-identical" not in check.detail
    assert "subnormal" in check.detail
    assert "float16 arithmetic" in check.detail
    assert check.max_rel_diff is not None
    assert check.max_rel_diff > 0
    caveat = check.caveat
    assert "subnormal" in caveat
    assert "--scales real" in caveat
    assert "--hold-activations" in caveat
    assert caveat in report.verification.caveats
    before, after = state_of(half_mlp), state_of(output)
    moved = relative_change(run_half(before), run_half(after))
    assert 0 < moved <= check.max_rel_diff  # the probes found at least what real digits show
    for scale in (2.0**-4, 2.0**-8):
        assert relative_change(run_half(before, scale), run_half(after, scale)) < 3e-2


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_hold_activations_never_scales_a_hidden_activation_down(
    half_mlp: Path, tmp_path: Path, granularity: str
) -> None:
    output = tmp_path / "out.safetensors"
    held = rebalance_checkpoint(
        half_mlp, output, assume_relu=True, hold_activations=True, granularity=granularity
    )
    free = rebalance_checkpoint(
        half_mlp, tmp_path / "free.safetensors", assume_relu=True, granularity=granularity
    )
    assert held.written
    before, after = state_of(half_mlp), state_of(output)
    for bias in ("net.0.bias", "net.2.bias"):  # a hidden layer's outputs scale with its bias
        ratio = after[bias].double() / before[bias].double()
        assert torch.all(ratio[before[bias] != 0] >= 1.0), bias
    held_l2, free_l2 = held.chains[0].l2_after, free.chains[0].l2_after
    assert held_l2 is not None
    assert free_l2 is not None
    assert held_l2 >= free_l2


# 5. Approximate symmetries (a GELU MLP) ----------------------------------------------------


def test_gelu_links_with_allow_approximate_are_approximate(tmp_path: Path) -> None:
    source = tmp_path / "gpt2"
    trained.language_model("gpt2").save_pretrained(source)
    output = tmp_path / "out"
    report = rebalance_checkpoint(source, output, allow_approximate=True, granularity="channel")
    verification = report.verification
    assert report.written
    assert verification.passed
    assert verification.level == "approximate"
    run = verification.chains[-1]
    assert run.level == "approximate"
    assert run.max_rel_diff is not None
    assert "covering all 18 vocabulary entries" in run.detail
    assert any("approximate symmetries change the function" in c for c in verification.caveats)
    real = relative_change(logits(source), logits(output))
    assert real > 0  # the function did change
    # the measurement is of the right size, though real inputs may move more
    assert run.max_rel_diff / 5 <= real <= run.max_rel_diff * 5


def test_the_verdict_levels_of_a_rewrite_are_in_its_json(
    two_heads: Any, tmp_path: Path, samples: Path
) -> None:
    """`verification.level` in the payload, per check and for the whole rewrite."""
    from weissi_cli.report.rebalance import LEVEL_MARKS

    shutil.copy(samples / "mlp_digits.safetensors", tmp_path / "mlp.safetensors")
    report = rebalance_checkpoint(
        tmp_path / "mlp.safetensors", tmp_path / "out.safetensors", assume_relu=True
    )
    payload = report.to_dict()["verification"]
    assert payload["level"] == "declared_structure"
    assert {"method", "passed", "max_abs_diff", "max_rel_diff", "probes"} <= set(payload)
    assert [chain["level"] for chain in payload["chains"]] == ["declared_structure"]
    assert set(LEVEL_MARKS) == {"real_network", "declared_structure", "values_only", "approximate"}
    with open_checkpoint(tmp_path / "out.safetensors") as written:
        assert "weissi" in written.metadata
