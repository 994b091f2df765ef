"""The benchmark suite: transformer-shaped checkpoints, every command, ceilings and baselines.

For each checkpoint (float32 / bfloat16, one file or sharded), measured in the same run with
the page cache warm, each a median of --runs:
  ceilings   `cat` of the files; a chunked preadv + np.dot pass (read); a chunked
             copy-scale-pwrite-fsync (rewrite)
  baselines  safetensors.torch.load_file + per-tensor norms; load_file + scale + save_file
  weissi     inspect, check, rebalance (layer and channel, and without the model run), diff
as seconds, GB/s, ratio to its ceiling, and peak private memory (RssAnon). Also the start-up
of `weissi --help`. Prints a table and writes results/suite-<timestamp>.json.

Usage: python benchmarks/suite.py [--size-gib 1.0] [--dtype float32 bfloat16] [--shards 1 4]
       [--runs 3] [--data-dir DIR] [--write-dir DIR] [--keep]

--write-dir: where the rewrites go (the rewrite ceiling's files, the baseline's copies and
rebalance's outputs); the data folder by default. `--write-dir /dev/shm` measures the
rewriting commands against storage as fast as memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    DEFAULT_DATA_DIR,
    GB,
    RESULTS_DIR,
    SAFETENSORS_CODE,
    _to_bfloat16_bits,
    _write_fully,
    compile_weissi,
    machine_info,
    read_ceiling,
    rewrite_ceiling,
    rewrite_ceiling_files,
    run_measured,
    settle,
    warm_page_cache,
    weissi_command,
)

ITEMSIZE = {"float32": 4, "bfloat16": 2}
READ_CEILING_PROGRAM = Path(__file__).resolve().parent / "read_ceiling.py"
TARGETS = {"read": 0.8, "rewrite": 0.7, "baseline_speedup": 2.0, "rss_mb": 300.0, "help_s": 0.3}


@dataclass(frozen=True)
class Transformer:
    """A LLaMA-shaped state dict (names as Hugging Face writes them) of about a given size."""

    dtype: str
    hidden: int
    layers: int
    vocab: int = 8192

    @staticmethod
    def for_size(size_bytes: int, dtype: str) -> Transformer:
        layers = 8
        # per layer: 4 h² (attention) + 3 · (8/3 h) · h (MLP) = 12 h²; plus 2 · vocab · h
        hidden = int((size_bytes / ITEMSIZE[dtype] / (12 * layers)) ** 0.5)
        return Transformer(dtype, max(256, hidden - hidden % 128), layers)

    @property
    def ffn(self) -> int:
        size = int(self.hidden * 8 / 3)
        return size - size % 128

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, f = self.hidden, self.ffn
        found: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for index in range(self.layers):
            p = f"model.layers.{index}"
            found += [
                (f"{p}.input_layernorm.weight", (h,)),
                (f"{p}.self_attn.q_proj.weight", (h, h)),
                (f"{p}.self_attn.k_proj.weight", (h, h)),
                (f"{p}.self_attn.v_proj.weight", (h, h)),
                (f"{p}.self_attn.o_proj.weight", (h, h)),
                (f"{p}.post_attention_layernorm.weight", (h,)),
                (f"{p}.mlp.gate_proj.weight", (f, h)),
                (f"{p}.mlp.up_proj.weight", (f, h)),
                (f"{p}.mlp.down_proj.weight", (h, f)),
            ]
        found += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return found

    def name(self, shards: int) -> str:
        return f"transformer_{self.dtype}_{self.layers}x{self.hidden}_{shards}shard"

    def config(self) -> dict[str, Any]:
        """A Hugging Face config.json for these shapes (head_dim 128, no GQA: k and v are
        [h, h]), so weissi finds the architecture's exact symmetries, as on a real model."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.hidden // 128,
            "num_key_value_heads": self.hidden // 128,
            "vocab_size": self.vocab,
            "tie_word_embeddings": False,
            "torch_dtype": self.dtype,
        }


def write_shard(
    path: Path, tensors: list[tuple[str, tuple[int, ...]]], dtype: str, seed: int
) -> None:
    itemsize = ITEMSIZE[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = int(np.prod(shape)) * itemsize
        header[name] = {
            "dtype": SAFETENSORS_CODE[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb", buffering=0) as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        for index, (_, shape) in enumerate(tensors):
            remaining = int(np.prod(shape))
            std = (1.0 if len(shape) == 1 else shape[-1] ** -0.5) * 2.0 ** (index % 5 - 2)
            while remaining:
                count = min(1 << 24, remaining)
                block = rng.standard_normal(count, dtype=np.float32) * np.float32(std)
                data = block if dtype == "float32" else _to_bfloat16_bits(block)
                _write_fully(handle.fileno(), memoryview(data).cast("B"))
                remaining -= count


def generate(folder: Path, model: Transformer, shards: int) -> tuple[Path, list[Path]]:
    """A model folder: config.json and one file, or `shards` files plus
    model.safetensors.index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config(), indent=2) + "\n")
    tensors = model.tensors()
    if shards == 1:
        path = folder / "model.safetensors"
        if not path.exists():
            write_shard(path, tensors, model.dtype, 0)
        return folder, [path]
    groups = [tensors[i::shards] for i in range(shards)]
    files = [folder / f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        for seed, (path, group) in enumerate(zip(files, groups, strict=True)):
            write_shard(path, group, model.dtype, seed)
        weight_map = {
            name: path.name for path, group in zip(files, groups, strict=True) for name, _ in group
        }
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder, files


BASELINE_NORMS = """
import sys, torch
from safetensors.torch import load_file
for path in sys.argv[1:]:
    for tensor in load_file(path).values():
        torch.linalg.vector_norm(tensor.float()); tensor.abs().max()
"""
BASELINE_REWRITE = """
import sys, torch
from safetensors.torch import load_file, save_file
paths = sys.argv[1:]
for path in paths[: len(paths) // 2]:
    state = {k: v * 0.5 for k, v in load_file(path).items()}
    save_file(state, paths[len(paths) // 2 + paths.index(path)])
"""


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure_case(
    model: Transformer, shards: int, runs: int, data_dir: Path, write_dir: Path
) -> list[dict[str, Any]]:
    folder = data_dir / model.name(shards)
    entry, files = generate(folder, model, shards)
    size = sum(f.stat().st_size for f in files)
    output = write_dir / f"{model.name(shards)}.out"
    for path in files:
        warm_page_cache(path)
    weissi = weissi_command()
    compile_weissi()
    rows: list[dict[str, Any]] = []
    measured: dict[str, list[Any]] = {}

    def record(label: str, value: Any) -> None:
        measured.setdefault(label, []).append(value)

    out_path = output  # a model folder in, a model folder out

    def clean() -> None:
        if out_path.is_dir():
            shutil.rmtree(out_path)
        else:
            out_path.unlink(missing_ok=True)

    scratch = write_dir / "ceiling-scratch.safetensors"
    rewrite_ceiling(files[0], scratch)  # warm-up: fresh pages write slowly on this VM
    for run in range(runs):
        # This VM pages out memory left untouched for a few seconds (DAMON), page cache too:
        # every run starts from a warm cache.
        for path in files:
            warm_page_cache(path)
        started = time.perf_counter()
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
        record("cat", time.perf_counter() - started)
        record("dot", sum(read_ceiling(path) for path in files))
        record(
            "dot as a program",
            run_measured([sys.executable, str(READ_CEILING_PROGRAM), *map(str, files)]),
        )
        # The reading commands next, under the same conditions as the read ceilings (before
        # any rewrite has filled memory with pages to write back).
        record("inspect", run_measured([*weissi, "inspect", str(entry), "--json"]))
        record(
            "check",
            run_measured(
                [*weissi, "check", str(entry), "--max-imbalance", "1e12", "--format", "json"]
            ),
        )
        record("diff", run_measured([*weissi, "diff", str(entry), str(entry), "--json"]))
        record(
            "baseline norms", run_measured([sys.executable, "-c", BASELINE_NORMS, *map(str, files)])
        )
        settle()
        record("rewrite", rewrite_ceiling_files(files, scratch))
        copies = [str(write_dir / f"baseline-{i}.safetensors") for i in range(len(files))]
        settle()
        record(
            "baseline rewrite",
            run_measured([sys.executable, "-c", BASELINE_REWRITE, *map(str, files), *copies]),
        )
        for copy in copies:
            Path(copy).unlink(missing_ok=True)
        # Alternate which granularity goes first: the second write follows the deletion of
        # the first one's output, and this disk's speed moves with what was freed before
        # (channel-wise always second ran 1.3-2.9 s slower on 4 shards, but not alone).
        order = ("layer", "channel") if run % 2 == 0 else ("channel", "layer")
        for granularity in order:
            clean()
            settle()
            command = [
                *weissi,
                "rebalance",
                str(entry),
                "-o",
                str(out_path),
                "--json",
            ]
            record(
                f"rebalance {granularity}", run_measured([*command, "--granularity", granularity])
            )
        # weissi's own work without the model run: read, solve, write, check every value
        clean()
        settle()
        record(
            "rebalance no run",
            run_measured(
                [*weissi, "rebalance", str(entry), "-o", str(out_path), "--json",
                 "--verify-with", "none"]
            ),
        )  # fmt: skip
        clean()
    scratch.unlink(missing_ok=True)
    read = median(measured["dot"])
    read_process = median([run.seconds for run in measured["dot as a program"]])
    rewrite = median(measured["rewrite"])
    baseline_rewrite = median([run.seconds for run in measured["baseline rewrite"]])
    for label, values in measured.items():
        runs_ = values if isinstance(values[0], float) else [v.seconds for v in values]
        seconds = median(runs_)
        row: dict[str, Any] = {
            "case": model.name(shards),
            "command": label,
            "seconds": seconds,
            "runs_s": runs_,  # every run, so the spread can be read as well as the median
            "gbps": size / seconds / GB,
            "peak_rss_anon_mb": None
            if isinstance(values[0], float)
            else max(v.peak_rss_anon_mb for v in values),
        }
        if label in ("inspect", "check", "diff", "baseline norms"):
            row["ceiling"] = "dot"
            reads = 2 if label == "diff" else 1  # diff reads both files
            row["ratio"] = read / seconds * reads
            # Against the same loop run as a program: both sides pay an interpreter start-up.
            row["ratio_to_program"] = read_process / seconds * reads
        elif label.startswith("rebalance") or label == "baseline rewrite":
            row["ceiling"] = "rewrite"
            row["ratio"] = rewrite / seconds
        if label.startswith("rebalance"):
            row["speedup_over_baseline"] = baseline_rewrite / seconds
        rows.append(row)
    return rows


def help_startup(runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*weissi_command(), "--help"], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument(
        "--dtype", nargs="+", default=["float32", "bfloat16"], choices=sorted(ITEMSIZE)
    )
    parser.add_argument("--shards", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "suite")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument(
        "--write-dir", type=Path, default=None, help="where rewrites go (default: --data-dir)"
    )
    args = parser.parse_args()
    write_dir = args.write_dir or args.data_dir
    write_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        for dtype in args.dtype:
            model = Transformer.for_size(int(args.size_gib * 2**30), dtype)
            for shards in args.shards:
                print(f"measuring {model.name(shards)} ...", flush=True)
                rows += measure_case(model, shards, args.runs, args.data_dir, write_dir)
    finally:
        if not args.keep:
            shutil.rmtree(args.data_dir, ignore_errors=True)
    startup = help_startup(5)
    heading = ("case", "command", "s", "GB/s", "ratio", "r.prog", "×base", "RssAnon MB")
    line = "{:<36} {:<18} {:>7} {:>6} {:>6} {:>6} {:>6} {:>10}"
    print("\n" + line.format(*heading))
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        to_program = f"{row['ratio_to_program']:.2f}" if "ratio_to_program" in row else ""
        speedup = f"{row['speedup_over_baseline']:.1f}" if "speedup_over_baseline" in row else ""
        rss = f"{row['peak_rss_anon_mb']:.0f}" if row["peak_rss_anon_mb"] is not None else ""
        seconds, gbps = f"{row['seconds']:.2f}", f"{row['gbps']:.2f}"
        cells = (row["case"], row["command"], seconds, gbps, ratio, to_program, speedup, rss)
        print(line.format(*cells))
    print(f"\nweissi --help: {startup:.2f} s")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    destination = RESULTS_DIR / f"suite-{stamp}.json"
    destination.write_text(
        json.dumps(
            {
                "timestamp": stamp,
                "machine": machine_info(),
                "targets": TARGETS,
                "help_s": startup,
                "write_dir": str(write_dir),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
