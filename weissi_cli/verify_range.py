"""float16's range in two exported programs: how far a rewrite moves them towards overflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FLOAT16_MAX = 65504.0
# Powers of two the recorded example is scaled up by, until the original's outputs stop
# being finite: a rewrite that grows activations 2^k-fold overflows k steps earlier.
SCALES_UP = tuple(2.0**k for k in range(1, 17))
# A rewrite with real scales rounds each rescaled weight once, which moves an activation's
# largest magnitude a little either way: only growth beyond this counts.
GROWTH_NOISE = 1.01


@dataclass(frozen=True)
class RangeChange:
    """`before`, `after`: the largest finite magnitude of any float16 value the program
    computes (its intermediate activations and outputs) on the inputs measured; `growth`:
    the largest factor by which one value's largest magnitude grew; `grown`: how many
    values grew beyond rounding; `overflow_before`, `overflow_after`: the smallest factor
    of SCALES_UP at which the recorded example gives outputs that are not all finite
    (None: finite up to the last)."""

    before: float
    after: float
    growth: float
    grown: int
    values: int
    overflow_before: float | None
    overflow_after: float | None
    scaled: bool = True  # the example has floating inputs to scale up

    @property
    def grew(self) -> bool:
        return self.growth > GROWTH_NOISE

    @property
    def earlier(self) -> float:
        """How many times smaller the inputs are at which the rewrite overflows first."""
        return self.after / self.before if self.before > 0 else 1.0

    def detail(self) -> str:
        """What was measured, for the run's detail line."""
        found = (
            f"largest float16 activation {self.after:.4g} of {FLOAT16_MAX:g} "
            f"({self.before:.4g} before)"
        )
        if self.grew:
            found += f", {self.grown} of {self.values} activations up to {self.growth:g}× larger"
        return f"{found}; {self._overflow()}"

    def _overflow(self) -> str:
        if not self.scaled:
            return "the example has no floating inputs to scale up"

        def at(factor: float | None) -> str:
            return f"×{factor:g}" if factor is not None else f"none up to ×{SCALES_UP[-1]:g}"

        return (
            "the example scaled up by powers of two gives non-finite outputs from "
            f"{at(self.overflow_after)} rewritten, {at(self.overflow_before)} original"
        )

    def caveat(self) -> str:
        """What the rewrite costs in float16 range, and the choices (empty: nothing grew)."""
        if not self.grew:
            return ""
        earlier = (
            f"so the rewritten program overflows float16 at inputs about {self.earlier:.3g}× "
            "smaller than the original does"
            if self.earlier > GROWTH_NOISE
            else "though on these inputs not the largest one, so where the program "
            "overflows first can still move"
        )
        return (
            f"float16 overflows above {FLOAT16_MAX:g}, and the rewrite scales {self.grown} of "
            f"{self.values} float16 activations up by as much as {self.growth:g}×: on these "
            f"inputs the largest activation is {self.after:.4g} of {FLOAT16_MAX:g} "
            f"({self.before:.4g} before), {earlier}; {self._overflow()}. Inputs larger than "
            "these can overflow in the rewrite where the original stays finite (bfloat16 has "
            "float32's range and does not overflow this way). Accept that, or choose "
            "--hold-headroom (no 16-bit activation scaled up; --scales real does not help, "
            "real scales move activations too)"
        )


def measure_range(
    original: Any, rewritten: Any, inputs: list[tuple[list[Any], dict[str, Any]]]
) -> RangeChange | None:
    """Both unlifted programs on `inputs` (the first is the recorded example), each float16
    value's largest magnitude compared; None when the graphs cannot be interpreted."""
    import torch

    args, kwargs = inputs[0]
    scaled = any(
        isinstance(v, torch.Tensor) and v.is_floating_point() for v in [*args, *kwargs.values()]
    )
    try:
        before = _largest(original, inputs)
        after = _largest(rewritten, inputs)
    except Exception:  # an op the interpreter cannot replay: the range is not measured
        return None
    shared = [name for name in before if name in after]
    if not shared:
        return None
    ratios = [after[n] / before[n] for n in shared if before[n] > 0]
    return RangeChange(
        before=max(before[n] for n in shared),
        after=max(after[n] for n in shared),
        growth=max(ratios, default=1.0),
        grown=sum(ratio > GROWTH_NOISE for ratio in ratios),
        values=len(shared),
        overflow_before=_first_overflow(original, inputs[0]) if scaled else None,
        overflow_after=_first_overflow(rewritten, inputs[0]) if scaled else None,
        scaled=scaled,
    )


def _largest(module: Any, inputs: list[tuple[list[Any], dict[str, Any]]]) -> dict[str, float]:
    """node name -> the largest finite magnitude of its float16 value over `inputs`."""
    import torch
    from torch.fx._pytree import tree_flatten_spec

    found: dict[str, float] = {}

    class Largest(torch.fx.Interpreter):
        def run_node(self, node: Any) -> Any:
            value = super().run_node(node)
            if (
                node.op == "call_function"
                and isinstance(value, torch.Tensor)
                and value.dtype == torch.float16
                and value.numel()
            ):
                finite = value.detach().abs().float().nan_to_num(0.0, 0.0, 0.0)
                found[node.name] = max(found.get(node.name, 0.0), float(finite.max()))
            return value

    with torch.no_grad():
        for args, kwargs in inputs:
            flat = tree_flatten_spec((tuple(args), dict(kwargs)), module._in_spec)
            Largest(module).run(*flat)
    return found


def _first_overflow(module: Any, example: tuple[list[Any], dict[str, Any]]) -> float | None:
    """The smallest factor of SCALES_UP at which `module`'s outputs on the scaled example
    are not all finite."""
    import torch

    from weissi_cli.verify_outputs import tensors

    args, kwargs = example

    def scaled(value: Any, factor: float) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return (value.float() * factor).to(value.dtype)
        return value

    with torch.no_grad():
        for factor in SCALES_UP:
            given = [scaled(a, factor) for a in args]
            named = {k: scaled(v, factor) for k, v in kwargs.items()}
            outputs = [t for t in tensors(module(*given, **named)) if t.is_floating_point()]
            if not all(bool(torch.isfinite(t).all()) for t in outputs):
                return factor
    return None
