"""Time tracing a Hugging Face architecture and solving its symmetries (a 7B-shaped LLaMA).

Writes a config.json (no weights) for a 32-layer LLaMA-7B shape and, in a fresh process
per run: builds the model on the meta device and exports it (`trace`), walks the graph and
solves the constraints (`solve`), groups the free atoms into symmetries (`components`) and
finds where the others stopped (`stops`). Peak private memory (RssAnon) is sampled from
/proc while the process runs. Prints medians and writes results/trace-<UTC>.json.

    python benchmarks/trace.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent

LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

CHILD = r"""
import json, sys, time
started = time.perf_counter()
from pathlib import Path
import torch, transformers
from weissi_cli.structure.trace import from_transformers
from weissi_cli.structure.engine import solve_graph
from weissi_cli.structure.engine.components import stops, symmetries
imported = time.perf_counter()
config = Path(sys.argv[1])
with torch.device("meta"):
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(config.parent)
    )
shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
del model
named = time.perf_counter()
traced = from_transformers(config, list(shapes))
traced_at = time.perf_counter()
read = set(traced.placeholders.values())
shapes = {name: shape for name, shape in shapes.items() if name in read}
state = solve_graph(traced.graph, traced.placeholders, shapes)
solved = time.perf_counter()
found = symmetries(state, list(shapes), shapes, traced.origin)
grouped = time.perf_counter()
stopped = stops(state, list(shapes))
done = time.perf_counter()
nodes = sum(1 for _ in traced.graph.nodes)
print(json.dumps({
    "imports": imported - started, "names": named - imported, "trace": traced_at - named,
    "solve": solved - traced_at, "components": grouped - solved, "stops": done - grouped,
    "total": done - started, "nodes": nodes, "symmetries": len(found), "stopped": len(stopped),
    "atoms": state.atoms.count,
}))
"""


def sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            return
        time.sleep(0.01)


def run_once(config: Path) -> dict[str, float]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    peak = [0]
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(process.pid, peak, stop), daemon=True)
    sampler.start()
    output, _ = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"the traced run failed (exit {process.returncode})")
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    result["rss_anon_mb"] = peak[0] / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.json"
        config.write_text(json.dumps(LLAMA_7B))
        runs = [run_once(config) for _ in range(options.runs)]
    keys = ["imports", "names", "trace", "solve", "components", "stops", "total", "rss_anon_mb"]
    medians = {key: statistics.median(run[key] for run in runs) for key in keys}
    print(
        f"LLaMA-7B shape, {runs[0]['nodes']} graph nodes, {runs[0]['atoms']:,} atoms, "
        f"{runs[0]['symmetries']} symmetries, {runs[0]['stopped']} stops; medians of {len(runs)}:"
    )
    for key in keys:
        low = min(run[key] for run in runs)
        high = max(run[key] for run in runs)
        unit = " MB" if key == "rss_anon_mb" else " s"
        print(f"  {key:12} {medians[key]:8.2f}{unit}  (min {low:.2f}, max {high:.2f})")
    options.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = options.results_dir / f"trace-{stamp}.json"
    path.write_text(json.dumps({"config": LLAMA_7B, "runs": runs, "medians": medians}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
