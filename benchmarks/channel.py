"""Channel-wise rebalancing of a ~100M-parameter float32 MLP: time, sweeps, peak private memory.

The issue's bar: converges in under 60 s on this 2-core machine, with peak private memory
(RssAnon) under 2x the checkpoint size. Rows get different scales so the per-channel problem
is not trivial.

Usage: python benchmarks/channel.py [--parameters 100e6] [--layers 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    source = args.data_dir / f"channel_{int(args.parameters)}_{args.layers}.safetensors"
    width = None
    if not source.exists():
        width = generate(source, args.parameters, args.layers)
    output = args.data_dir / "channel_out.safetensors"
    output.unlink(missing_ok=True)
    command = [*weissi_command(), "rebalance", str(source), "-o", str(output)]
    command += ["--assume-relu", "--granularity", "channel", "--json"]
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
    peak_mb = sampler.peak_anon_kb * 1024 / MB
    size_mb = source.stat().st_size / MB
    payload = json.loads(text) if text.strip() else {}
    chain = (payload.get("chains") or [{}])[0]
    channel = chain.get("channel") or {}
    result = {
        "checkpoint_mb": round(size_mb, 1),
        "width": width,
        "layers": args.layers,
        "seconds": round(seconds, 2),
        "peak_rss_anon_mb": round(peak_mb, 1),
        "rss_over_checkpoint": round(peak_mb / size_mb, 2),
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
    ok = returncode == 0 and seconds < 60 and peak_mb < 2 * size_mb
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
