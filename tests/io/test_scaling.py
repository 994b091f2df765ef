"""`ChunkScaler`: the power-of-two fast paths give the same bits as the float64 route."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.io.test_dtypes import FORMATS
from weissi_cli.io.dtypes import decode, encode, raw_numpy_dtype
from weissi_cli.numpy_scaling import ChunkScaler

DTYPES = ["float64", "float32", "float16", "bfloat16"]


def random_raw(dtype: str, size: int, seed: int) -> np.ndarray:
    """Random bit patterns (every exponent, subnormals, inf and NaN included)."""
    rng = np.random.default_rng(seed)
    itemsize = raw_numpy_dtype(dtype).itemsize
    return np.frombuffer(rng.bytes(size * itemsize), raw_numpy_dtype(dtype)).copy()


def reference(raw: np.ndarray, dtype: str, factor: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return encode(decode(raw, dtype).astype(np.float64) * factor, dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as bit patterns, except that any NaN equals any NaN."""
    a_float, b_float = a.view(a.dtype), b.view(b.dtype)
    if a.dtype.kind == "f":
        both_nan = np.isnan(a_float) & np.isnan(b_float)
    else:  # bfloat16 bits
        nan_a = ((a & 0x7F80) == 0x7F80) & ((a & 0x7F) != 0)
        nan_b = ((b & 0x7F80) == 0x7F80) & ((b & 0x7F) != 0)
        both_nan = nan_a & nan_b
    return bool(
        np.all(
            (a.view(np.uint8).reshape(a.size, -1) == b.view(np.uint8).reshape(b.size, -1)).all(1)
            | both_nan
        )
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(exponent=st.integers(-40, 40), seed=st.integers(0, 1000))
def test_power_of_two_fast_path_matches_the_float64_route(
    dtype: str, exponent: int, seed: int
) -> None:
    raw = random_raw(dtype, 4096, seed)
    factor = 2.0**exponent
    expected = reference(raw, dtype, factor)
    actual = ChunkScaler(4096).scale(raw.copy(), dtype, factor)
    assert actual.dtype == expected.dtype
    assert same_bits(actual, expected)


def test_bfloat16_power_of_two_into_float32_subnormals_takes_the_exact_route() -> None:
    # 2^-126 * (1 + 1/128) halved twice: the float32 product loses bits, so the fast path
    # must fall back to the float64 route (which rounds to nearest even once).
    value = np.float32(2.0**-126 * (1 + 1 / 128))
    raw = (np.array([value], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    assert same_bits(
        ChunkScaler(8).scale(raw.copy(), "bfloat16", 0.125), reference(raw, "bfloat16", 0.125)
    )


def round_exactly(value: Fraction, dtype: str) -> float:
    """An exact rational rounded once, to nearest with ties to even, into `dtype`."""
    if value == 0:
        return 0.0
    precision, emin, emax = FORMATS[dtype]
    magnitude = abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1  # now 2^exponent <= magnitude < 2^(exponent + 1)
    exponent = max(exponent, emin)
    quantum = Fraction(2) ** (exponent - precision + 1)
    rounded = round(magnitude / quantum) * quantum  # Fraction rounds half to even
    if rounded >= Fraction(2) ** (emax + 1):
        return math.copysign(math.inf, value)
    return math.copysign(float(rounded), value)


def exact_reference(raw: np.ndarray, dtype: str, factor: float) -> list[float]:
    """Each value times the factor, computed exactly and rounded once (Fraction arithmetic)."""
    values = decode(raw, dtype).astype(np.float64)
    return [round_exactly(Fraction(float(v)) * Fraction(factor), dtype) for v in values]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@given(
    factor=st.floats(1e-3, 1e3).filter(lambda f: math.frexp(f)[0] != 0.5),
    seed=st.integers(0, 10**6),
)
def test_real_factor_gives_the_correctly_rounded_exact_product(
    dtype: str, factor: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(256) * 10.0 ** rng.integers(-3, 3, 256)
    raw = encode(values, dtype)
    scaled = decode(ChunkScaler(256).scale(raw.copy(), dtype, factor), dtype).astype(np.float64)
    assert scaled.tolist() == exact_reference(raw, dtype, factor)


def test_products_whose_float64_rounding_lands_on_a_float32_midpoint() -> None:
    """x·f just off a float32 midpoint whose float64 product is the midpoint itself:
    rounding the float64 product again would pick the wrong neighbour."""
    rng = np.random.default_rng(0)
    cases = []
    while len(cases) < 20:
        x = np.float32(int(rng.integers(1 << 23, 1 << 24)) | 1) / np.float32(1 << 23)
        base = np.float32(float(x) * 1.3)
        midpoint = Fraction(float(base)) + Fraction(float(np.spacing(base))) / 2
        factor = float(midpoint / Fraction(float(x)))
        exact = Fraction(float(x)) * Fraction(factor)
        if exact != midpoint and Fraction(float(x) * factor) == midpoint:
            cases.append((x, factor))
    for x, factor in cases:
        raw = np.array([x], np.float32)
        got = ChunkScaler(1).scale(raw.copy(), "float32", factor)
        assert float(got[0]) == exact_reference(raw, "float32", factor)[0]
