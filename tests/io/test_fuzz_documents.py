"""Mutated documents around a checkpoint: shard indexes, config.json, spec files and
pyproject tables. Every one is read or refused with an error of exit code 2 (no other
exception, no hang); `pytest -m fuzz` runs 10,000 of each kind."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import mlp_state, write_sharded
from weissi_cli.config import load_check_settings
from weissi_cli.errors import WeissiError
from weissi_cli.io import open_checkpoint
from weissi_cli.stats import compute_stats
from weissi_cli.structure import discover
from weissi_cli.structure.spec import structure_from_spec

FAST, LONG = 100, 10_000
SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"

# --- values and the ways a document text goes wrong -------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, 4, 16, 64, -1, 2**31, 2**63, 10**30]),
    st.floats(),  # NaN and infinities included: Python's json writes and reads them
    st.text(max_size=8),
    st.sampled_from(["", "llama", "gpt2", "bert", "relu", "net.0", "\x1b[2J", "a/b", "../x"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def text_mutations(draw: st.DrawFn, text: str) -> bytes:
    """The serialised document, then maybe broken as text: nesting beyond any limit, an
    integer literal past Python's int-string limit, a lone surrogate escape, or bytes
    flipped, cut and spliced."""
    kind = draw(st.sampled_from(["none", "none", "deep", "long-integer", "surrogate", "bytes"]))
    if kind == "deep":
        depth = draw(st.sampled_from([31, 33, 200, 5_000, 100_000]))
        opening, closing = draw(st.sampled_from([("[", "]"), ('{"a": ', "}")]))
        position = draw(st.integers(0, len(text)))
        text = text[:position] + opening * depth + closing * depth + text[position:]
    elif kind == "long-integer":
        position = draw(st.integers(0, len(text)))
        text = text[:position] + "9" * draw(st.sampled_from([4300, 4301, 20_000])) + text[position:]
    elif kind == "surrogate":
        position = draw(st.integers(0, len(text)))
        text = text[:position] + '"\\ud800"' + text[position:]
    data = bytearray(text.encode("utf-8"))
    if kind == "bytes":
        for _ in range(draw(st.integers(1, 6))):
            action = draw(st.sampled_from(["flip", "cut", "insert"]))
            position = draw(st.integers(0, max(len(data) - 1, 0)))
            if action == "flip" and data:
                data[position] ^= draw(st.integers(1, 255))
            elif action == "cut":
                del data[position : position + draw(st.integers(1, 16))]
            else:
                data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def toml_text(document: dict[str, Any]) -> str:
    """A TOML document of inline values (an array of inline tables reads as [[table]]);
    None has no TOML form and is left out."""

    def key(name: str) -> str:
        return json.dumps(name)

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int):
            return str(item)
        if isinstance(item, float):
            if math.isnan(item):
                return "nan"
            if math.isinf(item):
                return "inf" if item > 0 else "-inf"
            return repr(item)
        if isinstance(item, str):
            return json.dumps(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(x) for x in item if x is not None) + "]"
        if isinstance(item, dict):
            pairs = [f"{key(k)} = {value(v)}" for k, v in item.items() if v is not None]
            return "{" + ", ".join(pairs) + "}"
        raise TypeError(item)

    return "".join(f"{key(k)} = {value(v)}\n" for k, v in document.items() if v is not None)


def read_or_refuse(work: Callable[[], object]) -> None:
    """`work` succeeds or raises a WeissiError meaning bad input (exit 2)."""
    try:
        work()
    except WeissiError as error:
        refusal = error
    else:
        return
    assert refusal.exit_code == 2, refusal


def run_examples(
    examples: int, strategy: st.SearchStrategy[Any], check: Callable[..., None]
) -> None:
    @settings(max_examples=examples, suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def run(case: Any) -> None:
        check(case)

    run()


# --- shard indexes ---------------------------------------------------------------------------

SHARD_NAMES = st.one_of(
    st.sampled_from(
        [
            "a.safetensors",
            "b.safetensors",
            "missing.safetensors",
            "../a.safetensors",
            "/etc/passwd",
            "",
            ".",
            "..",
            "sub/a.safetensors",
            "a.safetensors\x00",
            "model.safetensors.index.json",
        ]
    ),
    VALUES,
)


@st.composite
def index_documents(draw: st.DrawFn, original: dict[str, Any]) -> bytes:
    index = json.loads(json.dumps(original))
    names = list(index["weight_map"])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["shard", "add", "delete", "rename", "map", "metadata", "root"])
        )
        name = draw(st.sampled_from(names))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if kind == "shard" and isinstance(weight_map, dict):
            weight_map[name] = draw(SHARD_NAMES)
        elif kind == "add" and isinstance(weight_map, dict):
            weight_map[draw(st.text(max_size=12))] = draw(SHARD_NAMES)
        elif kind == "delete" and isinstance(weight_map, dict):
            weight_map.pop(name, None)
        elif kind == "rename" and isinstance(weight_map, dict):
            shard = weight_map.pop(name, "a.safetensors")
            weight_map[draw(st.sampled_from(["", "\ud800", name + "x", "x" * 300]))] = shard
        elif kind == "map" and isinstance(index, dict):
            index["weight_map"] = draw(VALUES)
        elif kind == "metadata" and isinstance(index, dict):
            index["metadata"] = draw(VALUES)
        elif kind == "root":
            index = draw(VALUES)
    return draw(text_mutations(json.dumps(index)))


def _index_cases(folder: Path, examples: int) -> None:
    state = mlp_state(sizes=(5, 4, 3), dtype=torch.float32)
    names = list(state)
    index_path = write_sharded(
        folder / "sharded",
        {
            "a.safetensors": {name: state[name] for name in names[:2]},
            "b.safetensors": {name: state[name] for name in names[2:]},
        },
    )
    original = json.loads(index_path.read_text())

    def check(data: bytes) -> None:
        index_path.write_bytes(data)

        def read() -> None:
            with open_checkpoint(index_path.parent) as checkpoint:
                compute_stats(checkpoint)

        read_or_refuse(read)

    run_examples(examples, index_documents(original), check)


# --- config.json -----------------------------------------------------------------------------

CONFIG_KEYS = [
    "model_type",
    "architectures",
    "hidden_size",
    "n_embd",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
    "position_embedding_type",
]
CONFIG_VALUES = st.one_of(
    VALUES,
    st.sampled_from(
        ["llama", "mistral", "qwen2", "bert", "gpt2", ["LlamaForCausalLM"], ["logging"]]
    ),
    st.integers(-8, 130),
)


@st.composite
def config_documents(draw: st.DrawFn, original: dict[str, Any]) -> bytes:
    config = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "delete", "root"]))
        name = draw(st.sampled_from(CONFIG_KEYS))
        if kind == "set" and isinstance(config, dict):
            config[name] = draw(CONFIG_VALUES)
        elif kind == "delete" and isinstance(config, dict):
            config.pop(name, None)
        elif kind == "root":
            config = draw(VALUES)
    return draw(text_mutations(json.dumps(config)))


def _config_cases(folder: Path, examples: int) -> None:
    model = folder / "llama"
    shutil.copytree(SAMPLES / "tiny_llama_chars", model)
    original = json.loads((model / "config.json").read_text())

    def check(data: bytes) -> None:
        (model / "config.json").write_bytes(data)

        def read() -> None:
            with open_checkpoint(model) as checkpoint:
                discover(checkpoint)
                discover(checkpoint, allow_approximate=True)

        read_or_refuse(read)

    run_examples(examples, config_documents(original), check)


# --- spec files ------------------------------------------------------------------------------

MLP_LAYERS = ["net.0", "net.2", "net.4"]
MLP_TENSORS = [f"{layer}.{kind}" for layer in MLP_LAYERS for kind in ("weight", "bias")]
SPEC = {
    "version": 1,
    "chain": [{"id": "mlp", "activation": "relu", "layers": MLP_LAYERS[:2]}],
    "symmetry": [
        {
            "id": "s",
            "size": 10,
            "members": [
                {"tensor": "net.4.weight", "axis": 0, "exponent": 1},
                {"tensor": "net.4.bias", "axis": 0, "exponent": 1},
            ],
        }
    ],
}
SPEC_VALUES = st.one_of(
    VALUES,
    st.sampled_from(MLP_LAYERS + MLP_TENSORS + ["net.9", "relu", "leaky_relu", "gelu"]),
    st.lists(st.sampled_from(MLP_LAYERS + ["net.1", "", "net.0"]), max_size=5),
    st.integers(-3, 70),
)


@st.composite
def spec_documents(draw: st.DrawFn) -> bytes:
    spec = json.loads(json.dumps(SPEC))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "chain", "symmetry", "member"]))
        if where == "top":
            spec[draw(st.sampled_from(["version", "chain", "symmetry", "extra"]))] = draw(
                SPEC_VALUES
            )
            continue
        tables = spec.get("chain" if where == "chain" else "symmetry")
        if not isinstance(tables, list) or not tables or not isinstance(tables[0], dict):
            continue
        table = tables[0]
        if where == "member":
            members = table.get("members")
            if not isinstance(members, list) or not members or not isinstance(members[0], dict):
                continue
            table = members[0]
            names = ["tensor", "axis", "exponent", "block", "offset", "extra"]
        elif where == "chain":
            names = ["id", "activation", "layers", "extra"]
        else:
            names = ["id", "size", "tie", "exact", "note", "members", "kind", "block", "extra"]
        table[draw(st.sampled_from(names))] = draw(SPEC_VALUES)
    if draw(st.booleans()) and isinstance(spec.get("chain"), list):
        spec["chain"] = spec["chain"] * draw(st.integers(1, 3))  # repeated ids and layers
    return draw(text_mutations(toml_text(spec)))


def _spec_cases(folder: Path, examples: int) -> None:
    path = folder / "spec.toml"

    def check(data: bytes) -> None:
        path.write_bytes(data)

        def read() -> None:
            with open_checkpoint(SAMPLES / "mlp_digits.safetensors") as checkpoint:
                structure_from_spec(path, checkpoint)

        read_or_refuse(read)

    run_examples(examples, spec_documents(), check)


# --- pyproject [tool.weissi.check] -----------------------------------------------------------

CHECK_KEYS = [
    "max-imbalance",
    "max_l2_ratio",
    "max-abs",
    "max-norm",
    "no-dead-units",
    "fp16_headroom",
    "max-imbalanse",
]
THRESHOLDS = st.one_of(
    VALUES,
    st.floats(),
    st.integers(-(10**400), 10**400),
    st.sampled_from([1, 1.5, 1e308, 1e-320, 10**308, 10**309]),
)


@st.composite
def pyproject_documents(draw: st.DrawFn) -> bytes:
    table = {
        draw(st.sampled_from(CHECK_KEYS)): draw(THRESHOLDS) for _ in range(draw(st.integers(0, 4)))
    }
    level = draw(st.sampled_from(["check", "check", "weissi", "tool", "other"]))
    document: dict[str, Any]
    if level == "check":
        document = {"tool": {"weissi": {"check": table}}}
    elif level == "weissi":
        document = {"tool": {"weissi": draw(VALUES)}}
    elif level == "tool":
        document = {"tool": draw(VALUES)}
    else:
        document = {"project": {"name": "x"}, "tool": {"other": draw(VALUES)}}
    return draw(text_mutations(toml_text(document)))


def _pyproject_cases(folder: Path, examples: int) -> None:
    project = folder / "project"
    project.mkdir()

    def check(data: bytes) -> None:
        (project / "pyproject.toml").write_bytes(data)

        def read() -> None:
            settings_read, _ = load_check_settings(project)
            for threshold in (
                settings_read.max_imbalance,
                settings_read.max_l2_ratio,
                settings_read.max_abs,
                settings_read.max_norm,
            ):
                assert threshold is None or (math.isfinite(threshold) and threshold > 0)
            assert isinstance(settings_read.no_dead_units, bool)
            assert isinstance(settings_read.fp16_headroom, bool)

        read_or_refuse(read)

    run_examples(examples, pyproject_documents(), check)


# --- the runs --------------------------------------------------------------------------------

CASES = {
    "index": _index_cases,
    "config": _config_cases,
    "spec": _spec_cases,
    "pyproject": _pyproject_cases,
}


@pytest.mark.parametrize("kind", list(CASES))
def test_mutated_documents_are_read_or_refused(kind: str, tmp_path: Path) -> None:
    CASES[kind](tmp_path, FAST)


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", list(CASES))
def test_mutated_documents_long(kind: str, tmp_path: Path) -> None:
    CASES[kind](tmp_path, LONG)
