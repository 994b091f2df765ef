"""Benchmark `weissi inspect` and `weissi rebalance` on a 2.1 GB ONNX model with external
data, against ceilings measured in the same run (see README.md).

    python benchmarks/onnx_large.py [--runs 3] [--data-dir benchmarks/data] [--keep]

Ceilings, each run as a program of its own (an interpreter start-up, like weissi's):
* read: 1 MiB `preadv` chunks of the data file into a reused buffer + `np.dot(x, x)`;
* rewrite: the same chunks multiplied in place and `pwrite` to a new file, each chunk's
  write-back started at once, then `fsync`.
`inspect` runs twice per round: finding the structure from the graph (which imports torch), and
with the structure pinned in a spec file (`weissi graph --emit-spec`, as a CI job would keep
it), which reads the model and its data alone.
`rebalance` runs twice per round: as installed (both models then run in ONNX Runtime), and
with onnxruntime hidden (the value check alone, as on a
machine without the `[onnx]` extra), which is the part of the command the ceiling stands for.
Runs are interleaved and the page cache is warm; medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from run import compile_weissi, run_measured, settle, warm_page_cache  # noqa: E402

CHUNK = 1 << 20
WITHOUT_ORT = (
    "import sys; sys.modules['onnxruntime'] = None; "
    "from weissi_cli.cli.app import main; sys.argv[0] = 'weissi'; main()"
)


def read_ceiling(path: str) -> None:
    """The read ceiling's own program: sum of squares of every float32 of `path`."""
    descriptor = os.open(path, os.O_RDONLY)
    buffer = mmap.mmap(-1, CHUNK)
    values = np.frombuffer(buffer, np.float32)
    total, offset = 0.0, 0
    while got := os.preadv(descriptor, [memoryview(buffer)], offset):
        chunk = values[: got // 4]
        total += float(np.dot(chunk, chunk))
        offset += got
    print(total)


def rewrite_ceiling(path: str, output: str) -> None:
    """The rewrite ceiling's own program: every chunk scaled and written to a new file."""
    from weissi_cli.writers.disk import start_writeback

    source = os.open(path, os.O_RDONLY)
    target = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    buffer = mmap.mmap(-1, CHUNK)
    view = memoryview(buffer)
    values = np.frombuffer(buffer, np.float32)
    offset = 0
    while got := os.preadv(source, [view], offset):
        chunk = values[: got // 4]
        np.multiply(chunk, np.float32(0.5), out=chunk)
        written = 0
        while written < got:
            written += os.pwrite(target, view[written:got], offset + written)
        start_writeback(target, offset, got)
        offset += got
    os.fsync(target)
    os.close(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--shape",
        choices=("deep", "wide"),
        default="deep",
        help="deep: two 1 GiB matrices in a row (the middle one scales along both axes); "
        "wide: one 2 GiB matrix feeding a thin one (each scales along one axis)",
    )
    parser.add_argument("--ceiling", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling:  # a ceiling program, started by the benchmark itself
        if len(args.ceiling) == 1:
            read_ceiling(args.ceiling[0])
        else:
            rewrite_ceiling(*args.ceiling)
        return 0
    from tests.onnx_models import large_mlp

    folder = args.data_dir / f"onnx_large_{args.shape}"
    model = folder / "model.onnx"
    data = folder / "model.onnx.data"
    if not model.is_file():
        large_mlp(folder, wide=args.shape == "wide")
    size = data.stat().st_size
    out = args.data_dir / "onnx_large_out"
    env = {"PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    python = [sys.executable]
    weissi = [*python, "-m", "weissi_cli"]
    compile_weissi()
    warm_page_cache(data)
    warm_page_cache(data)
    series: dict[str, list[tuple[float, float]]] = {}

    def measure(name: str, command: list[str], before: Path | None = None) -> None:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
            before.mkdir(parents=True)
            settle()
        found = run_measured(command, env)
        series.setdefault(name, []).append((found.seconds, found.peak_rss_anon_mb))

    scratch = args.data_dir / "onnx_ceiling_copy"
    spec = args.data_dir / f"onnx_large_{args.shape}.spec.toml"
    pinned = subprocess.run(
        [*weissi, "graph", str(model), "--emit-spec"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    spec.write_text(pinned.stdout)
    for _ in range(args.runs):
        measure("read ceiling (program)", [*python, __file__, "--ceiling", str(data)])
        measure("inspect", [*weissi, "inspect", str(model), "--json"])
        measure(
            "inspect --spec (structure pinned)",
            [*weissi, "inspect", str(model), "--spec", str(spec), "--json"],
        )
        measure(
            "rewrite ceiling (program)",
            [*python, __file__, "--ceiling", str(data), str(scratch / "copy")],
            before=scratch,
        )
        measure(
            "rebalance without onnxruntime",
            [
                *python,
                "-c",
                WITHOUT_ORT,
                "rebalance",
                str(model),
                "-o",
                str(out / "model.onnx"),
                "--json",
            ],
            before=out,
        )
        measure(
            "rebalance (runs both models in ONNX Runtime)",
            [*weissi, "rebalance", str(model), "-o", str(out / "model.onnx"), "--json"],
            before=out,
        )
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    spec.unlink()
    medians = {name: statistics.median(s for s, _ in runs) for name, runs in series.items()}
    peaks = {name: max(m for _, m in runs) for name, runs in series.items()}
    read, write = medians["read ceiling (program)"], medians["rewrite ceiling (program)"]
    rows = []
    for name in series:
        ceiling = (
            read if name.startswith("inspect") else write if name.startswith("rebalance") else None
        )
        rows.append(
            {
                "command": name,
                "seconds": medians[name],
                "GB/s": size / medians[name] / 1e9,
                "ratio": ceiling / medians[name] if ceiling else None,
                "peak RssAnon MB": peaks[name],
                "runs": [s for s, _ in series[name]],
            }
        )
    print(
        f"{args.shape}: {size / 1e9:.2f} GB of external data, {args.runs} interleaved runs, medians"
    )
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"
        print(
            f"{row['command']:<46} {row['seconds']:7.2f} s {row['GB/s']:6.2f} GB/s "
            f"ratio {ratio:>5}  RssAnon {row['peak RssAnon MB']:7.0f} MB"
        )
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {"shape": args.shape, "bytes": size, "rows": rows}
    (results / f"onnx-{args.shape}-{stamp}.json").write_text(json.dumps(record, indent=2))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
