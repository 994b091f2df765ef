"""Probes through a chain of linear layers, computed as the stored network computes them.

A 16-bit network rounds every layer's output to its storage dtype. A power-of-two scale
commutes with that rounding for normal numbers, not for subnormal ones (float16 below
2^-14): a shifted network can round its small activations differently. So 16-bit chains
are probed with each layer's output rounded to the storage dtype, and float16 chains also
with inputs scaled down until their activations reach the subnormal range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.io.dtypes import decode, encode

FloatArray = npt.NDArray[np.floating]

# Below this magnitude a nonzero value of the dtype is subnormal.
SUBNORMAL_BELOW = {"float16": 2.0**-14, "bfloat16": 2.0**-126}
# Input scales for float16 probes: unit-sized inputs, then smaller ones until a typical
# layer's outputs fall through float16's subnormal range (2^-24 to 2^-14).
FLOAT16_INPUT_SCALES = (1.0, 2.0**-4, 2.0**-8, 2.0**-12, 2.0**-16, 2.0**-20)


@dataclass(frozen=True)
class ProbeInputs:
    """Rows of probe inputs in groups of `per_group` rows, group `g` scaled by `scales[g]`."""

    values: FloatArray
    scales: tuple[float, ...]
    per_group: int

    def describe(self) -> str:
        if len(self.scales) == 1:
            return f"{self.values.shape[0]} random probes"
        lowest = round(math.log2(min(self.scales)))
        return f"{self.values.shape[0]} random probes at input scales 1 to 2^{lowest}"


def probe_inputs(
    features: int, compute: type[np.floating], storage: str | None, probes: int, seed: int
) -> ProbeInputs:
    """Standard normal rows; for float16 storage, the same rows (half of them made
    non-negative, as pixels and post-ReLU features are) at every scale of
    FLOAT16_INPUT_SCALES, rounded to float16 as the network would store them."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((probes, features))
    if storage != "float16":
        return ProbeInputs(base.astype(compute), (1.0,), probes)
    signed = base.copy()
    signed[probes // 2 :] = np.abs(signed[probes // 2 :])
    groups = [signed * scale for scale in FLOAT16_INPUT_SCALES]
    values = round_to(np.concatenate(groups).astype(compute), storage)
    return ProbeInputs(values, FLOAT16_INPUT_SCALES, probes)


def round_to(values: FloatArray, storage: str | None) -> FloatArray:
    """`values` rounded once to the 16-bit `storage` dtype (unchanged for None)."""
    if storage is None:
        return values
    shape = values.shape
    rounded = decode(encode(values.astype(np.float64).ravel(), storage), storage)
    return rounded.astype(values.dtype, copy=False).reshape(shape)


def storage_of(dtypes: set[str]) -> str | None:
    """The 16-bit dtype a chain computes in (float16 wins over bfloat16), or None."""
    for dtype in ("float16", "bfloat16"):
        if dtype in dtypes:
            return dtype
    return None


def activate(
    values: FloatArray, activation: str, slope: float, slopes: FloatArray | None
) -> FloatArray:
    """The chain's activation, in place where it can be: ReLU, a leaky ReLU of `slope`, a
    PReLU of the per-channel (or single) `slopes`, or nothing."""
    if activation == "relu":
        rectified: FloatArray = np.maximum(values, 0, out=values)
        return rectified
    if activation == "leaky_relu":
        leaky: FloatArray = np.where(values >= 0, values, values * slope)
        return leaky
    if activation == "prelu":
        assert slopes is not None
        parametric: FloatArray = np.where(values >= 0, values, values * slopes)
        return parametric
    return values


def subnormals(values: FloatArray, storage: str | None) -> int:
    """How many nonzero values lie below the storage dtype's normal range."""
    if storage not in SUBNORMAL_BELOW:
        return 0
    magnitudes = np.abs(values)
    return int(np.count_nonzero((magnitudes > 0) & (magnitudes < SUBNORMAL_BELOW[storage])))


def output_change(
    before: FloatArray, after: FloatArray, inputs: ProbeInputs
) -> tuple[float, float]:
    """(largest |after − before|, largest of it relative to the largest output of the same
    input scale): small inputs give small outputs, and their change is judged by them."""
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(after.astype(np.float64) - before.astype(np.float64))
    if not difference.size:
        return 0.0, 0.0
    worst_abs = float(difference.max())
    worst_rel = 0.0
    for group in range(len(inputs.scales)):
        rows = slice(group * inputs.per_group, (group + 1) * inputs.per_group)
        moved = float(difference[rows].max())
        largest = float(np.abs(before[rows]).max())
        if moved == 0.0:
            continue
        worst_rel = max(worst_rel, moved / largest if largest > 0 else math.inf)
    return worst_abs, worst_rel
