"""`weissi_cli.penalty`: the training-time WEISSI penalty and L2 slack, against the CLI's own
numbers, under scale shifts, by finite differences, in bfloat16, and on zero weights."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from tests.strategies import layer_sizes, log_scales
from weissi_cli.cli.app import app
from weissi_cli.errors import StructureError, UsageError
from weissi_cli.penalty import ZeroWeightError, l2_slack, weissi_penalty, weissi_terms

RUNNER = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


def mlp(sizes: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers).to(dtype)


def value(tensor: torch.Tensor) -> float:
    return float(tensor.detach())


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def cli_json(*args: str) -> dict[str, object]:
    result = RUNNER.invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    payload: dict[str, object] = json.loads(result.stdout)
    return payload


# --- against the CLI ---------------------------------------------------------------------


@pytest.mark.parametrize(("lambda1", "lambda2"), [(1.0, 1.0), (0.5, 2.0)])
def test_penalty_and_slack_equal_what_the_cli_reports(
    tmp_path: Path, lambda1: float, lambda2: float
) -> None:
    model = mlp((64, 48, 32, 10), seed=1)
    with torch.no_grad():  # unbalance it, so the slack is far from 0
        linear_layers(model)[0].weight.mul_(5.0)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    payload = cli_json(
        "inspect", str(path), "--json", "--lambda1", str(lambda1), "--lambda2", str(lambda2)
    )
    chain = payload["chains"][0]  # type: ignore[index]
    assert value(weissi_penalty(model, lambda1, lambda2)) == pytest.approx(
        chain["weissi_penalty"], rel=1e-6
    )
    assert value(l2_slack(model)) == pytest.approx(chain["l2_slack"], rel=1e-5)
    log_sum, l1_sum = weissi_terms(model)
    assert value(log_sum) == pytest.approx(chain["log_norm_sum"], rel=1e-6)
    assert value(l1_sum) == pytest.approx(chain["l1_direction_sum"], rel=1e-6)
    trend = cli_json(
        "trend", str(path), "--json", "--lambda1", str(lambda1), "--lambda2", str(lambda2)
    )
    point = trend["checkpoints"][0]  # type: ignore[index]
    assert value(weissi_penalty(model, lambda1, lambda2)) == pytest.approx(
        point["weissi_penalty"], rel=1e-6
    )


def test_slack_sums_the_chains_the_cli_finds(tmp_path: Path) -> None:
    """A layer norm between two MLPs ends the first chain (names and shapes, as inspect
    reads the saved state dict): two chains, and the slack is the sum of theirs."""

    class TwoChains(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = mlp((10, 8, 6), seed=2)
            self.norm = nn.LayerNorm(6)
            self.second = mlp((6, 7, 5, 3), seed=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(self.norm(self.first(x)))

    model = TwoChains()
    with torch.no_grad():
        linear_layers(model.second)[1].weight.mul_(0.1)
    path = tmp_path / "two.pt"
    torch.save(model.state_dict(), path)
    payload = cli_json("inspect", str(path), "--json")
    chains = payload["chains"]
    assert [len(c["layers"]) for c in chains] == [2, 3]  # type: ignore[union-attr,index]
    expected = sum(c["l2_slack"] for c in chains)  # type: ignore[union-attr,index]
    assert value(l2_slack(model)) == pytest.approx(expected, rel=1e-5)
    # The default penalty covers every weight, the chains' and nothing else here.
    assert value(weissi_penalty(model)) == pytest.approx(
        sum(c["weissi_penalty"] for c in chains),
        rel=1e-6,  # type: ignore[union-attr,index]
    )


# --- invariance --------------------------------------------------------------------------


@given(sizes=layer_sizes(min_depth=2, max_depth=5), data=st.data())
def test_penalty_is_unchanged_by_any_layer_wise_shift(
    sizes: tuple[int, ...], data: st.DataObject
) -> None:
    model = mlp(sizes, seed=sum(sizes), dtype=torch.float64)
    layers = linear_layers(model)
    logs = data.draw(st.lists(log_scales, min_size=len(layers) - 1, max_size=len(layers) - 1))
    gammas = [math.exp(v) for v in logs] + [math.exp(-math.fsum(logs))]  # Π γ = 1
    inputs = torch.randn(7, sizes[0], dtype=torch.float64)
    with torch.no_grad():
        before = (weissi_penalty(model), l2_slack(model), model(inputs))
        l2_before = sum(float(layer.weight.square().sum()) for layer in layers)
        cumulative = 1.0
        for layer, gamma in zip(layers, gammas, strict=True):
            cumulative *= gamma
            layer.weight.mul_(gamma)
            layer.bias.mul_(cumulative)  # biases follow the cumulative product
        after = (weissi_penalty(model), l2_slack(model), model(inputs))
        l2_after = sum(float(layer.weight.square().sum()) for layer in layers)
    assert torch.allclose(after[2], before[2], rtol=1e-9, atol=1e-9)  # the same function
    assert value(after[0]) == pytest.approx(value(before[0]), rel=1e-12, abs=1e-12)
    # The minimum over shifts, L2 − slack, is a property of the function too (to the
    # rounding of L2 itself, which a shift of up to e^±8 per layer makes large).
    rounding = 1e-13 * max(l2_before, l2_after)
    assert l2_after - value(after[1]) == pytest.approx(
        l2_before - value(before[1]), rel=1e-9, abs=rounding
    )


def test_the_optimal_shift_leaves_no_slack() -> None:
    model = mlp((9, 7, 5, 4), seed=4, dtype=torch.float64)
    layers = linear_layers(model)
    with torch.no_grad():
        norms = [float(layer.weight.norm()) for layer in layers]
        mean = math.exp(sum(math.log(n) for n in norms) / len(norms))
        for layer, norm in zip(layers, norms, strict=True):
            layer.weight.mul_(mean / norm)
    assert value(l2_slack(model)) == pytest.approx(0.0, abs=1e-12)


# --- gradients ---------------------------------------------------------------------------


def test_gradients_match_finite_differences_in_float64() -> None:
    torch.manual_seed(5)
    weights = [
        torch.randn(5, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 5, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True),  # a conv-like kernel
    ]
    with torch.no_grad():
        weights[0].mul_(4.0)

    def penalty(*tensors: torch.Tensor) -> torch.Tensor:
        return weissi_penalty(None, 0.7, 1.3, params=list(tensors))

    def slack(*tensors: torch.Tensor) -> torch.Tensor:
        return l2_slack(list(tensors))

    assert torch.autograd.gradcheck(penalty, tuple(weights))
    assert torch.autograd.gradcheck(slack, tuple(weights))


def test_gradient_through_a_module_reaches_its_weights_only() -> None:
    model = mlp((6, 5, 4), seed=6, dtype=torch.float64)
    (weissi_penalty(model) + l2_slack(model)).backward()
    for layer in linear_layers(model):
        assert layer.weight.grad is not None
        assert torch.isfinite(layer.weight.grad).all()
        assert layer.bias.grad is None  # biases are not penalised


def test_the_gradient_of_the_penalty_is_orthogonal_to_each_shift_direction() -> None:
    """d/dt penalty(γ(t)·W) = 0 along a shift: Σ_l ⟨∇_l, W_l⟩·s_l = 0 when Σ s_l = 0."""
    model = mlp((8, 6, 5, 3), seed=7, dtype=torch.float64)
    weissi_penalty(model).backward()
    inner = [value((layer.weight.grad * layer.weight).sum()) for layer in linear_layers(model)]
    assert inner == pytest.approx([1.0] * 3, rel=1e-12)  # ⟨∇, W⟩ = λ1 for each layer


# --- dtypes, zeros, what is selected -----------------------------------------------------


def test_bfloat16_weights_accumulate_in_float32() -> None:
    torch.manual_seed(8)
    weight = (torch.randn(512, 512) * 0.02).to(torch.bfloat16).requires_grad_(True)
    exact = weight.detach().to(torch.float64)
    norm = float(exact.norm())
    expected = math.log(norm) + float(exact.abs().sum()) / norm
    penalty = weissi_penalty(None, params=[weight])
    assert penalty.dtype == torch.float32
    assert value(penalty) == pytest.approx(expected, rel=1e-6)  # float32's own rounding
    # A bfloat16 accumulation is off by far more than that.
    naive = torch.log(torch.linalg.vector_norm(weight.detach())) + weight.detach().abs().sum() / (
        torch.linalg.vector_norm(weight.detach())
    )
    assert abs(float(naive) - expected) > 1000 * abs(value(penalty) - expected)
    penalty.backward()
    assert weight.grad is not None
    assert weight.grad.dtype == torch.bfloat16
    slack = l2_slack([weight, weight.detach() * 3])
    assert slack.dtype == torch.float32


def test_float64_stays_float64() -> None:
    assert weissi_penalty(mlp((3, 4, 2), dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("function", [weissi_penalty, l2_slack])
def test_a_zero_weight_is_a_clear_error_not_a_nan(function: Callable[..., torch.Tensor]) -> None:
    model = mlp((4, 3, 2), seed=9)
    with torch.no_grad():
        linear_layers(model)[1].weight.zero_()
    with pytest.raises(ZeroWeightError, match=r"^2\.weight is all zeros: ln‖W‖ is −∞"):
        function(model)
    with pytest.raises(ValueError, match="all zeros"):  # also a ValueError for library users
        function(model)


def test_penalty_covers_two_dimensional_parameters_or_the_ones_given() -> None:
    model = mlp((5, 4, 3), seed=10)
    first, second = linear_layers(model)

    def one(weight: torch.Tensor) -> float:
        norm = float(weight.detach().double().norm())
        return math.log(norm) + float(weight.detach().double().abs().sum()) / norm

    assert value(weissi_penalty(model)) == pytest.approx(
        one(first.weight) + one(second.weight), rel=1e-6
    )
    only = weissi_penalty(model, params=[second.weight])
    assert value(only) == pytest.approx(one(second.weight), rel=1e-6)
    with pytest.raises(UsageError, match="a list of tensors"):
        weissi_penalty(None, params=second.weight)
    with pytest.raises(UsageError, match="no floating-point parameter"):
        weissi_penalty(nn.LayerNorm(4))


def test_a_module_without_a_chain_is_refused() -> None:
    with pytest.raises(StructureError, match="no chain of layers"):
        l2_slack(nn.Linear(4, 3))


def test_the_cli_start_up_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['weissi', '--help']\n"
        "from weissi_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "import weissi_cli, weissi_cli.api\n"
        "print('torch' in sys.modules, 'weissi_cli.penalty' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "trend" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "False False"
