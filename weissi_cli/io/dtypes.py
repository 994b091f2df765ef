"""Storage dtypes: names, sizes, and exact conversion of raw chunks to and from float64."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]

# Storage dtype name -> bytes per element. Names follow torch (`torch.<name>`).
ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "complex64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
}

# Bits per element, including the packed sub-byte floats that torch has no single dtype for.
BITS: dict[str, int] = {
    **{name: 8 * size for name, size in ITEMSIZE.items()},
    "float4_e2m1": 4,
    "float6_e2m3": 6,
    "float6_e3m2": 6,
}

# Every dtype the safetensors format defines (its reference parser refuses any other code),
# with weissi's name for it.
SAFETENSORS_NAMES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "F6_E2M3": "float6_e2m3",
    "F6_E3M2": "float6_e3m2",
    "F4": "float4_e2m1",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
SAFETENSORS_BITS: dict[str, int] = {code: BITS[name] for code, name in SAFETENSORS_NAMES.items()}

# The float dtypes weissi computes with; everything else is listed and skipped.
SUPPORTED_FLOATS: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")

# Unit roundoff u = 2**-p (half an ulp at 1) for each supported float dtype.
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

# numpy dtype that holds the raw bits of each dtype (bfloat16 and float8 as unsigned ints).
_RAW_NUMPY: dict[str, type[np.generic]] = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "float8_e4m3fn": np.uint8,
    "float8_e5m2": np.uint8,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def is_supported_float(dtype: str) -> bool:
    return dtype in SUPPORTED_FLOATS


def is_16_bit(dtype: str) -> bool:
    return dtype in ("float16", "bfloat16")


def raw_numpy_dtype(dtype: str) -> np.dtype[np.generic]:
    """The numpy dtype of a raw chunk of `dtype` (bfloat16 is carried as uint16 bits)."""
    return np.dtype(_RAW_NUMPY[dtype])


def compute_numpy_dtype(dtype: str) -> np.dtype[np.floating]:
    """The numpy dtype statistics are computed in: float64 stays, the rest widen to float32."""
    return np.dtype(np.float64 if dtype == "float64" else np.float32)


def decode(raw: npt.NDArray[np.generic], dtype: str, out: FloatArray | None = None) -> FloatArray:
    """Exact values of a raw chunk as float32 (float64 for float64 storage).

    float32/float64 chunks are returned as they are (no copy); 16-bit chunks are widened
    into `out` when given, which must hold at least `raw.size` elements.
    """
    if dtype in ("float32", "float64"):
        return raw  # type: ignore[return-value]
    count = raw.size
    target = np.empty(count, np.float32) if out is None else out[:count]
    if dtype == "float16":
        np.copyto(target, raw, casting="same_kind")
        return target
    if dtype == "bfloat16":
        bits = target.view(np.uint32)
        np.copyto(bits, raw, casting="safe")
        bits <<= 16
        return target
    raise ValueError(f"cannot decode dtype {dtype}")


def decode_float64(raw: npt.NDArray[np.generic], dtype: str) -> npt.NDArray[np.float64]:
    """Exact values of a raw chunk as a new float64 array."""
    return decode(raw, dtype).astype(np.float64)


def encode(values: npt.NDArray[np.float64], dtype: str) -> npt.NDArray[np.generic]:
    """Round float64 values once, to nearest-even, into raw storage of `dtype`."""
    if dtype == "float64":
        return values
    if dtype in ("float32", "float16"):
        # numpy converts double to float and to half directly, correctly rounded; values
        # beyond the range become ±inf, which verification then reports.
        with np.errstate(over="ignore"):
            return values.astype(_RAW_NUMPY[dtype])
    if dtype == "bfloat16":
        return _float64_to_bfloat16_bits(values)
    raise ValueError(f"cannot encode dtype {dtype}")


def _float64_to_bfloat16_bits(values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint16]:
    """Correctly rounded float64 -> bfloat16 without double rounding.

    Rounding to float32 *to odd* first keeps enough information (24 >= 8 + 2 bits) for
    the second rounding to nearest-even to give the correctly rounded bfloat16.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        narrowed = values.astype(np.float32)
        widened = narrowed.astype(np.float64)
    bits = narrowed.view(np.uint32)
    inexact = widened != values
    inexact &= ~np.isnan(values)
    # Truncate toward zero where rounding to nearest went away from zero, then make odd.
    away = inexact & (np.abs(widened) > np.abs(values))
    bits[away] -= np.uint32(1)
    bits[inexact] |= np.uint32(1)
    rounding = ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    result = ((bits + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        result[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return result
