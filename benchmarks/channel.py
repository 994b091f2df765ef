"""Channel-wise rebalancing of a ~100M-parameter float32 MLP: time, sweeps, peak private memory,
and the layer-wise rebalance of the same file for comparison.

The bar: peak private memory (RssAnon) at most 300 MB at any model size (the solver streams
the squares of large tensors from the file), and at most 4x the layer-wise rebalance's time.
Rows get different scales so the per-channel problem is not trivial. With --runs N the two
commands alternate N times and the medians are reported.

Usage: python benchmarks/channel.py [--parameters 100e6] [--layers 5] [--runs 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DEFAULT_DATA_DIR, MB, _Sampler, weissi_command  # noqa: E402


def generate(path: Path, parameters: float, layers: int, seed: int = 0) -> int:
    import torch
    from safetensors.torch import save_file

    width = int((parameters / layers) ** 0.5)
    rng = np.random.default_rng(seed)
    tensors = {}
    for index in range(layers):
        rows = rng.lognormal(0.0, 1.0, (width, 1)).astype(np.float32)
        weight = rng.standard_normal((width, width), dtype=np.float32) * rows * 2.0 ** (index % 3)
        tensors[f"net.{2 * index}.weight"] = torch.from_numpy(weight)
        tensors[f"net.{2 * index}.bias"] = torch.from_numpy(
            rng.standard_normal(width).astype(np.float32)
        )
    save_file(tensors, str(path))
    return width


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=float, default=100e6)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    source = args.data_dir / f"channel_{int(args.parameters)}_{args.layers}.safetensors"
    width = None
    if not source.exists():
        width = generate(source, args.parameters, args.layers)
    output = args.data_dir / "channel_out.safetensors"
    base = [*weissi_command(), "rebalance", str(source), "-o", str(output), "--assume-relu"]
    channel_runs, layer_runs = [], []
    for _ in range(args.runs):
        channel_runs.append(_run([*base, "--granularity", "channel", "--json"], output))
        layer_runs.append(_run([*base, "--json"], output))
    seconds = statistics.median(run[0] for run in channel_runs)
    layer_seconds = statistics.median(run[0] for run in layer_runs)
    peak_mb = max(run[1] for run in channel_runs)
    returncode = max(run[2] for run in channel_runs + layer_runs)
    payload = channel_runs[-1][3]
    size_mb = source.stat().st_size / MB
    chain = (payload.get("chains") or [{}])[0]
    channel = chain.get("channel") or {}
    result = {
        "checkpoint_mb": round(size_mb, 1),
        "width": width,
        "layers": args.layers,
        "runs": args.runs,
        "seconds": round(seconds, 2),
        "layer_seconds": round(layer_seconds, 2),
        "over_layer": round(seconds / layer_seconds, 2),
        "peak_rss_anon_mb": round(peak_mb, 1),
        "layer_peak_rss_anon_mb": round(max(run[1] for run in layer_runs), 1),
        "sweeps": channel.get("sweeps"),
        "converged": channel.get("converged"),
        "l2_before": chain.get("l2_before"),
        "layer_optimum": chain.get("min_l2_penalty"),
        "l2_after": chain.get("l2_after"),
        "path_norm_before": channel.get("path_norm_before"),
        "path_norm_after": channel.get("path_norm_after"),
        "verified": (payload.get("verification") or {}).get("passed"),
        "returncode": returncode,
    }
    print(json.dumps(result, indent=2))
    output.unlink(missing_ok=True)
    if not args.keep:
        source.unlink(missing_ok=True)
    ok = returncode == 0 and peak_mb <= 300 and seconds <= 4 * layer_seconds
    return 0 if ok else 1


def _run(command: list[str], output: Path) -> tuple[float, float, int, dict[str, object]]:
    """(seconds, peak RssAnon MB, exit code, JSON report) of one command."""
    output.unlink(missing_ok=True)
    with tempfile.TemporaryFile() as stdout:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout)
        sampler = _Sampler(process.pid)
        sampler.start()
        returncode = process.wait()
        seconds = time.perf_counter() - start
        sampler.stopped.set()
        sampler.join()
        stdout.seek(0)
        text = stdout.read().decode()
    payload = json.loads(text) if text.strip() else {}
    return seconds, sampler.peak_anon_kb * 1024 / MB, returncode, payload


if __name__ == "__main__":
    sys.exit(main())
