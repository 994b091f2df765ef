"""Scaling decoded chunks by numpy: each value times its factor, rounded once to the
storage dtype (the numpy backend's scale_chunk, and the torch pickle writer's)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from weissi_cli.io.checkpoint import read_buffer
from weissi_cli.io.dtypes import decode, encode


class ChunkScaler:
    """Multiplies raw chunks by a factor, rounding once to the storage dtype."""

    def __init__(self, capacity: int) -> None:
        self.raw = read_buffer(capacity * 8)
        self.widened = np.empty(capacity, np.float32)
        self.product = np.empty(capacity, np.float64)
        self.bits = np.empty(capacity, np.uint16)

    def scale(
        self,
        raw: npt.NDArray[np.generic],
        dtype: str,
        factor: float | npt.NDArray[np.float64],
        power_of_two: bool | None = None,
    ) -> npt.NDArray[np.generic]:
        """The scaled chunk as raw storage values (may reuse `raw` and this scaler's buffers).

        `factor` is a scalar or one value per element; `power_of_two` says whether every
        factor is a power of two (worked out when not given).
        """
        count = raw.size
        if power_of_two is None:
            power_of_two = bool(np.all(np.frexp(np.asarray(factor))[0] == 0.5))
        # NaN stays NaN and overflow becomes ±inf, as in the input's own arithmetic;
        # verification reports any non-finite output, so numpy need not warn here.
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            if power_of_two:
                fast = self._scale_by_power_of_two(raw, dtype, factor)
                if fast is not None:
                    return fast
            values = decode(raw, dtype, self.widened)
            product = np.multiply(values, factor, out=self.product[:count], dtype=np.float64)
            if dtype != "float64":
                round_product_to_odd(product, values, factor, dtype)
            return encode(product, dtype)

    def _scale_by_power_of_two(
        self, raw: npt.NDArray[np.generic], dtype: str, factor: float | npt.NDArray[np.float64]
    ) -> npt.NDArray[np.generic] | None:
        """A power of two is exact in every dtype: IEEE multiplication then rounds the exact
        product once, as the float64 route would. None where a faster route is not exact."""
        if dtype in ("float32", "float64"):
            return np.multiply(raw, factor, out=raw, casting="same_kind")  # type: ignore[no-any-return]
        values = decode(raw, dtype, self.widened)
        np.multiply(values, factor, out=values, casting="same_kind")
        if dtype == "float16":
            return values.astype(np.float16)  # the float32 product is exact here
        bits = values.view(np.uint32)
        if np.any(bits & np.uint32(0xFFFF)):
            return None  # float32 subnormals lost bits: take the exact route
        out = self.bits[: raw.size]
        np.right_shift(bits, 16, out=out, casting="unsafe")
        return out


# Bits of a float64 mantissa below the rounding midpoint of each narrower dtype. Rounding
# the float64 product again can differ from rounding the exact product only where the
# float64 product is itself a midpoint (or exact), and those have all these bits clear.
_BELOW_MIDPOINT = {
    "float32": np.uint64((1 << 28) - 1),
    "float16": np.uint64((1 << 41) - 1),
    "bfloat16": np.uint64((1 << 44) - 1),
}


def round_product_to_odd(
    product: npt.NDArray[np.float64],
    values: npt.NDArray[np.floating],
    factor: float | npt.NDArray[np.float64],
    dtype: str,
) -> None:
    """Make the float64 product `values * factor` round to a narrower `dtype` exactly as the
    exact product would (scaling rounds once), in place.

    Rounding twice differs from rounding once only where the float64 product lands on a
    midpoint of the narrower grid; those few values are replaced by the exact product
    rounded *to odd* (53 >= 24 + 2 bits, so the final rounding to nearest is then correct).
    The rounding error comes exactly from a split of the factor, f = f_hi + f_lo with f_hi
    its float32 part: x·f_hi (24 + 24 bits) and x·f_lo (24 + 29 bits) are exact in
    float64, and Fast2Sum gives the error of their sum.
    """
    bits = product.view(np.uint64)
    candidates = np.flatnonzero((bits & _BELOW_MIDPOINT[dtype]) == 0)
    if candidates.size == 0:
        return
    factors = np.broadcast_to(np.asarray(factor, dtype=np.float64), product.shape)[candidates]
    high = factors.astype(np.float32).astype(np.float64)
    low = factors - high  # zero where x·f has at most 48 bits and the product is exact
    wide = values[candidates].astype(np.float64)
    chosen = product[candidates]
    error = wide * low - (chosen - wide * high)
    inexact = (error != 0) & np.isfinite(chosen)
    # Where rounding went away from zero, step back toward zero; then make the last bit odd.
    away = inexact & (np.signbit(error) != np.signbit(chosen))
    chosen_bits = chosen.view(np.uint64)
    chosen_bits -= away.astype(np.uint64)
    chosen_bits |= inexact.astype(np.uint64)
    product[candidates] = chosen
