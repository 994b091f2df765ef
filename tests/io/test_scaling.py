"""`ChunkScaler`: the power-of-two fast paths give the same bits as the float64 route."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weissi_cli.io.dtypes import decode, encode, raw_numpy_dtype
from weissi_cli.rewrite import ChunkScaler

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


@pytest.mark.parametrize("dtype", DTYPES)
@given(factor=st.floats(1e-6, 1e6), seed=st.integers(0, 1000))
def test_real_factor_is_rounded_once_from_float64(dtype: str, factor: float, seed: int) -> None:
    raw = random_raw(dtype, 1024, seed)
    assert same_bits(
        ChunkScaler(1024).scale(raw.copy(), dtype, factor), reference(raw, dtype, factor)
    )


def test_bfloat16_power_of_two_into_float32_subnormals_takes_the_exact_route() -> None:
    # 2^-126 * (1 + 1/128) halved twice: the float32 product loses bits, so the fast path
    # must fall back to the float64 route (which rounds to nearest even once).
    value = np.float32(2.0**-126 * (1 + 1 / 128))
    raw = (np.array([value], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    assert same_bits(
        ChunkScaler(8).scale(raw.copy(), "bfloat16", 0.125), reference(raw, "bfloat16", 0.125)
    )
