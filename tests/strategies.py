"""Hypothesis strategies: chains of layer norms, layer sizes and positive shifts."""

from __future__ import annotations

from hypothesis import strategies as st

positive_norms = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
bias_norms = st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False)
log_scales = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, allow_infinity=False)


@st.composite
def chains(
    draw: st.DrawFn, min_depth: int = 2, max_depth: int = 7
) -> tuple[list[float], list[float]]:
    """(weight norms, bias norms) of a chain."""
    depth = draw(st.integers(min_depth, max_depth))
    weights = draw(st.lists(positive_norms, min_size=depth, max_size=depth))
    biases = draw(st.lists(bias_norms, min_size=depth, max_size=depth))
    return weights, biases


@st.composite
def layer_sizes(draw: st.DrawFn, min_depth: int = 2, max_depth: int = 5) -> tuple[int, ...]:
    depth = draw(st.integers(min_depth, max_depth))
    return tuple(draw(st.lists(st.integers(1, 9), min_size=depth + 1, max_size=depth + 1)))


@st.composite
def link_shifts(draw: st.DrawFn, depth: int) -> tuple[float, ...]:
    """Log link scales s_0..s_L with s_0 = s_L = 0."""
    inner = draw(st.lists(log_scales, min_size=depth - 1, max_size=depth - 1))
    return (0.0, *inner, 0.0)
