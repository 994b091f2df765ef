"""Rebalancing Hugging Face model folders: the structure found, the weights changed as the
symmetries say, and the function unchanged when the architecture's own code runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import checks_after_the_write
from tests.hf_models import TINY, build, load, outputs, save
from weissi_cli import chunking, kernel, stats
from weissi_cli.api.rebalance import rebalance_checkpoint
from weissi_cli.errors import OutputError, UsageError
from weissi_cli.io import open_checkpoint
from weissi_cli.structure import discover

ATTENTION = {
    "llama": "model.layers.0.self_attn",
    "mistral": "model.layers.0.self_attn",
    "qwen2": "model.layers.0.self_attn",
}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(load_file(path))
    return found


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    scale = before.double().abs().max()
    return float((after.double() - before.double()).abs().max() / scale)


@pytest.mark.parametrize("name", sorted(TINY))
def test_float32_rebalance_keeps_the_logits(tmp_path: Path, name: str) -> None:
    source = save(build(name), tmp_path / "in")
    report = rebalance_checkpoint(source, tmp_path / "out", verify_with="transformers")
    model_type = json.loads((source / "config.json").read_text())["model_type"]

    # the structure found
    assert report.group is not None
    assert {s.origin for s in report.group.symmetries} == {f"config:{model_type}"}
    kinds = {s.kind for s in report.group.symmetries}
    assert {"q↔k", "v→o"} <= kinds
    # the weights changed as intended: L2 went down, the untouched tensors are bit-equal
    before, after = tensors(source), tensors(tmp_path / "out")
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty * (1 - 1e-3)
    moved = {m.tensor for s in report.group.symmetries for m in s.members}
    for tensor_name, value in before.items():
        if tensor_name not in moved:
            assert torch.equal(value, after[tensor_name]), tensor_name
    assert any(not torch.equal(before[t], after[t]) for t in moved)
    # the function unchanged, by the library's own model class
    assert report.written
    assert report.verification.passed
    assert "transformers" in report.verification.method
    assert relative_change(outputs(load(source)), outputs(load(tmp_path / "out"))) <= 1e-5


def every_value_moved_by_a_power_of_two(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether each value is exactly its original times a power of two (none rounded)."""
    old, new = before.double(), after.double()
    moved = old != 0
    mantissas, _ = np.frexp((new[moved] / old[moved]).numpy())
    return bool(torch.equal(new[~moved], old[~moved]) and np.all(mantissas == 0.5))


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_sixteen_bit_rebalance_is_bit_identical(
    tmp_path: Path, name: str, dtype: str, granularity: str
) -> None:
    source = save(build(name, dtype), tmp_path / "in")
    report = rebalance_checkpoint(
        source, tmp_path / "out", verify_with="transformers", granularity=granularity
    )
    assert report.group_scales == "pow2"
    assert report.verification.passed
    assert report.group is not None
    before, after = tensors(source), tensors(tmp_path / "out")
    assert any(not torch.equal(before[t], after[t]) for t in before)
    for value in (report.group.channel or report.group.layer).scales.values():
        mantissas, _ = np.frexp(value)
        assert np.all(mantissas == 0.5)  # every scale a power of two
    # float16's narrow range: the tiny models hold values near 2^-24 whose lowest bit a
    # halving would drop, so exactness holds some scales back, and says so.
    for tensor_name in before:
        assert every_value_moved_by_a_power_of_two(before[tensor_name], after[tensor_name])
    assert report.verification.level == "real_network"
    run = report.verification.chains[-1]
    if dtype == "bfloat16":
        assert not [w for w in report.warnings if "float16 exactness" in w]
        assert torch.equal(outputs(load(source)), outputs(load(tmp_path / "out")))
        assert report.verification.max_abs_diff == 0.0
        assert run.bit_identical
        assert not run.caveat
    else:
        # Ids covering the vocabulary make float16 activations below 2^-14, which a
        # power-of-two shift can round differently: the verdict says what it measured
        # ("bit-identical" only if it was) and names the caveat and the choices.
        assert run.bit_identical == (run.max_abs_diff == 0.0)
        assert "subnormal" in run.caveat
        assert "--scales real" in run.caveat
        assert run.caveat in report.verification.caveats
        assert run.max_rel_diff is not None
        assert run.max_rel_diff <= 3e-2


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_query_and_key_rows_move_inversely_per_rope_pair(tmp_path: Path, name: str) -> None:
    source = save(build(name), tmp_path / "in")
    rebalance_checkpoint(source, tmp_path / "out", granularity="channel")
    before, after = tensors(source), tensors(tmp_path / "out")
    prefix = ATTENTION[name]
    config = json.loads((source / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads

    def row_scales(tensor: str) -> torch.Tensor:
        ratio = after[tensor].double() / before[tensor].double()
        return ratio[:, 0]  # every column of a row shares the row's factor

    q = row_scales(f"{prefix}.q_proj.weight").reshape(heads, head_dim)
    k = row_scales(f"{prefix}.k_proj.weight").reshape(kv_heads, head_dim)
    group = heads // kv_heads
    for head in range(heads):
        product = q[head] * k[head // group]
        assert torch.allclose(product, torch.ones_like(product), rtol=1e-6), head
    half = head_dim // 2
    assert torch.allclose(q[:, :half], q[:, half:], rtol=1e-6)  # RoPE pairs tied
    assert not torch.allclose(q, torch.ones_like(q))


def test_sharded_folder_is_mirrored_with_every_file(tmp_path: Path) -> None:
    source = save(build("llama"), tmp_path / "in", max_shard_size="40KB")
    shards = sorted(p.name for p in source.glob("*.safetensors"))
    assert len(shards) > 1
    report = rebalance_checkpoint(source, tmp_path / "out", verify_with="transformers")
    assert report.written
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index_in = json.loads((source / "model.safetensors.index.json").read_text())
    index_out = json.loads((out / "model.safetensors.index.json").read_text())
    assert index_out["weight_map"] == index_in["weight_map"]
    for companion in ("config.json", "generation_config.json", "README.md", "tokenizer/vocab.txt"):
        assert (out / companion).read_bytes() == (source / companion).read_bytes(), companion
    assert not list(out.glob(".weissi-tmp-*"))
    assert relative_change(outputs(load(source)), outputs(load(out))) <= 1e-5


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_approximate_mlp_only_with_consent_and_a_measured_change(tmp_path: Path, name: str) -> None:
    source = save(build(name), tmp_path / "in")
    exact = rebalance_checkpoint(source, tmp_path / "exact")
    assert exact.group is not None
    assert all(s.exact for s in exact.group.symmetries)
    assert len(exact.group.stops) == 2
    before = tensors(source)
    up = (
        "transformer.h.0.mlp.c_fc.weight"
        if name == "gpt2"
        else "encoder.layer.0.intermediate.dense.weight"
    )
    if name == "bert":  # nothing else touches BERT's intermediate layer
        assert torch.equal(tensors(tmp_path / "exact")[up], before[up])

    report = rebalance_checkpoint(source, tmp_path / "loose", allow_approximate=True)
    assert report.group is not None
    assert any(not s.exact for s in report.group.symmetries)
    assert "transformers" in report.verification.method  # run without being asked
    assert report.written
    assert report.verification.passed
    measured = [w for w in report.warnings if "approximate symmetries rebalanced" in w]
    assert measured
    assert "outputs moved by at most" in measured[0]
    assert not torch.equal(tensors(tmp_path / "loose")[up], before[up])


def test_verify_with_transformers_needs_a_config(tmp_path: Path) -> None:
    folder = save(build("llama"), tmp_path / "in")
    (tmp_path / "lonely").mkdir()
    lonely = tmp_path / "lonely" / "model.safetensors"
    lonely.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(UsageError, match="config.json"):
        rebalance_checkpoint(lonely, tmp_path / "x.safetensors", verify_with="transformers")


@pytest.mark.parametrize("name", ["logging", "AutoConfig", "NoSuchModelClass"])
def test_architectures_naming_no_model_class_is_refused(tmp_path: Path, name: str) -> None:
    folder = save(build("llama"), tmp_path / "in")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = [name]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=f'"architectures" names {name}, which is not a'):
        rebalance_checkpoint(folder, tmp_path / "out", verify_with="transformers")
    assert not (tmp_path / "out").exists()


def test_single_file_beside_a_config_is_verified_under_its_own_name(tmp_path: Path) -> None:
    folder = save(build("mistral"), tmp_path / "in")
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(folder / "model.safetensors", output, verify_with="transformers")
    assert report.written
    assert output.is_file()
    assert "transformers" in report.verification.method


def test_trained_sample_transformer(tmp_path: Path, samples: Path) -> None:
    source = samples / "tiny_llama_chars"
    report = rebalance_checkpoint(source, tmp_path / "out", verify_with="transformers")
    assert report.written
    assert report.verification.passed
    assert report.group is not None
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    assert relative_change(outputs(load(source)), outputs(load(tmp_path / "out"))) <= 1e-5


def test_final_norm_rescaled_with_include_bias_keeps_the_logits(tmp_path: Path) -> None:
    source = save(build("llama"), tmp_path / "in")
    report = rebalance_checkpoint(
        source, tmp_path / "out", include_bias=True, verify_with="transformers"
    )
    assert report.written
    assert report.verification.passed
    before, after = tensors(source), tensors(tmp_path / "out")
    assert not torch.equal(before["model.norm.weight"], after["model.norm.weight"])
    assert relative_change(outputs(load(source)), outputs(load(tmp_path / "out"))) <= 1e-5
    # the base model's output is the final norm's: it moved, and the verdict says by how much
    base = [_base_output(folder) for folder in (source, tmp_path / "out")]
    moved = relative_change(*base)
    assert moved > 1e-3
    [caveat] = [c for c in report.verification.caveats if "final hidden state" in c]
    assert "AutoModel" in caveat
    assert "no --include-bias" in caveat


def test_without_include_bias_the_final_hidden_state_is_kept(tmp_path: Path) -> None:
    source = save(build("llama"), tmp_path / "in")
    report = rebalance_checkpoint(source, tmp_path / "out", verify_with="transformers")
    assert report.written
    assert not any("final hidden state" in c for c in report.verification.caveats)
    base = [_base_output(folder) for folder in (source, tmp_path / "out")]
    assert relative_change(*base) <= 1e-5


def _base_output(folder: Path) -> torch.Tensor:
    """The last hidden state of the base model (AutoModel), as embedding code reads it."""
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    ids = torch.randint(64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def test_other_weight_files_are_not_copied(tmp_path: Path) -> None:
    source = save(build("llama"), tmp_path / "in")
    (source / "pytorch_model.bin").write_bytes(b"the original weights")
    (source / "original").mkdir()
    (source / "original" / "consolidated.00.pth").write_bytes(b"x")
    report = rebalance_checkpoint(source, tmp_path / "out")
    assert report.written
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    assert not (tmp_path / "out" / "original").exists()
    assert (tmp_path / "out" / "README.md").is_file()
    left_out = [w for w in report.warnings if w.startswith("not copied")]
    assert left_out
    assert "pytorch_model.bin" in left_out[0]
    assert "consolidated.00.pth" in left_out[0]


def test_output_folder_inside_the_input_is_refused_and_stale_weights_are_replaced(
    tmp_path: Path,
) -> None:
    source = save(build("llama"), tmp_path / "in")
    with pytest.raises(OutputError, match="inside the input folder"):
        rebalance_checkpoint(source, source / "balanced")
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"old")
    assert rebalance_checkpoint(source, stale, force=True).written
    # the folder is replaced whole: no shard of an earlier model is left for a loader
    assert not (stale / "model-00001-of-00002.safetensors").exists()
    assert (stale / "model.safetensors").is_file()


def test_bert_with_relative_positions_has_no_query_key_symmetry(tmp_path: Path) -> None:
    source = save(build("bert"), tmp_path / "in")
    config = json.loads((source / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (source / "config.json").write_text(json.dumps(config))
    with open_checkpoint(source) as checkpoint:
        structure = discover(checkpoint)
    assert not [s for s in structure.symmetries if s.kind == "q↔k"]
    assert [s for s in structure.symmetries if s.kind == "v→o"]
    assert any("relative_key" in note for note in structure.notes)


def test_an_oddly_named_single_file_is_verified_under_the_loaders_name(tmp_path: Path) -> None:
    folder = save(build("qwen2"), tmp_path / "in")
    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    output = tmp_path / "balanced.safetensors"
    report = rebalance_checkpoint(
        folder / "weights.safetensors", output, verify_with="transformers"
    )
    assert report.written
    assert report.verification.passed


def test_rebalance_writes_the_same_bytes_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads over many small chunks (as on a multi-GB model): the solver's squares,
    and so the real-valued scales and every written byte, do not depend on which thread
    finished first. (They did: three rebalances of a 2 GB float32 LLaMA gave three
    different files.)"""
    # a chunk per row on two threads: o_proj and down_proj (256 x 256, 256 x 384) are
    # large enough to be read in chunks, and their column squares are summed over rows
    monkeypatch.setattr(stats, "THREADS_ABOVE_BYTES", 0)
    monkeypatch.setattr(chunking, "KERNEL_TASK_ELEMENTS", 256)
    monkeypatch.setattr(chunking, "NUMPY_ELEMENTS", 256)
    source = save(build("llama", hidden_size=256, intermediate_size=384), tmp_path / "in")
    written = set()
    for run in range(4):
        report = rebalance_checkpoint(source, tmp_path / f"out{run}", scales="real")
        assert report.written
        written.add(
            b"".join(p.read_bytes() for p in sorted((tmp_path / f"out{run}").glob("*.safetensors")))
        )
    assert len(written) == 1


needs_kernel = pytest.mark.skipif(kernel.compiled is None, reason="the C kernel was not built")

# q_proj and o_proj 256 x 256, the MLP's 256 x 384: at least EXACT_BELOW values, so the
# kernel checks them (a 1 MiB write chunk holds one tensor at most).
WIDE = {"hidden_size": 256, "intermediate_size": 384}


def large_members(report: Any, source: Path) -> set[str]:
    """The tensors the symmetries move that the kernel checks (EXACT_BELOW values or more)."""
    with open_checkpoint(source) as checkpoint:
        return {
            member.tensor
            for symmetry in report.group.symmetries
            for member in symmetry.members
            if checkpoint.info(member.tensor).numel >= stats.EXACT_BELOW
        }


@needs_kernel
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shards", [False, True])
def test_large_tensors_are_checked_in_the_kernel_from_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str, shards: bool
) -> None:
    """The kernel reads each large rewritten tensor from both files (one shard or several)
    and checks every value against its original times the planned factor."""
    options = {"max_shard_size": "300KB"} if shards else {}
    source = save(build("llama", dtype, **WIDE), tmp_path / "in", **options)
    assert (source / "model.safetensors.index.json").exists() == shards
    after_write = checks_after_the_write(monkeypatch)
    report = rebalance_checkpoint(source, tmp_path / "out", scales="real")
    # the structure found, and the large tensors it moves, checked after the write
    assert report.group is not None
    large = large_members(report, source) & set(after_write)
    assert any(name.endswith("o_proj.weight") for name in large)
    assert any(name.endswith("down_proj.weight") for name in large)
    assert report.written
    assert report.verification.passed
    assert report.group.l2_after is not None
    assert report.group.l2_after < report.group.l2_penalty
    # the weights changed as intended, the function unchanged
    assert any(not torch.equal(tensors(source)[n], tensors(tmp_path / "out")[n]) for n in large)
    tolerance = 1e-5 if dtype == "float32" else 3e-2
    assert relative_change(outputs(load(source)), outputs(load(tmp_path / "out"))) <= tolerance


@needs_kernel
def test_a_value_written_wrong_is_caught_by_the_check_after_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weissi_cli.writers import disk

    source = save(build("llama", **WIDE), tmp_path / "in")
    real_write = disk.write_all

    def write_with_a_flipped_bit(descriptor: int, data: memoryview, offset: int) -> None:
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x40  # a mantissa bit of one value
        real_write(descriptor, memoryview(damaged), offset)

    monkeypatch.setattr(disk, "write_all", write_with_a_flipped_bit)
    after_write = checks_after_the_write(monkeypatch)
    report = rebalance_checkpoint(source, tmp_path / "out", scales="real")
    assert not report.verification.passed
    assert "o_proj.weight (1 values)" in report.verification.chains[0].detail
    assert [n for n in after_write if n.endswith("o_proj.weight")]
    assert not report.written
    assert not (tmp_path / "out").exists()


def test_a_write_to_the_wrong_place_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk written four bytes late: the check after the write reads every value from
    the written file, finds the tensor wrong, and nothing is put in place."""
    import dataclasses

    from weissi_cli.writers import scaling

    source = save(build("llama", **WIDE), tmp_path / "in")
    real_tasks = scaling.scale_tasks

    def one_task_four_bytes_late(info: Any, scale: Any, offset: int, *rest: Any) -> list[Any]:
        tasks = real_tasks(info, scale, offset, *rest)
        if info.name == "model.layers.0.self_attn.o_proj.weight":
            tasks[0] = dataclasses.replace(tasks[0], offset=tasks[0].offset + 4)
        return tasks

    monkeypatch.setattr(scaling, "scale_tasks", one_task_four_bytes_late)
    report = rebalance_checkpoint(source, tmp_path / "out", scales="real")
    assert not report.verification.passed
    assert "layers.0.self_attn.o_proj.weight" in report.verification.chains[0].detail
    assert not report.written
    assert not (tmp_path / "out").exists()
