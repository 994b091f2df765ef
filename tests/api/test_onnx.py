"""`inspect`, `graph` and `rebalance` on ONNX models exported with torch.onnx.export (both
exporters): the exact structure, the L2 penalty lowered, ONNX Runtime's outputs unchanged
(bit-identical with power-of-two scales), and the written model the input with only the
rescaled initializers' bytes changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tests.onnx_models import (
    EXPORTERS,
    assert_same_structure,
    export,
    name_map,
    random_feeds,
    randomize,
    run,
)
from weissi_cli.api import graph_checkpoint, inspect_checkpoint, rebalance_checkpoint
from weissi_cli.io import open_checkpoint


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.nn.functional.avg_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class ResBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn0(self.stem(x)))
        z = torch.relu(self.b1(self.c1(y)))
        z = torch.relu(self.b2(self.c2(z)) + y)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


def fused(block: ResBlock) -> nn.Module:
    """The block with every batch norm folded into its convolution, as exporters write it."""
    import copy

    folded = copy.deepcopy(block)
    for conv, norm in (("stem", "bn0"), ("c1", "b1"), ("c2", "b2")):
        setattr(folded, conv, fuse_conv_bn_eval(getattr(folded, conv), getattr(folded, norm)))
        setattr(folded, norm, nn.Identity())
    return folded.eval()


class Bert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def _case(name: str) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    if name == "mlp":
        return Mlp(), (torch.randn(2, 8),), {}
    if name == "cnn":
        return Cnn(), (torch.randn(2, 1, 8, 8),), {}
    if name in ("resnet", "resnet_bn"):
        return ResBlock(), (torch.randn(2, 3, 8, 8),), {}
    ids = torch.randint(0, 50, (2, 5))
    return Bert(), (ids, torch.ones(2, 5, dtype=torch.long)), {}


MODELS = ["mlp", "cnn", "resnet", "resnet_bn", "bert"]
PARAMS = [(name, exporter) for name in MODELS for exporter in EXPORTERS]


def _export(name: str, exporter: str, folder: Path) -> tuple[nn.Module, tuple[Any, ...], Path]:
    module, args, options = _case(name)
    randomize(module, seed=3, spread=True)
    path = folder / f"{name}_{exporter}.onnx"
    if name == "bert":
        names = ["input_ids", "attention_mask"]
        options["input_names"] = names
        if exporter == "dynamo":
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=16)
            options["dynamic_shapes"] = ({0: batch, 1: seq}, {0: batch, 1: seq})
        else:
            axes = {0: "batch", 1: "seq"}
            options["dynamic_axes"] = dict.fromkeys(names, axes)
    if name == "resnet_bn":  # keep the batch norms in the graph
        options["optimize" if exporter == "dynamo" else "do_constant_folding"] = False
    export(module, args, path, exporter, **options)
    return module, args, path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    folder = tmp_path_factory.mktemp("onnx_models")
    return {key: _export(*key, folder) for key in PARAMS}


def _reference(name: str, module: nn.Module) -> tuple[nn.Module, float]:
    if name == "resnet":
        return fused(module), 1e-5  # folded weights agree up to rounding
    return module, 0.0


@pytest.mark.parametrize(("name", "exporter"), PARAMS)
def test_structure_is_the_engines_of_the_module(
    name: str, exporter: str, models: dict[tuple[str, str], Any]
) -> None:
    module, args, path = models[(name, exporter)]
    reference, rtol = _reference(name, module)
    found = assert_same_structure(path, module, args, reference, rtol)
    assert found.symmetries
    assert all(s.origin == "graph" for s in found.symmetries)
    report = graph_checkpoint(path)
    assert report.source.format == "onnx"


@pytest.mark.parametrize("scales", ["real", "pow2"])
@pytest.mark.parametrize(("name", "exporter"), PARAMS)
def test_rebalance_lowers_l2_and_keeps_the_outputs(
    name: str, exporter: str, scales: str, models: dict[tuple[str, str], Any], tmp_path: Path
) -> None:
    _, _, path = models[(name, exporter)]
    output = tmp_path / "balanced.onnx"
    # a batch norm's gain moves L2 into unpenalised tensors unless 1-D tensors count
    report = rebalance_checkpoint(path, output, scales=scales, include_bias=name == "resnet_bn")
    assert report.written, report.warnings
    assert report.group is not None
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    verification = report.verification
    assert verification.passed
    assert verification.level == "real_network"
    assert "onnxruntime" in verification.method
    feeds = random_feeds(path, seed=7)
    before, after = run(path, feeds), run(output, feeds)
    if scales == "pow2" and name != "resnet_bn":  # a batch norm's eps is not a power of two
        assert np.array_equal(before, after)
    else:
        assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
    assert_untouched(path, output, set(report.group.layer.tensor_l2_before) | _scaled(output))


def _scaled(output: Path) -> set[str]:
    model = onnx.load(str(output), load_external_data=False)
    record = json.loads({p.key: p.value for p in model.metadata_props}["weissi"])
    return set(record["scales"])


def assert_untouched(source: Path, written: Path, scaled: set[str]) -> None:
    """The written model is the source, field by field, but for the rescaled initializers'
    values and the weissi record; outside those bytes the files are identical."""
    before = onnx.load(str(source), load_external_data=False)
    after = onnx.load(str(written), load_external_data=False)
    record = [p for p in after.metadata_props if p.key == "weissi"]
    assert len(record) == 1
    assert [(p.key, p.value) for p in after.metadata_props if p.key != "weissi"] == [
        (p.key, p.value) for p in before.metadata_props
    ]
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        assert getattr(after, field) == getattr(before, field)
    assert list(after.opset_import) == list(before.opset_import)
    for field in ("node", "input", "output", "value_info", "name"):
        assert getattr(after.graph, field) == getattr(before.graph, field), field
    changed = json.loads(record[0].value)["scales"]
    assert set(changed) <= scaled
    locations = {}
    for old, new in zip(before.graph.initializer, after.graph.initializer, strict=True):
        assert (old.name, list(old.dims), old.data_type) == (
            new.name,
            list(new.dims),
            new.data_type,
        )
        assert old.data_location == new.data_location
        if old.name in changed:
            assert len(old.raw_data) == len(new.raw_data)
        else:
            assert old.raw_data == new.raw_data
        old_entries = {e.key: e.value for e in old.external_data}
        new_entries = {e.key: e.value for e in new.external_data}
        if old_entries:
            location = old_entries.pop("location")
            locations[location] = new_entries.pop("location")
            assert old_entries == new_entries
    with open_checkpoint(source) as checkpoint:
        spans: dict[Path, list[tuple[int, int]]] = {}
        for name in changed:
            initializer = checkpoint.initializer(name)
            spans.setdefault(initializer.file, []).append((initializer.offset, initializer.length))
        files = {source.resolve(): written}
        for location, new_location in locations.items():
            files[(source.parent / location).resolve()] = written.parent / new_location
        for old_file, new_file in files.items():
            _same_but(
                old_file,
                new_file,
                spans.get(old_file, []),
                old_file == source.resolve() and not locations,
            )


def _same_but(old_file: Path, new_file: Path, spans: list[tuple[int, int]], prefix: bool) -> None:
    """The files are byte for byte equal outside `spans` (the new model file may have more
    bytes after the old one's: its record). A model file whose data locations changed is
    compared field by field only."""
    old_bytes, new_bytes = old_file.read_bytes(), new_file.read_bytes()
    if old_file.suffix == ".onnx" and not prefix:
        return
    mask = np.ones(len(old_bytes), bool)
    for offset, length in spans:
        mask[offset : offset + length] = False
    if old_file.suffix != ".onnx":
        assert len(new_bytes) == len(old_bytes)
    old_array = np.frombuffer(old_bytes, np.uint8)
    new_array = np.frombuffer(new_bytes[: len(old_bytes)], np.uint8)
    assert np.array_equal(old_array[mask], new_array[mask])


def test_inspect_reads_every_initializer(models: dict[tuple[str, str], Any]) -> None:
    _, _, path = models[("bert", "dynamo")]
    report = inspect_checkpoint(path)
    model = onnx.load(str(path))
    norms = {
        i.name: float(np.linalg.norm(onnx.numpy_helper.to_array(i).astype(np.float64)))
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT
    }
    rows = {row.name: row for row in report.tensors}
    assert set(rows) == {i.name for i in model.graph.initializer}
    for name, norm in norms.items():
        assert rows[name].fro_norm == pytest.approx(norm, rel=1e-6, abs=1e-12)
    assert report.group is not None
    assert report.group.symmetries


def test_external_data_in_several_files(models: dict[tuple[str, str], Any], tmp_path: Path) -> None:
    """One file per tensor; rebalanced to a file (its own data files) and to a folder."""
    _, _, path = models[("bert", "torchscript")]
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(
        onnx.load(str(path)),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=256,
    )
    (folder / "config.json").write_text("{}")
    data_files = [p for p in folder.iterdir() if p.suffix not in (".onnx", ".json")]
    assert len(data_files) > 3
    with open_checkpoint(folder) as checkpoint:
        assert checkpoint.format == "onnx"
        assert {i.storage for i in checkpoint.model.initializers} == {"raw", "external"}
    as_file = tmp_path / "out" / "balanced.onnx"
    as_file.parent.mkdir()
    report = rebalance_checkpoint(folder / "model.onnx", as_file, scales="pow2")
    assert report.written
    assert report.verification.level == "real_network"
    written = {p.name for p in as_file.parent.iterdir()}
    assert written == {"balanced.onnx"} | {
        f"balanced.onnx.data{'.' + str(i) if i else ''}" for i in range(len(data_files))
    }
    onnx.checker.check_model(str(as_file))
    feeds = random_feeds(path)
    assert np.array_equal(run(path, feeds), run(as_file, feeds))
    as_folder = tmp_path / "balanced"
    report = rebalance_checkpoint(folder, as_folder, scales="pow2")
    assert report.written
    assert sorted(p.name for p in as_folder.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert np.array_equal(run(path, feeds), run(as_folder / "model.onnx", feeds))
    # the data files' untouched tensors are byte for byte the input's, the others not
    scaled = _scaled(as_folder / "model.onnx")
    with open_checkpoint(folder) as checkpoint:
        for initializer in checkpoint.model.initializers:
            if initializer.storage != "external":
                continue
            same = (as_folder / initializer.file.name).read_bytes() == initializer.file.read_bytes()
            assert same is (initializer.name not in scaled)


def test_without_onnxruntime_the_verdict_is_values_only(
    models: dict[tuple[str, str], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weissi_cli.verify_onnx

    monkeypatch.setattr(weissi_cli.verify_onnx, "onnxruntime_available", lambda: False)
    _, _, path = models[("mlp", "torchscript")]
    report = rebalance_checkpoint(path, tmp_path / "balanced.onnx")
    assert report.written
    assert report.verification.level == "values_only"
    assert any("weissi-cli[onnx]" in caveat for caveat in report.verification.caveats)
    assert not any("example inputs" in caveat for caveat in report.verification.caveats)


class CausalLlama(nn.Module):
    """A decoder-only language model as transformers builds it (grouped-query attention,
    rotary positions, RMS norms, a gated MLP), exported to its logits."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        self.llama = LlamaForCausalLM(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llama(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("scales", ["real", "pow2"])
def test_a_decoder_only_llm_exported_by_torch_is_rebalanced_exactly(
    tmp_path: Path, scales: str
) -> None:
    """A LLaMA exported by torch.onnx (the dynamo exporter): the engine finds its exact
    symmetries in the ONNX graph, the rewrite lowers L2, and ONNX Runtime gives the same
    logits before and after."""
    torch.manual_seed(0)
    module = randomize(CausalLlama(), seed=5, spread=True)
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(1))
    path = export(module, (ids,), tmp_path / "llama.onnx", "dynamo", input_names=["input_ids"])
    output = tmp_path / "balanced.onnx"
    report = rebalance_checkpoint(path, output, scales=scales)
    # the structure found: value/output pairs per key-value head and the gated MLP's up/down
    # projections in both blocks, query/key pairs per key-value head in both blocks (the
    # rotary tables the exporter folds into initializers are constants, held fixed)
    names = name_map(path, module)
    assert report.group is not None
    pairs = {
        frozenset(names[m.tensor][0].removeprefix("llama.model.") for m in symmetry.members)
        for symmetry in report.group.symmetries
        if all(m.tensor in names for m in symmetry.members)
    }
    for block in (0, 1):
        layer = f"layers.{block}"
        assert {f"{layer}.self_attn.v_proj.weight", f"{layer}.self_attn.o_proj.weight"} in pairs
        assert {f"{layer}.mlp.up_proj.weight", f"{layer}.mlp.down_proj.weight"} in pairs
        assert {f"{layer}.self_attn.q_proj.weight", f"{layer}.self_attn.k_proj.weight"} in pairs
    assert all(s.origin == "graph" for s in report.group.symmetries)
    # the folded cosine and sine tables (no module tensor) are the constants held fixed,
    # and no product stops a symmetry
    structure = graph_checkpoint(path).structure
    constants = {u.name for u in structure.unassigned if u.reason.startswith("a constant")}
    assert len(constants) == 2
    assert not constants & set(names)
    assert [stop.node for stop in structure.stops] == ["node_embedding"]
    # the weights changed as intended, and the function did not
    assert report.written, report.warnings
    assert report.group.l2_after is not None
    # with the first block's query/key pairs the penalty more than halves (0.44 of it; 0.53
    # with those pairs stopped at the tables)
    assert report.group.l2_after < 0.5 * report.group.l2_penalty
    assert report.verification.passed
    assert report.verification.level == "real_network"
    feeds = [{"input_ids": np.random.default_rng(s).integers(0, 64, (1, 8))} for s in range(3)]
    before, after = run(path, feeds), run(output, feeds)
    scaled = _scaled(output)
    old_values = {
        i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
    }
    new_values = {
        i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(output)).graph.initializer
    }
    assert scaled
    assert all(not np.array_equal(old_values[n], new_values[n]) for n in scaled)
    if scales == "pow2":
        assert np.array_equal(before, after)
    else:
        assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
    assert_untouched(path, output, scaled)
