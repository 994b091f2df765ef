"""Benchmark `weissi inspect` and `weissi rebalance` against ceilings measured in the same run.

Absolute speeds on shared machines drift by 2x from run to run, so every command is reported
as a ratio to a plain-numpy ceiling measured on the same file, in the same run, with the page
cache warm:

* read ceiling: chunked `os.preadv` into a reused buffer + `np.dot(x, x)` over the data bytes;
* rewrite ceiling: chunked `preadv` -> multiply in place -> `pwrite` to a new file, then fsync.

Each command runs as a subprocess, as a user would run it; its private memory (`RssAnon`, which
excludes pages mapped from the checkpoint) is sampled every ~10 ms while it runs.

Usage: python benchmarks/run.py [--size-gib 1.5] [--runs 3] [--dtype float32] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from weissi_cli.writers.disk import start_writeback

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = HERE / "data"
RESULTS_DIR = HERE / "results"
CHUNK_BYTES = 1 << 20  # ceilings read 1 MiB at a time
GENERATE_BLOCK_ELEMENTS = 1 << 24  # 64 MiB of float32 per generated block
DEFAULT_LAYERS = 6
SAMPLE_INTERVAL = 0.01
GB = 1e9
MB = 1e6

# Targets from the issue.
TARGET_RATIO = 0.5
TARGET_RSS_ANON_MB = 400.0

ITEMSIZE = {"float32": 4, "bfloat16": 2}
SAFETENSORS_CODE = {"float32": "F32", "bfloat16": "BF16"}


# --------------------------------------------------------------------------------------------
# Synthetic checkpoint
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A chain of square Linear layers `net.0`, `net.2`, ... sized to about the requested bytes."""

    dtype: str
    width: int
    layers: int

    @staticmethod
    def for_size(size_bytes: int, dtype: str, layers: int = DEFAULT_LAYERS) -> Layout:
        """`layers` square layers, as wide as the size allows (a multiple of 64).

        The depth stays fixed as the size grows: a deep chain of wide random layers makes
        the first-order rounding bound of `weissi`'s probe verification grow like
        (row L1 norm)**depth, which overflows float32 (24 x 8192 fails verification).
        """
        itemsize = ITEMSIZE[dtype]
        width = int((size_bytes / (layers * itemsize)) ** 0.5)
        width = max(64, width - width % 64)
        return Layout(dtype, width, layers)

    def tensors(self) -> list[tuple[str, tuple[int, ...], float]]:
        """(name, shape, standard deviation) in file order; scales differ per layer."""
        result: list[tuple[str, tuple[int, ...], float]] = []
        base = self.width**-0.5
        for layer in range(self.layers):
            # Per-layer scale factors 2**k for k in -3..3: deliberately imbalanced layers.
            std = base * 2.0 ** ((layer * 5) % 7 - 3)
            prefix = f"net.{2 * layer}"
            result.append((f"{prefix}.weight", (self.width, self.width), std))
            result.append((f"{prefix}.bias", (self.width,), std))
        return result

    def file_name(self) -> str:
        return f"mlp_{self.dtype}_{self.layers}x{self.width}.safetensors"


def _to_bfloat16_bits(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Round float32 to nearest-even bfloat16 bit patterns (inputs are finite here)."""
    bits = values.view(np.uint32)
    rounding = ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def generate_checkpoint(path: Path, layout: Layout, seed: int = 0) -> None:
    """Stream a safetensors file tensor by tensor, block by block (memory: one block)."""
    itemsize = ITEMSIZE[layout.dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "generator": "weissi benchmarks"}}
    offset = 0
    specs = layout.tensors()
    for name, shape, _ in specs:
        nbytes = int(np.prod(shape)) * itemsize
        header[name] = {
            "dtype": SAFETENSORS_CODE[layout.dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    rng = np.random.default_rng(seed)
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb", buffering=0) as handle:
        handle.write(len(header_bytes).to_bytes(8, "little") + header_bytes)
        for _, shape, std in specs:
            remaining = int(np.prod(shape))
            while remaining:
                count = min(GENERATE_BLOCK_ELEMENTS, remaining)
                block = rng.standard_normal(count, dtype=np.float32)
                block *= np.float32(std)
                data = block if layout.dtype == "float32" else _to_bfloat16_bits(block)
                _write_fully(handle.fileno(), memoryview(data).cast("B"))
                remaining -= count
    temporary.rename(path)


def _write_fully(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def data_start(path: Path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def warm_page_cache(path: Path) -> float:
    """Read the whole file once; returns seconds (a cold or warm read, for information)."""
    fd = os.open(path, os.O_RDONLY)
    buffer = mmap.mmap(-1, 8 << 20)
    view = memoryview(buffer)
    start = time.perf_counter()
    try:
        offset = 0
        while got := os.preadv(fd, [view], offset):
            offset += got
    finally:
        os.close(fd)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Ceilings
# --------------------------------------------------------------------------------------------


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """A page-aligned buffer: preadv into a bytearray (malloc puts it 16 bytes off a 32-byte
    boundary) ran 5-6x slower on this AMD machine, which would understate the ceilings."""
    return mmap.mmap(-1, nbytes)


def read_ceiling(path: Path) -> float:
    """Seconds for one chunked preadv + np.dot(x, x) pass over the data bytes."""
    size = path.stat().st_size
    begin = data_start(path)
    buffer = aligned_buffer(CHUNK_BYTES)
    view = memoryview(buffer)
    values = np.frombuffer(buffer, np.float32)
    fd = os.open(path, os.O_RDONLY)
    total = 0.0
    try:
        start = time.perf_counter()
        offset = begin
        while offset < size:
            got = os.preadv(fd, [view], offset)
            if got <= 0:
                break
            chunk = values[: got // 4]
            total += float(np.dot(chunk, chunk))
            offset += got
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    if not np.isfinite(total):  # keeps the reduction from being dead code, and sanity-checks
        raise RuntimeError("read ceiling: non-finite sum of squares")
    return elapsed


def settle() -> None:
    """Write back every dirty page before a timed rewrite, so that neither the ceiling nor
    weissi pays for flushing what the run before it wrote (on this VM that made rewrite
    timings swing by 5x)."""
    os.sync()


def rewrite_ceiling(path: Path, output: Path, keep: bool = False) -> float:
    """Seconds to copy the header, scale every data chunk in place, pwrite it (starting its
    write-back at once), and fsync. `keep`: leave `output` for the caller to delete."""
    size = path.stat().st_size
    begin = data_start(path)
    buffer = aligned_buffer(CHUNK_BYTES)
    view = memoryview(buffer)
    values = np.frombuffer(buffer, np.float32)
    factor = np.float32(0.5)
    with contextlib.suppress(FileNotFoundError):
        output.unlink()
    source = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        target = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.pwrite(target, os.pread(source, begin, 0), 0)
            offset = begin
            while offset < size:
                got = os.preadv(source, [view], offset)
                if got <= 0:
                    break
                chunk = values[: got // 4]
                np.multiply(chunk, factor, out=chunk)
                written = 0
                while written < got:
                    written += os.pwrite(target, view[written:got], offset + written)
                # Hand each chunk to the disk at once, as weissi does: without this a 2 GB
                # file waits for one long fsync at the end, and the "ceiling" ran 2-3x slower
                # than weissi itself on one file (suite-20261127T072329Z).
                start_writeback(target, offset, got)
                offset += got
            os.fsync(target)
        finally:
            os.close(target)
        elapsed = time.perf_counter() - start
    finally:
        os.close(source)
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                output.unlink()
    return elapsed


def rewrite_ceiling_files(paths: Sequence[Path], scratch: Path) -> float:
    """The rewrite ceiling of a sharded checkpoint: every shard to a file of its own, all kept
    until the last is written, as a rebalanced folder is. Rewriting one scratch file shard
    after shard instead let ext4 reuse the blocks just freed, which this VM's disk writes
    2-4x faster than new ones (1.3 s against 2.8-5.5 s for 2.2 GB in 4 shards): a ceiling
    no command writing a new 2.2 GB folder can have."""
    outputs = [
        scratch.with_name(f"{scratch.stem}-{index}{scratch.suffix}") for index in range(len(paths))
    ]
    try:
        return sum(
            rewrite_ceiling(path, output, keep=True)
            for path, output in zip(paths, outputs, strict=True)
        )
    finally:
        for output in outputs:
            output.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Subprocesses with private-memory sampling
# --------------------------------------------------------------------------------------------


@dataclass
class ProcessRun:
    seconds: float
    peak_rss_anon_mb: float
    peak_rss_file_mb: float
    samples: int
    returncode: int


class _Sampler(threading.Thread):
    """Polls /proc/<pid>/status for RssAnon and RssFile until stopped."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/status"
        self.interval = interval
        self.stopped = threading.Event()
        self.peak_anon_kb = 0
        self.peak_file_kb = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)

    def sample(self) -> None:
        try:
            with open(self.path) as handle:
                text = handle.read()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("RssAnon:"):
                self.peak_anon_kb = max(self.peak_anon_kb, int(line.split()[1]))
                self.samples += 1
            elif line.startswith("RssFile:"):
                self.peak_file_kb = max(self.peak_file_kb, int(line.split()[1]))


def run_measured(command: Sequence[str], env: dict[str, str] | None = None) -> ProcessRun:
    """Run `command` with stdout discarded; wall time and peak RssAnon/RssFile."""
    environment = {**os.environ, **env} if env else None
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=errors, env=environment
        )
        sampler = _Sampler(process.pid)
        sampler.start()
        returncode = process.wait()
        elapsed = time.perf_counter() - start
        sampler.stopped.set()
        sampler.join()
        if returncode != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(command)} exited with {returncode}:\n{message}")
    return ProcessRun(
        elapsed,
        sampler.peak_anon_kb * 1024 / MB,
        sampler.peak_file_kb * 1024 / MB,
        sampler.samples,
        returncode,
    )


def compile_weissi() -> None:
    """Byte-compile the installed package, as `pip install` does for a regular install: an
    editable install under PYTHONDONTWRITEBYTECODE=1 otherwise recompiles every module on
    every run (70 ms of each command's start-up here)."""
    import importlib.util

    spec = importlib.util.find_spec("weissi_cli")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            subprocess.run([sys.executable, "-m", "compileall", "-q", location], check=False)


def weissi_command() -> list[str]:
    """The installed `weissi` script beside this interpreter (avoids pyenv shim start-up)."""
    beside = Path(sys.executable).parent / "weissi"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("weissi")
    return [found] if found else [sys.executable, "-m", "weissi_cli"]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Series:
    """Repeated measurements of one thing."""

    name: str
    seconds: list[float] = field(default_factory=list)
    peak_rss_anon_mb: list[float] = field(default_factory=list)
    peak_rss_file_mb: list[float] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_anon(self) -> float | None:
        return max(self.peak_rss_anon_mb) if self.peak_rss_anon_mb else None

    def add(self, run: ProcessRun) -> None:
        self.seconds.append(run.seconds)
        self.peak_rss_anon_mb.append(run.peak_rss_anon_mb)
        self.peak_rss_file_mb.append(run.peak_rss_file_mb)


def _gbps(size: int, seconds: float) -> float:
    return size / seconds / GB


def machine_info() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
            None,
        )
    memory_kb = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        memory_kb = next(
            (int(line.split()[1]) for line in handle if line.startswith("MemTotal:")), None
        )
    return {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_total_gib": round(memory_kb / 2**20, 1) if memory_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": version("torch"),
        "safetensors": version("safetensors"),
        "weissi_cli": version("weissi-cli"),
        "blas": _blas_name(),
    }


def _blas_name() -> str | None:
    with contextlib.suppress(Exception):
        config = np.show_config(mode="dicts")  # type: ignore[func-returns-value]
        return str(config["Build Dependencies"]["blas"]["name"])
    return None


def print_table(rows: list[dict[str, Any]]) -> None:
    headers = ["command", "seconds", "GB/s", "ratio", "peak RssAnon MB", "target", "ok"]
    table = [
        [
            row["command"],
            f"{row['seconds']:.3f}",
            f"{row['gbps']:.2f}" if row["gbps"] is not None else "-",
            f"{row['ratio']:.2f}" if row["ratio"] is not None else "-",
            f"{row['peak_rss_anon_mb']:.0f}" if row["peak_rss_anon_mb"] is not None else "-",
            row["target"],
            {True: "PASS", False: "FAIL", None: ""}[row["ok"]],
        ]
        for row in rows
    ]
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *table, strict=True)
    ]
    line = "  ".join("{:<" + str(width) + "}" for width in widths)
    print(line.format(*headers))
    print(line.format(*("-" * width for width in widths)))
    for cells in table:
        print(line.format(*cells))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.5, help="checkpoint size (GiB)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    parser.add_argument(
        "--dtype", choices=sorted(ITEMSIZE), default="float32", help="storage dtype"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep (and reuse) the generated checkpoint"
    )
    parser.add_argument(
        "--layers", type=int, default=DEFAULT_LAYERS, help="depth of the Linear chain"
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the weissi commands (A/B tests), e.g. OPENBLAS_NUM_THREADS=1",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_gib <= 0 or args.layers < 2:
        parser.error("--runs must be >= 1, --size-gib > 0 and --layers >= 2")
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    return args


@contextlib.contextmanager
def checkpoint_file(args: argparse.Namespace) -> Iterator[tuple[Path, Layout]]:
    layout = Layout.for_size(int(args.size_gib * 2**30), args.dtype, args.layers)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = args.data_dir / layout.file_name()
    expected = sum(int(np.prod(shape)) for _, shape, _ in layout.tensors()) * ITEMSIZE[args.dtype]
    if path.exists() and path.stat().st_size - data_start(path) == expected:
        print(f"reusing {path}")
    else:
        free = shutil.disk_usage(args.data_dir).free
        if free < 3.5 * expected:
            raise SystemExit(f"not enough free disk in {args.data_dir}: {free / GB:.1f} GB")
        start = time.perf_counter()
        generate_checkpoint(path, layout)
        print(f"generated {path} in {time.perf_counter() - start:.1f} s")
    try:
        yield path, layout
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


def _timed(function: Callable[[], float], series: Series) -> float:
    seconds = function()
    series.seconds.append(seconds)
    return seconds


TINY_LAYOUT = Layout("float32", 64, 3)  # for the fixed cost of a command (start-up, report)


@dataclass
class Measurements:
    startup: Series = field(default_factory=lambda: Series("import weissi_cli.cli.app"))
    fixed: Series = field(
        default_factory=lambda: Series("weissi inspect <tiny file> --json (fixed cost)")
    )
    reads: Series = field(default_factory=lambda: Series("read ceiling (preadv + np.dot)"))
    reads_process: Series = field(
        default_factory=lambda: Series("read ceiling as a process (read_ceiling.py)")
    )
    rewrites: Series = field(
        default_factory=lambda: Series("rewrite ceiling (preadv+scale+pwrite+fsync)")
    )
    inspect: Series = field(default_factory=lambda: Series("weissi inspect --json"))
    rebalance: Series = field(
        default_factory=lambda: Series("weissi rebalance --assume-relu --json")
    )
    per_run: list[dict[str, float]] = field(default_factory=list)


def measure(
    path: Path, data_dir: Path, runs: int, weissi: list[str], env: dict[str, str]
) -> Measurements:
    size = path.stat().st_size
    output = data_dir / "rebalanced.safetensors"
    scratch = data_dir / "ceiling-copy.safetensors"
    inspect_command = [*weissi, "inspect", str(path), "--json"]
    rebalance_command = [*weissi, "rebalance", str(path), "-o", str(output)]
    rebalance_command += ["--assume-relu", "--json"]
    tiny = data_dir / f"tiny-{TINY_LAYOUT.file_name()}"
    generate_checkpoint(tiny, TINY_LAYOUT)
    tiny_command = [*weissi, "inspect", str(tiny), "--json"]
    found = Measurements()
    compile_weissi()
    # Warm-up, untimed: the page cache for the input, and fresh pages for the written copies
    # (on this VM the first writes after a pause run several times slower).
    warm_page_cache(path)
    rewrite_ceiling(path, scratch)
    # Interleave ceilings and commands so drift hits both sides of each ratio alike.
    for index in range(runs):
        # This VM pages out memory left untouched for a few seconds (DAMON), page cache too:
        # every run starts from a warm cache.
        warm_page_cache(path)
        found.startup.add(run_measured([sys.executable, "-c", "import weissi_cli.cli.app"]))
        found.fixed.add(run_measured(tiny_command, env))
        read_s = _timed(lambda: read_ceiling(path), found.reads)
        found.reads_process.add(
            run_measured(
                [sys.executable, str(Path(__file__).with_name("read_ceiling.py")), str(path)]
            )
        )
        inspected = run_measured(inspect_command, env)
        found.inspect.add(inspected)
        output.unlink(missing_ok=True)
        settle()
        rewrite_s = _timed(lambda: rewrite_ceiling(path, scratch), found.rewrites)
        settle()
        rebalanced = run_measured(rebalance_command, env)
        found.rebalance.add(rebalanced)
        output.unlink(missing_ok=True)
        found.per_run.append(
            {
                "read_ceiling_s": read_s,
                "inspect_s": inspected.seconds,
                "inspect_ratio": read_s / inspected.seconds,
                "rewrite_ceiling_s": rewrite_s,
                "rebalance_s": rebalanced.seconds,
                "rebalance_ratio": rewrite_s / rebalanced.seconds,
            }
        )
        print(
            f"run {index + 1}: read ceiling {_gbps(size, read_s):.2f} GB/s, "
            f"inspect {inspected.seconds:.2f} s (ratio {read_s / inspected.seconds:.2f}), "
            f"rewrite ceiling {_gbps(size, rewrite_s):.2f} GB/s, "
            f"rebalance {rebalanced.seconds:.2f} s (ratio {rewrite_s / rebalanced.seconds:.2f})",
            flush=True,
        )
    tiny.unlink()
    return found


def build_rows(found: Measurements, size: int) -> list[dict[str, Any]]:
    read_s = found.reads.median_seconds
    rewrite_s = found.rewrites.median_seconds
    startup_s = found.fixed.median_seconds
    target = f">= {TARGET_RATIO:.0%} of ceiling, RssAnon < {TARGET_RSS_ANON_MB:.0f} MB"

    def row(series: Series, ceiling: float | None = None, note: str = "") -> dict[str, Any]:
        seconds = series.median_seconds
        result: dict[str, Any] = {
            "command": series.name,
            "seconds": seconds,
            "seconds_all": series.seconds,
            "gbps": _gbps(size, seconds) if ceiling is not None or not note else None,
            "ratio": None,
            "ratio_without_startup": None,
            "peak_rss_anon_mb": series.peak_anon,
            "peak_rss_anon_mb_all": series.peak_rss_anon_mb,
            "peak_rss_file_mb_all": series.peak_rss_file_mb,
            "target": note,
            "ok": None,
        }
        if ceiling is not None:
            ratio = ceiling / seconds
            anon = series.peak_anon
            result["ratio"] = ratio
            if seconds > startup_s:
                result["ratio_without_startup"] = ceiling / (seconds - startup_s)
            result["target"] = target
            result["ok"] = ratio >= TARGET_RATIO and anon is not None and anon < TARGET_RSS_ANON_MB
        return result

    return [
        row(found.reads),
        row(found.inspect, read_s),
        row(found.rewrites),
        row(found.rebalance, rewrite_s),
        row(found.startup, note="(part of the start-up)"),
        row(found.fixed, note="(start-up; part of every command)"),
        row(found.reads_process, note="(both sides pay a Python start-up)"),
        {
            **row(found.inspect, found.reads_process.median_seconds),
            "command": "weissi inspect vs the ceiling as a process",
        },
    ]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    weissi = weissi_command()
    env = dict(item.split("=", 1) for item in args.env)
    with checkpoint_file(args) as (path, layout):
        size = path.stat().st_size
        print(
            f"checkpoint: {layout.layers} x Linear({layout.width}, {layout.width}) "
            f"{layout.dtype}, {size / 2**30:.2f} GiB; {args.runs} run(s)"
            + (f"; command env {env}" if env else ""),
            flush=True,
        )
        first_read = warm_page_cache(path)
        found = measure(path, args.data_dir, args.runs, weissi, env)

    rows = build_rows(found, size)
    per_run_ratios = {
        key: statistics.median(run[key] for run in found.per_run)
        for key in ("inspect_ratio", "rebalance_ratio")
    }
    print()
    print_table(rows)
    print(
        f"\nmedian of per-run ratios: inspect {per_run_ratios['inspect_ratio']:.2f}, "
        f"rebalance {per_run_ratios['rebalance_ratio']:.2f}"
    )
    print(
        f"ratio with the fixed cost ({found.fixed.median_seconds:.2f} s) subtracted: "
        f"inspect {_fmt(rows[1]['ratio_without_startup'])}, "
        f"rebalance {_fmt(rows[3]['ratio_without_startup'])}"
    )

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "timestamp": stamp,
        "machine": machine_info(),
        "checkpoint": {**asdict(layout), "bytes": size, "first_read_s": first_read},
        "settings": {
            "runs": args.runs,
            "chunk_bytes": CHUNK_BYTES,
            "command": weissi,
            "command_env": env,
        },
        "targets": {"ratio": TARGET_RATIO, "peak_rss_anon_mb": TARGET_RSS_ANON_MB},
        "ceilings": {
            "read_gbps": _gbps(size, found.reads.median_seconds),
            "rewrite_gbps": _gbps(size, found.rewrites.median_seconds),
        },
        "startup_s": found.fixed.median_seconds,
        "median_per_run_ratios": per_run_ratios,
        "rows": rows,
        "per_run": found.per_run,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    destination = args.results_dir / f"{stamp}.json"
    destination.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {destination}")
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
