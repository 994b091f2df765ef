"""`rebalance` and `inspect` on `torch.export` programs: structure found, weights changed as
intended, function unchanged; and hostile or damaged archives refused."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.exported_models import export, export_all, member_factors
from weissi_cli.api import inspect_checkpoint, rebalance_checkpoint
from weissi_cli.errors import InputError, StructureError, UnsafePickleError
from weissi_cli.io import open_checkpoint
from weissi_cli.report.rebalance import RebalanceReport

EXPECTED_IDS = {
    "resnet": [
        "layer1.bn1",
        "layer1.bn2+stem.1",
        "layer1.conv1",
        "layer1.conv2",
        "layer2.bn1",
        "layer2.bn2+layer2.shortcut.1",
        "layer2.conv1",
        "layer2.conv2",
        "layer2.shortcut.0",
        "stem.0",
    ],
    "concat_conv": ["left", "mix", "right"],
    "concat_flatten": ["left", "right"],
    "relu_before_bn": ["bn", "conv1", "conv2"],
    "relu_mlp": ["0", "2"],
    "residual_mlp": ["inner+inp"],
    "residual_conv": ["inner+inp"],
}
# Symmetries whose penalised tensors all take the scale the same way stay at 1: a conv into
# a batch norm (only the conv's rows are penalised; running statistics are buffers), and a
# batch norm into a conv without include_bias (the norm's affine is 1-D, unpenalised).
UNBOUNDED = {
    "resnet": {
        "stem.0",
        "layer1.conv1",
        "layer1.conv2",
        "layer2.conv1",
        "layer2.conv2",
        "layer2.shortcut.0",
    },
    "relu_before_bn": {"conv1", "bn"},  # bn → conv2: the affine is 1-D, unpenalised
}
# Every symmetry of the ResNet is between a conv and a batch norm; the norms' affines are
# 1-D, penalised only with include_bias, so without it nothing is bounded (tested below).
INCLUDE_BIAS = {"resnet": True, "residual_conv": True}
REBALANCED = sorted(EXPECTED_IDS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_all(tmp_path_factory.mktemp("exported"))


def _state(path: Path) -> dict[str, torch.Tensor]:
    program = torch.export.load(path)
    return {**program.state_dict, **program.constants}


def _compare_functions(original: Path, rewritten: Path, probes: int = 3) -> tuple[float, bool]:
    """Largest output change relative to the largest output, and whether all are identical."""
    before_program = torch.export.load(original)
    before, after = before_program.module(), torch.export.load(rewritten).module()
    args, _ = before_program.example_inputs
    generator = torch.Generator().manual_seed(1234)
    worst, identical = 0.0, True
    with torch.no_grad():
        for _ in range(probes):
            inputs = [torch.randn(a.shape, generator=generator) * 3 for a in args]
            old, new = before(*inputs), after(*inputs)
            worst = max(worst, float((new - old).abs().max() / old.abs().max()))
            identical = identical and torch.equal(new, old)
    return worst, identical


def _rebalance(
    exported: dict[str, Path], tmp_path: Path, model: str, name: str = "", **options: Any
) -> tuple[RebalanceReport, Path]:
    output = tmp_path / f"{name or model}.pt2"
    options.setdefault("include_bias", INCLUDE_BIAS.get(model, False))
    return rebalance_checkpoint(exported[model], output, **options), output


def _is_power_of_two(values: torch.Tensor) -> bool:
    mantissa, _ = torch.frexp(values)
    return bool(torch.all(mantissa == 0.5))


@pytest.mark.parametrize("scales", ["real", "pow2"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("model", REBALANCED)
def test_rebalance_keeps_the_function_and_scales_the_symmetries(
    model: str, granularity: str, scales: str, exported: dict[str, Path], tmp_path: Path
) -> None:
    report, output = _rebalance(exported, tmp_path, model, granularity=granularity, scales=scales)
    assert report.written
    assert report.verification.passed
    assert report.output_format == "torch.export"
    group = report.group
    assert group is not None
    # structure found
    assert sorted(s.id for s in group.symmetries) == EXPECTED_IDS[model]
    assert report.chains == ()
    # weights changed as intended: each tensor is its original times the factor its members
    # give it under the scales the report says were applied
    solution = group.channel or group.layer
    assert solution.granularity == granularity
    before, after = _state(exported[model]), _state(output)
    assert sorted(after) == sorted(before)
    shapes = {name: tuple(t.shape) for name, t in before.items()}
    factors = member_factors(group.symmetries, solution.scales, shapes)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "nothing was rebalanced"
    assert set(changed) <= set(factors)
    for name, factor in factors.items():
        expected = before[name].double() * factor
        if scales == "pow2":
            assert torch.equal(after[name], expected.to(before[name].dtype)), name
        else:
            torch.testing.assert_close(after[name].double(), expected, rtol=2e-7, atol=0)
    for key, item in solution.symmetries.items():
        if scales == "pow2":
            assert _is_power_of_two(torch.as_tensor(item.scales)), key
        if granularity == "layer":
            assert len(set(item.scales.tolist())) == 1, key
    unbounded = {key for key, item in solution.symmetries.items() if item.unbounded}
    assert unbounded == UNBOUNDED.get(model, set())
    for key in unbounded:
        assert (solution.symmetries[key].scales == 1).all()
    only_unbounded = {
        m.tensor for s in group.symmetries if s.id in unbounded for m in s.members
    } - {m.tensor for s in group.symmetries if s.id not in unbounded for m in s.members}
    for name in only_unbounded:  # e.g. every batch norm's running statistics
        assert torch.equal(before[name], after[name]), name
    # the L2 penalty went down, channel-wise at least as far as layer-wise (real scales);
    # rounding to powers of two is never worse than leaving everything alone
    assert group.l2_after is not None
    if scales == "real":
        assert group.layer.l2_after <= group.l2_penalty
        if group.channel is not None:
            assert group.channel.l2_after <= group.layer.l2_after * (1 + 1e-9)
        assert group.l2_after == pytest.approx(solution.l2_after, rel=1e-5)
        assert group.l2_after < group.l2_penalty
    else:
        assert group.l2_after <= group.l2_penalty * (1 + 1e-6)
    # function unchanged
    relative, identical = _compare_functions(exported[model], output)
    if scales == "pow2":
        assert identical, f"outputs moved by {relative:.3g} with power-of-two scales"
    else:
        assert relative <= 1e-5


def test_resnet_without_include_bias_has_only_unbounded_symmetries(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    """Batch-norm affines are 1-D: unpenalised by default, so every symmetry of a conv/BN
    ResNet has penalised members on one side only and is left at 1."""
    report, output = _rebalance(
        exported, tmp_path, "resnet", granularity="channel", scales="real", include_bias=False
    )
    assert report.nothing_to_do
    assert not report.written
    assert not output.exists()
    assert report.group is not None
    assert report.group.channel is not None
    assert all(item.unbounded for item in report.group.channel.symmetries.values())
    forced, output = _rebalance(
        exported,
        tmp_path,
        "resnet",
        granularity="channel",
        scales="real",
        include_bias=False,
        write_unchanged=True,
        name="forced",
    )
    assert forced.written
    assert forced.verification.passed
    assert forced.verification.level == "real_network"
    before, after = _state(exported["resnet"]), _state(output)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert _compare_functions(exported["resnet"], output)[1]


@pytest.mark.parametrize("model", ["gelu_mlp", "relu6_mlp"])
def test_nothing_to_rebalance_when_the_activation_stops_every_space(
    model: str, exported: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "out.pt2"
    with pytest.raises(StructureError, match="no chains of layers or scale symmetries"):
        rebalance_checkpoint(exported[model], output)
    assert not output.exists()


@pytest.mark.parametrize("model", [*REBALANCED, "gelu_mlp", "relu6_mlp"])
def test_inspect_channel_optimum_below_layer_optimum_below_original(
    model: str, exported: dict[str, Path]
) -> None:
    include_bias = INCLUDE_BIAS.get(model, False)
    report = inspect_checkpoint(exported[model], granularity="channel", include_bias=include_bias)
    group = report.group
    assert group is not None
    assert group.channel is not None
    assert sorted(s.id for s in group.symmetries) == EXPECTED_IDS.get(model, [])
    assert group.channel.l2_after <= group.layer.l2_after * (1 + 1e-9)
    assert group.layer.l2_after <= group.l2_penalty * (1 + 1e-9)
    # the penalty counts the parameters (2-D and up, 1-D too with include_bias) of the
    # symmetries' members, never buffers such as running statistics
    program = torch.export.load(exported[model])
    members = {m.tensor for s in group.symmetries for m in s.members}
    penalised = [
        program.state_dict[name]
        for name in members
        if name in dict(program.named_parameters())
        and (program.state_dict[name].dim() >= 2 or include_bias)
    ]
    expected = sum(float(t.detach().double().square().sum()) for t in penalised)
    assert group.l2_penalty == pytest.approx(expected, rel=1e-6)
    if model in ("gelu_mlp", "relu6_mlp"):
        assert group.l2_penalty == 0
        assert {s.producers for s in group.stops} == {("0",), ("2",)}
    else:
        assert group.channel.l2_after < group.layer.l2_after < group.l2_penalty


def test_safetensors_output_has_the_programs_tensors_rescaled(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(
        exported["relu_before_bn"],
        output,
        granularity="channel",
        scales="pow2",
        output_format="safetensors",
    )
    assert report.written
    assert report.verification.passed
    assert report.output_format == "safetensors"
    program = torch.export.load(exported["relu_before_bn"])
    tensors = load_file(str(output))
    assert sorted(tensors) == sorted(program.state_dict)
    assert report.group is not None
    assert report.group.channel is not None
    shapes = {name: tuple(t.shape) for name, t in program.state_dict.items()}
    factors = member_factors(report.group.symmetries, report.group.channel.scales, shapes)
    for name, original in program.state_dict.items():
        expected = original.double() * factors[name] if name in factors else original
        assert torch.equal(tensors[name], expected.to(original.dtype)), name
    assert any(not torch.equal(tensors[n], program.state_dict[n]) for n in tensors)


# hostile and damaged archives ---------------------------------------------------------------


class _Touch:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _replace_member(source: Path, target: Path, suffix: str, data: bytes) -> Path:
    """A copy of the zip archive `source` with the member ending in `suffix` replaced."""
    replaced = 0
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as copy:
        for name in archive.namelist():
            content = archive.read(name)
            if name.endswith(suffix):
                content, replaced = data, replaced + 1
            copy.writestr(zipfile.ZipInfo(name), content)
    assert replaced == 1
    return target


def test_malicious_sample_inputs_pickle_is_refused_before_torch_runs_it(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save((_Touch(marker),), buffer)
    payload = buffer.getvalue()
    # the payload is live: an unsafe load runs it
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists()
    marker.unlink()
    hostile = _replace_member(
        exported["relu_mlp"], tmp_path / "hostile.pt2", "/data/sample_inputs/model.pt", payload
    )
    with pytest.raises(UnsafePickleError, match="sample_inputs"):
        open_checkpoint(hostile)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        rebalance_checkpoint(hostile, tmp_path / "out.pt2")
    assert not marker.exists()
    assert not (tmp_path / "out.pt2").exists()
    # the refusal matters: torch itself would run the pickle (it falls back to an unsafe load)
    with contextlib.suppress(Exception):
        torch.export.load(hostile)
    assert marker.exists()


def test_protocol_0_pickle_in_sample_inputs_is_refused(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    # GLOBAL os.system, MARK, UNICODE "touch <marker>", TUPLE, REDUCE, STOP: no b"\x80" header
    command = f"touch {shlex.quote(str(marker))}"
    payload = b"cos\nsystem\n(V" + command.encode() + b"\ntR."
    hostile = _replace_member(
        exported["relu_mlp"], tmp_path / "hostile.pt2", "/data/sample_inputs/model.pt", payload
    )
    raised: Exception | None = None
    try:
        open_checkpoint(hostile).close()
    except InputError as error:
        raised = error
    assert not marker.exists(), "opening the archive ran its pickle"
    assert isinstance(raised, UnsafePickleError), raised


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_archive_is_an_input_error(
    keep: float, exported: dict[str, Path], tmp_path: Path
) -> None:
    data = exported["relu_mlp"].read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="truncated"):
        open_checkpoint(truncated)


def test_weight_whose_first_byte_is_the_pickle_magic_is_read(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    first = struct.unpack("<f", b"\x80\x00\x80\x3f")[0]  # 1.0000153, stored as 80 00 80 3f
    with torch.no_grad():
        model.weight[0, 0] = first
    path = export(model.eval(), (torch.randn(1, 2),), tmp_path / "magic.pt2")
    torch.export.load(path)  # torch reads it
    with open_checkpoint(path) as checkpoint:
        assert float(checkpoint.tensor("weight")[0, 0]) == first
