"""Malformed and hostile inputs: every one is refused with exit 2 and one line on stderr
(`error: ...` and the debug hint), never a traceback."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import Result

from tests.helpers import mlp_state, write_raw_safetensors, write_safetensors, write_sharded

DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_TOML_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_TOML_TABLE = "{a = " * 100_000 + "1" + "}" * 100_000
LONG_INTEGER = "1" * 5000  # Python refuses to convert more than 4300 digits
HINT = "(set WEISSI_DEBUG=1 for the traceback)"


def assert_refused(result: Result, *fragments: str) -> str:
    """Exit 2 with `error: <one line>` and the hint, nothing else; the error line."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert lines[1] == HINT
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def mlp(workdir: Path) -> Path:
    return write_safetensors(workdir / "mlp.safetensors", mlp_state(dtype=torch.float32))


# --- nesting and number limits in every document weissi parses -------------------------


def test_a_deeply_nested_safetensors_header_is_refused(
    run: Callable[..., Result], workdir: Path
) -> None:
    header = ('{"__metadata__": {"x": ' + DEEP_JSON + "}}").encode()
    write_raw_safetensors(workdir / "deep.safetensors", header)
    assert_refused(run("inspect", "deep.safetensors"), "deep.safetensors", "nested")


def test_a_safetensors_header_with_a_huge_integer_is_refused(
    run: Callable[..., Result], workdir: Path
) -> None:
    header = '{"w": {"dtype": "F32", "shape": [' + LONG_INTEGER + '], "data_offsets": [0, 4]}}'
    write_raw_safetensors(workdir / "long.safetensors", header.encode(), b"\0" * 4)
    assert_refused(run("inspect", "long.safetensors"), "long.safetensors", "4300 digits")


@pytest.mark.parametrize(
    ("index", "fragment"),
    [
        ('{"weight_map": ' + DEEP_JSON + "}", "nested"),
        ('{"weight_map": {"a": "b.safetensors"}, "metadata": {"x": ' + LONG_INTEGER + "}}", "4300"),
        (
            '{"weight_map": {"net.0.weight": "a.safetensors"}, "metadata": {"x": '
            + "[" * 200
            + "]" * 200
            + "}}",
            "nested",
        ),
    ],
    ids=["deep", "long-integer", "deep-metadata"],
)
def test_a_malformed_shard_index_is_refused(
    run: Callable[..., Result], workdir: Path, index: str, fragment: str
) -> None:
    index_path = write_sharded(workdir / "sharded", {"a.safetensors": mlp_state()})
    index_path.write_text(index)
    assert_refused(run("inspect", "sharded"), index_path.name, fragment)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ('{"model_type": ' + DEEP_JSON + "}", "nested"),
        ('{"model_type": "llama", "extra": ' + "[" * 200 + "]" * 200 + "}", "nested"),
        ('{"vocab_size": ' + LONG_INTEGER + "}", "4300 digits"),
        ('{"architectures": 5}', "architectures"),
        ('{"architectures": "LlamaForCausalLM"}', "architectures"),
        ('{"architectures": [["LlamaForCausalLM"]]}', "architectures"),
        ('{"architectures": [7]}', "architectures"),
        ('{"architectures": ["not a class name"]}', "architectures"),
        ('{"model_type": "llama", "num_key_value_heads": "two"}', "num_key_value_heads"),
        ('{"model_type": "llama", "head_dim": Infinity}', "head_dim"),
        ('{"model_type": "llama", "tie_word_embeddings": "yes"}', "tie_word_embeddings"),
    ],
    ids=[
        "deep",
        "deep-value",
        "long-integer",
        "architectures-int",
        "architectures-string",
        "architectures-nested",
        "architectures-number",
        "architectures-not-a-name",
        "size-not-an-integer",
        "size-infinite",
        "flag-not-a-boolean",
    ],
)
def test_a_malformed_config_json_is_refused(
    run: Callable[..., Result], workdir: Path, config: str, fragment: str
) -> None:
    folder = workdir / "model"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", mlp_state())
    (folder / "config.json").write_text(config)
    assert_refused(run("inspect", "model"), "config.json", fragment)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("version = 1\nx = " + DEEP_TOML_ARRAY + "\n", "nested"),
        ("version = 1\nx = " + DEEP_TOML_TABLE + "\n", "nested"),
        ("version = " + LONG_INTEGER + "\n", "4300 digits"),
    ],
    ids=["deep-array", "deep-table", "long-integer"],
)
def test_a_malformed_spec_file_is_refused(
    run: Callable[..., Result], mlp: Path, spec: str, fragment: str
) -> None:
    (mlp.parent / "spec.toml").write_text(spec)
    assert_refused(run("inspect", mlp.name, "--spec", "spec.toml"), "spec.toml", fragment)


@pytest.mark.parametrize(
    ("pyproject", "fragment"),
    [
        ("[tool.weissi.check]\nmax-abs = " + DEEP_TOML_ARRAY + "\n", "nested"),
        ("[tool.weissi.check]\nmax-abs = " + LONG_INTEGER + "\n", "4300 digits"),
        ("[tool.weissi.check]\nmax-abs = 1" + "0" * 400 + "\n", "max-abs"),
        ('tool = "x"\n', "[tool]"),
        ('[tool]\nweissi = "x"\n', "[tool.weissi]"),
        ("[tool.weissi]\ncheck = 3\n", "[tool.weissi.check]"),
        ("[tool.weissi.check]\nmax-abs = nan\n", "max-abs"),
        ("[tool.weissi.check]\nmax-imbalance = inf\n", "max-imbalance"),
        ("[tool.weissi.check]\nmax-norm = -inf\n", "max-norm"),
    ],
    ids=[
        "deep",
        "long-integer",
        "integer-beyond-float",
        "tool-not-a-table",
        "weissi-not-a-table",
        "check-not-a-table",
        "nan",
        "inf",
        "minus-inf",
    ],
)
def test_a_malformed_pyproject_is_refused(
    run: Callable[..., Result], mlp: Path, pyproject: str, fragment: str
) -> None:
    (mlp.parent / "pyproject.toml").write_text(pyproject)
    assert_refused(run("check", mlp.name), "pyproject.toml", fragment)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "0", "-3"])
@pytest.mark.parametrize("flag", ["--max-imbalance", "--max-l2-ratio", "--max-abs", "--max-norm"])
def test_a_threshold_flag_must_be_a_finite_positive_number(
    run: Callable[..., Result], mlp: Path, flag: str, value: str
) -> None:
    assert_refused(run("check", mlp.name, flag, value), flag, "finite")


# --- tensor names ------------------------------------------------------------------------


def test_a_safetensors_name_with_a_lone_surrogate_is_refused(
    run: Callable[..., Result], workdir: Path
) -> None:
    header = {"net\ud800.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    write_raw_safetensors(workdir / "surrogate.safetensors", header, b"\0" * 4)
    line = assert_refused(run("inspect", "surrogate.safetensors"), "surrogate.safetensors")
    assert "\\ud800" in line


def test_a_pickle_name_with_a_lone_surrogate_is_refused(
    run: Callable[..., Result], workdir: Path
) -> None:
    torch.save({"net\ud800.weight": torch.ones(2, 2)}, workdir / "surrogate.pt")
    assert_refused(run("inspect", "surrogate.pt"), "surrogate.pt", "\\ud800")


def test_a_shard_index_naming_a_lone_surrogate_is_refused(
    run: Callable[..., Result], workdir: Path
) -> None:
    index_path = write_sharded(workdir / "sharded", {"a.safetensors": mlp_state()})
    index = json.loads(index_path.read_text())
    index["weight_map"]["x\ud800"] = "a.safetensors"
    index_path.write_text(json.dumps(index))
    assert_refused(run("inspect", "sharded"), index_path.name, "\\ud800")


# --- torch pickles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: torch.eye(3).to_sparse(), "sparse"),
        (lambda: torch.eye(3).to_sparse_csr(), "sparse"),
        (lambda: torch.empty(3, 3, device="meta"), "meta"),
        (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), "nested"),
    ],
    ids=["sparse-coo", "sparse-csr", "meta", "nested"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_pickle_with_a_tensor_that_holds_no_dense_values_is_refused(
    run: Callable[..., Result], workdir: Path, make: Callable[[], torch.Tensor], fragment: str
) -> None:
    state = {"net.0.weight": torch.ones(3, 3), "net.2.weight": make()}
    torch.save(state, workdir / "odd.pt")
    assert_refused(run("inspect", "odd.pt"), "odd.pt", "net.2.weight", fragment)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated
def test_a_torchscript_archive_is_named_as_one(run: Callable[..., Result], workdir: Path) -> None:
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(workdir / "scripted.pt"))
    line = assert_refused(run("inspect", "scripted.pt"), "scripted.pt", "TorchScript archive")
    assert "torch.jit.load" in line
    assert "state_dict()" in line
    assert "weights_only" not in line


def test_a_plain_protocol_4_pickle_is_named_as_one(
    run: Callable[..., Result], workdir: Path
) -> None:
    with open(workdir / "plain.pt", "wb") as handle:
        pickle.dump({"net.0.weight": [[1.0, 2.0]]}, handle, protocol=4)
    line = assert_refused(run("inspect", "plain.pt"), "plain.pt", "pickle.dump", "torch.save")
    assert "weights_only" not in line


def test_a_pickle_of_tensors_written_with_pickle_dump_is_named_and_nothing_runs(
    run: Callable[..., Result], workdir: Path
) -> None:
    with open(workdir / "dumped.pt", "wb") as handle:
        pickle.dump({"net.0.weight": torch.ones(2, 2)}, handle, protocol=4)
    line = assert_refused(run("inspect", "dumped.pt"), "dumped.pt", "pickle.dump")
    assert "weights_only" not in line


def test_a_legacy_torch_save_with_protocol_4_is_named_as_one(
    run: Callable[..., Result], workdir: Path
) -> None:
    """torch's weights-only unpickler does not take protocol 4's framing."""
    torch.save(
        mlp_state(dtype=torch.float32),
        workdir / "legacy4.pt",
        _use_new_zipfile_serialization=False,
        pickle_protocol=4,
    )
    line = assert_refused(run("inspect", "legacy4.pt"), "legacy4.pt", "protocol 4", "torch.save")
    assert "weights_only" not in line


def test_a_legacy_torch_save_with_protocol_2_reads(
    run: Callable[..., Result], workdir: Path
) -> None:
    torch.save(
        mlp_state(dtype=torch.float32), workdir / "legacy.pt", _use_new_zipfile_serialization=False
    )
    result = run("inspect", "legacy.pt", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["source"]["tensors"] == 6


# --- safetensors dtypes ----------------------------------------------------------------


@pytest.mark.parametrize("code", ["C128", "I4", "Q8", "f32", "FOO", ""])
def test_a_dtype_the_safetensors_format_does_not_define_is_refused(
    run: Callable[..., Result], workdir: Path, code: str
) -> None:
    header = {"w": {"dtype": code, "shape": [2], "data_offsets": [0, 8]}}
    write_raw_safetensors(workdir / "odd.safetensors", header, b"\0" * 8)
    assert_refused(run("inspect", "odd.safetensors"), "odd.safetensors", "dtype")
    assert_refused(
        run("rebalance", "odd.safetensors", "-o", "out.safetensors", "--assume-relu"),
        "odd.safetensors",
    )
    assert not (workdir / "out.safetensors").exists()


# --- paths -------------------------------------------------------------------------------


def test_an_input_name_longer_than_the_file_system_allows_is_refused(
    run: Callable[..., Result], workdir: Path
) -> None:
    name = "a" * 300 + ".safetensors"
    assert_refused(run("inspect", name), "too long")
    assert_refused(run("inspect", f"{'b' * 300}/model.safetensors"), "too long")


def test_an_output_name_longer_than_the_file_system_allows_is_refused(
    run: Callable[..., Result], mlp: Path
) -> None:
    name = "a" * 300 + ".safetensors"
    assert_refused(run("rebalance", mlp.name, "-o", name, "--assume-relu"), "255")


def test_a_spec_name_longer_than_the_file_system_allows_is_refused(
    run: Callable[..., Result], mlp: Path
) -> None:
    assert_refused(run("inspect", mlp.name, "--spec", "s" * 300 + ".toml"), "too long")


def test_a_long_but_legal_input_name_reads(run: Callable[..., Result], mlp: Path) -> None:
    name = "a" * (255 - len(".safetensors")) + ".safetensors"
    shutil.copy(mlp, mlp.parent / name)
    assert run("inspect", name, "--json").exit_code == 0


# --- found by fuzzing ------------------------------------------------------------------


def test_a_name_with_a_digit_run_past_the_int_limit_reads(
    run: Callable[..., Result], workdir: Path
) -> None:
    """Names are sorted in natural order (net.2 before net.10) without converting their
    digit runs to integers, which Python refuses past 4300 digits."""
    long_digits = "9" * 5000
    header = {
        f"net.{long_digits}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "net.10.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        "net.2.weight": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }
    write_raw_safetensors(workdir / "digits.safetensors", header, b"\0" * 12)
    result = run("inspect", "digits.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    names = [tensor["name"] for tensor in json.loads(result.stdout)["tensors"]]
    assert names == ["net.2.weight", "net.10.weight", f"net.{long_digits}.weight"]


def test_a_shard_name_longer_than_the_file_system_allows_is_refused(
    run: Callable[..., Result], workdir: Path
) -> None:
    index_path = write_sharded(workdir / "sharded", {"a.safetensors": mlp_state()})
    index = json.loads(index_path.read_text())
    index["weight_map"]["net.0.weight"] = "s" * 300 + ".safetensors"
    index_path.write_text(json.dumps(index))
    assert_refused(run("inspect", "sharded"), index_path.name, "too long")
