"""`rebalance_checkpoint`: structure found, weights changed as intended, function unchanged."""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from tests.helpers import (
    make_rewrites_scale_wrongly,
    mlp_forward,
    mlp_state,
    raised_within,
    write_safetensors,
    write_torch,
)
from tests.strategies import layer_sizes
from weissi_cli import kernel
from weissi_cli.api import inspect_checkpoint, rebalance_checkpoint
from weissi_cli.errors import ConsentError, OutputError, StructureError
from weissi_cli.io import open_checkpoint

DIGITS = torch.tensor(load_digits().data / 16.0)


def cnn_forward(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(
        torch.nn.functional.conv2d(
            images, state["features.0.weight"], state["features.0.bias"], padding=1
        )
    )
    hidden = torch.relu(
        torch.nn.functional.conv2d(
            hidden, state["features.2.weight"], state["features.2.bias"], padding=1
        )
    )
    return torch.nn.functional.linear(
        torch.flatten(hidden, 1), state["classifier.weight"], state["classifier.bias"]
    )


def test_trained_mlp_rebalances_to_equal_norms_with_the_same_function(
    samples: Path, tmp_path: Path
) -> None:
    source = samples / "mlp_digits.safetensors"
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True)
    # structure found
    assert [chain.layers for chain in report.chains] == [("net.0", "net.2", "net.4")]
    assert report.chains[0].scales == "real"
    # weights changed as intended: every layer norm equals G
    mean = inspect_checkpoint(source).chains[0].geometric_mean
    after = inspect_checkpoint(output).chains[0]
    assert [layer.fro_norm for layer in after.layers] == pytest.approx([mean] * 3, rel=1e-5)
    assert report.chains[0].l2_after == pytest.approx(report.chains[0].min_l2_penalty, rel=1e-5)
    assert report.chains[0].weissi_after == pytest.approx(report.chains[0].weissi_before, rel=1e-5)
    # function unchanged, to float32 rounding
    before_state, after_state = load_file(str(source)), load_file(str(output))
    inputs = DIGITS.to(torch.float32)
    expected, actual = mlp_forward(before_state, inputs), mlp_forward(after_state, inputs)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert torch.equal(actual.argmax(1), expected.argmax(1))
    assert report.verification.passed
    assert report.verification.method == "probe"
    assert report.written


def test_untouched_tensors_are_byte_identical(samples: Path, tmp_path: Path) -> None:
    output = tmp_path / "balanced.safetensors"
    rebalance_checkpoint(samples / "mlp_digits.safetensors", output, assume_relu=True)
    with (
        open_checkpoint(samples / "mlp_digits.safetensors") as before,
        open_checkpoint(output) as after,
    ):
        # The last layer's bias scales by Π_L = 1: it must not be touched at all.
        assert before.read_all("net.4.bias").tobytes() == after.read_all("net.4.bias").tobytes()
        assert after.metadata["source"] == before.metadata["source"]
        record = json.loads(after.metadata["weissi"])
        assert set(record["scales"]) == {
            "net.0.weight",
            "net.0.bias",
            "net.2.weight",
            "net.2.bias",
            "net.4.weight",
        }


def test_shifted_copy_rebalances_to_the_same_weights(samples: Path, tmp_path: Path) -> None:
    rebalance_checkpoint(
        samples / "mlp_digits.safetensors", tmp_path / "a.safetensors", assume_relu=True
    )
    rebalance_checkpoint(
        samples / "mlp_digits_shifted.safetensors", tmp_path / "b.safetensors", assume_relu=True
    )
    first, second = (
        load_file(str(tmp_path / "a.safetensors")),
        load_file(str(tmp_path / "b.safetensors")),
    )
    for name, tensor in first.items():
        assert torch.allclose(second[name], tensor, rtol=1e-6, atol=1e-7), name


def test_bfloat16_rebalances_by_exact_powers_of_two_with_identical_outputs(
    samples: Path, tmp_path: Path
) -> None:
    source = samples / "mlp_digits_bf16.safetensors"
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True)
    assert report.chains[0].scales == "pow2"
    before_state, after_state = load_file(str(source)), load_file(str(output))
    assert all(tensor.dtype == torch.bfloat16 for tensor in after_state.values())
    factors = json.loads(open_checkpoint(output).metadata["weissi"])["scales"]
    for name, tensor in before_state.items():
        factor = factors.get(name, 1.0)
        assert math.frexp(factor)[0] == 0.5  # a power of two
        assert torch.equal(after_state[name].float(), tensor.float() * factor), name
    inputs = DIGITS.to(torch.bfloat16)
    assert torch.equal(mlp_forward(after_state, inputs), mlp_forward(before_state, inputs))
    assert report.verification.chains[0].bit_identical


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_float16_pow2_moves_every_value_exactly_and_says_what_exactness_held(
    tmp_path: Path, granularity: str
) -> None:
    """The L2 optimum halves the first layer (or more), but a few of its rows hold subnormal
    values with the lowest bit set, which a halving would round: exactness holds those rows'
    scales back (all of the layer's, layer-wise) and says so."""
    state = mlp_state(sizes=(64, 48, 48, 10), seed=3, dtype=torch.float64)
    for index, name in enumerate(n for n in state if n.endswith("weight")):
        state[name] *= 16.0 ** (1 - index)
    state["net.0.weight"][::7, 5] = 3 * 2.0**-24
    state = OrderedDict((name, tensor.half()) for name, tensor in state.items())
    source = write_safetensors(tmp_path / "m.safetensors", state)
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True, granularity=granularity)
    chain = report.chains[0]
    assert chain.scales == "pow2"
    assert any("float16 exactness held" in warning for warning in report.warnings)
    after = load_file(str(output))
    assert any(not torch.equal(after[name], tensor) for name, tensor in state.items())
    for name, tensor in state.items():
        old, new = tensor.double(), after[name].double()
        ratio = (new[old != 0] / old[old != 0]).numpy()
        assert np.all(np.frexp(ratio)[0] == 0.5), name  # exactly a power of two: none rounded
    assert chain.l2_after < chain.l2_before
    assert report.verification.passed
    assert report.verification.max_abs_diff == 0.0
    inputs = DIGITS[:, :64].to(torch.float16)
    assert torch.equal(mlp_forward(after, inputs), mlp_forward(state, inputs))


def test_pow2_float32_gives_bit_identical_outputs(samples: Path, tmp_path: Path) -> None:
    source = samples / "mlp_digits.safetensors"
    output = tmp_path / "pow2.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True, scales="pow2")
    inputs = DIGITS.to(torch.float32)
    assert torch.equal(
        mlp_forward(load_file(str(output)), inputs), mlp_forward(load_file(str(source)), inputs)
    )
    assert report.chains[0].l2_after < report.chains[0].l2_before
    assert report.verification.max_abs_diff == 0.0


def test_pickle_in_pickle_out_keeps_the_wrapper(samples: Path, tmp_path: Path) -> None:
    output = tmp_path / "balanced.pt"
    rebalance_checkpoint(samples / "mlp_digits_wrapped.pt", output, assume_relu=True)
    before = torch.load(samples / "mlp_digits_wrapped.pt", weights_only=True)
    after = torch.load(output, weights_only=True)
    assert set(after) == set(before)
    assert after["epoch"] == before["epoch"]
    assert list(after["model_state"]) == list(before["model_state"])
    assert after["model_state"]._metadata["weissi"]["source"] == "mlp_digits_wrapped.pt"
    inputs = DIGITS.to(torch.float32)
    expected = mlp_forward(before["model_state"], inputs)
    assert torch.allclose(mlp_forward(after["model_state"], inputs), expected, rtol=1e-5, atol=1e-4)


def test_cnn_pickle_is_verified_structurally_and_keeps_its_function(
    samples: Path, tmp_path: Path
) -> None:
    source = samples / "cnn_digits.pt"
    output = tmp_path / "balanced.pt"
    report = rebalance_checkpoint(source, output, assume_relu=True)
    assert report.chains[0].layers == ("features.0", "features.2", "classifier")
    assert report.verification.method == "structural"
    assert report.verification.passed
    before, after = torch.load(source, weights_only=True), torch.load(output, weights_only=True)
    for name, gamma in zip(
        ("features.0", "features.2", "classifier"), report.chains[0].gammas, strict=True
    ):
        assert torch.allclose(after[f"{name}.weight"], before[f"{name}.weight"] * gamma, rtol=1e-6)
    images = DIGITS.to(torch.float32).reshape(-1, 1, 8, 8)
    expected = cnn_forward(before, images)
    assert torch.allclose(
        cnn_forward(after, images), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
    )


def test_cnn_safetensors_with_a_spec_file(samples: Path, tmp_path: Path) -> None:
    spec = tmp_path / "cnn.toml"
    spec.write_text('version = 1\n[[chain]]\nlayers = ["features.0", "features.2", "classifier"]\n')
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(samples / "cnn_digits.safetensors", output, spec=spec)
    assert report.chains[0].origin == "spec"
    images = DIGITS.to(torch.float32).reshape(-1, 1, 8, 8)
    expected = cnn_forward(load_file(str(samples / "cnn_digits.safetensors")), images)
    actual = cnn_forward(load_file(str(output)), images)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_heuristic_structure_needs_consent_and_writes_nothing(
    samples: Path, tmp_path: Path
) -> None:
    output = tmp_path / "balanced.safetensors"
    with pytest.raises(ConsentError) as caught:
        rebalance_checkpoint(samples / "mlp_digits.safetensors", output)
    assert "--assume-relu" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(samples: Path, tmp_path: Path) -> None:
    output = tmp_path / "balanced.safetensors"
    output.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        rebalance_checkpoint(samples / "mlp_digits.safetensors", output, assume_relu=True)
    assert output.read_bytes() == b"precious"
    rebalance_checkpoint(samples / "mlp_digits.safetensors", output, assume_relu=True, force=True)
    assert output.read_bytes() != b"precious"


def test_failed_verification_leaves_no_output(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weissi_cli.writers import disk

    real_write = disk.write_all

    def write_with_a_flipped_bit(descriptor: int, data: memoryview, offset: int) -> None:
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x40  # a mantissa bit of one scaled value
        real_write(descriptor, memoryview(damaged), offset)

    monkeypatch.setattr(disk, "write_all", write_with_a_flipped_bit)
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(samples / "mlp_digits.safetensors", output, assume_relu=True)
    assert not report.verification.passed
    assert not report.written
    assert list(tmp_path.iterdir()) == []


def test_bias_aware_rebalance_reaches_the_bias_aware_optimum(samples: Path, tmp_path: Path) -> None:
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(
        samples / "mlp_digits.safetensors", output, assume_relu=True, include_bias=True
    )
    chain = report.chains[0]
    assert chain.l2_after == pytest.approx(chain.min_l2_penalty, rel=1e-5)
    plain = inspect_checkpoint(samples / "mlp_digits.safetensors", include_bias=True).chains[0]
    assert chain.min_l2_penalty == pytest.approx(plain.min_l2_penalty, rel=1e-12)
    assert report.verification.passed


@settings(max_examples=15)
@given(
    layer_sizes(),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    st.integers(0, 1000),
)
def test_pow2_rebalance_of_random_mlps_is_bit_identical(
    tmp_path_factory: pytest.TempPathFactory, sizes: tuple[int, ...], dtype: torch.dtype, seed: int
) -> None:
    folder = tmp_path_factory.mktemp("pow2")
    state = mlp_state(sizes=sizes, seed=seed, dtype=torch.float64)
    # Make the layers clearly imbalanced so the shift is not the identity.
    for index, name in enumerate(name for name in state if name.endswith("weight")):
        state[name] *= 3.0**index
    state = OrderedDict((name, tensor.to(dtype)) for name, tensor in state.items())
    source = write_safetensors(folder / "m.safetensors", state)
    output = folder / "out.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True, scales="pow2")
    inputs = torch.randn(16, sizes[0], generator=torch.Generator().manual_seed(seed)).to(dtype)
    expected = mlp_forward(state, inputs)
    assume(bool(torch.isfinite(expected).all()))  # bit-identity holds barring overflow
    assert torch.equal(mlp_forward(load_file(str(output)), inputs), expected)
    assert report.verification.passed
    assert report.chains[0].l2_after <= report.chains[0].l2_before


@settings(max_examples=15)
@given(layer_sizes(), st.integers(0, 1000), st.booleans())
def test_real_rebalance_of_random_mlps_reaches_the_optimum(
    tmp_path_factory: pytest.TempPathFactory, sizes: tuple[int, ...], seed: int, include_bias: bool
) -> None:
    folder = tmp_path_factory.mktemp("real")
    state = mlp_state(sizes=sizes, seed=seed, dtype=torch.float64)
    source = write_torch(folder / "m.pt", state)
    output = folder / "out.pt"
    report = rebalance_checkpoint(
        source, output, assume_relu=True, scales="real", include_bias=include_bias
    )
    chain = report.chains[0]
    assert chain.l2_after == pytest.approx(chain.min_l2_penalty, rel=1e-9)
    if not include_bias:
        norms = [float(t.norm()) for n, t in state.items() if n.endswith("weight")]
        assert chain.min_l2_penalty == pytest.approx(
            len(norms) * math.prod(norms) ** (2 / len(norms)), rel=1e-9
        )
    inputs = torch.randn(
        16, sizes[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    expected = mlp_forward(state, inputs)
    actual = mlp_forward(torch.load(output, weights_only=True), inputs)
    assert np.allclose(
        actual.numpy(), expected.numpy(), rtol=1e-10, atol=1e-10 * float(expected.abs().max())
    )


def test_failed_verification_on_a_wide_deep_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewrite bug that scales every value 5% too much must be caught on realistic widths."""

    state = mlp_state(sizes=(512,) * 7, dtype=torch.float32)
    for index, name in enumerate(n for n in state if n.endswith("weight")):
        state[name] = state[name] * 2.0 ** (index % 3) * 1.3
    source = write_safetensors(tmp_path / "wide.safetensors", state)
    make_rewrites_scale_wrongly(monkeypatch, 1.05)
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True, scales="real")
    assert not report.verification.passed
    assert not output.exists()


def test_pow2_never_raises_l2_on_a_nearly_balanced_bfloat16_model(tmp_path: Path) -> None:
    norms = [1.34793356, 0.89609515, 0.94461888, 0.83273969, 0.72028002]
    generator = torch.Generator().manual_seed(0)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for index, norm in enumerate(norms):
        weight = torch.randn(8, 8, generator=generator, dtype=torch.float64)
        state[f"net.{2 * index}.weight"] = (weight / weight.norm() * norm).to(torch.bfloat16)
        state[f"net.{2 * index}.bias"] = torch.zeros(8, dtype=torch.bfloat16)
    source = write_safetensors(tmp_path / "near.safetensors", state)
    report = rebalance_checkpoint(source, tmp_path / "out.safetensors", assume_relu=True)
    chain = report.chains[0]
    assert chain.scales == "pow2"
    assert chain.l2_after <= chain.l2_before


def test_channel_rebalance_of_a_float64_mlp_keeps_function_and_path_norm(tmp_path: Path) -> None:
    state = mlp_state(sizes=(12, 20, 16, 5), dtype=torch.float64, seed=3)
    generator = torch.Generator().manual_seed(4)
    for name in [n for n in state if n.endswith("weight")]:
        state[name] = state[name] * (
            0.1 + 5 * torch.rand(state[name].shape[0], 1, generator=generator, dtype=torch.float64)
        )
    source = write_torch(tmp_path / "m.pt", state)
    layer = rebalance_checkpoint(source, tmp_path / "layer.pt", assume_relu=True)
    channel = rebalance_checkpoint(
        source, tmp_path / "channel.pt", assume_relu=True, granularity="channel"
    )
    result = channel.chains[0]
    # structure found
    assert result.layers == ("net.0", "net.2", "net.4")
    # weights changed as intended: per-channel L2 <= layer-wise L2 <= original L2
    assert result.l2_after <= layer.chains[0].l2_after <= result.l2_before
    assert result.l2_after < 0.99 * layer.chains[0].l2_after
    assert result.channel is not None
    assert result.channel.converged
    assert result.channel.path_norm_after == pytest.approx(
        result.channel.path_norm_before, rel=1e-9
    )
    # function unchanged
    inputs = torch.randn(64, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = mlp_forward(state, inputs)
    actual = mlp_forward(torch.load(tmp_path / "channel.pt", weights_only=True), inputs)
    assert torch.allclose(actual, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
    assert channel.verification.passed


def test_channel_rebalance_of_the_cnn_needs_its_flatten_order_stated(
    samples: Path, tmp_path: Path
) -> None:
    """Names and shapes do not show how the conv's map is flattened: per channel that is
    refused; one scale per layer is right in any order."""
    output = tmp_path / "balanced.pt"
    with pytest.raises(StructureError) as caught:
        rebalance_checkpoint(
            samples / "cnn_digits.pt", output, assume_relu=True, granularity="channel"
        )
    message = str(caught.value)
    assert "the flatten of features.2 into classifier is assumed channel-major" in message
    assert 'flatten = "channel-major"' in message
    assert "--granularity layer" in message
    assert caught.value.exit_code == 2
    assert not output.exists()
    layer = rebalance_checkpoint(samples / "cnn_digits.pt", output, assume_relu=True)
    assert layer.written


def test_channel_rebalance_of_the_cnn_keeps_its_function(samples: Path, tmp_path: Path) -> None:
    output = tmp_path / "balanced.pt"
    spec = tmp_path / "cnn.toml"
    spec.write_text(
        'version = 2\n[[chain]]\nlayers = ["features.0", "features.2", "classifier"]\n'
        'flatten = "channel-major"\n'
    )
    report = rebalance_checkpoint(
        samples / "cnn_digits.pt", output, spec=spec, granularity="channel"
    )
    assert report.verification.method == "structural"
    assert report.verification.level == "declared_structure"
    assert report.verification.passed
    layer = inspect_checkpoint(samples / "cnn_digits.pt").chains[0]
    assert report.chains[0].l2_after <= layer.min_l2_penalty * (1 + 1e-6)
    before, after = (
        torch.load(samples / "cnn_digits.pt", weights_only=True),
        torch.load(output, weights_only=True),
    )
    assert not torch.equal(after["features.2.weight"], before["features.2.weight"])
    images = DIGITS.to(torch.float32).reshape(-1, 1, 8, 8)
    expected = cnn_forward(before, images)
    assert torch.allclose(
        cnn_forward(after, images), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())
    )


def test_channel_pow2_rebalance_of_bfloat16_is_bit_identical(samples: Path, tmp_path: Path) -> None:
    source = samples / "mlp_digits_bf16.safetensors"
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True, granularity="channel")
    assert report.chains[0].scales == "pow2"
    assert report.chains[0].l2_after <= report.chains[0].l2_before
    inputs = DIGITS.to(torch.bfloat16)
    assert torch.equal(
        mlp_forward(load_file(str(output)), inputs), mlp_forward(load_file(str(source)), inputs)
    )
    assert report.verification.chains[0].bit_identical


def test_inspect_reports_the_three_l2_values(samples: Path) -> None:
    chain = inspect_checkpoint(samples / "mlp_digits.safetensors", granularity="channel").to_dict()[
        "chains"
    ][0]
    assert chain["min_l2_penalty_channel"] <= chain["min_l2_penalty"] <= chain["l2_penalty"]
    assert chain["channel"]["converged"] is True


def test_spec_symmetry_on_a_state_dict_is_rebalanced_and_verified(tmp_path: Path) -> None:
    state = mlp_state(sizes=(6, 5, 4), dtype=torch.float32, seed=2)
    state["net.0.weight"] = state["net.0.weight"] * 10
    source = write_safetensors(tmp_path / "m.safetensors", state)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'version = 1\n[[symmetry]]\nid = "hidden"\nsize = 5\nmembers = [\n'
        '  { tensor = "net.0.weight", axis = 0, exponent = 1 },\n'
        '  { tensor = "net.0.bias", axis = 0, exponent = 1 },\n'
        '  { tensor = "net.2.weight", axis = 1, exponent = -1 },\n]\n'
    )
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(source, output, spec=spec, granularity="channel")
    assert report.group is not None
    assert report.group.l2_after < report.group.l2_penalty
    assert report.verification.passed
    inputs = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    expected = mlp_forward(state, inputs)
    actual = mlp_forward(load_file(str(output)), inputs)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_state_dict_cnn_with_batch_norm_needs_consent_and_keeps_its_function(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    features = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
    )
    with torch.no_grad():
        for module in features:
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.1, 4.0)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    features.eval()
    state = OrderedDict((f"features.{k}", v) for k, v in features.state_dict().items())
    source = write_torch(tmp_path / "cnn.pt", state)
    with pytest.raises(ConsentError):
        rebalance_checkpoint(source, tmp_path / "out.pt", include_bias=True)
    report = rebalance_checkpoint(source, tmp_path / "out.pt", assume_relu=True, include_bias=True)
    assert report.group is not None
    assert {s.id for s in report.group.symmetries} >= {"features.0", "features.1", "features.3"}
    assert report.group.l2_after < report.group.l2_penalty
    assert report.verification.passed
    after = torch.load(tmp_path / "out.pt", weights_only=True)
    assert not torch.equal(after["features.1.weight"], state["features.1.weight"])
    rewritten = copy.deepcopy(features)
    rewritten.load_state_dict({k.removeprefix("features."): v for k, v in after.items()})
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = features(images), rewritten(images)
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_float16_with_room_to_move_reports_nothing_held(tmp_path: Path) -> None:
    """Layer norms where the bounded search (every exponent between 0 and the real one) finds
    a better chain than floor/ceil/0: that is not exactness holding anything back."""
    norms = [0.11, 0.1082, 1.3121, 0.0093, 1.766, 0.0557]
    generator = torch.Generator().manual_seed(0)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for index, norm in enumerate(norms):
        signs = torch.randint(0, 2, (4, 4), generator=generator) * 2.0 - 1.0
        state[f"net.{2 * index}.weight"] = (signs * norm / 4).half()  # norm exactly `norm`
    source = write_safetensors(tmp_path / "m.safetensors", state)
    output = tmp_path / "out.safetensors"
    report = rebalance_checkpoint(source, output, assume_relu=True)
    assert report.chains[0].scales == "pow2"
    assert not [w for w in report.warnings if "float16 exactness" in w]
    assert report.verification.passed
    assert report.chains[0].l2_after < report.chains[0].l2_before


def probes_after_the_write(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The chains verification probes by reading both files after the write."""
    from weissi_cli import verify

    chains: list[str] = []
    real = verify.probe_chain

    def spy(original: Any, rewritten: Any, chain: Any, *rest: Any) -> Any:
        chains.append(chain.id)
        return real(original, rewritten, chain, *rest)

    monkeypatch.setattr(verify, "probe_chain", spy)
    return chains


needs_kernel = pytest.mark.skipif(kernel.compiled is None, reason="the C kernel was not built")


@needs_kernel
def test_a_value_written_wrong_fails_the_probes_after_the_write(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weissi_cli import verify_values
    from weissi_cli.writers import disk

    monkeypatch.setattr(verify_values, "EXACT_BELOW", 1)
    real_write = disk.write_all

    def write_with_a_flipped_bit(descriptor: int, data: memoryview, offset: int) -> None:
        damaged = bytearray(data)
        if len(damaged) >= 1024:  # the weights' chunks (a bias copied wrong is found too:
            # test_failed_verification_leaves_no_output)
            damaged[len(damaged) // 2] ^= 0x40
        real_write(descriptor, memoryview(damaged), offset)

    monkeypatch.setattr(disk, "write_all", write_with_a_flipped_bit)
    after_write = probes_after_the_write(monkeypatch)
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(samples / "mlp_digits.safetensors", output, assume_relu=True)
    assert after_write == ["chain0"]
    assert not report.verification.passed
    assert "net.0.weight (1 values)" in report.verification.chains[0].detail
    assert not report.written
    assert list(tmp_path.iterdir()) == []


@needs_kernel
def test_a_chain_across_shards_is_probed_through_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain with layers in two shards: the probes read each layer from its own shard of
    both folders, and the written folder computes the same function."""
    from tests.helpers import write_sharded
    from weissi_cli import verify_values

    monkeypatch.setattr(verify_values, "EXACT_BELOW", 1)
    state = mlp_state(sizes=(24, 20, 16, 8), dtype=torch.float32)
    for index, name in enumerate(n for n in state if n.endswith("weight")):
        state[name] = state[name] * 4.0**index
    names = list(state)
    folder = write_sharded(
        tmp_path / "in",
        {
            "model-00001-of-00002.safetensors": {n: state[n] for n in names[:3]},
            "model-00002-of-00002.safetensors": {n: state[n] for n in names[3:]},
        },
    )
    after_write = probes_after_the_write(monkeypatch)
    report = rebalance_checkpoint(folder, tmp_path / "out", assume_relu=True, scales="real")
    assert report.chains[0].layers == ("net.0", "net.2", "net.4")
    assert after_write == ["chain0"]
    assert report.verification.passed
    assert report.written
    inputs = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))
    written: dict[str, torch.Tensor] = {}
    for path in sorted((tmp_path / "out").glob("*.safetensors")):
        written.update(load_file(str(path)))
    expected = mlp_forward(state, inputs)
    scale = float(expected.abs().max())
    assert torch.allclose(mlp_forward(written, inputs), expected, rtol=1e-5, atol=1e-6 * scale)


@needs_kernel
@pytest.mark.parametrize("failing_write", [0, 1, 2, 5])
def test_a_disk_that_fills_during_the_write_leaves_nothing(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_write: int
) -> None:
    """The disk fills at one chunk or another of the writer's threads: the error is the
    disk's (exit 2), not a follow-on one, no thread is left waiting, and nothing is left."""
    import errno

    from weissi_cli import chunking
    from weissi_cli.writers import disk

    monkeypatch.setattr(chunking, "SCALE_ELEMENTS", 256)  # several chunks per layer
    real_write = disk.write_all
    calls = iter(range(10**6))

    def full_disk(descriptor: int, data: memoryview, offset: int) -> None:
        if next(calls) == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(descriptor, data, offset)

    monkeypatch.setattr(disk, "write_all", full_disk)
    output = tmp_path / "balanced.safetensors"
    raised = raised_within(
        120,
        lambda: rebalance_checkpoint(samples / "mlp_digits.safetensors", output, assume_relu=True),
    )
    assert len(raised) == 1
    assert isinstance(raised[0], OutputError)
    assert "no space left on the device" in str(raised[0])
    assert list(tmp_path.iterdir()) == []
