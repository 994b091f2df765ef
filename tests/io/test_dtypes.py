"""Raw storage dtypes: exact decoding, and encoding float64 rounded once to nearest-even.

Every rounding result is compared with a reference computed in exact rational arithmetic
(`fractions.Fraction`), independent of numpy's and torch's conversions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from weissi_cli.io.dtypes import decode, decode_float64, encode

# (significand bits including the implicit one, minimum normal exponent, maximum exponent)
FORMATS = {
    "bfloat16": (8, -126, 127),
    "float16": (11, -14, 15),
    "float32": (24, -126, 127),
}
OVERFLOW_WARNING = "ignore:overflow encountered in cast:RuntimeWarning"


def reference_round(x: float, dtype: str) -> float:
    """`x` rounded once, to nearest with ties to even, into `dtype` (exact arithmetic)."""
    if math.isnan(x) or math.isinf(x) or x == 0.0:
        return x
    precision, emin, emax = FORMATS[dtype]
    exponent = max(math.frexp(abs(x))[1] - 1, emin)
    quantum = Fraction(2) ** (exponent - precision + 1)
    rounded = round(Fraction(abs(x)) / quantum) * quantum  # Fraction rounds half to even
    if rounded >= Fraction(2) ** (emax + 1):
        return math.copysign(math.inf, x)
    return math.copysign(float(rounded), x)


def storage_bits(values: list[float] | np.ndarray, dtype: str) -> np.ndarray:
    """Bit patterns of values that are exactly representable in `dtype`."""
    array = np.asarray(values, dtype=np.float64)
    if dtype == "bfloat16":
        wide = array.astype(np.float32).view(np.uint32)
        assert not np.any(wide & 0xFFFF), "reference value not representable in bfloat16"
        return (wide >> 16).astype(np.uint16)
    if dtype == "float16":
        return array.astype(np.float16).view(np.uint16)
    return array.astype(np.float32).view(np.uint32)


def encoded_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    raw = encode(np.asarray(values, dtype=np.float64), dtype)
    return raw.view(np.uint16) if dtype in ("bfloat16", "float16") else raw.view(np.uint32)


def reference_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    return storage_bits([reference_round(float(x), dtype) for x in values], dtype)


def exact_value_of_16_bits(bits: int, dtype: str) -> float:
    """The value of a 16-bit pattern computed from its fields, not by any library cast."""
    mantissa_bits = 7 if dtype == "bfloat16" else 10
    exponent_bits = 15 - mantissa_bits
    bias = (1 << (exponent_bits - 1)) - 1
    sign = -1.0 if bits >> 15 else 1.0
    exponent = (bits >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = bits & ((1 << mantissa_bits) - 1)
    if exponent == (1 << exponent_bits) - 1:
        return math.nan if mantissa else sign * math.inf
    if exponent == 0:
        return sign * float(Fraction(mantissa, 1 << mantissa_bits) * Fraction(2) ** (1 - bias))
    return sign * float(
        (1 + Fraction(mantissa, 1 << mantissa_bits)) * Fraction(2) ** (exponent - bias)
    )


def to_float64(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # signalling NaN patterns warn when widened
        return values.astype(np.float64)


def all_16_bit_patterns() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def raw_from_bits(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Raw storage holding these 16-bit patterns (float16 storage is numpy float16)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return bits.view(np.float16) if dtype == "float16" else bits


def finite_grid(dtype: str) -> np.ndarray:
    """Every finite non-negative value of a 16-bit dtype, ascending, as float64."""
    patterns = np.arange(0, 0x7C00 if dtype == "float16" else 0x7F80, dtype=np.uint16)
    return to_float64(decode(raw_from_bits(patterns, dtype), dtype))


def midpoints(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Each finite non-negative pattern but the last, and the value halfway above it."""
    grid = finite_grid(dtype)
    lower = np.arange(len(grid) - 1, dtype=np.uint16)
    return lower, (grid[:-1] + grid[1:]) / 2  # exact: one more bit than the format has


def with_negatives(bits: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([bits, bits | np.uint16(0x8000)]), np.concatenate([values, -values])


def random_values(dtype: str, count: int, seed: int) -> np.ndarray:
    """Random float64 values of both signs spread over the dtype's whole exponent range."""
    precision, emin, emax = FORMATS[dtype]
    rng = np.random.default_rng(seed)
    mantissas = 1.0 + rng.integers(0, 1 << 52, count, dtype=np.int64) / float(1 << 52)
    exponents = rng.integers(emin - precision - 2, emax + 2, count)
    signs = rng.choice([-1.0, 1.0], count)
    return signs * np.ldexp(mantissas, exponents)


# --- decode ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_decode_gives_the_exact_value_of_every_16_bit_pattern(dtype: str) -> None:
    patterns = all_16_bit_patterns()
    decoded = to_float64(decode(raw_from_bits(patterns, dtype), dtype))
    expected = np.array([exact_value_of_16_bits(int(bits), dtype) for bits in patterns])
    assert np.array_equal(decoded, expected, equal_nan=True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_decode_keeps_the_sign_of_zero(dtype: str) -> None:
    decoded = decode(raw_from_bits([0x0000, 0x8000], dtype), dtype)
    assert [math.copysign(1.0, float(value)) for value in decoded] == [1.0, -1.0]


def test_decode_bfloat16_agrees_with_torch_for_every_pattern() -> None:
    patterns = all_16_bit_patterns()
    from_torch = torch.from_numpy(patterns.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert np.array_equal(decode(patterns, "bfloat16"), from_torch, equal_nan=True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_decode_16_bit_gives_float32(dtype: str) -> None:
    assert decode(raw_from_bits([0, 0, 0], dtype), dtype).dtype == np.float32


def test_decode_float16_reads_float16_storage() -> None:
    raw = np.array([1.5, -65504.0, 2.0**-24], dtype=np.float16)
    assert decode(raw, "float16").tolist() == [1.5, -65504.0, 2.0**-24]


@pytest.mark.parametrize(
    ("dtype", "numpy_dtype"), [("float32", np.float32), ("float64", np.float64)]
)
def test_decode_wide_floats_returns_the_chunk_itself(dtype: str, numpy_dtype: type) -> None:
    raw = np.array([1.0, -2.5, np.inf], dtype=numpy_dtype)
    assert decode(raw, dtype) is raw


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_decode_into_a_larger_buffer_fills_its_front(dtype: str) -> None:
    raw = encode(np.array([1.0, -2.0, 0.5]), dtype)
    out = np.full(8, 99.0, dtype=np.float32)
    values = decode(raw, dtype, out)
    assert values.tolist() == [1.0, -2.0, 0.5]
    assert np.shares_memory(values, out)
    assert out[3:].tolist() == [99.0] * 5


def test_decode_float64_returns_a_new_float64_array() -> None:
    raw = encode(np.array([1.0, 3.0]), "bfloat16")
    values = decode_float64(raw, "bfloat16")
    assert values.dtype == np.float64
    assert values.tolist() == [1.0, 3.0]


def test_decode_of_an_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="int8"):
        decode(np.zeros(2, np.int8), "int8")


# --- encode: exact round trips -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_encode_of_decode_returns_every_non_nan_16_bit_pattern(dtype: str) -> None:
    patterns = all_16_bit_patterns()
    values = to_float64(decode(raw_from_bits(patterns, dtype), dtype))
    keep = ~np.isnan(values)
    assert np.array_equal(encode(values[keep], dtype).view(np.uint16), patterns[keep])


def test_encode_of_decode_returns_random_float32_patterns() -> None:
    patterns = np.random.default_rng(1).integers(0, 1 << 32, 100_000, dtype=np.uint64)
    raw = patterns.astype(np.uint32).view(np.float32)
    keep = ~np.isnan(raw)  # a random pattern is NaN with probability 1/256
    encoded = encode(to_float64(decode(raw, "float32"))[keep], "float32")
    assert np.array_equal(encoded.view(np.uint32), raw.view(np.uint32)[keep])


def test_encode_float64_returns_the_values_unchanged() -> None:
    values = np.array([0.1, -1e300, 5e-324, -0.0])
    assert encode(values, "float64").tobytes() == values.tobytes()


@pytest.mark.parametrize(
    ("dtype", "numpy_dtype"),
    [("float32", np.float32), ("float16", np.float16), ("bfloat16", np.uint16)],
)
def test_encode_returns_the_raw_storage_dtype(dtype: str, numpy_dtype: type) -> None:
    assert encode(np.array([1.0, 2.0]), dtype).dtype == numpy_dtype


def test_encode_of_an_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="int32"):
        encode(np.array([1.0]), "int32")


# --- encode: rounded once, to nearest-even --------------------------------------------------


def test_reference_round_agrees_with_hand_worked_bfloat16_cases() -> None:
    # The reference itself must be right: 1 + 2**-8 is halfway between 1 and 1 + 2**-7.
    assert reference_round(1 + 2**-8, "bfloat16") == 1.0
    assert reference_round(1 + 3 * 2**-8, "bfloat16") == 1 + 2**-6
    assert reference_round(1 + 2**-8 + 2**-40, "bfloat16") == 1 + 2**-7
    assert reference_round(2.0**-134, "bfloat16") == 0.0
    assert reference_round(3.4e38, "bfloat16") == math.inf


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.filterwarnings(OVERFLOW_WARNING)
def test_encode_rounds_random_values_correctly(dtype: str) -> None:
    values = random_values(dtype, 5_000, seed=7)
    assert np.array_equal(encoded_bits(values, dtype), reference_bits(values, dtype))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_encode_rounds_exact_midpoints_to_the_even_neighbour(dtype: str) -> None:
    lower, halfway = midpoints(dtype)
    even = np.where(lower % 2 == 0, lower, lower + 1).astype(np.uint16)
    expected, values = with_negatives(even, halfway)
    assert np.array_equal(encoded_bits(values, dtype), expected)


# Far below float32's half-ulp: rounding to float32 first lands exactly on the midpoint.
NUDGE = 2.0**-40


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_encode_rounds_values_a_hair_above_a_midpoint_up(dtype: str) -> None:
    lower, halfway = midpoints(dtype)
    expected, values = with_negatives(lower + np.uint16(1), halfway * (1 + NUDGE))
    assert np.array_equal(encoded_bits(values, dtype), expected)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_encode_rounds_values_a_hair_below_a_midpoint_down(dtype: str) -> None:
    lower, halfway = midpoints(dtype)
    expected, values = with_negatives(lower, halfway * (1 - NUDGE))
    assert np.array_equal(encoded_bits(values, dtype), expected)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_exact_reference_agrees_with_the_midpoint_expectations(dtype: str) -> None:
    lower, halfway = midpoints(dtype)
    lower, halfway = lower[::61], halfway[::61]
    assert np.array_equal(reference_bits(halfway * (1 + NUDGE), dtype), lower + np.uint16(1))
    assert np.array_equal(reference_bits(halfway * (1 - NUDGE), dtype), lower)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_nudged_midpoints_defeat_rounding_through_float32(dtype: str) -> None:
    # Shows the nudged midpoints test what they claim: rounding twice gets half of them wrong.
    lower, halfway = midpoints(dtype)
    values = np.concatenate([halfway * (1 + NUDGE), halfway * (1 - NUDGE)])
    expected = np.concatenate([lower + np.uint16(1), lower])
    through_float32 = torch.from_numpy(values.astype(np.float32)).to(getattr(torch, dtype))
    twice_rounded = through_float32.view(torch.int16).numpy().view(np.uint16)
    assert np.count_nonzero(twice_rounded != expected) == len(lower)


def test_encode_bfloat16_rounds_up_just_above_a_tie_that_float32_would_make_exact() -> None:
    value = 1.0 + 2.0**-8 + 2.0**-40  # float32(value) == 1 + 2**-8, a tie that goes to 1.0
    assert decode(encode(np.array([value]), "bfloat16"), "bfloat16").tolist() == [1.0 + 2.0**-7]


def test_encode_bfloat16_rounds_down_just_below_a_tie_that_float32_would_make_exact() -> None:
    value = 1.0 + 3 * 2.0**-8 - 2.0**-40  # float32(value) is the tie that goes up to 1 + 2**-6
    assert decode(encode(np.array([value]), "bfloat16"), "bfloat16").tolist() == [1.0 + 2.0**-7]


def test_encode_float16_rounds_up_just_above_a_tie_that_float32_would_make_exact() -> None:
    value = 1.0 + 2.0**-11 + 2.0**-40
    assert decode(encode(np.array([value]), "float16"), "float16").tolist() == [1.0 + 2.0**-10]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2.0**-133, 2.0**-133),  # smallest subnormal
        (2.0**-134, 0.0),  # half of it: tie to even zero
        (2.0**-134 + 2.0**-160, 2.0**-133),  # float32 would round this to the tie
        (3 * 2.0**-134, 2.0**-132),  # tie between 1 and 2 subnormal ulps: even is 2
        (2.0**-126 - 2.0**-134, 2.0**-126),  # top of the subnormals rounds up to the normals
        (2.0**-126 - 2.0**-134 - 2.0**-170, 2.0**-126 - 2.0**-133),
        (1e-300, 0.0),  # far below anything float32 holds
        (-1e-300, -0.0),
    ],
)
def test_encode_bfloat16_subnormals(value: float, expected: float) -> None:
    assert (
        encoded_bits(np.array([value]), "bfloat16").tolist()
        == storage_bits([expected], "bfloat16").tolist()
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2.0**-24, 2.0**-24),
        (2.0**-25, 0.0),
        (2.0**-25 + 2.0**-60, 2.0**-24),
        (3 * 2.0**-25, 2.0**-23),
        (-(2.0**-26), -0.0),
    ],
)
def test_encode_float16_subnormals(value: float, expected: float) -> None:
    assert (
        encoded_bits(np.array([value]), "float16").tolist()
        == storage_bits([expected], "float16").tolist()
    )


BFLOAT16_MAX = (2 - 2.0**-7) * 2.0**127
FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (BFLOAT16_MAX, BFLOAT16_MAX),
        ((2 - 2.0**-8) * 2.0**127, math.inf),  # the tie above the maximum goes to infinity
        ((2 - 2.0**-8) * 2.0**127 * (1 - 2.0**-40), BFLOAT16_MAX),
        (FLOAT32_MAX, math.inf),
        ((2 - 2.0**-25) * 2.0**127, math.inf),  # above float32's maximum, below its overflow
        (2.0**128, math.inf),
        (1e300, math.inf),
        (-1e300, -math.inf),
        (math.inf, math.inf),
        (-math.inf, -math.inf),
    ],
)
def test_encode_bfloat16_overflow(value: float, expected: float) -> None:
    assert (
        encoded_bits(np.array([value]), "bfloat16").tolist()
        == storage_bits([expected], "bfloat16").tolist()
    )


@pytest.mark.filterwarnings(OVERFLOW_WARNING)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (65504.0, 65504.0),
        (65519.99, 65504.0),
        (65520.0, math.inf),  # the tie above the maximum goes to infinity
        (1e300, math.inf),
        (-70000.0, -math.inf),
    ],
)
def test_encode_float16_overflow(value: float, expected: float) -> None:
    assert (
        encoded_bits(np.array([value]), "float16").tolist()
        == storage_bits([expected], "float16").tolist()
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("value", [math.nan, -math.nan])
def test_encode_keeps_nan_a_nan(dtype: str, value: float) -> None:
    raw = encode(np.array([value, 1.0]), dtype)
    decoded = decode(raw, dtype)
    assert np.isnan(decoded[0])
    assert decoded[1] == 1.0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_encode_keeps_the_sign_of_zero(dtype: str) -> None:
    decoded = decode(encode(np.array([0.0, -0.0]), dtype), dtype)
    assert [math.copysign(1.0, float(value)) for value in decoded] == [1.0, -1.0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_encode_handles_a_mix_of_special_and_ordinary_values_in_one_array(dtype: str) -> None:
    values = np.array([1.0, math.nan, -0.0, math.inf, 1.0 + 2.0**-8 + 2.0**-40, 3.0, -math.inf])
    decoded = decode(encode(values, dtype), dtype).astype(np.float64)
    expected = [reference_round(float(x), dtype) for x in values]
    assert np.array_equal(decoded, expected, equal_nan=True)


def test_encode_does_not_modify_its_input() -> None:
    values = np.array([1.0 + 2.0**-8 + 2.0**-40, 1e300, math.nan, 1e-300])
    before = values.tobytes()
    encode(values, "bfloat16")
    assert values.tobytes() == before


# --- property tests ---------------------------------------------------------------------

finite_or_infinite = st.floats(allow_nan=False, width=64)


@given(finite_or_infinite)
def test_encode_bfloat16_property(value: float) -> None:
    assert (
        encoded_bits(np.array([value]), "bfloat16").tolist()
        == reference_bits(np.array([value]), "bfloat16").tolist()
    )


@given(finite_or_infinite)
def test_encode_float16_property(value: float) -> None:
    with np.errstate(over="ignore"):
        got = encoded_bits(np.array([value]), "float16").tolist()
    assert got == reference_bits(np.array([value]), "float16").tolist()


@given(
    pattern=st.integers(0, 0x7F7E),
    offset=st.integers(-(2**44), 2**44),
    negative=st.booleans(),
)
def test_encode_bfloat16_near_midpoints_property(pattern: int, offset: int, negative: bool) -> None:
    # A value within a few float32 ulps of the midpoint above a random bfloat16 value.
    low = exact_value_of_16_bits(pattern, "bfloat16")
    high = exact_value_of_16_bits(pattern + 1, "bfloat16")
    value = (low + high) / 2 + (high - low) * offset * 2.0**-52
    value = -value if negative else value
    assert (
        encoded_bits(np.array([value]), "bfloat16").tolist()
        == reference_bits(np.array([value]), "bfloat16").tolist()
    )
