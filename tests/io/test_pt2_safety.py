"""No code from a `.pt2` runs: every hostile archive of the corpus is refused by every
command (in-process and as a subprocess) with exit 2 and one line naming the member, its
payload never runs, a zip bomb is refused fast in little memory; and legitimate programs
read exactly as torch reads them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from tests.exported_models import BUILDERS, export
from tests.io.conftest import Corpus
from tests.io.pt2_corpus import (
    BOMB_BYTES,
    COMMANDS,
    Archive,
    Member,
    arguments,
    deflated_zeros,
    stored,
    write_zip,
)
from weissi_cli.cli.app import app
from weissi_cli.io import open_checkpoint
from weissi_cli.io.exported import ExportedCheckpoint
from weissi_cli.io.pt2_strings import expression_problem, guard_problem, tree_spec_problem

ROOT = Path(__file__).resolve().parents[2]
HINT = "(set WEISSI_DEBUG=1 for the traceback)"
HOSTILE = [
    "sample_inputs",
    "opaque_obj",
    "custom_obj",
    "pickled_weight",
    "legacy_weights",
    "legacy_constants",
    "bomb_extra",
    "bomb_weight",
    "bomb_program",
    "bomb_overlap",
    "sympy_shape",
    "tree_spec_import",
    "guard_code",
    "file_operator",
    "aot_inductor",
]
BOMBS = [name for name in HOSTILE if name.startswith("bomb")]
# torch's TorchScript unpickler and its library loader fail on these two before running
# anything: their payloads are not live (they are refused all the same)
LIVE = [name for name in HOSTILE if name not in (*BOMBS, "custom_obj", "aot_inductor")]


@pytest.fixture
def run() -> Callable[..., Result]:
    runner = CliRunner(
        env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "WEISSI_DEBUG": None}
    )
    return lambda *args: runner.invoke(app, list(args))


def assert_refused(code: int, stderr: str, names: str) -> None:
    """Exit 2, and stderr is the one-line error naming `names` plus the debug hint."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 2, stderr
    assert lines[0].startswith("error: ")
    assert names in lines[0]
    assert lines[1] == HINT


def test_the_corpus_is_complete(pt2_corpus: Corpus) -> None:
    assert sorted(pt2_corpus.hostile) == sorted(HOSTILE)


@pytest.mark.parametrize("name", LIVE)
def test_each_payload_runs_when_torch_loads_the_archive(name: str, armed: Corpus) -> None:
    """The payloads are live: torch.export.load (and running the program, for guard code
    and operators) runs them."""
    hostile = armed.hostile[name]
    assert hostile.live is not None
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hostile.live(hostile.path)
    assert armed.marker.exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", HOSTILE)
def test_refused_by_every_command(
    name: str, command: str, armed: Corpus, run: Callable[..., Result], tmp_path: Path
) -> None:
    hostile = armed.hostile[name]
    result = run(*arguments(command, hostile.path, armed.valid, tmp_path))
    assert_refused(result.exit_code, result.stderr, hostile.names)
    assert not armed.marker.exists()
    assert not (tmp_path / "out.pt2").exists()


def _subprocess(args: list[str], corpus: Corpus, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(corpus.folder)]),
        "NO_COLOR": "1",
        "COLUMNS": "100",
    }
    env.pop("WEISSI_DEBUG", None)
    command = [sys.executable, "-m", "weissi_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.parametrize("name", HOSTILE)
def test_refused_as_a_subprocess(name: str, armed: Corpus, tmp_path: Path) -> None:
    """`python -m weissi_cli`, each archive under one command (the commands take turns; the
    long run, `pytest -m fuzz`, runs every archive under every command)."""
    command = COMMANDS[HOSTILE.index(name) % len(COMMANDS)]
    _check_subprocess(name, command, armed, tmp_path)


@pytest.mark.fuzz
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", HOSTILE)
def test_refused_as_a_subprocess_every_command(
    name: str, command: str, armed: Corpus, tmp_path: Path
) -> None:
    _check_subprocess(name, command, armed, tmp_path)


def _check_subprocess(name: str, command: str, corpus: Corpus, folder: Path) -> None:
    hostile = corpus.hostile[name]
    done = _subprocess(arguments(command, hostile.path, corpus.valid, folder), corpus, folder)
    assert_refused(done.returncode, done.stderr, hostile.names)
    assert not corpus.marker.exists()
    assert not (folder / "out.pt2").exists()


MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "weissi_cli", *sys.argv[1:]], capture_output=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(done.returncode, seconds, peak)
"""


@pytest.mark.parametrize("name", BOMBS)
def test_zip_bomb_is_refused_fast_in_little_memory(
    name: str, pt2_corpus: Corpus, tmp_path: Path
) -> None:
    """Each bomb inflates to 3.9 GB; weissi refuses it from the zip directory alone. The
    peak resident memory of `weissi rebalance` on it is measured in a process of its own."""
    hostile = pt2_corpus.hostile[name]
    assert hostile.path.stat().st_size * 10 < BOMB_BYTES
    args = arguments("rebalance", hostile.path, pt2_corpus.valid, tmp_path)
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
        check=True,
    )
    code, seconds, peak = measured.stdout.split()
    assert int(code) == 2
    assert float(seconds) < 60  # ~1 s on an idle machine; the bound allows a loaded one
    assert int(peak) < 200 << 20  # ~35 MB: torch is never even imported
    assert not (tmp_path / "out.pt2").exists()


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way torch runs code from an archive, replaced by a recorder: the list of what
    was called (exceptions would be turned into refusals and hide the call)."""
    import pickle

    import torch._export.serde.serialize as serialize
    import torch.export._unlift as unlift
    import torch.export.pt2_archive._package as package

    calls: list[str] = []

    def forbidden(name: str) -> Callable[..., object]:
        def record(*args: object, **kwargs: object) -> object:
            calls.append(name)
            raise RuntimeError(f"{name} called")

        return record

    for owner, name in (
        (torch.export, "load"),
        (package, "load_pt2"),
        (pickle, "loads"),
        (pickle, "load"),
        (torch._C, "_pickle_load_obj"),
        (unlift, "_convert_guards_code_to_fn"),
    ):
        monkeypatch.setattr(owner, name, forbidden(f"{getattr(owner, '__name__', owner)}.{name}"))
    load, artifact = torch.load, serialize.deserialize_torch_artifact

    def safe_load(*args: object, **kwargs: object) -> object:
        if kwargs.get("weights_only") is not True:
            calls.append("torch.load without weights_only=True")
        return load(*args, **kwargs)  # type: ignore[arg-type]

    def no_bytes(serialized: object) -> object:
        if isinstance(serialized, bytes | bytearray) and serialized:
            calls.append("deserialize_torch_artifact on bytes")
        return artifact(serialized)

    monkeypatch.setattr(torch, "load", safe_load)
    monkeypatch.setattr(serialize, "deserialize_torch_artifact", no_bytes)
    return calls


def test_the_tripwires_record_what_torch_export_load_reaches(
    pt2_corpus: Corpus, tripwires: list[str]
) -> None:
    import torch.export.pt2_archive._package as package

    with contextlib.suppress(Exception):
        torch.export.load(pt2_corpus.valid)
    with contextlib.suppress(Exception):
        torch.load(pt2_corpus.valid)  # weights_only left to its default
    archive = pt2_corpus.hostile["opaque_obj"].path
    with contextlib.suppress(Exception), package.PT2ArchiveReader(str(archive)) as reader:
        package._load_constants(reader, "model")
    assert tripwires == [
        "torch.export.load",
        "torch.load without weights_only=True",
        "pickle.loads",
    ]


@pytest.mark.parametrize("command", ["inspect", "rebalance"])
def test_no_unsafe_loader_is_ever_called(
    command: str,
    armed: Corpus,
    programs: dict[str, Path],
    tripwires: list[str],
    run: Callable[..., Result],
    tmp_path: Path,
) -> None:
    """The safety does not rest on refusing the right archives: on every archive, hostile
    or legitimate, none of torch's unsafe loaders is reached at all."""
    paths = [h.path for h in armed.hostile.values()] + list(programs.values())
    for path in paths:
        output = tmp_path / "out.pt2"
        result = run(*arguments(command, path, armed.valid, tmp_path))
        assert result.exit_code in (0, 2), result.output
        assert tripwires == [], path
        output.unlink(missing_ok=True)
    assert not armed.marker.exists()


# legitimate programs ------------------------------------------------------------------------


class DynamicMlp(torch.nn.Module):
    """A ReLU MLP whose batch size is dynamic, so its program holds symbolic shapes
    (`Symbol('s77', positive=True, integer=True)`) and guard code."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x)) + y[: x.shape[0]]


def export_dynamic(path: Path) -> Path:
    torch.manual_seed(3)
    model = DynamicMlp().eval()
    generator = torch.Generator().manual_seed(4)
    args = (torch.randn(4, 6, generator=generator), torch.randn(7, 3, generator=generator))
    dims = {"x": {0: torch.export.Dim.AUTO}, "y": {0: torch.export.Dim.AUTO}}
    program = torch.export.export(model, args, dynamic_shapes=dims)
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("legitimate")
    paths = {name: export(*build(), folder / f"{name}.pt2") for name, build in BUILDERS.items()}
    paths["dynamic"] = export_dynamic(folder / "dynamic.pt2")
    return paths


@pytest.mark.parametrize("model", [*BUILDERS, "dynamic"])
def test_program_reads_as_torch_reads_it(model: str, programs: dict[str, Path]) -> None:
    expected = torch.export.load(programs[model])
    with open_checkpoint(programs[model]) as checkpoint:
        assert isinstance(checkpoint, ExportedCheckpoint)
        program = checkpoint.program
        examples = checkpoint.example_inputs()
    assert program.example_inputs is None  # kept apart: see weissi_cli/io/pt2_program.py
    assert program.graph_module.code == expected.graph_module.code
    assert program.graph_signature == expected.graph_signature
    assert program._guards_code == expected._guards_code
    for ours, theirs in (
        (program.state_dict, expected.state_dict),
        (program.constants, expected.constants),
    ):
        assert list(ours) == list(theirs)
        for name, tensor in theirs.items():
            assert type(ours[name]) is type(tensor), name
            assert ours[name].dtype == tensor.dtype, name
            assert torch.equal(ours[name], tensor), name
            assert ours[name].stride() == tensor.stride(), name
            assert ours[name].requires_grad == tensor.requires_grad, name
    assert examples is not None
    assert expected.example_inputs is not None
    args, kwargs = examples
    assert all(torch.equal(a, b) for a, b in zip(args, expected.example_inputs[0], strict=True))
    with torch.no_grad():
        assert torch.equal(program.module()(*args, **kwargs), expected.module()(*args, **kwargs))


def test_dynamic_program_is_rebalanced_and_runs_in_torch(
    programs: dict[str, Path], run: Callable[..., Result], tmp_path: Path
) -> None:
    output = tmp_path / "balanced.pt2"
    result = run("rebalance", str(programs["dynamic"]), "-o", str(output), "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["verification"]["passed"] is True
    assert payload["symmetries"]["l2_after"] < payload["symmetries"]["l2_penalty"]
    before, after = torch.export.load(programs["dynamic"]), torch.export.load(output)
    assert after._guards_code == before._guards_code  # the program is kept as it was
    changed = [
        n for n in before.state_dict if not torch.equal(before.state_dict[n], after.state_dict[n])
    ]
    assert changed
    generator = torch.Generator().manual_seed(9)
    for batch in (2, 5):  # the guards (compiled by torch here, from our own output) pass
        x = torch.randn(batch, 6, generator=generator)
        y = torch.randn(batch + 3, 3, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(after.module()(x, y), before.module()(x, y))


# malformed archives ------------------------------------------------------------------------


def _edited(valid: Path, target: Path, name: str, data: bytes) -> Path:
    archive = Archive(valid)
    archive.members[name] = data
    return archive.write(target)


def _malformed(valid: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Archives torch or a careless tool could produce: each, and what its refusal names."""
    archive = Archive(valid)
    root = archive.root
    config = "data/weights/model_weights_config.json"
    nested = b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big_int = b'{"config": {"w": ' + b"9" * 5000 + b"}}"
    program = archive.json("models/model.json")
    program["graph_module"]["graph"]["inputs"].append({"as_string": "x' == 'x' or print('y')"})
    cases = {
        "non_utf8": (
            _edited(valid, folder / "utf8.pt2", config, b'{"config": "\xff\xfe"}'),
            config,
        ),
        "nested": (_edited(valid, folder / "nested.pt2", config, nested), config),
        "big_int": (_edited(valid, folder / "bigint.pt2", config, big_int), config),
        "not_json": (_edited(valid, folder / "json.pt2", "models/model.json", b"{,"), "model.json"),
        "string_input": (
            _edited(
                valid, folder / "string.pt2", "models/model.json", json.dumps(program).encode()
            ),
            "string input",
        ),
    }
    members = [stored(f"{root}/{n}", d) for n, d in archive.members.items()]
    short = members[0]
    truncated = Member(short.name, short.data[:-4], short.size, short.crc)
    truncated_archive = [truncated, *members[1:]]
    cases["truncated_member"] = (write_zip(folder / "short.pt2", truncated_archive), "")
    duplicate = [*members, members[0]]
    cases["duplicate"] = (write_zip(folder / "dup.pt2", duplicate), "twice")
    outside = [*members, stored("elsewhere/models/model.json", b"{}")]
    cases["outside"] = (write_zip(folder / "outside.pt2", outside), "outside")
    garbage = folder / "garbage.pt2"
    garbage.write_bytes(b"PK\x03\x04" + os.urandom(200))
    cases["garbage"] = (garbage, "garbage.pt2")
    return cases


MALFORMED = [
    "non_utf8",
    "nested",
    "big_int",
    "not_json",
    "string_input",
    "truncated_member",
    "duplicate",
    "outside",
    "garbage",
]


@pytest.fixture(scope="module")
def malformed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("malformed")
    valid = export(*BUILDERS["relu_mlp"](), folder / "valid.pt2")
    return _malformed(valid, folder)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_archive_is_one_line_exit_2(
    case: str, malformed: dict[str, tuple[Path, str]], run: Callable[..., Result]
) -> None:
    path, names = malformed[case]
    result = run("inspect", str(path))
    assert_refused(result.exit_code, result.stderr, names)


def test_member_inflating_past_its_declared_size_is_cut_off(
    pt2_corpus: Corpus, tmp_path: Path, run: Callable[..., Result]
) -> None:
    """A deflated weight that declares its true size but inflates to 64 MB: only the
    declared bytes are ever inflated, and the archive is refused."""
    archive = Archive(pt2_corpus.valid)
    config = archive.json("data/weights/model_weights_config.json")
    weight = next(iter(config["config"].values()))["path_name"]
    data = archive.members[f"data/weights/{weight}"]
    stream, _ = deflated_zeros(64 << 20)
    lying = Member(f"{archive.root}/data/weights/{weight}", stream, len(data), 0, deflated=True)
    path = archive.write(tmp_path / "lying.pt2", extra=[lying])
    result = run("inspect", str(path))
    assert_refused(result.exit_code, result.stderr, f"data/weights/{weight}")


def test_a_weight_file_too_small_for_its_tensor_is_refused(
    pt2_corpus: Corpus, tmp_path: Path, run: Callable[..., Result]
) -> None:
    archive = Archive(pt2_corpus.valid)
    config = archive.json("data/weights/model_weights_config.json")
    entry = next(iter(config["config"].values()))
    entry["tensor_meta"]["sizes"] = [{"as_int": 2**40}, {"as_int": 2**20}]
    archive.set_json("data/weights/model_weights_config.json", config)
    result = run("inspect", str(archive.write(tmp_path / "huge.pt2")))
    assert_refused(result.exit_code, result.stderr, entry["path_name"])


def test_zip_with_an_encrypted_member_is_refused(pt2_corpus: Corpus, tmp_path: Path) -> None:
    data = bytearray(pt2_corpus.valid.read_bytes())
    with zipfile.ZipFile(pt2_corpus.valid) as archive:
        directory = archive.start_dir  # type: ignore[attr-defined]
    data[directory + 8] |= 1  # general-purpose flag bit 0 of the first directory entry
    path = tmp_path / "encrypted.pt2"
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert archive.infolist()[0].flag_bits & 1
    from weissi_cli.errors import InputError

    with pytest.raises(InputError, match="encrypted"):
        open_checkpoint(path)


# the strings torch evaluates ------------------------------------------------------------------


def test_real_symbolic_shapes_guards_and_specs_are_accepted(programs: dict[str, Path]) -> None:
    with zipfile.ZipFile(programs["dynamic"]) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        text = archive.read(name).decode()
    program = json.loads(text)
    expressions = set()
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            expressions.update([item["expr_str"]] if "expr_str" in item else [])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    assert any("Symbol(" in e for e in expressions)
    assert all(expression_problem(e) is None for e in expressions), expressions
    assert program["guards_code"]
    assert all(guard_problem(g) is None for g in program["guards_code"])
    signature = program["graph_module"]["module_call_graph"][0]["signature"]
    assert tree_spec_problem(signature["in_spec"]) is None
    assert tree_spec_problem(signature["out_spec"]) is None


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "open('x', 'w')",
        "Symbol('s0').__class__",
        "Symbol('s0', positive=open('x'))",
        "Symbol(\"s0') or open('x\")",
        "Float('1', precision=10**9)",
        "9**9**9",
        "Pow(Integer(9), Pow(Integer(9), Integer(9)))",
        "(lambda: 0)()",
        "[s0 for s0 in s1]",
        "s0 if s1 else s2",
        "x" * 3000,
        "Integer(" + "9" * 30 + ")",
        "((" * 500 + "1" + "))" * 500,
    ],
)
def test_symbolic_shapes_that_are_code_are_refused(text: str) -> None:
    assert expression_problem(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x') == 0",
        "L['x'].__class__",
        "L['x'].size()[0] == len(open('/etc/passwd').read())",
        "L['x\\'] or print(1) or L[\\'x'].size()[0] == 1",
        'L["a\'b"].size()[0] == 1',
        "eval('1')",
        "L['x'].size()[0] == (lambda: 1)()",
    ],
)
def test_guard_code_that_is_not_a_comparison_is_refused(text: str) -> None:
    assert guard_problem(text) is not None


@pytest.mark.parametrize(
    "context",
    [
        json.dumps([{"__enum__": True, "fqn": "os:system", "name": "A"}]),
        json.dumps({"default_factory_module": "os", "default_factory_name": "system"}),
    ],
)
def test_tree_spec_contexts_that_import_are_refused(context: str) -> None:
    for kind in ("builtins.dict", "collections.defaultdict"):
        spec = {"type": kind, "context": context, "children_spec": []}
        assert tree_spec_problem(json.dumps([1, spec])) is not None
