"""Channel-wise rebalancing with the axis squares streamed from the checkpoint: the same
solution as with them held, without ever holding a tensor's squares whole."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import read_safetensors, write_safetensors
from weissi_cli import api, progress
from weissi_cli.balance import streamed
from weissi_cli.balance.channelwise import solve
from weissi_cli.balance.streamed import StreamedSquares
from weissi_cli.io import open_checkpoint
from weissi_cli.ir import Chain, Layer
from weissi_cli.stats import axis_squares


def mlp_state(sizes: tuple[int, ...], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        rows = 3.0 ** (4 * torch.rand(fan_out, 1, generator=generator) - 2)
        weight = torch.randn(fan_out, fan_in, generator=generator) * rows
        state[f"net.{2 * index}.weight"] = weight.to(dtype)
        state[f"net.{2 * index}.bias"] = torch.randn(fan_out, generator=generator).to(dtype)
    return state


def chain_of(state: dict[str, torch.Tensor]) -> Chain:
    weights = [name for name in state if name.endswith(".weight")]
    layers = tuple(
        Layer(name.removesuffix(".weight"), name, None, tuple(state[name].shape))
        for name in weights
    )
    return Chain("c", "spec", "relu", layers, (1,) * (len(layers) - 1))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.integers(1, 40), min_size=3, max_size=5).map(tuple),
    st.integers(0, 10_000),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    st.sampled_from([1, 2]),
)
def test_streamed_solution_equals_the_held_one(
    tmp_path: Path, sizes: tuple[int, ...], seed: int, dtype: torch.dtype, threads: int
) -> None:
    state = mlp_state(sizes, seed, dtype)
    path = write_safetensors(tmp_path / f"m{seed}.safetensors", state)
    chain = chain_of(state)
    names = [layer.weight for layer in chain.layers]
    with open_checkpoint(path) as checkpoint:
        held = axis_squares(checkpoint, names)
        streaming = {name: StreamedSquares(checkpoint, name, threads) for name in names}
        for name in names:  # the products of the squares the pass stores
            matrix = held[name].astype(np.float64)
            vector = np.random.default_rng(seed).random(matrix.shape[1])
            np.testing.assert_allclose(streaming[name].matvec(vector), matrix @ vector, 1e-12)
            vector = np.random.default_rng(seed).random(matrix.shape[0])
            np.testing.assert_allclose(streaming[name].rmatvec(vector), vector @ matrix, 1e-12)
        expected = solve(chain.symmetries(), held)
        found = solve(chain.symmetries(), streaming)
    assert found.sweeps == expected.sweeps
    assert found.converged == expected.converged
    assert found.l2_before == pytest.approx(expected.l2_before, rel=1e-12)
    assert found.l2_after == pytest.approx(expected.l2_after, rel=1e-7)
    for key, scales in expected.scales.items():
        np.testing.assert_allclose(found.scales[key], scales, rtol=1e-5)


def test_one_pass_per_streamed_tensor_per_sweep(tmp_path: Path, streamed_passes: list[str]) -> None:
    """A sweep reads each middle layer once (its rows' step also gives the product along its
    columns for the next sweep); the first and last layers' squares are vectors."""
    state = mlp_state((20, 300, 300, 300, 10), 1, torch.float32)
    path = write_safetensors(tmp_path / "m.safetensors", state)
    passes = streamed_passes
    report = api.inspect_checkpoint(path, granularity="channel").to_dict()
    sweeps = report["chains"][0]["channel"]["sweeps"]
    assert sweeps > 3
    assert set(passes) == {"net.2.weight", "net.4.weight"}
    # one pass for the penalty before the descent (both products), then one a sweep
    assert len(passes) == 2 * (1 + sweeps)


def test_the_solver_never_holds_a_streamed_tensors_squares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While it solves, Python's allocations (numpy's included) peak far below one middle
    layer's squares when they are streamed, and above them when they are held: the
    measure sees the difference."""
    width = 4096
    state = mlp_state((16, width, width, 16), 2, torch.float32)
    path = write_safetensors(tmp_path / "m.safetensors", state)
    matrix_bytes = width * width * 4

    def peak(held_bytes: int) -> int:
        monkeypatch.setattr(streamed, "HELD_BYTES", held_bytes)
        solving = _Traced("solving for the optimal scales")
        progress.listen(solving)
        try:
            report = api.inspect_checkpoint(path, granularity="channel", threads=1)
        finally:
            progress.listen(None)
        assert report.chains[0].problem is None
        assert solving.peaks
        return max(solving.peaks)

    assert peak(1 << 20) < matrix_bytes / 4
    assert peak(1 << 30) > matrix_bytes


class _Traced:
    """Traces Python's allocations during each step labelled `label`."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.labels: list[str] = []
        self.peaks: list[int] = []

    def start(self, label: str, total_bytes: int) -> None:
        self.labels.append(label)
        if label == self.label:
            tracemalloc.start()

    def advance(self, nbytes: int) -> None:
        pass

    def stop(self) -> None:
        if self.labels.pop() == self.label:
            self.peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()


def test_a_streamed_rebalance_keeps_the_torch_modules_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(24, 200), torch.nn.ReLU(), torch.nn.Linear(200, 150), torch.nn.ReLU(),
        torch.nn.Linear(150, 120), torch.nn.ReLU(), torch.nn.Linear(120, 7),
    )  # fmt: skip
    with torch.no_grad():  # rows of very different scales: the channel optimum moves them
        for index in (0, 2, 4):
            model[index].weight.mul_(3.0 ** (4 * torch.rand(model[index].weight.shape[0], 1) - 2))
    source = write_safetensors(tmp_path / "m.safetensors", dict(model.state_dict()))
    outputs = {}
    for held in (1 << 30, 0):
        monkeypatch.setattr(streamed, "HELD_BYTES", held)
        target = tmp_path / f"out{held}.safetensors"
        report = api.rebalance_checkpoint(source, target, assume_relu=True, granularity="channel")
        assert report.to_dict()["verification"]["passed"]
        outputs[held] = read_safetensors(target)
    inputs = torch.randn(64, 24)
    with torch.no_grad():
        before = model(inputs).numpy()
        for state in outputs.values():
            after = _loaded(model, state)(inputs).numpy()
            np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    changed = outputs[0]["0.weight"].numpy() / model[0].weight.detach().numpy()
    assert changed.max() / changed.min() > 2  # rows moved apart: a per-channel solution
    for name, value in outputs[0].items():
        np.testing.assert_allclose(value.numpy(), outputs[1 << 30][name].numpy(), rtol=1e-5)


def _loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict(state)
    return clone


class Recorder:
    def __init__(self) -> None:
        self.stack: list[str] = []
        self.bytes: dict[tuple[str, ...], int] = {}
        self.totals: dict[tuple[str, ...], int] = {}

    def start(self, label: str, total_bytes: int) -> None:
        self.stack.append(label)
        self.bytes.setdefault(tuple(self.stack), 0)
        self.totals[tuple(self.stack)] = total_bytes

    def advance(self, nbytes: int) -> None:
        self.bytes[tuple(self.stack)] += nbytes

    def stop(self) -> None:
        self.stack.pop()


def test_each_sweep_reports_the_bytes_it_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = mlp_state((8, 100, 100, 8), 3, torch.float32)
    path = write_safetensors(tmp_path / "m.safetensors", state)
    monkeypatch.setattr(streamed, "HELD_BYTES", 0)
    recorder = Recorder()
    progress.listen(recorder)
    try:
        api.inspect_checkpoint(path, granularity="channel")
    finally:
        progress.listen(None)
    assert recorder.stack == []
    sweep = ("solving for the optimal scales", "sweep 2")
    assert recorder.bytes[sweep] == recorder.totals[sweep] == 100 * 100 * 4


SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


@pytest.mark.parametrize(
    "name", ["mlp_digits.safetensors", "cnn_digits.safetensors", "cnn_digits.pt"]
)
def test_streamed_samples_report_the_held_optimum(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Convolutions (kernels summed, channels flattened into a linear layer's blocks) and
    torch pickles stream as safetensors MLPs do."""
    found = []
    for held in (1 << 30, 0):
        monkeypatch.setattr(streamed, "HELD_BYTES", held)
        report = api.inspect_checkpoint(SAMPLES / name, granularity="channel").to_dict()
        found.append([chain["channel"] for chain in report["chains"]])
    for expected, streamed_chain in zip(*found, strict=True):
        assert streamed_chain["sweeps"] == expected["sweeps"]
        assert streamed_chain["min_l2_penalty"] == pytest.approx(
            expected["min_l2_penalty"], rel=1e-8
        )
