"""`inspect_checkpoint` against an independent float64 computation, on trained models."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import as_numpy64, mlp_state, write_safetensors, write_torch
from weissi_cli.api import inspect_checkpoint
from weissi_cli.report.common import to_json

LAYERS = ("net.0", "net.2", "net.4")


def reference(path: Path, lambda1: float, lambda2: float) -> dict[str, float | list[float]]:
    """The chain's numbers, computed directly in float64 from the file."""
    state = {name: as_numpy64(tensor) for name, tensor in load_file(str(path)).items()}
    norms = [float(np.sqrt(np.sum(state[f"{p}.weight"] ** 2))) for p in LAYERS]
    l1 = [
        float(np.sum(np.abs(state[f"{p}.weight"]))) / n for p, n in zip(LAYERS, norms, strict=True)
    ]
    mean = math.exp(sum(math.log(n) for n in norms) / 3)
    l2 = sum(n * n for n in norms)
    return {
        "norms": norms,
        "l2": l2,
        "log_sum": sum(math.log(n) for n in norms),
        "l1_sum": sum(l1),
        "weissi": lambda1 * sum(math.log(n) for n in norms) + lambda2 * sum(l1),
        "mean": mean,
        "min_l2": 3 * mean**2,
        "slack": l2 - 3 * mean**2,
        "imbalance": max(norms) / min(norms),
        "gammas": [mean / n for n in norms],
    }


def test_trained_mlp_matches_float64_reference(samples: Path) -> None:
    path = samples / "mlp_digits.safetensors"
    report = inspect_checkpoint(path, lambda1=0.5, lambda2=2.0)
    expected = reference(path, 0.5, 2.0)
    (chain,) = report.chains
    assert [layer.layer.prefix for layer in chain.layers] == list(LAYERS)
    assert [layer.fro_norm for layer in chain.layers] == pytest.approx(expected["norms"], rel=1e-6)
    assert [layer.gamma for layer in chain.layers] == pytest.approx(expected["gammas"], rel=1e-6)
    assert chain.l2_penalty == pytest.approx(expected["l2"], rel=1e-6)
    assert chain.log_norm_sum == pytest.approx(expected["log_sum"], rel=1e-6)
    assert chain.l1_direction_sum == pytest.approx(expected["l1_sum"], rel=1e-6)
    assert chain.weissi_penalty == pytest.approx(expected["weissi"], rel=1e-6)
    assert chain.geometric_mean == pytest.approx(expected["mean"], rel=1e-6)
    assert chain.min_l2_penalty == pytest.approx(expected["min_l2"], rel=1e-6)
    assert chain.l2_slack == pytest.approx(expected["slack"], rel=1e-6)
    assert chain.imbalance == pytest.approx(expected["imbalance"], rel=1e-6)


def test_tensor_rows_match_float64_reference(samples: Path) -> None:
    path = samples / "cnn_digits.safetensors"
    report = inspect_checkpoint(path)
    state = load_file(str(path))
    for row in report.tensors:
        values = as_numpy64(state[row.name])
        assert row.fro_norm == pytest.approx(float(np.sqrt(np.sum(values**2))), rel=1e-6)
        assert row.max_abs == pytest.approx(float(np.max(np.abs(values))), rel=1e-7)
        assert row.l1_direction == pytest.approx(
            float(np.sum(np.abs(values)) / np.sqrt(np.sum(values**2))), rel=1e-6
        )
        assert row.dtype == "float32"


def test_scale_shifted_copy_reports_the_same_invariants(samples: Path) -> None:
    original = inspect_checkpoint(samples / "mlp_digits.safetensors").chains[0]
    shifted = inspect_checkpoint(samples / "mlp_digits_shifted.safetensors").chains[0]
    assert shifted.geometric_mean == pytest.approx(original.geometric_mean, rel=1e-6)
    assert shifted.min_l2_penalty == pytest.approx(original.min_l2_penalty, rel=1e-6)
    assert shifted.weissi_penalty == pytest.approx(original.weissi_penalty, rel=1e-6)
    assert shifted.l2_penalty > 10 * original.l2_penalty  # the shift moved mass into net.0
    rebalanced = [layer.rebalanced_norm for layer in shifted.layers]
    assert rebalanced == pytest.approx(
        [layer.rebalanced_norm for layer in original.layers], rel=1e-6
    )


def test_pickle_and_safetensors_give_the_same_report(samples: Path) -> None:
    from_pickle = inspect_checkpoint(samples / "mlp_digits.pt").to_dict()
    from_safetensors = inspect_checkpoint(samples / "mlp_digits.safetensors").to_dict()
    assert from_pickle["chains"] == from_safetensors["chains"]
    assert from_pickle["source"]["format"] == "torch"


def test_wrapped_training_checkpoint_is_read(samples: Path) -> None:
    report = inspect_checkpoint(samples / "mlp_digits_wrapped.pt")
    assert [layer.layer.prefix for layer in report.chains[0].layers] == list(LAYERS)


def test_bias_aware_optimum_lowers_the_full_penalty(samples: Path) -> None:
    report = inspect_checkpoint(samples / "mlp_digits.safetensors", include_bias=True)
    (chain,) = report.chains
    state = {
        name: as_numpy64(tensor)
        for name, tensor in load_file(str(samples / "mlp_digits.safetensors")).items()
    }
    full = sum(float(np.sum(values**2)) for values in state.values())
    assert chain.l2_penalty == pytest.approx(full, rel=1e-6)
    after = sum(layer.rebalanced_norm**2 + layer.rebalanced_bias_norm**2 for layer in chain.layers)
    assert chain.min_l2_penalty == pytest.approx(after, rel=1e-9)
    weights_only_optimum = inspect_checkpoint(samples / "mlp_digits.safetensors").chains[0]
    # The weights-only shift is one candidate of the bias-aware problem.
    candidate = sum(
        layer.rebalanced_norm**2 + (layer.bias_scale * layer.bias_norm) ** 2
        for layer in weights_only_optimum.layers
    )
    assert chain.min_l2_penalty <= candidate


def test_json_follows_the_design_contract(samples: Path) -> None:
    payload = json.loads(to_json(inspect_checkpoint(samples / "mlp_digits.safetensors").to_dict()))
    assert payload["schema"] == "weissi.inspect/1"
    assert set(payload) >= {
        "schema",
        "tool_version",
        "source",
        "settings",
        "tensors",
        "chains",
        "unassigned",
        "warnings",
    }
    assert set(payload["source"]) == {"path", "format", "tensors", "parameters", "bytes"}
    assert payload["settings"] == {
        "lambda1": 1.0,
        "lambda2": 1.0,
        "include_bias": False,
        "granularity": "layer",
    }
    assert set(payload["tensors"][0]) >= {
        "name",
        "shape",
        "dtype",
        "fro_norm",
        "max_abs",
        "l1_direction",
    }
    chain = payload["chains"][0]
    assert set(chain) >= {
        "id",
        "origin",
        "activation",
        "depth",
        "layers",
        "l2_penalty",
        "log_norm_sum",
        "l1_direction_sum",
        "weissi_penalty",
        "geometric_mean",
        "min_l2_penalty",
        "l2_slack",
        "imbalance",
    }
    assert set(chain["layers"][0]) >= {
        "name",
        "weight",
        "bias",
        "fro_norm",
        "bias_norm",
        "log_norm",
        "l1_direction",
        "gamma",
        "rebalanced_norm",
    }
    assert chain["origin"] == "heuristic"
    assert payload["source"]["parameters"] == 64 * 64 + 64 + 32 * 64 + 32 + 10 * 32 + 10


def test_zero_layer_is_degenerate_without_nan(tmp_path: Path) -> None:
    state = mlp_state(sizes=(4, 4, 4))
    state["net.2.weight"].zero_()
    report = inspect_checkpoint(write_torch(tmp_path / "m.pt", state))
    (chain,) = report.chains
    assert chain.problem is not None
    assert "net.2.weight is all zeros" in chain.problem
    text = to_json(report.to_dict())  # allow_nan=False: raises on NaN or Inf
    payload = json.loads(text)
    assert payload["chains"][0]["weissi_penalty"] is None
    assert payload["chains"][0]["l2_penalty"] == pytest.approx(chain.l2_penalty)
    assert any("all zeros" in warning for warning in payload["warnings"])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_are_reported_not_propagated(tmp_path: Path, bad: float) -> None:
    state = mlp_state(sizes=(4, 4, 4), dtype=torch.float32)
    state["net.0.weight"][1, 2] = bad
    report = inspect_checkpoint(write_safetensors(tmp_path / "m.safetensors", state))
    payload = json.loads(to_json(report.to_dict()))
    row = next(row for row in payload["tensors"] if row["name"] == "net.0.weight")
    assert row["nonfinite"] == 1
    assert row["fro_norm"] is None
    assert payload["chains"][0]["l2_penalty"] is None
    assert "net.0.weight holds 1 non-finite value(s)" in payload["chains"][0]["problem"]


def test_integer_tensors_are_listed_and_skipped(tmp_path: Path) -> None:
    state = OrderedDict(mlp_state(sizes=(3, 3, 3)))
    state["steps"] = torch.tensor([5], dtype=torch.int64)
    state["mask"] = torch.tensor([True, False])
    report = inspect_checkpoint(write_torch(tmp_path / "m.pt", state))
    rows = {row.name: row for row in report.tensors}
    assert rows["steps"].skipped == "int64 tensor: not a supported float"
    assert rows["mask"].fro_norm is None
    assert {entry.name for entry in report.unassigned} == {"steps", "mask"}


def test_non_finite_lambda_is_a_usage_error(samples: Path) -> None:
    from weissi_cli.errors import UsageError

    with pytest.raises(UsageError, match="--lambda1 must be a finite number"):
        inspect_checkpoint(samples / "mlp_digits.safetensors", lambda1=math.nan)


def test_one_layer_spec_chain_has_no_slack(samples: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('version = 1\n[[chain]]\nlayers = ["net.4"]\n')
    report = inspect_checkpoint(samples / "mlp_digits.safetensors", spec=spec)
    (chain,) = report.chains
    assert chain.l2_slack == 0.0
    assert chain.imbalance == 1.0
    assert [layer.gamma for layer in chain.layers] == [1.0]
    assert "chain0: a chain of one layer (net.4) has no scale symmetry" in report.warnings


def test_non_finite_tensor_has_no_norm_or_max_in_json(tmp_path: Path) -> None:
    state = mlp_state(sizes=(4, 4, 4), dtype=torch.float32)
    state["net.0.weight"][0, 0] = math.inf
    payload = inspect_checkpoint(write_safetensors(tmp_path / "m.safetensors", state)).to_dict()
    row = next(row for row in payload["tensors"] if row["name"] == "net.0.weight")
    assert (row["fro_norm"], row["max_abs"], row["nonfinite"]) == (None, None, 1)
    assert payload["chains"][0]["layers"][0]["fro_norm"] is None


def test_extreme_float64_norms_are_exact_or_reported(tmp_path: Path) -> None:
    state = mlp_state(sizes=(4, 4, 4, 4), dtype=torch.float64)
    state["net.0.weight"] = state["net.0.weight"] * 1e-300
    state["net.2.weight"] = state["net.2.weight"] * 1e300
    report = inspect_checkpoint(write_torch(tmp_path / "m.pt", state))
    norms = {row.name: row.fro_norm for row in report.tensors}
    assert norms["net.0.weight"] == pytest.approx(float(state["net.0.weight"].norm()), rel=1e-12)
    assert norms["net.2.weight"] == pytest.approx(
        float((state["net.2.weight"] / 1e300).norm()) * 1e300, rel=1e-12
    )
    (chain,) = report.chains
    assert chain.problem is not None
    assert "too large or too small" in chain.problem
    json.loads(to_json(report.to_dict()))  # no NaN or Infinity


def test_pow2_minimum_is_reported_for_every_chain(samples: Path) -> None:
    chain = inspect_checkpoint(samples / "mlp_digits_bf16.safetensors").to_dict()["chains"][0]
    assert chain["min_l2_penalty"] <= chain["min_l2_penalty_pow2"] <= chain["l2_penalty"]


@pytest.mark.parametrize(("dtype", "warned"), [(torch.float16, True), (torch.bfloat16, False)])
def test_the_pow2_minimum_of_a_float16_chain_is_labelled(
    tmp_path: Path, dtype: torch.dtype, warned: bool
) -> None:
    """inspect does not measure float16 headroom (a pass of its own), so for float16 chains
    its pow2 minimum is labelled as what rebalance may not reach; bfloat16 is not limited."""
    state = mlp_state(sizes=(64, 48, 10), seed=3, dtype=torch.float64)
    state = OrderedDict((name, tensor.to(dtype)) for name, tensor in state.items())
    report = inspect_checkpoint(write_safetensors(tmp_path / "m.safetensors", state))
    assert report.chains[0].pow2_l2_penalty is not None
    labelled = [w for w in report.warnings if "min_l2_penalty_pow2 assumes" in w]
    assert bool(labelled) == warned
    if warned:
        assert labelled[0].startswith(f"{report.chains[0].chain.id}: ")
