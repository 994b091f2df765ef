"""`weissi diff` of a rebalanced pair (A against `weissi rebalance A -o B`) and of A against
itself, on the suite's LLaMA-shaped folders, against the two-file read ceiling.

Per run, with the pages of A and B warmed first: the dot ceiling over A's and B's files
(in-process, and as a program), then `diff A B --json` and `diff A A --json` for every
--code, in an order that alternates from run to run. --code LABEL=DIR runs the package
found in DIR (through PYTHONPATH; `python -P`, so that the working directory does not come
first), so two versions are measured side by side under the same
conditions; without it, the installed one. Ratio: ceiling seconds / command seconds. Prints
a table and writes results/diff-<timestamp>.json.

Usage: python benchmarks/diff.py [--size-gib 2] [--dtype float32 bfloat16] [--shards 1 4]
       [--runs 3] [--data-dir DIR] [--code LABEL=DIR ...] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    DEFAULT_DATA_DIR,
    RESULTS_DIR,
    compile_weissi,
    machine_info,
    read_ceiling,
    run_measured,
    warm_page_cache,
)
from suite import ITEMSIZE, READ_CEILING_PROGRAM, Transformer, generate  # noqa: E402


def files_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def rebalanced(entry: Path, code: dict[str, str] | None) -> Path:
    """B: A rebalanced layer-wise (made once, kept beside A while the data is kept)."""
    output = entry.with_name(entry.name + ".rebalanced")
    if not output.exists():
        command = [
            sys.executable,
            "-P",
            "-m",
            "weissi_cli",
            "rebalance",
            str(entry),
            "-o",
            str(output),
        ]
        subprocess.run([*command, "--json"], stdout=subprocess.DEVNULL, check=True, env=code)
    return output


def measure_case(
    entry: Path, codes: dict[str, dict[str, str] | None], runs: int
) -> list[dict[str, Any]]:
    second = rebalanced(entry, next(iter(codes.values())))
    files = [*files_of(entry), *files_of(second)]
    measured: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    for run in range(runs):
        for path in files:
            warm_page_cache(path)
        measured.setdefault("dot", []).append(sum(read_ceiling(path) for path in files))
        program = run_measured([sys.executable, str(READ_CEILING_PROGRAM), *map(str, files)])
        measured.setdefault("dot as a program", []).append(program.seconds)
        labels = list(codes) if run % 2 == 0 else list(reversed(codes))
        for label in labels:
            for pair, other in (("A B", second), ("A A", entry)):
                command = [sys.executable, "-P", "-m", "weissi_cli", "diff", str(entry), str(other)]
                done = run_measured([*command, "--json"], env=codes[label])
                key = f"diff {pair} [{label}]"
                measured.setdefault(key, []).append(done.seconds)
                peaks[key] = max(peaks.get(key, 0.0), done.peak_rss_anon_mb)
    read = statistics.median(measured["dot"])
    read_program = statistics.median(measured["dot as a program"])
    rows = []
    for key, seconds in measured.items():
        row: dict[str, Any] = {
            "case": entry.name,
            "command": key,
            "seconds": statistics.median(seconds),
            "runs_s": seconds,
        }
        if key.startswith("diff"):
            row["ratio"] = read / row["seconds"]
            row["ratio_to_program"] = read_program / row["seconds"]
            row["peak_rss_anon_mb"] = peaks[key]
        rows.append(row)
    return rows


def parse_codes(values: list[str]) -> dict[str, dict[str, str] | None]:
    if not values:
        return {"installed": None}
    codes: dict[str, dict[str, str] | None] = {}
    for value in values:
        label, _, folder = value.partition("=")
        codes[label] = {**os.environ, "PYTHONPATH": str(Path(folder).resolve())}
        subprocess.run([sys.executable, "-m", "compileall", "-q", folder], check=False)
    return codes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=ITEMSIZE)
    parser.add_argument("--shards", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "suite")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = parser.parse_args()
    codes = parse_codes(args.code)
    if not args.code:
        compile_weissi()
    rows: list[dict[str, Any]] = []
    try:
        for dtype in args.dtype:
            model = Transformer.for_size(int(args.size_gib * 2**30), dtype)
            for shards in args.shards:
                print(f"measuring {model.name(shards)} ...", flush=True)
                entry, _ = generate(args.data_dir / model.name(shards), model, shards)
                rows += measure_case(entry, codes, args.runs)
    finally:
        if not args.keep:
            shutil.rmtree(args.data_dir, ignore_errors=True)
    line = "{:<38} {:<26} {:>7} {:>6} {:>6} {:>10}"
    print("\n" + line.format("case", "command", "s", "ratio", "r.prog", "RssAnon MB"))
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        to_program = f"{row['ratio_to_program']:.2f}" if "ratio" in row else ""
        rss = f"{row['peak_rss_anon_mb']:.0f}" if "ratio" in row else ""
        print(
            line.format(
                row["case"], row["command"], f"{row['seconds']:.2f}", ratio, to_program, rss
            )
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    destination = RESULTS_DIR / f"diff-{stamp}.json"
    summary = {"timestamp": stamp, "machine": machine_info(), "rows": rows}
    destination.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
