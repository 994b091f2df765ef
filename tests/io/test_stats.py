"""Streaming tensor statistics: sum of squares, L1, max |w| and non-finite counts.

Every statistic is compared with a float64 numpy reference computed from the exact stored
values; threaded and single-threaded passes must agree exactly.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from weissi_cli import kernel, stats
from weissi_cli.chunking import NUMPY_ELEMENTS as CHUNK_ELEMENTS
from weissi_cli.errors import InputError
from weissi_cli.io import open_checkpoint
from weissi_cli.io.dtypes import decode, encode
from weissi_cli.stats import EXACT_BELOW, TensorStats, compute_stats

CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
DTYPES = list(CODES)
SIZES = [
    0,
    1,
    1000,
    EXACT_BELOW - 1,
    EXACT_BELOW,
    EXACT_BELOW + 1,
    CHUNK_ELEMENTS,
    2 * CHUNK_ELEMENTS + 17,
]
RELATIVE = 1e-6


def write_raw_tensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> Path:
    """A safetensors file from raw storage arrays, streamed (no copy of the data)."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, raw) in tensors.items():
        header[name] = {
            "dtype": CODES.get(dtype, dtype),
            "shape": [raw.size],
            "data_offsets": [offset, offset + raw.nbytes],
        }
        offset += raw.nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        for _, raw in tensors.values():
            handle.write(memoryview(np.ascontiguousarray(raw)).cast("B"))
    return path


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """Raw storage of `values` rounded to `dtype`."""
    with np.errstate(over="ignore"):
        return encode(np.asarray(values, dtype=np.float64), dtype)


def exact(raw: np.ndarray, dtype: str) -> np.ndarray:
    """The stored values as float64."""
    return decode(raw, dtype).astype(np.float64)


def random_values(size: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(size) * scale


def stats_of(
    tmp_path: Path, raw: np.ndarray, dtype: str, threads: int = 1, **kwargs: int
) -> TensorStats:
    path = write_raw_tensors(tmp_path / f"{dtype}-{raw.size}.safetensors", {"w": (dtype, raw)})
    with open_checkpoint(path) as checkpoint:
        return compute_stats(checkpoint, threads=threads, **kwargs)["w"]


def assert_matches_reference(
    result: TensorStats, values: np.ndarray, relative: float = RELATIVE
) -> None:
    finite = values[np.isfinite(values)]
    magnitudes = np.abs(finite)
    expected_squares = float(np.dot(finite, finite))
    assert result.elements == values.size
    assert result.nonfinite == values.size - finite.size
    assert result.sum_squares == pytest.approx(expected_squares, rel=relative, abs=0)
    assert result.l1 == pytest.approx(float(magnitudes.sum()), rel=relative, abs=0)
    assert result.max_abs == (float(magnitudes.max()) if finite.size else 0.0)


@pytest.fixture
def threaded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Force threading on small data, and count the worker threads started."""
    monkeypatch.setattr(stats, "THREADS_ABOVE_BYTES", 0)
    started: list[int] = []
    original = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(1)
        original(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    return started


# --- agreement with float64 references ----------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", SIZES)
def test_wide_float_statistics_match_a_float64_reference_to_1e_6(
    tmp_path: Path, dtype: str, size: int
) -> None:
    raw = stored(random_values(size, seed=size), dtype)
    assert_matches_reference(stats_of(tmp_path, raw, dtype), exact(raw, dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("size", [size for size in SIZES if size < EXACT_BELOW])
def test_small_16_bit_statistics_match_a_float64_reference_to_1e_6(
    tmp_path: Path, dtype: str, size: int
) -> None:
    raw = stored(random_values(size, seed=size), dtype)
    assert_matches_reference(stats_of(tmp_path, raw, dtype), exact(raw, dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("size", [size for size in SIZES if size >= EXACT_BELOW])
def test_large_16_bit_statistics_match_a_float64_reference_to_1e_5(
    tmp_path: Path, dtype: str, size: int
) -> None:
    raw = stored(random_values(size, seed=size), dtype)
    result = stats_of(tmp_path, raw, dtype)
    assert_matches_reference(result, exact(raw, dtype), RELATIVE)


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_large_bfloat16_statistics_match_a_float64_reference_to_1e_6(
    tmp_path: Path, offset: float
) -> None:
    raw = stored(offset + random_values(2 * CHUNK_ELEMENTS + 17, seed=4), "bfloat16")
    assert_matches_reference(stats_of(tmp_path, raw, "bfloat16"), exact(raw, "bfloat16"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_of_values_with_a_common_offset_match_the_reference(
    tmp_path: Path, dtype: str
) -> None:
    # All of one sign: float32 accumulation errors add up instead of cancelling.
    size = 2 * CHUNK_ELEMENTS + 5
    raw = stored(3.0 + random_values(size, seed=4), dtype)
    result = stats_of(tmp_path, raw, dtype)
    assert_matches_reference(result, exact(raw, dtype), RELATIVE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_empty_tensor_has_zero_statistics(tmp_path: Path, dtype: str) -> None:
    result = stats_of(tmp_path, stored(np.zeros(0), dtype), dtype)
    assert result == TensorStats("w", 0, 0.0, 0.0, 0.0, 0)


@pytest.mark.parametrize("size", [10, EXACT_BELOW + 10])
def test_an_all_zero_tensor_has_zero_norm_and_no_direction(tmp_path: Path, size: int) -> None:
    result = stats_of(tmp_path, stored(np.zeros(size), "float32"), "float32")
    assert (result.sum_squares, result.l1, result.max_abs) == (0.0, 0.0, 0.0)
    assert result.l1_direction is None


def test_derived_norms_follow_from_the_sums(tmp_path: Path) -> None:
    result = stats_of(tmp_path, stored(np.array([3.0, -4.0]), "float32"), "float32")
    assert result.fro_norm == 5.0
    assert result.l1_direction == 7.0 / 5.0
    assert result.is_finite


@pytest.mark.parametrize("dtype", DTYPES)
def test_negative_values_count_by_magnitude(tmp_path: Path, dtype: str) -> None:
    result = stats_of(tmp_path, stored(np.array([-2.0, 1.0, -0.5]), dtype), dtype)
    assert (result.sum_squares, result.l1, result.max_abs) == (5.25, 3.5, 2.0)


def test_only_supported_float_tensors_are_measured_by_default(tmp_path: Path) -> None:
    tensors = {
        "w": ("float32", stored(np.ones(4), "float32")),
        "steps": ("I64", np.arange(3, dtype=np.int64)),
        "mask": ("BOOL", np.array([True, False])),
        "b": ("bfloat16", stored(np.ones(2), "bfloat16")),
    }
    path = write_raw_tensors(tmp_path / "m.safetensors", tensors)
    with open_checkpoint(path) as checkpoint:
        assert sorted(compute_stats(checkpoint)) == ["b", "w"]


def test_named_tensors_are_measured_in_the_order_given(tmp_path: Path) -> None:
    tensors = {
        name: ("float32", stored(np.full(3, value), "float32"))
        for name, value in [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    }
    path = write_raw_tensors(tmp_path / "m.safetensors", tensors)
    with open_checkpoint(path) as checkpoint:
        result = compute_stats(checkpoint, ["c", "a"])
    assert list(result) == ["c", "a"]
    assert result["c"].sum_squares == 27.0


def test_statistics_of_a_torch_checkpoint_match_the_reference(tmp_path: Path) -> None:
    import torch

    from tests.helpers import write_torch

    tensor = torch.randn(EXACT_BELOW + 3, generator=torch.Generator().manual_seed(0))
    bf16 = tensor.to(torch.bfloat16)
    path = write_torch(tmp_path / "m.pt", {"w": tensor, "b": bf16})
    with open_checkpoint(path) as checkpoint:
        result = compute_stats(checkpoint)
    assert_matches_reference(result["w"], tensor.double().numpy())
    assert_matches_reference(result["b"], bf16.double().numpy(), RELATIVE)


# --- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_threads_give_identical_results_to_one(
    tmp_path: Path, dtype: str, threaded: list[int]
) -> None:
    raws = {
        name: (dtype, stored(random_values(size, seed=size), dtype))
        for name, size in [("a", 3 * EXACT_BELOW + 11), ("b", 100), ("c", EXACT_BELOW + 1)]
    }
    path = write_raw_tensors(tmp_path / "m.safetensors", raws)
    with open_checkpoint(path) as checkpoint:
        one = compute_stats(checkpoint, threads=1, chunk_elements=EXACT_BELOW)
        assert threaded == []
        two = compute_stats(checkpoint, threads=2, chunk_elements=EXACT_BELOW)
        assert len(threaded) == 2
    assert one == two
    for name, (_, raw) in raws.items():
        assert_matches_reference(two[name], exact(raw, dtype), RELATIVE)


def test_small_data_stays_in_the_calling_thread(tmp_path: Path) -> None:
    seen: list[int] = []
    original = stats.Worker.reduce

    def recording(
        worker: stats.Worker, checkpoint: object, task: object, sink: object = None
    ) -> object:
        seen.append(threading.get_ident())
        return original(worker, checkpoint, task, sink)  # type: ignore[arg-type]

    raw = stored(random_values(3 * EXACT_BELOW), "float32")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats.Worker, "reduce", recording)
        stats_of(tmp_path, raw, "float32", threads=2, chunk_elements=EXACT_BELOW)
    assert set(seen) == {threading.get_ident()}


def test_chunk_size_does_not_change_results_beyond_rounding(tmp_path: Path) -> None:
    raw = stored(random_values(5 * EXACT_BELOW + 3, seed=8), "float32")
    path = write_raw_tensors(tmp_path / "m.safetensors", {"w": ("float32", raw)})
    with open_checkpoint(path) as checkpoint:
        small = compute_stats(checkpoint, chunk_elements=EXACT_BELOW)["w"]
        large = compute_stats(checkpoint, chunk_elements=4 * CHUNK_ELEMENTS)["w"]
    assert small.sum_squares == pytest.approx(large.sum_squares, rel=RELATIVE)
    assert small.max_abs == large.max_abs


def test_an_error_in_a_worker_thread_reaches_the_caller(
    tmp_path: Path, threaded: list[int]
) -> None:
    raw = stored(random_values(4 * EXACT_BELOW), "float32")
    path = write_raw_tensors(tmp_path / "m.safetensors", {"w": ("float32", raw)})
    with open_checkpoint(path) as checkpoint:

        def failing(*args: object, **kwargs: object) -> None:
            raise OSError("disk gone")

        checkpoint.read_raw = failing  # type: ignore[method-assign]
        checkpoint.locate = lambda name: None  # type: ignore[method-assign]
        with pytest.raises(OSError, match="disk gone"):
            compute_stats(checkpoint, threads=2, chunk_elements=EXACT_BELOW)
    assert len(threaded) == 2


@pytest.mark.skipif(not kernel.AVAILABLE, reason="the C kernel reads files itself")
def test_a_failed_read_in_the_kernel_reaches_the_caller(tmp_path: Path) -> None:
    raw = stored(random_values(4 * EXACT_BELOW), "float32")
    path = write_raw_tensors(tmp_path / "m.safetensors", {"w": ("float32", raw)})
    with open_checkpoint(path) as checkpoint:
        checkpoint.locate = lambda name: (-1, 0, path)  # type: ignore[method-assign]
        with pytest.raises(OSError, match="Bad file descriptor"):
            compute_stats(checkpoint, threads=2, chunk_elements=EXACT_BELOW)


@pytest.mark.skipif(not kernel.AVAILABLE, reason="the C kernel reads files itself")
def test_a_file_truncated_under_the_kernel_is_an_input_error(tmp_path: Path) -> None:
    raw = stored(random_values(4 * EXACT_BELOW), "float32")
    path = write_raw_tensors(tmp_path / "m.safetensors", {"w": ("float32", raw)})
    with open_checkpoint(path) as checkpoint:
        os.truncate(path, path.stat().st_size - 1000)
        with pytest.raises(InputError, match="ended early"):
            compute_stats(checkpoint, threads=2, chunk_elements=EXACT_BELOW)


# --- non-finite values and extreme magnitudes ------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [50, 2 * EXACT_BELOW + 9])
def test_nan_and_inf_are_counted_and_left_out_of_the_statistics(
    tmp_path: Path, dtype: str, size: int
) -> None:
    values = random_values(size, seed=3)
    values[[0, 7, size - 1]] = [math.nan, math.inf, -math.inf]
    raw = stored(values, dtype)
    result = stats_of(tmp_path, raw, dtype)
    assert result.nonfinite == 3
    assert not result.is_finite
    assert_matches_reference(result, exact(raw, dtype), RELATIVE)


@pytest.mark.parametrize("size", [5, EXACT_BELOW + 5])
def test_an_all_nan_tensor_has_zero_finite_statistics(tmp_path: Path, size: int) -> None:
    result = stats_of(tmp_path, stored(np.full(size, math.nan), "float32"), "float32")
    assert result == TensorStats("w", size, 0.0, 0.0, 0.0, size)


def test_non_finite_values_in_one_chunk_do_not_disturb_the_others(
    tmp_path: Path, threaded: list[int]
) -> None:
    values = random_values(4 * EXACT_BELOW, seed=5)
    values[EXACT_BELOW + 3] = math.nan
    raw = stored(values, "float32")
    one = stats_of(tmp_path, raw, "float32", threads=1, chunk_elements=EXACT_BELOW)
    two = stats_of(tmp_path, raw, "float32", threads=2, chunk_elements=EXACT_BELOW)
    assert one == two
    assert_matches_reference(two, exact(raw, "float32"))


@pytest.mark.parametrize("size", [100, 2 * CHUNK_ELEMENTS + 3])
def test_float32_values_whose_squares_overflow_float32_give_the_right_norm(
    tmp_path: Path, size: int
) -> None:
    raw = stored(random_values(size, seed=6, scale=1e30), "float32")
    result = stats_of(tmp_path, raw, "float32")
    assert math.isfinite(result.sum_squares)
    assert result.nonfinite == 0
    assert_matches_reference(result, exact(raw, "float32"))


def test_bfloat16_values_near_the_top_of_the_range_give_the_right_norm(tmp_path: Path) -> None:
    raw = stored(random_values(2 * CHUNK_ELEMENTS, seed=9, scale=1e37), "bfloat16")
    result = stats_of(tmp_path, raw, "bfloat16")
    assert result.nonfinite == 0
    assert_matches_reference(result, exact(raw, "bfloat16"), RELATIVE)


def test_an_l1_sum_that_overflows_float32_is_still_right(tmp_path: Path) -> None:
    raw = np.full(CHUNK_ELEMENTS, 3e38, dtype=np.float32)
    result = stats_of(tmp_path, raw, "float32")
    assert result.l1 == pytest.approx(CHUNK_ELEMENTS * float(np.float32(3e38)), rel=RELATIVE)
    assert result.max_abs == float(np.float32(3e38))


def test_float16_values_near_the_top_of_the_range_give_the_right_norm(tmp_path: Path) -> None:
    raw = stored(
        np.clip(random_values(CHUNK_ELEMENTS, seed=2, scale=3e4), -65504, 65504), "float16"
    )
    result = stats_of(tmp_path, raw, "float16")
    assert_matches_reference(result, exact(raw, "float16"), RELATIVE)


def test_float32_values_whose_squares_underflow_float32_give_the_right_norm(
    tmp_path: Path,
) -> None:
    raw = stored(random_values(2 * CHUNK_ELEMENTS, seed=6, scale=1e-25), "float32")
    assert_matches_reference(stats_of(tmp_path, raw, "float32"), exact(raw, "float32"))


def test_a_constant_tensor_has_accurate_statistics(tmp_path: Path) -> None:
    raw = np.full(CHUNK_ELEMENTS, 0.1, dtype=np.float32)
    assert_matches_reference(stats_of(tmp_path, raw, "float32"), exact(raw, "float32"))


# --- a large tensor -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_norm_of_a_100m_element_float32_tensor_matches_float64(tmp_path: Path) -> None:
    size = 100_000_000 + 12_345
    raw = np.random.default_rng(0).random(size, dtype=np.float32)  # one sign: errors add up
    raw += np.float32(0.5)
    path = write_raw_tensors(tmp_path / "big.safetensors", {"w": ("float32", raw)})
    block = 1 << 22
    sum_squares, l1 = [], []
    for start in range(0, size, block):
        part = raw[start : start + block].astype(np.float64)
        sum_squares.append(float(np.dot(part, part)))
        l1.append(float(part.sum()))
    maximum = float(raw.max())
    del raw
    with open_checkpoint(path) as checkpoint:
        result = compute_stats(checkpoint)["w"]
    assert result.elements == size
    assert result.fro_norm == pytest.approx(math.sqrt(math.fsum(sum_squares)), rel=1e-6)
    assert result.l1 == pytest.approx(math.fsum(l1), rel=1e-6)
    assert result.max_abs == maximum
