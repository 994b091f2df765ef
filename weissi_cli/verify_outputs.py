"""Running the real network on both checkpoints: the one table of how far its outputs may
move, the comparison of outputs, and the run of two exported programs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from weissi_cli.verification import SEED, ChainVerification, Level

# How far a run's outputs may move, relative to the largest output, by the dtype they come
# out in: the rewrite rounds every rescaled value once (real scales), and 16-bit outputs
# round again on the way. Every run of the real network (exported programs, transformers,
# a traced module, ONNX Runtime) is held to this one table.
OUTPUT_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": 3e-2, "bfloat16": 3e-2}
OTHER_TOLERANCE = 1e-4  # outputs of another floating dtype


class OutputChange:
    """The largest change between the outputs of two runs, absolute and relative to the
    largest output, over every output compared; and whether the table allows it."""

    def __init__(self) -> None:
        self.worst_abs = 0.0
        self.worst_rel = 0.0
        self.dtype = "float32"

    def add(self, old: npt.NDArray[np.float64], new: npt.NDArray[np.float64], dtype: str) -> None:
        """One output of each run, widened to float64; `dtype` is the one it came out in."""
        self.dtype = dtype
        if old.size == 0:
            return
        difference = float(np.max(np.abs(new - old)))
        scale = float(np.max(np.abs(old)))
        self.worst_abs = max(self.worst_abs, difference)
        self.worst_rel = max(self.worst_rel, difference / scale if scale > 0 else difference)

    def add_torch(self, old: Any, new: Any) -> None:
        """One output of each run as torch tensors."""
        self.add(
            old.double().numpy(force=True), new.double().numpy(force=True), _dtype_name(old.dtype)
        )

    def mismatch(self) -> None:
        """Non-floating outputs that differ: the outputs changed beyond any allowance."""
        self.worst_abs = self.worst_rel = math.inf

    @property
    def tolerance(self) -> float:
        return OUTPUT_TOLERANCE.get(self.dtype, OTHER_TOLERANCE)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.worst_abs) and math.isfinite(self.worst_rel)

    @property
    def passed(self) -> bool:
        return self.finite and self.worst_rel <= self.tolerance

    @property
    def identical(self) -> bool:
        return self.worst_abs == 0.0

    def moved(self) -> str:
        """How far the outputs moved, without the allowance."""
        if self.identical:
            return "outputs bit-identical on these inputs"
        return (
            f"outputs moved by at most {self.worst_abs:.3g} ({self.worst_rel:.2g} of their largest"
        )

    def outcome(self) -> str:
        """How far the outputs moved, and the allowance."""
        if self.identical:
            return self.moved()
        return f"{self.moved()}, allowed {self.tolerance:g})"

    def verification(
        self,
        label: str,
        method: str,
        detail: str,
        probes: int,
        caveat: str = "",
        level: Level = "real_network",
        passed: bool | None = None,
    ) -> ChainVerification:
        """The result of a run of the real network that these outputs came from (`passed`:
        when not the table's verdict, as for approximate symmetries, measured not bounded)."""
        return ChainVerification(
            label,
            method,
            self.passed if passed is None else passed,
            self.worst_abs if math.isfinite(self.worst_abs) else None,
            self.worst_rel if math.isfinite(self.worst_rel) else None,
            self.identical,
            detail,
            level=level,
            caveat=caveat,
            probes=probes,
        )


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def run_programs(
    original: Any,
    rewritten: Any,
    label: str,
    examples: tuple[tuple[Any, ...], dict[str, Any]] | None,
    probes: int = 4,
    power_of_two: bool = False,
) -> ChainVerification:
    """Run both exported programs on the recorded `examples` (kept apart from the programs,
    which are built without them: see io/pt2_program.py) and on random inputs shaped like
    them; a float16 program also on those inputs scaled down to 2^-20, whose activations
    reach float16's subnormal range. `power_of_two`: every factor was one (the caveat on
    float16 subnormals then applies)."""
    import torch

    from weissi_cli.probes import FLOAT16_INPUT_SCALES
    from weissi_cli.verify_range import measure_range

    if examples is None:
        return ChainVerification(
            label,
            "run",
            True,
            None,
            None,
            None,
            "not run: the program records no example inputs",
            level="values_only",
        )
    args, kwargs = examples
    generator = torch.Generator().manual_seed(SEED)

    def like(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return torch.randn(value.shape, generator=generator, dtype=torch.float32).to(
                value.dtype
            )
        return value

    def scaled(value: Any, factor: float) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return (value.float() * factor).to(value.dtype)
        return value

    half = any(
        isinstance(v, torch.Tensor) and v.dtype == torch.float16 for v in [*args, *kwargs.values()]
    )
    inputs = [(list(args), dict(kwargs))] + [
        ([like(a) for a in args], {k: like(v) for k, v in kwargs.items()})
        for _ in range(probes - 1)
    ]
    if half:
        inputs += [
            ([scaled(a, factor) for a in given], {k: scaled(v, factor) for k, v in named.items()})
            for factor in FLOAT16_INPUT_SCALES[1:]
            for given, named in inputs[:probes]
        ]
    change = OutputChange()
    with torch.no_grad():
        before_module, after_module = original.module(), rewritten.module()
        for given, named in inputs:
            before = [t for t in tensors(before_module(*given, **named)) if t.is_floating_point()]
            after = [t for t in tensors(after_module(*given, **named)) if t.is_floating_point()]
            for old, new in zip(before, after, strict=True):
                change.add_torch(old, new)
    which = f"the recorded example and {probes - 1} random inputs shaped like it"
    if half:
        which += f" ({len(inputs)} with copies scaled down to 2^-20)"
    caveats = []
    if power_of_two and change.dtype == "float16":
        caveats.append(float16_caveat(change.worst_abs, change.worst_rel, None, "these inputs"))
    detail = f"ran both programs on {which}: {change.outcome()}"
    if half or change.dtype == "float16":
        # the range float16 leaves above the largest activation, before and after
        measured = measure_range(before_module, after_module, inputs[:probes])
        if measured is None:
            detail += "; float16 range not measured (the graph could not be replayed node by node)"
        else:
            detail += f"; {measured.detail()}"
            caveats.append(measured.caveat())
    return change.verification(
        label, "run", detail, len(inputs), "\n".join(c for c in caveats if c)
    )


def tensors(value: Any) -> list[Any]:
    """The tensors in a nested output (tuples, lists, dicts), in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors(item)]
    return []


def float16_caveat(
    max_abs: float, max_rel: float, subnormal: int | None, inputs: str, chains: bool = False
) -> str:
    """What power-of-two scales leave open in float16, and the choices. `subnormal`: how
    many activations were subnormal on `inputs` (None: not counted); `chains`: the scales
    are a chain's, which --hold-activations can hold."""
    found = (
        f"on {inputs} the outputs stayed bit-identical"
        if max_abs == 0.0
        else f"on {inputs} the outputs moved by up to {max_abs:.3g} ({max_rel:.2g} of their "
        "largest)"
    )
    if subnormal is not None:
        found += f" with {subnormal:,} subnormal activations"
    choices = "choose --scales real (each rescaled weight rounded once)"
    if chains:
        choices += ", or --hold-activations (no 16-bit activation scaled down)"
    return (
        "float16 activations below 2^-14 are subnormal and round differently once a "
        f"power-of-two scale moves them: {found}; other inputs with small activations can "
        f"move them more. Accept that, or {choices}"
    )
