"""Time the stages inside `inspect_checkpoint` and `rebalance_checkpoint`, in one process.

Wraps the functions the API modules call (open, discover, statistics_pass, write_rescaled,
verify, commit, os.fsync) with timers, then runs the real API entry points on a
checkpoint made by `run.py --keep`. Page cache warm; medians over --runs.

Usage: python benchmarks/stages.py CHECKPOINT_OR_FOLDER [--runs 3] [--verify-with none]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()
import weissi_cli.api.inspect as api_inspect  # noqa: E402
import weissi_cli.api.rebalance as api_rebalance  # noqa: E402
import weissi_cli.writers as writers  # noqa: E402
from weissi_cli.io import open_checkpoint  # noqa: E402
from weissi_cli.report.common import to_json  # noqa: E402
from weissi_cli.stats import compute_stats  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _T0

Timings = dict[str, float]


class Timer:
    """Accumulates seconds per label while patched functions run."""

    def __init__(self) -> None:
        self.totals: Timings = collections.defaultdict(float)

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[label] += time.perf_counter() - start

        return timed


@contextlib.contextmanager
def patched(targets: Sequence[tuple[Any, str, str]], timer: Timer) -> Iterator[None]:
    """Replace `owner.attribute` with a timed wrapper labelled `label`, then restore."""
    saved = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in targets]
    for owner, attribute, label in targets:
        setattr(owner, attribute, timer.wrap(label, getattr(owner, attribute)))
    try:
        yield
    finally:
        for owner, attribute, original in saved:
            setattr(owner, attribute, original)


def time_inspect(path: Path) -> Timings:
    timer = Timer()
    targets = [
        (api_inspect, "open_checkpoint", "open"),
        (api_inspect, "discover", "discover"),
        (api_inspect, "statistics_pass", "statistics_pass (stats + squares)"),
        (api_inspect, "analyse_chain", "analyse_chain"),
        (api_inspect, "solve_group", "solve_group"),
    ]
    with patched(targets, timer):
        start = time.perf_counter()
        report = api_inspect.inspect_checkpoint(path)
        timer.totals["inspect_checkpoint (total)"] = time.perf_counter() - start
    start = time.perf_counter()
    to_json(report.to_dict())
    timer.totals["to_json"] = time.perf_counter() - start
    return dict(timer.totals)


def time_rebalance(path: Path, output: Path, verify_with: str | None) -> Timings:
    timer = Timer()
    targets = [
        (api_rebalance, "open_checkpoint", "open"),
        (api_rebalance, "discover", "discover"),
        (api_rebalance, "statistics_pass", "statistics_pass (stats + squares)"),
        (api_rebalance, "plan_rebalance", "plan_rebalance (solve)"),
        (api_rebalance, "write_rescaled", "write_rescaled (fsync in background)"),
        (api_rebalance, "_verify_and_measure", "verify chains (every value)"),
        (api_rebalance, "_verify_group", "verify symmetries (every value)"),
        (api_rebalance, "_run_transformers", "run both models with transformers"),
        (writers.PendingOutput, "commit", "commit"),
        (os, "fsync", "os.fsync (all)"),
    ]
    _remove(output)
    with patched(targets, timer):
        start = time.perf_counter()
        report = api_rebalance.rebalance_checkpoint(
            path, output, assume_relu=True, verify_with=verify_with
        )
        timer.totals["rebalance_checkpoint (total)"] = time.perf_counter() - start
    if not report.written:
        raise RuntimeError("rebalance did not write its output")
    _remove(output)
    return dict(timer.totals)


def _remove(output: Path) -> None:
    if output.is_dir():
        shutil.rmtree(output)
    else:
        output.unlink(missing_ok=True)


def time_stats_threads(path: Path) -> Timings:
    result: Timings = {}
    with open_checkpoint(path) as checkpoint:
        for threads in (1, 2):
            start = time.perf_counter()
            compute_stats(checkpoint, threads=threads)
            result[f"compute_stats threads={threads}"] = time.perf_counter() - start
    return result


def summarise(runs: list[Timings], size: int) -> None:
    labels = list(dict.fromkeys(label for run in runs for label in run))
    for label in labels:
        values = [run[label] for run in runs if label in run]
        median = statistics.median(values)
        rate = f"{size / median / 1e9:6.2f} GB/s" if median > 0 else ""
        print(f"  {label:<40} {median:8.3f} s  {rate}   all: {[round(v, 3) for v in values]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--verify-with",
        choices=("transformers", "none"),
        default=None,
        help="as rebalance's option (default: what rebalance chooses)",
    )
    args = parser.parse_args(argv)
    path: Path = args.checkpoint
    output = args.output or path.with_name(f"{path.stem}-stages{path.suffix}")
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    size = sum(file.stat().st_size for file in files)
    print(f"imports (api + writers + stats): {IMPORT_SECONDS:.3f} s")
    for file in files:  # warm the page cache
        with open(file, "rb") as handle:
            while handle.read(8 << 20):
                pass
    for title, function in (
        ("compute_stats on every tensor", lambda: time_stats_threads(path)),
        ("inspect_checkpoint", lambda: time_inspect(path)),
        ("rebalance_checkpoint", lambda: time_rebalance(path, output, args.verify_with)),
    ):
        print(f"{title} ({size / 2**30:.2f} GiB, median of {args.runs}):")
        summarise([function() for _ in range(args.runs)], size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
