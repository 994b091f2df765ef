"""`trend_checkpoints`: steps from names, the order, and each point's numbers against
`inspect` and an independent float64 computation, in every format weissi reads."""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import mlp_state, write_safetensors, write_sharded, write_torch
from weissi_cli.api import inspect_checkpoint
from weissi_cli.api import trend as trend_module
from weissi_cli.api.trend import (
    expand_paths,
    order_checkpoints,
    parse_step,
    trend_checkpoints,
)
from weissi_cli.errors import InputError, UsageError
from weissi_cli.report.common import to_json

SIZES = (8, 6, 5, 3)
# Per training step, the factor on the first layer (its bias follows) and its inverse on the
# second: a pure scale shift, so WEISSI and the minimum stay put while L2 grows.
SHIFTS = {0: 1.0, 10: 2.0, 20: 4.0, 40: 8.0}


def shifted(state: OrderedDict[str, torch.Tensor], factor: float) -> OrderedDict[str, torch.Tensor]:
    moved = OrderedDict(state)
    moved["net.0.weight"] = state["net.0.weight"] * factor
    moved["net.0.bias"] = state["net.0.bias"] * factor
    moved["net.2.weight"] = state["net.2.weight"] / factor
    return moved


def reference(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """The totals in float64, straight from the tensors."""
    weights = [state[f"net.{i}.weight"].to(torch.float64).numpy() for i in (0, 2, 4)]
    norms = [float(np.sqrt(np.sum(w * w))) for w in weights]
    l2 = sum(n * n for n in norms)
    minimum = len(norms) * math.exp(2 * sum(math.log(n) for n in norms) / len(norms))
    return {
        "l2": l2,
        "min": minimum,
        "slack": l2 - minimum,
        "weissi": sum(
            math.log(n) + float(np.sum(np.abs(w))) / n for n, w in zip(norms, weights, strict=True)
        ),
        "imbalance": max(norms) / min(norms),
        "max_norm": max(norms),
    }


def make_run(folder: Path, fmt: str = "safetensors") -> list[Path]:
    """One checkpoint per step of SHIFTS in the given format; written in reverse step order
    so that nothing depends on the order of creation."""
    state = mlp_state(SIZES, seed=3, dtype=torch.float32)
    paths = []
    for step, factor in reversed(SHIFTS.items()):
        moved = shifted(state, factor)
        if fmt == "safetensors":
            path = write_safetensors(folder / f"step_{step}.safetensors", moved)
        elif fmt == "sharded":
            first = {k: v for k, v in moved.items() if k.startswith("net.0")}
            rest = {k: v for k, v in moved.items() if not k.startswith("net.0")}
            shards = {"model-00001-of-00002.safetensors": first}
            shards["model-00002-of-00002.safetensors"] = rest
            write_sharded(folder / f"checkpoint-{step}", shards)
            path = folder / f"checkpoint-{step}"
        elif fmt == "torch":
            path = write_torch(folder / f"epoch=0-step={step}.ckpt", {"state_dict": moved})
        else:
            path = folder / f"iter_{step:07d}.pt2"
            export_mlp(moved, path)
        paths.append(path)
    return paths


def export_mlp(state: dict[str, torch.Tensor], path: Path) -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(SIZES[0], SIZES[1]),
        torch.nn.ReLU(),
        torch.nn.Linear(SIZES[1], SIZES[2]),
        torch.nn.ReLU(),
        torch.nn.Linear(SIZES[2], SIZES[3]),
    )
    model.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    program = torch.export.export(model.eval(), (torch.randn(2, SIZES[0]),))
    torch.export.save(program, str(path))


# --- steps and order ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "unit"),
    [
        ("run/step_100.pt", 100, "step"),
        ("run/checkpoint-500", 500, "step"),
        ("run/checkpoint-500/model.safetensors", 500, "step"),
        ("lightning/epoch=3-step=1200.ckpt", 1200, "step"),
        ("ds/global_step500/mp_rank_00_model_states.pt", 500, "step"),
        ("megatron/iter_0001000.pt2", 1000, "iteration"),
        ("run/epoch_3.pt", 3, "epoch"),
        ("run/model_00500.safetensors", 500, "step"),
        ("run/resnet50-00200.pth", 200, "step"),
        ("run/llama2-7b-step100.safetensors.index.json", 100, "step"),
        ("run/ckpt_epoch_7.bin", 7, "epoch"),
    ],
)
def test_step_is_read_from_the_name(path: str, value: int, unit: str) -> None:
    step = parse_step(Path(path))
    assert step is not None
    assert (step.value, step.unit) == (value, unit)


def test_a_name_without_a_number_has_no_step() -> None:
    assert parse_step(Path("/nowhere/final/model.safetensors")) is None


TEMPLATES = (
    "run/checkpoint-{}",
    "run/step_{}.pt",
    "run/step{:08d}.safetensors",
    "run/epoch=0-step={}.ckpt",
    "run/global_step{}/model_states.pt",
    "run/checkpoint-{}/model.safetensors",
    "run/model_{:06d}.bin",
)


@given(
    steps=st.lists(st.integers(0, 10**9), min_size=1, max_size=12, unique=True),
    template=st.sampled_from(TEMPLATES),
    shuffle_seed=st.integers(0, 2**32 - 1),
)
def test_any_shuffle_comes_back_in_step_order(
    steps: list[int], template: str, shuffle_seed: int
) -> None:
    paths = [Path(template.format(step)) for step in steps]
    random.Random(shuffle_seed).shuffle(paths)
    ordered = order_checkpoints(paths)
    assert [step.value for _, step in ordered if step is not None] == sorted(steps)
    assert [path for path, _ in ordered] == [Path(template.format(s)) for s in sorted(steps)]


@given(steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_given_order_is_kept(steps: list[int]) -> None:
    paths = [Path(f"run/step_{step}.pt") for step in steps]
    assert [path for path, _ in order_checkpoints(paths, "given")] == paths


def test_a_checkpoint_without_a_step_is_refused_with_the_way_out() -> None:
    with pytest.raises(UsageError, match=r"final\.pt: no training step.*--order given"):
        order_checkpoints([Path("run/step_1.pt"), Path("run/final.pt")])


def test_two_checkpoints_of_one_step_are_refused() -> None:
    with pytest.raises(UsageError, match=r"both name step 100"):
        order_checkpoints([Path("a/step_100.pt"), Path("b/checkpoint-100")])


def test_names_counting_different_things_are_refused() -> None:
    with pytest.raises(UsageError, match=r"count different things.*epoch 3.*step 100"):
        order_checkpoints([Path("run/step_100.pt"), Path("run/epoch_3.pt")])


def test_quoted_globs_and_run_folders_are_expanded(tmp_path: Path) -> None:
    make_run(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    from_glob = expand_paths([tmp_path / "step_*.safetensors"])
    from_folder = expand_paths([tmp_path])
    expected = [tmp_path / f"step_{s}.safetensors" for s in SHIFTS]
    assert sorted(from_glob) == sorted(from_folder) == sorted(expected)
    with pytest.raises(InputError, match="no file or folder matches"):
        expand_paths([tmp_path / "absent_*.pt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="neither a checkpoint folder nor a run folder"):
        expand_paths([empty])


# --- the numbers -------------------------------------------------------------------------


def test_a_pure_scale_shift_moves_l2_and_slack_but_not_weissi_or_the_minimum(
    tmp_path: Path,
) -> None:
    report = trend_checkpoints(make_run(tmp_path))
    assert report.x_axis == "step"
    assert report.x_values() == list(SHIFTS)
    state = mlp_state(SIZES, seed=3, dtype=torch.float32)
    for point, factor in zip(report.points, SHIFTS.values(), strict=True):
        expected = reference(shifted(state, factor))
        assert point.l2_penalty == pytest.approx(expected["l2"], rel=1e-9)
        assert point.min_l2_penalty == pytest.approx(expected["min"], rel=1e-9)
        assert point.l2_slack == pytest.approx(expected["slack"], rel=1e-7)
        assert point.weissi_penalty == pytest.approx(expected["weissi"], rel=1e-9)
        assert point.imbalance == pytest.approx(expected["imbalance"], rel=1e-9)
        assert point.max_norm == pytest.approx(expected["max_norm"], rel=1e-9)
        assert point.structure == "heuristic"
        assert point.assumed
    slacks = [point.l2_slack for point in report.points]
    assert slacks == sorted(slacks)  # the shift grows with the step
    assert len({round(point.weissi_penalty or 0, 9) for point in report.points}) == 1


def test_each_point_agrees_with_inspect(tmp_path: Path) -> None:
    paths = make_run(tmp_path)
    report = trend_checkpoints(paths, lambda1=0.5, lambda2=2.0)
    for point in report.points:
        chain = inspect_checkpoint(Path(point.source.path), lambda1=0.5, lambda2=2.0).chains[0]
        assert point.l2_penalty == chain.l2_penalty
        assert point.min_l2_penalty == pytest.approx(chain.min_l2_penalty, rel=1e-12)
        assert point.l2_slack == chain.l2_slack
        assert point.weissi_penalty == pytest.approx(chain.weissi_penalty, rel=1e-12)
        assert point.imbalance == chain.imbalance
        assert point.chains[0].l2_slack == chain.l2_slack


@pytest.mark.parametrize("fmt", ["sharded", "torch", "pt2"])
def test_every_format_gives_the_numbers_of_the_safetensors_run(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "safetensors").mkdir()
    (tmp_path / fmt).mkdir()
    reference_run = trend_checkpoints(make_run(tmp_path / "safetensors"))
    make_run(tmp_path / fmt, fmt)
    report = trend_checkpoints([tmp_path / fmt])  # the run folder, expanded
    assert [p.step.value for p in report.points if p.step] == list(SHIFTS)
    expected_format = {"sharded": "safetensors-sharded", "torch": "torch", "pt2": "torch.export"}
    for point, same in zip(report.points, reference_run.points, strict=True):
        assert point.source.format == expected_format[fmt]
        assert point.structure == ("graph" if fmt == "pt2" else "heuristic")
        assert point.penalised == 3
        for field in ("l2_penalty", "weissi_penalty", "max_norm"):
            assert getattr(point, field) == pytest.approx(getattr(same, field), rel=1e-9), field
        # A graph's symmetries are solved by coordinate descent, a chain in closed form: the
        # descent stops within ~1e-6 of L2 above the minimum (6e-7 at 64x imbalance here), and
        # the scales, flat at the optimum, are good to ~1e-5 (their spread is the imbalance).
        tolerance = 1e-6 * (same.l2_penalty or 0.0)
        for field in ("min_l2_penalty", "l2_slack"):
            assert getattr(point, field) == pytest.approx(getattr(same, field), abs=tolerance)
        assert point.imbalance == pytest.approx(same.imbalance, rel=1e-4)
    if fmt == "pt2":
        assert report.points[0].symmetries is not None
        assert report.points[0].symmetries.count == 2
        assert report.x_axis == "iteration"


def test_one_pass_per_checkpoint_with_one_open_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_run(tmp_path)
    passes: list[str] = []
    open_now: list[Path] = []
    most_open = 0
    real_open = trend_module.open_checkpoint
    real_pass = trend_module.statistics_pass

    class Tracked:
        def __init__(self, path: Path) -> None:
            self.inner = real_open(path)
            self.path = path

        def __enter__(self) -> object:
            nonlocal most_open
            open_now.append(self.path)
            most_open = max(most_open, len(open_now))
            return self.inner.__enter__()

        def __exit__(self, *exc: object) -> None:
            open_now.remove(self.path)
            self.inner.__exit__(*exc)

    def counting_pass(checkpoint: object, *args: object, **kwargs: object) -> object:
        passes.append(str(checkpoint.path))  # type: ignore[attr-defined]
        return real_pass(checkpoint, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trend_module, "open_checkpoint", Tracked)
    monkeypatch.setattr(trend_module, "statistics_pass", counting_pass)
    trend_checkpoints(paths)
    assert len(passes) == len(paths) == len(set(passes))
    assert most_open == 1
    assert open_now == []


def test_a_zero_or_non_finite_tensor_is_a_problem_not_a_nan(tmp_path: Path) -> None:
    state = mlp_state(SIZES, seed=3, dtype=torch.float32)
    zero = OrderedDict(state)
    zero["net.2.weight"] = torch.zeros_like(state["net.2.weight"])
    broken = OrderedDict(state)
    broken["net.4.weight"] = state["net.4.weight"].clone()
    broken["net.4.weight"][0, 0] = math.nan
    paths = [
        write_safetensors(tmp_path / "step_1.safetensors", zero),
        write_safetensors(tmp_path / "step_2.safetensors", broken),
    ]
    report = trend_checkpoints(paths)
    first, second = report.points
    assert first.weissi_penalty is None
    assert first.l2_slack is None
    assert first.l2_penalty == pytest.approx(reference(state)["l2"] - first_norm(state), rel=1e-9)
    assert first.problems == ("net.2.weight is all zeros: ln‖W‖ and W/‖W‖ are undefined",)
    assert second.l2_penalty is None
    assert second.weissi_penalty is None
    assert second.problems == ("net.4.weight holds 1 non-finite value(s) (NaN or Inf)",)
    text = to_json(report.to_dict())  # allow_nan=False: would raise on a NaN
    assert json.loads(text)["checkpoints"][1]["l2_penalty"] is None
    assert any("step_2.safetensors (step 2): net.4.weight holds" in w for w in report.warnings)


def first_norm(state: dict[str, torch.Tensor]) -> float:
    return float(state["net.2.weight"].to(torch.float64).square().sum())


def test_a_spec_applies_to_every_checkpoint(tmp_path: Path) -> None:
    paths = make_run(tmp_path)
    spec = tmp_path / "mlp.toml"
    spec.write_text(
        'version = 1\n[[chain]]\nactivation = "relu"\nlayers = ["net.0", "net.2", "net.4"]\n'
    )
    report = trend_checkpoints(paths, spec=spec)
    assert [point.structure for point in report.points] == ["spec"] * len(SHIFTS)
    assert not any(point.assumed for point in report.points)
    assert not any("inferred from tensor names" in w for w in report.warnings)
    assert report.settings.spec == str(spec)


def test_checkpoints_of_different_models_are_flagged(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "step_1.safetensors", mlp_state(SIZES, dtype=torch.float32))
    write_safetensors(tmp_path / "step_2.safetensors", mlp_state((8, 6, 3), dtype=torch.float32))
    report = trend_checkpoints([tmp_path])
    assert any(
        "step_2.safetensors (step 2): its totals cover 2 tensor(s)" in warning
        and "the first checkpoint's 3" in warning
        for warning in report.warnings
    )


def test_given_order_that_does_not_increase_is_plotted_by_index(tmp_path: Path) -> None:
    steps = {path: parse_step(path) for path in make_run(tmp_path)}
    backwards = sorted(steps, key=lambda path: -steps[path].value)  # type: ignore[union-attr]
    report = trend_checkpoints(backwards, order="given")
    assert report.x_axis == "index"
    assert report.x_values() == list(range(len(steps)))
    assert [p.step.value for p in report.points if p.step] == list(reversed(SHIFTS))


def test_bad_settings_are_usage_errors(tmp_path: Path) -> None:
    paths = make_run(tmp_path)
    with pytest.raises(UsageError, match="--order must be one of step, given"):
        trend_checkpoints(paths, order="time")
    with pytest.raises(UsageError, match="--lambda1 must be a finite number"):
        trend_checkpoints(paths, lambda1=math.inf)
    with pytest.raises(UsageError, match="at least one checkpoint"):
        trend_checkpoints([])


def test_a_model_folder_gets_its_architecture_symmetries(tmp_path: Path, samples: Path) -> None:
    """Two Hugging Face checkpoint folders of the sample LLaMA: the config's symmetries are
    solved jointly per checkpoint, as `inspect` solves them; embeddings count in L2 and
    WEISSI, with no slack of their own."""
    import shutil

    for step in (100, 200):
        shutil.copytree(samples / "tiny_llama_chars", tmp_path / f"checkpoint-{step}")
    report = trend_checkpoints([tmp_path])
    inspected = inspect_checkpoint(tmp_path / "checkpoint-100").group
    assert inspected is not None
    for point in report.points:
        assert point.structure == "config:llama"
        assert not point.assumed
        assert point.chains == ()
        assert point.symmetries is not None
        assert point.symmetries.count == len(inspected.symmetries)
        assert point.symmetries.unbounded == 5  # the norm gains: never penalised
        assert point.l2_slack == pytest.approx(
            inspected.layer.l2_before - inspected.layer.l2_after, rel=1e-12
        )
        assert point.l2_penalty is not None
        assert point.l2_penalty > inspected.l2_penalty  # the embeddings are in the total
        assert point.min_l2_penalty == pytest.approx(point.l2_penalty - point.l2_slack)
        assert point.imbalance is not None
        assert point.imbalance > 1
    assert report.points[0].weissi_penalty == report.points[1].weissi_penalty
