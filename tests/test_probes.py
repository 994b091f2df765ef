"""Probe inputs and arithmetic: 16-bit chains computed as their storage computes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weissi_cli.probes import (
    FLOAT16_INPUT_SCALES,
    ProbeInputs,
    activate,
    output_change,
    probe_inputs,
    round_to,
    storage_of,
    subnormals,
)


def test_float16_probes_are_scaled_down_into_the_subnormal_range() -> None:
    inputs = probe_inputs(64, np.float32, "float16", probes=8, seed=0)
    assert inputs.values.shape == (8 * len(FLOAT16_INPUT_SCALES), 64)
    assert inputs.scales == FLOAT16_INPUT_SCALES
    smallest = inputs.values[-8:]
    assert 0 < np.abs(smallest[smallest != 0]).max() < 2.0**-14  # all subnormal there
    assert np.all(inputs.values[4:8] >= 0)  # half of each group non-negative
    as_half = torch.from_numpy(inputs.values).half().float().numpy()
    assert np.array_equal(as_half, inputs.values)  # float16 values, as stored
    assert inputs.describe() == "48 random probes at input scales 1 to 2^-20"


def test_other_dtypes_probe_at_unit_scale_only() -> None:
    for storage in (None, "bfloat16"):
        inputs = probe_inputs(5, np.float32, storage, probes=8, seed=0)
        assert inputs.values.shape == (8, 5)
        assert inputs.scales == (1.0,)


@pytest.mark.parametrize(
    ("storage", "dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_rounding_matches_torch(storage: str, dtype: torch.dtype) -> None:
    values = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 2.0**-16
    expected = torch.from_numpy(values).to(dtype).float().numpy()
    assert np.array_equal(round_to(values, storage), expected)
    assert round_to(values, None) is values


def test_subnormals_are_counted_below_the_normal_range() -> None:
    values = np.array([0.0, 2.0**-15, -(2.0**-20), 2.0**-14, 1.0], np.float32)
    assert subnormals(values, "float16") == 2
    assert subnormals(values, None) == 0
    assert storage_of({"float32", "float16", "bfloat16"}) == "float16"
    assert storage_of({"float32"}) is None


def test_a_prelu_applies_its_slopes_per_channel() -> None:
    values = np.array([[-1.0, -2.0, 3.0]], np.float32)
    slopes = np.array([0.5, 0.25, 0.1], np.float32)
    assert activate(values.copy(), "prelu", 0.0, slopes).tolist() == [[-0.5, -0.5, 3.0]]
    leaky = activate(values.copy(), "leaky_relu", 0.2, None)
    assert leaky.ravel().tolist() == pytest.approx([-0.2, -0.4, 3.0])
    assert activate(values.copy(), "relu", 0.0, None).tolist() == [[0.0, 0.0, 3.0]]


def test_the_change_is_relative_to_the_outputs_of_the_same_input_scale() -> None:
    before = np.array([[100.0], [1.0]])
    after = np.array([[100.0], [1.5]])
    inputs = ProbeInputs(before, (1.0, 2.0**-4), 1)
    assert output_change(before, after, inputs) == (0.5, 0.5)
    one_group = ProbeInputs(before, (1.0,), 2)
    assert output_change(before, after, one_group) == (0.5, 0.005)
