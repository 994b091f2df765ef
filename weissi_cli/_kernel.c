/* weissi's compiled kernel: the passes over checkpoint data that numpy made several times.
 *
 * - Statistics: one pass over float32, bfloat16 (or float16) values for the sum of squares,
 *   L1, max |x| and the count of non-finite values, and optionally the sums of squares per
 *   row, per column, or per (row, column) that the channel solver needs; with the largest
 *   magnitude per row and column for `check`'s dead units.
 * - Reading: the *_range functions read safetensors data themselves, in pieces of whole
 *   rows small enough to stay in cache between the read's copy and the pass.
 * - Scaling: each value times its factor, rounded once (FMA round-to-odd, then one rounding).
 * - Checking: every rewritten value against its original times the planned factor.
 * - Products: the channel solver's products with the squares of tensors too large to hold,
 *   squared and multiplied as read.
 *
 * Why C: numpy needs five or six passes over a chunk for the statistics alone (decode, abs,
 * max, squares, L1, axis sums), which left bfloat16 at a third of memory bandwidth. Here
 * every value is decoded once. Sums run in float vectors over blocks of a few hundred
 * values (BLOCK, or half or twice it where rows are summed together), and each block's sums
 * are added to double totals: the float error stays within one block and nothing drifts
 * across blocks. A chunk holding a non-finite value, or whose largest magnitude lies outside
 * [SAFE_LOW, SAFE_HIGH] (where float squares could overflow, or the sum lose its small
 * values), is summed again in double.
 * Non-finite values are counted and left out of every sum, as in the numpy reference
 * (numpy_reduce.reduce_float64). AVX2+FMA code runs where the CPU has it, portable code elsewhere.
 *
 * The module is optional: without a compiler weissi falls back to numpy, and the tests
 * check that both agree (bit for bit, for scaling).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

enum { FLOAT32 = 0, BFLOAT16 = 1, FLOAT16 = 2 };
enum { NO_AXES = 0, ROWS = 1, COLUMNS = 2, MATRIX = 3 };

static inline float from_bfloat16(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

static inline float from_float16(uint16_t bits) {
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t exponent = (bits >> 10) & 0x1Fu;
    uint32_t mantissa = bits & 0x3FFu;
    uint32_t wide;
    if (exponent == 0) {
        if (mantissa == 0) {
            wide = sign;
        } else { /* subnormal: exactly mantissa * 2^-24 */
            float value = (float)mantissa * 5.9604644775390625e-08f;
            return sign ? -value : value;
        }
    } else if (exponent == 0x1F) {
        wide = sign | 0x7F800000u | (mantissa << 13);
    } else {
        wide = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

static inline float value_at(const void *data, int dtype, Py_ssize_t index) {
    if (dtype == FLOAT32) return ((const float *)data)[index];
    if (dtype == BFLOAT16) return from_bfloat16(((const uint16_t *)data)[index]);
    return from_float16(((const uint16_t *)data)[index]);
}

static inline double magnitude_at(const void *data, int dtype, Py_ssize_t index) {
    if (dtype == FLOAT32) return fabs((double)((const float *)data)[index]);
    if (dtype == BFLOAT16) {
        uint32_t wide = (uint32_t)(((const uint16_t *)data)[index] & 0x7FFFu) << 16;
        float value;
        memcpy(&value, &wide, sizeof value);
        return (double)value;
    }
    return fabs((double)from_float16(((const uint16_t *)data)[index]));
}

#define BLOCK 256 /* values summed in float before a block's sum joins the double total */

/* Where float squares of every value can neither overflow nor underflow (as numpy_reduce.SAFE_*):
 * inside it the block sums run in float vectors; outside, in double. */
#define SAFE_LOW 8.881784197001252e-16f  /* 2^-50 */
#define SAFE_HIGH 7.205759403792794e16f  /* 2^56 */

typedef float float8 __attribute__((vector_size(32)));
typedef uint32_t uint8x32 __attribute__((vector_size(32)));
typedef uint16_t uint8x16 __attribute__((vector_size(16)));

/* The bits of eight magnitudes from `index` on, as float32 bit patterns (a bfloat16 is the
 * top half of a float32). A macro, so that it is compiled inside each target clone rather
 * than called across them. */
#define MAGNITUDE_BITS8(out, data, dtype, index)                                      \
    do {                                                                              \
        if ((dtype) == FLOAT32) {                                                     \
            memcpy(&(out), (const float *)(data) + (index), sizeof(out));             \
            (out) &= 0x7FFFFFFFu;                                                     \
        } else {                                                                      \
            uint8x16 narrow_;                                                         \
            memcpy(&narrow_, (const uint16_t *)(data) + (index), sizeof narrow_);     \
            (out) = __builtin_convertvector(narrow_ & 0x7FFF, uint8x32) << 16;        \
        }                                                                             \
    } while (0)

typedef int32_t int8x32 __attribute__((vector_size(32)));

/* One pass over float32/bfloat16 values [start, stop): the sum of squares and L1 (float
 * vectors over blocks of BLOCK values, each block's sums added to double totals), the bits
 * of the largest magnitude as a float32 (NaN above Inf above every finite value), and,
 * when `columns_out` is given, columns_out[k] (+)= x[start + k]² in double: a linear
 * layer's row gives its columns' squares. Every statistic of a value is taken while it is
 * in a register; the old code made three passes (max, sums, column squares).
 *
 * The float sums are right only when every value is finite and the largest is within
 * [SAFE_LOW, SAFE_HIGH] (or all are zero): the caller checks the returned bits and
 * otherwise redoes the chunk on the checked, double path. Compiled for AVX2 and for the
 * baseline, picked at run time. */
static uint32_t fused_pass_portable(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                           double *squares, double *l1, double *columns_out, int add) {
    double total_s = 0.0, total_a = 0.0;
    int8x32 top0 = {0}, top1 = {0};
    Py_ssize_t i = start;
    while (stop - i >= 16) {
        Py_ssize_t whole = (stop - i) - (stop - i) % 16;
        Py_ssize_t block_end = i + (whole < BLOCK ? whole : BLOCK);
        float8 s0 = {0}, s1 = {0}, a0 = {0}, a1 = {0};
        for (Py_ssize_t k = i; k < block_end; k += 16) {
            uint8x32 w0, w1;
            MAGNITUDE_BITS8(w0, data, dtype, k);
            MAGNITUDE_BITS8(w1, data, dtype, k + 8);
            int8x32 v0 = (int8x32)w0, v1 = (int8x32)w1; /* sign bit clear: int order */
            int8x32 g0 = v0 > top0, g1 = v1 > top1;
            top0 = (v0 & g0) | (top0 & ~g0);
            top1 = (v1 & g1) | (top1 & ~g1);
            float8 x0 = (float8)w0, x1 = (float8)w1;
            float8 q0 = x0 * x0, q1 = x1 * x1;
            s0 += q0;
            s1 += q1;
            a0 += x0;
            a1 += x1;
            if (columns_out) {
                double *target = columns_out + (k - start);
                for (int j = 0; j < 8; j++) {
                    target[j] = add ? target[j] + q0[j] : q0[j];
                    target[j + 8] = add ? target[j + 8] + q1[j] : q1[j];
                }
            }
        }
        float8 s = s0 + s1, a = a0 + a1;
        double block_s = 0.0, block_a = 0.0;
        for (int j = 0; j < 8; j++) {
            block_s += s[j];
            block_a += a[j];
        }
        total_s += block_s;
        total_a += block_a;
        i = block_end;
    }
    uint32_t top = 0;
    for (int j = 0; j < 8; j++) {
        uint32_t t0 = (uint32_t)top0[j], t1 = (uint32_t)top1[j];
        top = t0 > top ? t0 : top;
        top = t1 > top ? t1 : top;
    }
    for (; i < stop; i++) {
        uint32_t bits = dtype == FLOAT32 ? ((const uint32_t *)data)[i] & 0x7FFFFFFFu
                                         : (uint32_t)(((const uint16_t *)data)[i] & 0x7FFFu) << 16;
        top = bits > top ? bits : top;
        float value;
        memcpy(&value, &bits, sizeof value);
        double x = value;
        total_s += x * x;
        total_a += x;
        if (columns_out) {
            double *target = columns_out + (i - start);
            *target = add ? *target + x * x : x * x;
        }
    }
    *squares += total_s;
    *l1 += total_a;
    return top;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* Whether this CPU runs the AVX2+FMA code (asked once). */
static int has_avx2_fma(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return known;
}

/* Sixteen magnitudes from `k` on as float32 bit patterns in two vectors, their maxima
 * taken into `top0`/`top1` (sign bit clear: integer order is float order). For bfloat16,
 * interleaving with zeros widens to float32 in one step, in the order 0-3, 8-11 (first)
 * and 4-7, 12-15 (second): column writes follow that order. Its maximum is taken once on
 * the sixteen 16-bit values, into `top0` alone (as 16-bit lanes; see fused_pass_avx2's
 * end), where two 32-bit maxima and two masks took twice the instructions. */
__attribute__((target("avx2,fma"), always_inline))
static inline void magnitudes16(const void *data, int dtype, Py_ssize_t k, __m256i *first,
                                __m256i *second, __m256i *top0, __m256i *top1) {
    if (dtype == FLOAT32) {
        const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
        *first = _mm256_loadu_si256((const __m256i *)((const float *)data + k));
        *second = _mm256_loadu_si256((const __m256i *)((const float *)data + k + 8));
        *first = _mm256_and_si256(*first, mask);
        *second = _mm256_and_si256(*second, mask);
        *top0 = _mm256_max_epi32(*top0, *first);
        *top1 = _mm256_max_epi32(*top1, *second);
    } else {
        __m256i narrow = _mm256_loadu_si256((const __m256i *)((const uint16_t *)data + k));
        narrow = _mm256_and_si256(narrow, _mm256_set1_epi16(0x7FFF));
        *top0 = _mm256_max_epu16(*top0, narrow);
        *first = _mm256_unpacklo_epi16(_mm256_setzero_si256(), narrow);
        *second = _mm256_unpackhi_epi16(_mm256_setzero_si256(), narrow);
    }
}

/* Sixteen values' magnitude bits from data[k] ORed into bits[at], in the values' width. */
__attribute__((target("avx2,fma"), always_inline))
static inline void or_column_bits(void *bits, int dtype, Py_ssize_t at, const void *data,
                                  Py_ssize_t k) {
    if (dtype == FLOAT32) {
        const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
        for (int half = 0; half < 16; half += 8) {
            __m256i *target = (__m256i *)((uint32_t *)bits + at + half);
            __m256i value = _mm256_loadu_si256((const __m256i *)((const float *)data + k + half));
            value = _mm256_and_si256(value, mask);
            _mm256_storeu_si256(target, _mm256_or_si256(_mm256_loadu_si256(target), value));
        }
    } else {
        __m256i *target = (__m256i *)((uint16_t *)bits + at);
        __m256i value = _mm256_loadu_si256((const __m256i *)((const uint16_t *)data + k));
        value = _mm256_and_si256(value, _mm256_set1_epi16(0x7FFF));
        _mm256_storeu_si256(target, _mm256_or_si256(_mm256_loadu_si256(target), value));
    }
}

/* fused_pass_portable in AVX2 intrinsics: the column squares need the float-to-double
 * conversions that GCC's generic vectors lowered through the stack (1.5 Gvalues/s).
 * Without column squares it takes 32 values a step, summing pairs before they join the
 * accumulators: one add on each accumulator's chain per 32 values, where 16 values a step
 * waited on the previous step's FMA (its latency, not the loads, was the bound).
 * `column_bits` (without `columns_out`): each value's magnitude bits ORed into
 * column_bits[k - start], uint32 for float32 and uint16 for bfloat16 (check's dead
 * columns, in the same pass). `together` (with `columns_out`, 1 to 4): as many rows, each
 * `stride` values after the last, join in; each column's squares from them are summed in
 * float before they meet its double sum (at most four roundings for float32, whose squares
 * round; three for bfloat16, whose squares are exact): a quarter of the double loads and
 * stores per value. */
__attribute__((target("avx2,fma")))
static uint32_t fused_pass_avx2(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                                double *squares, double *l1, double *columns_out, int add,
                                void *column_bits, Py_ssize_t stride, int together) {
    __m256i top0 = _mm256_setzero_si256(), top1 = _mm256_setzero_si256();
    __m256d sum_s = _mm256_setzero_pd(), sum_a = _mm256_setzero_pd();
    /* pairs per step: twice the values per block for the same 16 additions per float lane
     * (and half the blocks' conversions to double); four rows together: half the columns
     * per block, so at most 8 additions after the three of each step */
    Py_ssize_t block = !columns_out ? 2 * BLOCK : together > 2 ? BLOCK / 2 : BLOCK;
    Py_ssize_t i = start;
    while (stop - i >= 16) {
        Py_ssize_t whole = (stop - i) - (stop - i) % 16;
        Py_ssize_t block_end = i + (whole < block ? whole : block);
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        Py_ssize_t k = i;
        if (!columns_out) {
            for (; block_end - k >= 32; k += 32) {
                __m256i w0, w1, w2, w3;
                magnitudes16(data, dtype, k, &w0, &w1, &top0, &top1);
                magnitudes16(data, dtype, k + 16, &w2, &w3, &top0, &top1);
                __m256 x0 = _mm256_castsi256_ps(w0), x1 = _mm256_castsi256_ps(w1);
                __m256 x2 = _mm256_castsi256_ps(w2), x3 = _mm256_castsi256_ps(w3);
                /* pairs summed off the accumulators' chains: one add on each per step */
                a0 = _mm256_add_ps(a0, _mm256_add_ps(x0, x2));
                a1 = _mm256_add_ps(a1, _mm256_add_ps(x1, x3));
                s0 = _mm256_add_ps(s0, _mm256_fmadd_ps(x0, x0, _mm256_mul_ps(x2, x2)));
                s1 = _mm256_add_ps(s1, _mm256_fmadd_ps(x1, x1, _mm256_mul_ps(x3, x3)));
                if (column_bits) {
                    or_column_bits(column_bits, dtype, k - start, data, k);
                    or_column_bits(column_bits, dtype, k - start + 16, data, k + 16);
                }
            }
        }
        for (; k < block_end; k += 16) {
            __m256i w0, w1;
            magnitudes16(data, dtype, k, &w0, &w1, &top0, &top1);
            __m256 x0 = _mm256_castsi256_ps(w0), x1 = _mm256_castsi256_ps(w1);
            if (columns_out) {
                __m256 q0 = _mm256_mul_ps(x0, x0), q1 = _mm256_mul_ps(x1, x1);
                for (int r = 1; r < together; r++) {
                    __m256i v0, v1;
                    magnitudes16(data, dtype, k + r * stride, &v0, &v1, &top0, &top1);
                    __m256 y0 = _mm256_castsi256_ps(v0), y1 = _mm256_castsi256_ps(v1);
                    q0 = _mm256_fmadd_ps(y0, y0, q0);
                    q1 = _mm256_fmadd_ps(y1, y1, q1);
                    x0 = _mm256_add_ps(x0, y0);
                    x1 = _mm256_add_ps(x1, y1);
                }
                a0 = _mm256_add_ps(a0, x0);
                a1 = _mm256_add_ps(a1, x1);
                s0 = _mm256_add_ps(s0, q0);
                s1 = _mm256_add_ps(s1, q1);
                /* where each lane's value sits in the row (see the bfloat16 load) */
                double *target = columns_out + (k - start);
                int second = dtype == FLOAT32 ? 8 : 4, third = dtype == FLOAT32 ? 4 : 8;
                __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(q0));
                __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(q0, 1));
                __m256d d2 = _mm256_cvtps_pd(_mm256_castps256_ps128(q1));
                __m256d d3 = _mm256_cvtps_pd(_mm256_extractf128_ps(q1, 1));
                if (add) {
                    d0 = _mm256_add_pd(d0, _mm256_loadu_pd(target));
                    d1 = _mm256_add_pd(d1, _mm256_loadu_pd(target + third));
                    d2 = _mm256_add_pd(d2, _mm256_loadu_pd(target + second));
                    d3 = _mm256_add_pd(d3, _mm256_loadu_pd(target + 12));
                }
                _mm256_storeu_pd(target, d0);
                _mm256_storeu_pd(target + third, d1);
                _mm256_storeu_pd(target + second, d2);
                _mm256_storeu_pd(target + 12, d3);
            } else {
                a0 = _mm256_add_ps(a0, x0);
                a1 = _mm256_add_ps(a1, x1);
                s0 = _mm256_fmadd_ps(x0, x0, s0);
                s1 = _mm256_fmadd_ps(x1, x1, s1);
                if (column_bits) or_column_bits(column_bits, dtype, k - start, data, k);
            }
        }
        /* the block's float sums join double vector totals (no scalar chain per block) */
        __m256 s = _mm256_add_ps(s0, s1), a = _mm256_add_ps(a0, a1);
        sum_s = _mm256_add_pd(sum_s, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
        sum_s = _mm256_add_pd(sum_s, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
        sum_a = _mm256_add_pd(sum_a, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
        sum_a = _mm256_add_pd(sum_a, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
        i = block_end;
    }
    double lanes_s[4], lanes_a[4];
    _mm256_storeu_pd(lanes_s, sum_s);
    _mm256_storeu_pd(lanes_a, sum_a);
    double total_s = (lanes_s[0] + lanes_s[1]) + (lanes_s[2] + lanes_s[3]);
    double total_a = (lanes_a[0] + lanes_a[1]) + (lanes_a[2] + lanes_a[3]);
    uint32_t lanes[8], top = 0;
    if (dtype == FLOAT32) {
        _mm256_storeu_si256((__m256i *)lanes, _mm256_max_epi32(top0, top1));
        for (int j = 0; j < 8; j++) top = lanes[j] > top ? lanes[j] : top;
    } else { /* sixteen 16-bit maxima: the top halves of float32 patterns */
        uint16_t halves[16];
        _mm256_storeu_si256((__m256i *)halves, top0);
        for (int j = 0; j < 16; j++) top = (uint32_t)halves[j] << 16 > top ? (uint32_t)halves[j] << 16 : top;
    }
    double tail_s = 0.0, tail_a = 0.0;
    uint32_t tail_top = 0;
    /* rows of a multiple of 16 values (most of a transformer's) have no tail: no call, which
     * sets up its vectors and reduces them whatever the length (a row-wise pass pays it on
     * every row) */
    if (i < stop)
        tail_top = fused_pass_portable(data, dtype, i, stop, &tail_s, &tail_a,
                                       columns_out ? columns_out + (i - start) : NULL, add);
    for (int r = 1; r < together && i < stop; r++) {
        uint32_t other = fused_pass_portable(data, dtype, i + r * stride, stop + r * stride,
                                             &tail_s, &tail_a, columns_out + (i - start), 1);
        tail_top = other > tail_top ? other : tail_top;
    }
    for (Py_ssize_t k = i; column_bits && k < stop; k++) {
        if (dtype == FLOAT32)
            ((uint32_t *)column_bits)[k - start] |= ((const uint32_t *)data)[k] & 0x7FFFFFFFu;
        else
            ((uint16_t *)column_bits)[k - start] |= ((const uint16_t *)data)[k] & 0x7FFFu;
    }
    *squares += total_s + tail_s;
    *l1 += total_a + tail_a;
    return tail_top > top ? tail_top : top;
}

static uint32_t fused_pass(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                           double *squares, double *l1, double *columns_out, int add) {
    if (has_avx2_fma())
        return fused_pass_avx2(data, dtype, start, stop, squares, l1, columns_out, add, NULL, 0,
                               1);
    return fused_pass_portable(data, dtype, start, stop, squares, l1, columns_out, add);
}
#else
#define fused_pass fused_pass_portable
#endif

/* fused_pass over `together` rows, each `stride` values after the last, all adding to the
 * same column sums. */
static uint32_t fused_rows(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                           Py_ssize_t stride, int together, double *squares, double *l1,
                           double *columns_out, int add) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (has_avx2_fma())
        return fused_pass_avx2(data, dtype, start, stop, squares, l1, columns_out, add, NULL,
                               stride, together);
#endif
    uint32_t top = fused_pass(data, dtype, start, stop, squares, l1, columns_out, add);
    for (int r = 1; r < together; r++) {
        uint32_t other = fused_pass(data, dtype, start + r * stride, stop + r * stride, squares,
                                    l1, columns_out, 1);
        top = other > top ? other : top;
    }
    return top;
}

/* Whether fused_pass's sums hold for a chunk whose largest magnitude has these bits. */
static int fused_sums_hold(uint32_t top) {
    if (top == 0) return 1; /* all zeros */
    if (top >= 0x7F800000u) return 0; /* Inf or NaN */
    float largest;
    memcpy(&largest, &top, sizeof largest);
    return largest >= SAFE_LOW && largest <= SAFE_HIGH;
}

/* Sum of squares and L1 of values [start, stop), all finite, in double (any range). */
static void sums_finite_double(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                               double *squares, double *l1) {
    double s = 0.0, a = 0.0;
    for (Py_ssize_t i = start; i < stop; i++) {
        double x = magnitude_at(data, dtype, i);
        s += x * x;
        a += x;
    }
    *squares += s;
    *l1 += a;
}

/* sums[k] (+)= x[start + k]² for k < n, in double; non-finite values count as 0. */
static void squares_into(const void *data, int dtype, Py_ssize_t start, Py_ssize_t n,
                         double *sums, int add) {
    for (Py_ssize_t k = 0; k < n; k++) {
        double x = magnitude_at(data, dtype, start + k);
        double value = isfinite(x) ? x * x : 0.0;
        sums[k] = add ? sums[k] + value : value;
    }
}

/* The same with a check per value: non-finite values are counted and skipped. */
static void sums_checked(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                         double *squares, double *l1, float *largest, Py_ssize_t *nonfinite) {
    double s = 0.0, a = 0.0;
    float top = *largest;
    for (Py_ssize_t i = start; i < stop; i++) {
        float value = value_at(data, dtype, i);
        if (!isfinite(value)) {
            (*nonfinite)++;
            continue;
        }
        double x = fabs((double)value);
        s += x * x;
        a += x;
        if ((float)x > top) top = (float)x;
    }
    *squares += s;
    *l1 += a;
    *largest = top;
}

/* The largest magnitude's bit pattern (monotonic in the value for non-NaN values), and
 * whether any value is Inf or NaN: one integer pass that the compiler vectorises. */
static float largest_magnitude(const void *data, int dtype, Py_ssize_t count, int *finite) {
    if (dtype == FLOAT32) {
        const uint32_t *bits = (const uint32_t *)data;
        uint32_t top = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            uint32_t magnitude = bits[i] & 0x7FFFFFFFu;
            top = magnitude > top ? magnitude : top;
        }
        *finite = top < 0x7F800000u;
        float value;
        memcpy(&value, &top, sizeof value);
        return value;
    }
    const uint16_t *bits = (const uint16_t *)data;
    uint16_t top = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint16_t magnitude = bits[i] & 0x7FFFu;
        top = magnitude > top ? magnitude : top;
    }
    if (dtype == BFLOAT16) {
        *finite = top < 0x7F80u;
        return from_bfloat16(top);
    }
    *finite = top < 0x7C00u;
    return from_float16(top);
}

/* Totals of one block of values, as reduce_chunk returns them. */
typedef struct {
    double squares, l1;
    float largest;
    Py_ssize_t nonfinite;
} Totals;

/* The statistics of `count` values at `data` and, by `mode`, their axis squares written to
 * `sums` (not added): ROWS sums[r]; COLUMNS sums[c] summed over the block's rows; MATRIX
 * sums[r * columns + c]. Runs without the GIL. The fused pass serves every finite chunk in
 * the safe range; anything else is redone on the checked, double path. */
static Totals reduce_block(const void *data, int dtype, Py_ssize_t count, Py_ssize_t row_width,
                           Py_ssize_t columns, int mode, double *sums) {
    Totals totals = {0.0, 0.0, 0.0f, 0};
    Py_ssize_t rows = mode == NO_AXES ? 0 : count / row_width;
    Py_ssize_t inner = mode == NO_AXES ? 1 : row_width / columns;
    Py_ssize_t needed = mode == ROWS ? rows : mode == COLUMNS ? columns
                      : mode == MATRIX ? rows * columns : 0;
    if (dtype != FLOAT16 && (inner == 1 || mode == ROWS)) {
        uint32_t top = 0;
        if (mode == NO_AXES) {
            top = fused_pass(data, dtype, 0, count, &totals.squares, &totals.l1, NULL, 0);
        } else {
            /* COLUMNS takes rows four at a time (see fused_pass_avx2's `together`) */
            Py_ssize_t step = mode == COLUMNS ? 4 : 1;
            for (Py_ssize_t row = 0; row < rows; row += step) {
                Py_ssize_t first = row * row_width;
                int together = (int)(rows - row < step ? rows - row : step);
                double s = 0.0, a = 0.0;
                double *target = mode == ROWS      ? NULL
                                 : mode == COLUMNS ? sums
                                                   : sums + row * columns;
                uint32_t row_top = fused_rows(data, dtype, first, first + row_width, row_width,
                                              together, &s, &a, target, mode == COLUMNS && row > 0);
                top = row_top > top ? row_top : top;
                totals.squares += s;
                totals.l1 += a;
                if (mode == ROWS) sums[row] = s;
            }
        }
        if (fused_sums_hold(top)) {
            memcpy(&totals.largest, &top, sizeof totals.largest);
            return totals;
        }
        totals.squares = totals.l1 = 0.0; /* start again on the checked path */
    }
    if (needed) memset(sums, 0, (size_t)needed * sizeof(double));
    int finite = 1;
    totals.largest = largest_magnitude(data, dtype, count, &finite);
    if (!finite) totals.largest = 0.0f;
    for (Py_ssize_t row = 0; row < (mode == NO_AXES ? 1 : rows); row++) {
        Py_ssize_t first = mode == NO_AXES ? 0 : row * row_width;
        Py_ssize_t stop = mode == NO_AXES ? count : first + row_width;
        double s = 0.0, a = 0.0;
        if (finite) sums_finite_double(data, dtype, first, stop, &s, &a);
        else sums_checked(data, dtype, first, stop, &s, &a, &totals.largest, &totals.nonfinite);
        totals.squares += s;
        totals.l1 += a;
        if (mode == NO_AXES) break;
        if (mode == ROWS) {
            sums[row] = s;
        } else if (inner == 1) {
            double *target = mode == COLUMNS ? sums : sums + row * columns;
            squares_into(data, dtype, first, columns, target, mode == COLUMNS);
        } else {
            for (Py_ssize_t column = 0; column < columns; column++) {
                Py_ssize_t start = first + column * inner;
                double cs = 0.0, ca = 0.0;
                Py_ssize_t ignored = 0;
                float unused = 0.0f;
                sums_checked(data, dtype, start, start + inner, &cs, &ca, &unused, &ignored);
                if (mode == COLUMNS) sums[column] += cs;
                else sums[row * columns + column] = cs;
            }
        }
    }
    return totals;
}

/* The argument checks shared by reduce_chunk and reduce_range; NULL when they pass. */
static const char *shape_problem(int dtype, int mode, Py_ssize_t count, Py_ssize_t row_width,
                                 Py_ssize_t columns) {
    if (dtype < FLOAT32 || dtype > FLOAT16) return "unknown dtype code";
    if (mode < NO_AXES || mode > MATRIX) return "unknown mode";
    if (count < 0) return "negative count";
    if (mode != NO_AXES &&
        (row_width <= 0 || count % row_width || columns <= 0 || row_width % columns))
        return "rows must be whole and columns must divide the row width";
    return NULL;
}

static void add_totals(Totals *into, Totals piece) {
    into->squares += piece.squares;
    into->l1 += piece.l1;
    if (piece.largest > into->largest) into->largest = piece.largest;
    into->nonfinite += piece.nonfinite;
}

/* Set the Python exception for a bad argument (`problem`) or a failed read (`error`: an
 * errno, or -1 for an early end of file); whether one was set. */
static int raise_failure(const char *problem, int error) {
    if (problem) {
        PyErr_SetString(PyExc_ValueError, problem);
        return 1;
    }
    if (error > 0) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        return 1;
    }
    if (error < 0) {
        PyErr_SetString(PyExc_EOFError, "a file ended before the tensor's data");
        return 1;
    }
    return 0;
}

static PyObject *totals_tuple(Totals totals) {
    return Py_BuildValue("(dddn)", totals.squares, totals.l1, (double)totals.largest,
                         totals.nonfinite);
}

static const char *REDUCE_CHUNK_KEYWORDS[] = {
    "data", "dtype_code", "count", "row_width", "columns", "mode", "out", NULL};
static PyObject *reduce_chunk(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer data, out;
    int dtype, mode;
    Py_ssize_t count, row_width, columns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*innniw*", (char **)REDUCE_CHUNK_KEYWORDS,
                                     &data, &dtype, &count, &row_width, &columns, &mode, &out))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = shape_problem(dtype, mode, count, row_width, columns);
    if (!problem && data.len < count * itemsize) problem = "buffer smaller than count";
    Py_ssize_t rows = (problem || mode == NO_AXES) ? 0 : count / row_width;
    Py_ssize_t needed = mode == ROWS ? rows : mode == COLUMNS ? columns
                      : mode == MATRIX ? rows * columns : 0;
    if (!problem && out.len < needed * (Py_ssize_t)sizeof(double)) problem = "output too small";
    Totals totals = {0.0, 0.0, 0.0f, 0};
    if (!problem) {
        Py_BEGIN_ALLOW_THREADS
        totals = reduce_block(data.buf, dtype, count, row_width, columns, mode,
                              (double *)out.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (raise_failure(problem, 0)) return NULL;
    return totals_tuple(totals);
}

/* Read `want` bytes fully, or report why not (errno, or -1 at EOF). */
static int read_fully(int fd, char *buffer, size_t want, long long offset) {
    size_t have = 0;
    while (have < want) {
        ssize_t got = pread(fd, buffer + have, want - have, (off_t)(offset + (long long)have));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return got < 0 ? errno : -1;
        have += (size_t)got;
    }
    return 0;
}

/* Bytes read and reduced at a time by reduce_range: small enough that a piece is still in
 * the core's L2 cache when the kernel reads it back after the read's copy. */
#ifndef PIECE_BYTES
#define PIECE_BYTES (256 << 10)
#endif

/* reduce_chunk over `count` values read from file descriptor `fd` at byte `offset`,
 * through `scratch` in pieces of whole rows of about PIECE_BYTES: one call per task
 * instead of a Python read and a Python call per piece. COLUMNS mode needs `out` to hold
 * 2 x columns (the second half stages each piece's sums). Raises EOFError when the file
 * ends early and OSError when a read fails. */
static const char *REDUCE_RANGE_KEYWORDS[] = {
    "fd", "offset", "scratch", "dtype_code", "count", "row_width", "columns", "mode", "out", NULL};
static PyObject *reduce_range(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer scratch, out;
    int fd, dtype, mode;
    long long offset;
    Py_ssize_t count, row_width, columns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iLw*innniw*", (char **)REDUCE_RANGE_KEYWORDS,
                                     &fd, &offset, &scratch, &dtype, &count, &row_width, &columns,
                                     &mode, &out))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = shape_problem(dtype, mode, count, row_width, columns);
    Py_ssize_t rows = (problem || mode == NO_AXES) ? 0 : count / row_width;
    Py_ssize_t needed = mode == ROWS ? rows : mode == COLUMNS ? 2 * columns
                      : mode == MATRIX ? rows * columns : 0;
    Py_ssize_t unit = mode == NO_AXES ? 1 : row_width; /* pieces hold whole rows */
    Py_ssize_t per_piece = PIECE_BYTES / (unit * itemsize);
    per_piece = (per_piece < 1 ? 1 : per_piece) * unit;
    if (!problem && out.len < needed * (Py_ssize_t)sizeof(double)) problem = "output too small";
    if (!problem && scratch.len < per_piece * itemsize) problem = "scratch smaller than a row";
    Totals totals = {0.0, 0.0, 0.0f, 0};
    int error = 0; /* errno of a failed read, or -1 for an early end of file */
    if (!problem) {
        Py_BEGIN_ALLOW_THREADS
        double *sums = (double *)out.buf;
        char *buffer = (char *)scratch.buf;
        for (Py_ssize_t done = 0; done < count && !error; done += per_piece) {
            Py_ssize_t n = count - done < per_piece ? count - done : per_piece;
            error = read_fully(fd, buffer, (size_t)(n * itemsize), offset + done * itemsize);
            if (error) break;
            Py_ssize_t first_row = mode == NO_AXES ? 0 : done / row_width;
            double *target = mode == ROWS      ? sums + first_row
                             : mode == MATRIX  ? sums + first_row * columns
                             : mode == COLUMNS ? (done == 0 ? sums : sums + columns)
                                               : NULL;
            Totals piece = reduce_block(buffer, dtype, n, row_width, columns, mode, target);
            if (mode == COLUMNS && done > 0)
                for (Py_ssize_t c = 0; c < columns; c++) sums[c] += sums[columns + c];
            add_totals(&totals, piece);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&scratch);
    PyBuffer_Release(&out);
    if (raise_failure(problem, error)) return NULL;
    return totals_tuple(totals);
}


/* Whether the factor arrays of `rows` rows of `row_width` are long enough (an empty one
 * stands for ones); NULL when they are. */
static const char *factors_problem(const Py_buffer *row_factors, const Py_buffer *pattern,
                                   Py_ssize_t rows, Py_ssize_t row_width) {
    if (row_factors->len && row_factors->len < rows * (Py_ssize_t)sizeof(double))
        return "row factors shorter than the rows";
    if (pattern->len && pattern->len < row_width * (Py_ssize_t)sizeof(double))
        return "pattern shorter than a row";
    return NULL;
}

/* Factors that are powers of two float32 holds as normal numbers: x · 2^k is then exact in
 * float32 except where the product is subnormal or overflows, and float32 multiplication
 * rounds that case once, as the double route does. Scaling and checking by them need no
 * double arithmetic. */
static int is_float32_power_of_two(double factor) {
    int exponent;
    return factor > 0 && frexp(factor, &exponent) == 0.5 && exponent >= -125 && exponent <= 128;
}

/* A row pattern in float32 when every entry is such a power of two (`usable`), with its
 * extremes; no values for an absent pattern (all ones). Free `values` after. */
typedef struct {
    int usable;
    float *values;
    double smallest, largest;
} Pow2Pattern;

static Pow2Pattern pow2_pattern(const double *pattern, Py_ssize_t row_width) {
    Pow2Pattern found = {1, NULL, 1.0, 1.0};
    if (!pattern) return found;
    found.values = malloc((size_t)row_width * sizeof(float));
    found.usable = found.values != NULL; /* without memory, the double route */
    found.smallest = found.largest = pattern[0];
    for (Py_ssize_t k = 0; k < row_width && found.usable; k++) {
        found.usable = is_float32_power_of_two(pattern[k]);
        found.values[k] = (float)pattern[k];
        found.smallest = pattern[k] < found.smallest ? pattern[k] : found.smallest;
        found.largest = pattern[k] > found.largest ? pattern[k] : found.largest;
    }
    return found;
}

/* Whether every factor of a row (row_factor · pattern[k]) is such a power of two. */
static int pow2_row(const Pow2Pattern *pattern, double row_factor) {
    return pattern->usable && is_float32_power_of_two(row_factor) &&
           is_float32_power_of_two(row_factor * pattern->smallest) &&
           is_float32_power_of_two(row_factor * pattern->largest);
}

/* What check_range found: values checked, values outside their allowance (NaN counts),
 * the largest deviation as a share of its allowance (finite ones), and the rewritten
 * values' statistics. */
typedef struct {
    Py_ssize_t checked, bad;
    double worst;
    Totals rewritten;
} CheckTotals;

/* new[i] against old[i] * factor_i for values [start, stop) of one row: |new - f·old| must
 * be at most |new|·unit + floor. In double: the product of a 24-bit value and a factor is
 * then off by at most 2^-53 of itself, far inside any allowance the caller passes. */
static void check_values_portable(const void *old, const void *new, int dtype, Py_ssize_t start,
                                  Py_ssize_t stop, double row_factor, const double *pattern,
                                  double unit, double floor, CheckTotals *found) {
    double worst = found->worst;
    Py_ssize_t bad = 0;
    for (Py_ssize_t k = start; k < stop; k++) {
        double o = value_at(old, dtype, k), n = value_at(new, dtype, k);
        double factor = pattern ? row_factor * pattern[k - start] : row_factor;
        double deviation = fabs(n - o * factor);
        double allowance = fabs(n) * unit + floor;
        bad += !(deviation <= allowance); /* NaN counts as bad */
        double share = deviation / allowance;
        worst = share > worst ? share : worst; /* NaN shares are left out */
    }
    found->worst = worst;
    found->bad += bad;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Four values from `index` on, widened to double. */
__attribute__((target("avx2,fma"))) static inline __m256d load4(const void *data, int dtype,
                                                                Py_ssize_t index) {
    if (dtype == FLOAT32) return _mm256_cvtps_pd(_mm_loadu_ps((const float *)data + index));
    __m128i narrow = _mm_loadl_epi64((const __m128i *)((const uint16_t *)data + index));
    __m128i wide = _mm_slli_epi32(_mm_cvtepu16_epi32(narrow), 16);
    return _mm256_cvtps_pd(_mm_castsi128_ps(wide));
}

/* The running findings of the AVX2 checks: per lane, the worst share and the count of
 * values outside their allowance (as negative masks summed: see check4). */
typedef struct {
    __m256d worst;
    __m256i bad;
} Lanes;

/* Four values: |new - f·old| against |new|·unit + floor (see check_values_portable). */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void check4(
    __m256d o, __m256d n, __m256d factor, __m256d units, __m256d floors, Lanes *lanes) {
    const __m256d sign = _mm256_set1_pd(-0.0);
    __m256d deviation = _mm256_andnot_pd(sign, _mm256_fnmadd_pd(o, factor, n));
    __m256d allowance = _mm256_fmadd_pd(_mm256_andnot_pd(sign, n), units, floors);
    /* all ones where within the allowance; NaN compares false and counts as bad */
    __m256d within = _mm256_cmp_pd(deviation, allowance, _CMP_LE_OQ);
    lanes->bad = _mm256_add_epi64(lanes->bad, _mm256_add_epi64(_mm256_castpd_si256(within),
                                                                _mm256_set1_epi64x(1)));
    /* The division (the loop's bound, 1.2 cycles a value) only where a lane's share may
     * pass its worst so far: deviation - worst·allowance, rounded once by the FMA, has the
     * sign of the exact difference (shares are 0 or above 2^-330, so it never underflows
     * to 0), and a share equal to the worst changes nothing. NaN lanes compare false, as
     * max_pd below ignores their NaN shares. In double: a float allowance can be
     * subnormal, and float division by one is slow. */
    __m256d excess = _mm256_fnmadd_pd(lanes->worst, allowance, deviation);
    if (_mm256_movemask_pd(_mm256_cmp_pd(excess, _mm256_setzero_pd(), _CMP_GT_OQ)))
        lanes->worst = _mm256_max_pd(_mm256_div_pd(deviation, allowance), lanes->worst);
}

__attribute__((target("avx2,fma"))) static Lanes start_lanes(const CheckTotals *found) {
    Lanes lanes = {_mm256_set1_pd(found->worst), _mm256_setzero_si256()};
    return lanes;
}

/* Fold the lanes into `found`. */
__attribute__((target("avx2,fma"))) static void finish_lanes(Lanes lanes, CheckTotals *found) {
    double worst[4];
    _mm256_storeu_pd(worst, lanes.worst);
    double top = worst[0];
    for (int j = 1; j < 4; j++) top = worst[j] > top ? worst[j] : top;
    int64_t counts[4];
    _mm256_storeu_si256((__m256i *)counts, lanes.bad);
    found->bad += (Py_ssize_t)(counts[0] + counts[1] + counts[2] + counts[3]);
    found->worst = top;
}

/* check_values_portable in AVX2, four values at a time. */
__attribute__((target("avx2,fma")))
static void check_values_avx2(const void *old, const void *new, int dtype, Py_ssize_t start,
                              Py_ssize_t stop, double row_factor, const double *pattern,
                              double unit, double floor, CheckTotals *found) {
    const __m256d units = _mm256_set1_pd(unit), floors = _mm256_set1_pd(floor);
    const __m256d factor = _mm256_set1_pd(row_factor);
    Lanes lanes = start_lanes(found);
    Py_ssize_t k = start;
    for (; k + 4 <= stop; k += 4) {
        __m256d f = pattern ? _mm256_mul_pd(factor, _mm256_loadu_pd(pattern + (k - start)))
                            : factor;
        check4(load4(old, dtype, k), load4(new, dtype, k), f, units, floors, &lanes);
    }
    finish_lanes(lanes, found);
    check_values_portable(old, new, dtype, k, stop, row_factor,
                          pattern ? pattern + (k - start) : NULL, unit, floor, found);
}

/* Eight values from `index` on, widened to float32 bits. */
__attribute__((target("avx2,fma"))) static inline __m256i load8(const void *data, int dtype,
                                                                Py_ssize_t index) {
    if (dtype == FLOAT32) return _mm256_loadu_si256((const __m256i *)((const float *)data + index));
    __m128i narrow = _mm_loadu_si128((const __m128i *)((const uint16_t *)data + index));
    return _mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16);
}

/* check_values_avx2 for a row whose factors are float32 powers of two (`pattern32`, or
 * none): eight values at a time, a value passes at once when it has the bits of its
 * original times the factor in float32 and that product is exact (normal and finite, or
 * of a zero): its deviation is 0, which changes neither the count nor the worst share.
 * Eight values with any other are checked in double, as check_values_avx2 does. */
__attribute__((target("avx2,fma")))
static void check_pow2_avx2(const void *old, const void *new, int dtype, Py_ssize_t start,
                            Py_ssize_t stop, double row_factor, const float *pattern32,
                            const double *pattern, double unit, double floor,
                            CheckTotals *found) {
    const __m256 row = _mm256_set1_ps((float)row_factor);
    const __m256i magnitude = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i smallest_normal = _mm256_set1_epi32(0x00800000);
    const __m256i infinity = _mm256_set1_epi32(0x7F800000), zero = _mm256_setzero_si256();
    const __m256d units = _mm256_set1_pd(unit), floors = _mm256_set1_pd(floor);
    const __m256d exact_row = _mm256_set1_pd(row_factor);
    Lanes lanes = start_lanes(found);
    Py_ssize_t k = start;
    for (; k + 8 <= stop; k += 8) {
        __m256 factor = pattern32 ? _mm256_mul_ps(row, _mm256_loadu_ps(pattern32 + (k - start)))
                                  : row;
        __m256i o = load8(old, dtype, k), n = load8(new, dtype, k);
        __m256i product = _mm256_castps_si256(_mm256_mul_ps(_mm256_castsi256_ps(o), factor));
        __m256i size = _mm256_and_si256(product, magnitude); /* signed compares hold */
        __m256i normal = _mm256_andnot_si256(_mm256_cmpgt_epi32(smallest_normal, size),
                                             _mm256_cmpgt_epi32(infinity, size));
        __m256i of_zero = _mm256_cmpeq_epi32(_mm256_and_si256(o, magnitude), zero);
        __m256i passed = _mm256_and_si256(_mm256_cmpeq_epi32(n, product),
                                          _mm256_or_si256(normal, of_zero));
        if (_mm256_movemask_epi8(passed) == -1) continue;
        for (Py_ssize_t half = k; half < k + 8; half += 4) {
            __m256d f = pattern ? _mm256_mul_pd(exact_row,
                                                _mm256_loadu_pd(pattern + (half - start)))
                                : exact_row;
            check4(load4(old, dtype, half), load4(new, dtype, half), f, units, floors, &lanes);
        }
    }
    finish_lanes(lanes, found);
    check_values_avx2(old, new, dtype, k, stop, row_factor,
                      pattern ? pattern + (k - start) : NULL, unit, floor, found);
}
#endif

/* The check of one piece of whole rows: factor = scalar · row_factors[row] · pattern[k]
 * (either array may be absent). */
static void check_piece(const void *old, const void *new, int dtype, Py_ssize_t rows,
                        Py_ssize_t row_width, double scalar, const double *row_factors,
                        const double *pattern, double unit, double floor, CheckTotals *found) {
#if defined(__x86_64__) && defined(__GNUC__)
    Pow2Pattern pow2 = {0, NULL, 1.0, 1.0};
    if (has_avx2_fma()) pow2 = pow2_pattern(pattern, row_width);
#endif
    for (Py_ssize_t row = 0; row < rows; row++) {
        double row_factor = scalar * (row_factors ? row_factors[row] : 1.0);
        Py_ssize_t first = row * row_width;
#if defined(__x86_64__) && defined(__GNUC__)
        if (pow2_row(&pow2, row_factor)) {
            check_pow2_avx2(old, new, dtype, first, first + row_width, row_factor, pow2.values,
                            pattern, unit, floor, found);
            continue;
        }
        if (has_avx2_fma()) {
            check_values_avx2(old, new, dtype, first, first + row_width, row_factor, pattern,
                              unit, floor, found);
            continue;
        }
#endif
        check_values_portable(old, new, dtype, first, first + row_width, row_factor, pattern,
                              unit, floor, found);
    }
#if defined(__x86_64__) && defined(__GNUC__)
    free(pow2.values);
#endif
    found->checked += rows * row_width;
}

/* check_piece, and the rewritten values' statistics as reduce_chunk measures them. */
static void check_and_measure(const void *old, const void *new, int dtype, Py_ssize_t rows,
                              Py_ssize_t row_width, double scalar, const double *row_factors,
                              const double *pattern, double unit, double floor,
                              CheckTotals *found) {
    check_piece(old, new, dtype, rows, row_width, scalar, row_factors, pattern, unit, floor,
                found);
    add_totals(&found->rewritten, reduce_block(new, dtype, rows * row_width, 0, 1, NO_AXES, NULL));
}

static PyObject *check_tuple(CheckTotals found) {
    return Py_BuildValue("(nnddddn)", found.checked, found.bad, found.worst,
                         found.rewritten.squares, found.rewritten.l1,
                         (double)found.rewritten.largest, found.rewritten.nonfinite);
}

/* The value check of values in memory, for check_values: releases the buffers; returns
 * (checked, bad, worst). */
static PyObject *check_in_memory(Py_buffer *old, Py_buffer *new, int dtype, Py_ssize_t count,
                                 Py_ssize_t row_width, double scalar, Py_buffer *row_factors,
                                 Py_buffer *pattern, double unit, double floor) {
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = NULL;
    if (dtype != FLOAT32 && dtype != BFLOAT16) problem = "the check reads float32 or bfloat16";
    else if (count < 0 || row_width <= 0 || count % row_width) problem = "rows must be whole";
    else if (old->len < count * itemsize || new->len < count * itemsize)
        problem = "buffers smaller than count";
    Py_ssize_t rows = problem ? 0 : count / row_width;
    if (!problem) problem = factors_problem(row_factors, pattern, rows, row_width);
    CheckTotals found = {0, 0, 0.0, {0.0, 0.0, 0.0f, 0}};
    if (!problem) {
        const double *factors = row_factors->len ? (const double *)row_factors->buf : NULL;
        const double *along = pattern->len ? (const double *)pattern->buf : NULL;
        Py_BEGIN_ALLOW_THREADS
        check_piece(old->buf, new->buf, dtype, rows, row_width, scalar, factors, along, unit,
                    floor, &found);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(old);
    PyBuffer_Release(new);
    PyBuffer_Release(row_factors);
    PyBuffer_Release(pattern);
    if (raise_failure(problem, 0)) return NULL;
    return Py_BuildValue("(nnd)", found.checked, found.bad, found.worst);
}

/* check_range's value check of float32 values already in memory (decoded from any
 * storage dtype, which float32 holds exactly): `count` values, whole rows of `row_width`.
 * Returns (checked, bad, worst). */
static const char *CHECK_VALUES_KEYWORDS[] = {
    "old", "new", "count", "row_width", "scalar", "row_factors", "pattern", "unit", "floor", NULL};
static PyObject *check_values(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer old, new, row_factors, pattern;
    Py_ssize_t count, row_width;
    double scalar, unit, floor;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*nndy*y*dd", (char **)CHECK_VALUES_KEYWORDS,
                                     &old, &new, &count, &row_width, &scalar, &row_factors,
                                     &pattern, &unit, &floor))
        return NULL;
    return check_in_memory(&old, &new, FLOAT32, count, row_width, scalar, &row_factors,
                           &pattern, unit, floor);
}

/* The value check of a rewrite, reading both files itself: `count` values (whole rows of
 * `row_width`) of a tensor at `old_offset` in `old_fd` and `new_offset` in `new_fd`, with
 * `row_factors` holding these rows' factors (or empty). Also measures the rewritten
 * values as reduce_chunk does. Returns (checked, bad, worst, sum_squares, l1, max_abs,
 * nonfinite). */
static const char *CHECK_RANGE_KEYWORDS[] = {
    "old_fd", "old_offset", "new_fd", "new_offset", "old_scratch", "new_scratch", "dtype_code",
    "count", "row_width", "scalar", "row_factors", "pattern", "unit", "floor", NULL};
static PyObject *check_range(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer old_scratch, new_scratch, row_factors, pattern;
    int old_fd, new_fd, dtype;
    long long old_offset, new_offset;
    Py_ssize_t count, row_width;
    double scalar, unit, floor;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iLiLw*w*inndy*y*dd",
                                     (char **)CHECK_RANGE_KEYWORDS,
                                     &old_fd, &old_offset, &new_fd, &new_offset, &old_scratch,
                                     &new_scratch, &dtype, &count, &row_width, &scalar,
                                     &row_factors, &pattern, &unit, &floor))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = NULL;
    if (dtype != FLOAT32 && dtype != BFLOAT16) problem = "check_range reads float32 or bfloat16";
    else if (count < 0 || row_width <= 0 || count % row_width)
        problem = "rows must be whole";
    Py_ssize_t rows = problem ? 0 : count / row_width;
    Py_ssize_t per_piece = PIECE_BYTES / (row_width * itemsize);
    per_piece = per_piece < 1 ? 1 : per_piece;
    if (!problem) problem = factors_problem(&row_factors, &pattern, rows, row_width);
    if (!problem && (old_scratch.len < per_piece * row_width * itemsize ||
                     new_scratch.len < per_piece * row_width * itemsize))
        problem = "scratch smaller than a row";
    CheckTotals found = {0, 0, 0.0, {0.0, 0.0, 0.0f, 0}};
    int error = 0;
    if (!problem) {
        Py_BEGIN_ALLOW_THREADS
        const double *factors = row_factors.len ? (const double *)row_factors.buf : NULL;
        const double *along = pattern.len ? (const double *)pattern.buf : NULL;
        for (Py_ssize_t row = 0; row < rows; row += per_piece) {
            Py_ssize_t n = rows - row < per_piece ? rows - row : per_piece;
            size_t nbytes = (size_t)(n * row_width * itemsize);
            long long skip = (long long)row * row_width * itemsize;
            error = read_fully(old_fd, (char *)old_scratch.buf, nbytes, old_offset + skip);
            if (!error)
                error = read_fully(new_fd, (char *)new_scratch.buf, nbytes, new_offset + skip);
            if (error) break;
            check_and_measure(old_scratch.buf, new_scratch.buf, dtype, n, row_width, scalar,
                              factors ? factors + row : NULL, along, unit, floor, &found);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&old_scratch);
    PyBuffer_Release(&new_scratch);
    PyBuffer_Release(&row_factors);
    PyBuffer_Release(&pattern);
    if (raise_failure(problem, error)) return NULL;
    return check_tuple(found);
}

/* x · factor rounded once to float32 or bfloat16 (the exact product rounded to nearest
 * even), from the float64 product rounded *to odd*: with 53 >= 24 + 2 bits, rounding that
 * to the narrower format again gives the correctly rounded exact product. FMA gives the
 * float64 product's exact error. Non-finite products pass through unchanged. */
static inline __attribute__((always_inline)) double product_to_odd(double x, double factor) {
    double product = x * factor;
    double error = fma(x, factor, -product);
    uint64_t bits;
    memcpy(&bits, &product, sizeof bits);
    /* branch-free (the branch was mispredicted on every other value: 0.12 G values/s): an
     * inexact finite product with an even last bit steps one ulp toward the exact one */
    uint64_t step = (uint64_t)(error != 0.0) & (uint64_t)(fabs(product) <= 1.7976931348623157e308) &
                    (~bits & 1u);
    uint64_t up = (uint64_t)((error > 0) == (product > 0));
    bits += step * (2 * up - 1);
    memcpy(&product, &bits, sizeof product);
    return product;
}

/* float64 (rounded to odd) to bfloat16 bits, rounding once: to float32 to odd, then to
 * nearest even on the top 16 bits. */
static inline __attribute__((always_inline)) uint16_t odd_double_to_bfloat16(double value) {
    float narrow = (float)value;
    uint32_t bits;
    memcpy(&bits, &narrow, sizeof bits);
    uint32_t step = (uint32_t)((double)narrow != value) &
                    (uint32_t)(fabsf(narrow) <= 3.4028234663852886e38f) & (~bits & 1u);
    uint32_t down = (uint32_t)(fabs((double)narrow) > fabs(value));
    bits += step * (1u - 2u * down);
    uint32_t nan = (uint32_t)((bits & 0x7FFFFFFFu) > 0x7F800000u);
    uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return (uint16_t)(nan ? ((bits >> 16) | 0x40u) : rounded);
}

/* Values [start, stop) of `source`, scaled into the same places of `data` (which may be
 * `source` itself). */
static inline __attribute__((always_inline)) void scale_values(
    const void *source, void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
    double row_factor, const double *pattern) {
    if (dtype == FLOAT32) {
        const float *from = (const float *)source;
        float *values = (float *)data;
        for (Py_ssize_t k = start; k < stop; k++) {
            double factor = pattern ? row_factor * pattern[k - start] : row_factor;
            values[k] = (float)product_to_odd((double)from[k], factor);
        }
    } else {
        const uint16_t *from = (const uint16_t *)source;
        uint16_t *values = (uint16_t *)data;
        for (Py_ssize_t k = start; k < stop; k++) {
            double factor = pattern ? row_factor * pattern[k - start] : row_factor;
            values[k] = odd_double_to_bfloat16(
                product_to_odd((double)from_bfloat16(from[k]), factor));
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* product_to_odd on four lanes. */
__attribute__((target("avx2,fma"))) static inline __m256d product_to_odd4(__m256d x,
                                                                         __m256d factor) {
    const __m256d largest = _mm256_set1_pd(1.7976931348623157e308);
    const __m256d sign = _mm256_set1_pd(-0.0);
    const __m256i one = _mm256_set1_epi64x(1);
    __m256d product = _mm256_mul_pd(x, factor);
    __m256d error = _mm256_fmsub_pd(x, factor, product);
    __m256i bits = _mm256_castpd_si256(product);
    __m256d inexact = _mm256_and_pd(_mm256_cmp_pd(error, _mm256_setzero_pd(), _CMP_NEQ_OQ),
                                    _mm256_cmp_pd(_mm256_andnot_pd(sign, product), largest,
                                                  _CMP_LE_OQ));
    __m256i even = _mm256_cmpeq_epi64(_mm256_and_si256(bits, one), _mm256_setzero_si256());
    __m256i step = _mm256_and_si256(_mm256_castpd_si256(inexact), even);
    /* +1 where error and product share a sign (the exact value is farther from zero) */
    __m256i differ = _mm256_srli_epi64(
        _mm256_xor_si256(_mm256_castpd_si256(error), bits), 63);
    __m256i delta = _mm256_sub_epi64(one, _mm256_slli_epi64(differ, 1));
    bits = _mm256_add_epi64(bits, _mm256_and_si256(step, delta));
    return _mm256_castsi256_pd(bits);
}

/* scale_values, four values at a time, the tail by the scalar code. */
__attribute__((target("avx2,fma")))
static void scale_values_avx2(const void *source, void *data, int dtype, Py_ssize_t start,
                              Py_ssize_t stop, double row_factor, const double *pattern) {
    const __m256d row = _mm256_set1_pd(row_factor);
    Py_ssize_t k = start;
    if (dtype == FLOAT32) {
        const float *from = (const float *)source;
        float *values = (float *)data;
        for (; k + 4 <= stop; k += 4) {
            __m256d factor = pattern ? _mm256_mul_pd(row, _mm256_loadu_pd(pattern + (k - start)))
                                     : row;
            __m256d x = _mm256_cvtps_pd(_mm_loadu_ps(from + k));
            _mm_storeu_ps(values + k, _mm256_cvtpd_ps(product_to_odd4(x, factor)));
        }
    } else {
        const uint16_t *from = (const uint16_t *)source;
        uint16_t *values = (uint16_t *)data;
        const __m128i one = _mm_set1_epi32(1), magnitude = _mm_set1_epi32(0x7FFFFFFF);
        const __m128 largest = _mm_set1_ps(3.4028234663852886e38f);
        const __m256d sign = _mm256_set1_pd(-0.0);
        for (; k + 4 <= stop; k += 4) {
            __m256d factor = pattern ? _mm256_mul_pd(row, _mm256_loadu_pd(pattern + (k - start)))
                                     : row;
            __m128i narrow16 = _mm_loadl_epi64((const __m128i *)(from + k));
            __m128 wide = _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(narrow16), 16));
            __m256d product = product_to_odd4(_mm256_cvtps_pd(wide), factor);
            /* to float32, rounded to odd */
            __m128 narrow = _mm256_cvtpd_ps(product);
            __m256d back = _mm256_cvtps_pd(narrow);
            __m128i bits = _mm_castps_si128(narrow);
            __m128 inexact = _mm_and_ps(
                _mm256_cvtpd_ps(_mm256_cmp_pd(back, product, _CMP_NEQ_OQ)),
                _mm_cmp_ps(_mm_castsi128_ps(_mm_and_si128(bits, magnitude)), largest,
                           _CMP_LE_OQ));
            /* the compare mask turned float is NaN (all ones): nonzero where set */
            __m128i step = _mm_and_si128(
                _mm_cmpeq_epi32(_mm_castps_si128(inexact), _mm_castps_si128(inexact)),
                _mm_cmpeq_epi32(_mm_and_si128(bits, one), _mm_setzero_si128()));
            step = _mm_and_si128(step, _mm_xor_si128(_mm_cmpeq_epi32(_mm_castps_si128(inexact),
                                                                     _mm_setzero_si128()),
                                                      _mm_set1_epi32(-1)));
            __m256d away = _mm256_cmp_pd(_mm256_andnot_pd(sign, back),
                                         _mm256_andnot_pd(sign, product), _CMP_GT_OQ);
            __m128i down = _mm_castps_si128(_mm256_cvtpd_ps(away)); /* nonzero where away */
            down = _mm_xor_si128(_mm_cmpeq_epi32(down, _mm_setzero_si128()), _mm_set1_epi32(-1));
            /* -1 where rounding went away from zero, else +1 */
            __m128i delta = _mm_or_si128(down, one);
            bits = _mm_add_epi32(bits, _mm_and_si128(step, delta));
            /* to bfloat16, to nearest even; NaN stays NaN (quiet) */
            __m128i rounded = _mm_srli_epi32(
                _mm_add_epi32(_mm_add_epi32(bits, _mm_set1_epi32(0x7FFF)),
                              _mm_and_si128(_mm_srli_epi32(bits, 16), one)),
                16);
            __m128i nan = _mm_cmpgt_epi32(_mm_and_si128(bits, magnitude),
                                          _mm_set1_epi32(0x7F800000));
            __m128i quiet = _mm_or_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(0x40));
            __m128i out = _mm_blendv_epi8(rounded, quiet, nan);
            _mm_storel_epi64((__m128i *)(values + k), _mm_packus_epi32(out, out));
        }
    }
    scale_values(source, data, dtype, k, stop, row_factor,
                 pattern ? pattern + (k - start) : NULL);
}

/* Power-of-two factors (float32 normal numbers): x · 2^k is exact in float32 but where the
 * product is subnormal or overflows, and float32 multiplication rounds that one case once,
 * as the double route does. So float32 takes one float multiply per value, and bfloat16
 * (float32's exponent range) one too, whenever the float32 product's low 16 bits are zero
 * (the product is exact in bfloat16); eight values whose product is not go the double
 * route. 0.46 -> several G values/s for bfloat16 here. `pattern` is float32 here. */
__attribute__((target("avx2,fma")))
static void scale_pow2_avx2(const void *source, void *data, int dtype, Py_ssize_t start,
                            Py_ssize_t stop, float row_factor, const float *pattern,
                            const double *exact_pattern) {
    const __m256 row = _mm256_set1_ps(row_factor);
    Py_ssize_t k = start;
    if (dtype == FLOAT32) {
        const float *from = (const float *)source;
        float *values = (float *)data;
        for (; k + 8 <= stop; k += 8) {
            __m256 factor = pattern ? _mm256_mul_ps(row, _mm256_loadu_ps(pattern + (k - start)))
                                    : row;
            _mm256_storeu_ps(values + k, _mm256_mul_ps(_mm256_loadu_ps(from + k), factor));
        }
    } else {
        const uint16_t *from = (const uint16_t *)source;
        uint16_t *values = (uint16_t *)data;
        const __m256i low = _mm256_set1_epi32(0xFFFF);
        for (; k + 8 <= stop; k += 8) {
            __m256 factor = pattern ? _mm256_mul_ps(row, _mm256_loadu_ps(pattern + (k - start)))
                                    : row;
            __m128i narrow = _mm_loadu_si128((const __m128i *)(from + k));
            __m256 wide = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16));
            __m256i bits = _mm256_castps_si256(_mm256_mul_ps(wide, factor));
            if (!_mm256_testz_si256(bits, low)) { /* not exact in bfloat16: the double route */
                double exact = (double)row_factor;
                scale_values(source, data, dtype, k, k + 8, exact,
                             exact_pattern ? exact_pattern + (k - start) : NULL);
                continue;
            }
            __m256i halves = _mm256_srli_epi32(bits, 16);
            __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(halves),
                                              _mm256_extracti128_si256(halves, 1));
            _mm_storeu_si128((__m128i *)(values + k), packed);
        }
    }
    scale_values(source, data, dtype, k, stop, (double)row_factor,
                 exact_pattern ? exact_pattern + (k - start) : NULL);
}
#endif

static void scale_values_portable(const void *source, void *data, int dtype, Py_ssize_t start,
                                  Py_ssize_t stop, double row_factor, const double *pattern) {
    scale_values(source, data, dtype, start, stop, row_factor, pattern);
}

/* Scale `count` float32 or bfloat16 values in place, whole rows of `row_width`: value
 * (row, k) by scalar · row_factors[row] · pattern[k] (either array may be empty). */
static const char *SCALE_CHUNK_KEYWORDS[] = {
    "data", "dtype_code", "count", "row_width", "scalar", "row_factors", "pattern", NULL};
static PyObject *scale_chunk(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer data, row_factors, pattern;
    int dtype;
    Py_ssize_t count, row_width;
    double scalar;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "w*inndy*y*", (char **)SCALE_CHUNK_KEYWORDS,
                                     &data, &dtype, &count, &row_width, &scalar, &row_factors,
                                     &pattern))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = NULL;
    if (dtype != FLOAT32 && dtype != BFLOAT16) problem = "scale_chunk takes float32 or bfloat16";
    else if (count < 0 || row_width <= 0 || count % row_width) problem = "rows must be whole";
    else if (data.len < count * itemsize) problem = "buffer smaller than count";
    Py_ssize_t rows = problem ? 0 : count / row_width;
    if (!problem) problem = factors_problem(&row_factors, &pattern, rows, row_width);
    const double *along = pattern.len ? (const double *)pattern.buf : NULL;
    Pow2Pattern pow2 = {0, NULL, 1.0, 1.0};
#if defined(__x86_64__) && defined(__GNUC__)
    if (!problem && has_avx2_fma()) pow2 = pow2_pattern(along, row_width);
#endif
    if (!problem) {
        const double *factors = row_factors.len ? (const double *)row_factors.buf : NULL;
        const void *from = data.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t row = 0; row < rows; row++) {
            double row_factor = scalar * (factors ? factors[row] : 1.0);
            Py_ssize_t first = row * row_width;
#if defined(__x86_64__) && defined(__GNUC__)
            if (pow2_row(&pow2, row_factor)) {
                scale_pow2_avx2(from, data.buf, dtype, first, first + row_width,
                                (float)row_factor, pow2.values, along);
                continue;
            }
            if (has_avx2_fma()) {
                scale_values_avx2(from, data.buf, dtype, first, first + row_width, row_factor,
                                  along);
                continue;
            }
#endif
            scale_values_portable(from, data.buf, dtype, first, first + row_width, row_factor,
                                  along);
        }
        Py_END_ALLOW_THREADS
    }
    free(pow2.values);
    PyBuffer_Release(&data);
    PyBuffer_Release(&row_factors);
    PyBuffer_Release(&pattern);
    if (raise_failure(problem, 0)) return NULL;
    Py_RETURN_NONE;
}

/* The largest magnitude's bit pattern per row and per column (max-accumulated into
 * `column_out` across chunks): zero exactly where every value is ±0, and never zero for a
 * NaN, which is what `check` needs to find dead units. */
__attribute__((target_clones("avx2", "default")))
static void maxima_loop(const void *data, int dtype, Py_ssize_t rows, Py_ssize_t row_width,
                        Py_ssize_t columns, uint32_t *row_out, uint32_t *column_out) {
    Py_ssize_t inner = row_width / columns;
    for (Py_ssize_t row = 0; row < rows; row++) {
        uint32_t row_top = 0;
        Py_ssize_t first = row * row_width;
        if (inner == 1) {
            if (dtype == FLOAT32) {
                const uint32_t *bits = (const uint32_t *)data + first;
                for (Py_ssize_t k = 0; k < columns; k++) {
                    uint32_t m = bits[k] & 0x7FFFFFFFu;
                    row_top = m > row_top ? m : row_top;
                    column_out[k] = m > column_out[k] ? m : column_out[k];
                }
            } else {
                const uint16_t *bits = (const uint16_t *)data + first;
                for (Py_ssize_t k = 0; k < columns; k++) {
                    uint32_t m = bits[k] & 0x7FFFu;
                    row_top = m > row_top ? m : row_top;
                    column_out[k] = m > column_out[k] ? m : column_out[k];
                }
            }
        } else {
            for (Py_ssize_t column = 0; column < columns; column++) {
                uint32_t top = 0;
                for (Py_ssize_t k = 0; k < inner; k++) {
                    Py_ssize_t index = first + column * inner + k;
                    uint32_t m = dtype == FLOAT32
                                     ? (((const uint32_t *)data)[index] & 0x7FFFFFFFu)
                                     : (uint32_t)(((const uint16_t *)data)[index] & 0x7FFFu);
                    top = m > top ? m : top;
                }
                row_top = top > row_top ? top : row_top;
                column_out[column] = top > column_out[column] ? top : column_out[column];
            }
        }
        row_out[row] = row_top;
    }
}

static const char *MAXIMA_KEYWORDS[] = {
    "data", "dtype_code", "count", "row_width", "columns", "row_out", "column_out", NULL};
static PyObject *maxima(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer data, row_out, column_out;
    int dtype;
    Py_ssize_t count, row_width, columns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*innnw*w*", (char **)MAXIMA_KEYWORDS,
                                     &data, &dtype, &count, &row_width, &columns, &row_out,
                                     &column_out))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = NULL;
    if (dtype != FLOAT32 && dtype != BFLOAT16) problem = "maxima reads float32 or bfloat16";
    else if (count < 0 || data.len < count * itemsize) problem = "buffer smaller than count";
    else if (row_width <= 0 || count % row_width || columns <= 0 || row_width % columns)
        problem = "rows must be whole and columns must divide the row width";
    else if (row_out.len < (count / row_width) * 4 || column_out.len < columns * 4)
        problem = "output too small";
    if (!problem) {
        Py_BEGIN_ALLOW_THREADS
        maxima_loop(data.buf, dtype, count / row_width, row_width, columns,
                    (uint32_t *)row_out.buf, (uint32_t *)column_out.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&row_out);
    PyBuffer_Release(&column_out);
    if (raise_failure(problem, 0)) return NULL;
    Py_RETURN_NONE;
}

/* reduce_block's totals (NO_AXES) of `rows` whole rows, each row's largest magnitude's bits
 * into `row_out`, and into `column_out` bits that stay zero exactly where every value of
 * the column is ±0. With AVX2 and one value per column, one pass: each row's fused pass
 * gives its largest magnitude and ORs its values' bits into `column_bits` (zeroed by the
 * caller, in the values' width), which the caller folds into `column_out`. Otherwise
 * reduce_block, then maxima_loop, which max-accumulates into `column_out` directly. */
static Totals details_block(const void *data, int dtype, Py_ssize_t rows, Py_ssize_t row_width,
                            Py_ssize_t columns, uint32_t *row_out, uint32_t *column_out,
                            void *column_bits) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (column_bits && has_avx2_fma() && row_width == columns) {
        Totals totals = {0.0, 0.0, 0.0f, 0};
        uint32_t top = 0;
        for (Py_ssize_t row = 0; row < rows; row++) {
            Py_ssize_t first = row * row_width;
            uint32_t row_top = fused_pass_avx2(data, dtype, first, first + row_width,
                                               &totals.squares, &totals.l1, NULL, 0,
                                               column_bits, 0, 1);
            row_out[row] = dtype == FLOAT32 ? row_top : row_top >> 16;
            top = row_top > top ? row_top : top;
        }
        if (fused_sums_hold(top)) {
            memcpy(&totals.largest, &top, sizeof totals.largest);
            return totals;
        }
        /* non-finite or extreme values: the marks stand (bits are exact), the sums do not */
        return reduce_block(data, dtype, rows * row_width, 0, 1, NO_AXES, NULL);
    }
#endif
    Totals totals = reduce_block(data, dtype, rows * row_width, 0, 1, NO_AXES, NULL);
    maxima_loop(data, dtype, rows, row_width, columns, row_out, column_out);
    return totals;
}

/* `check`'s pass: reduce_range's statistics of `count` values read from `fd` at `offset`,
 * and in the same pieces (whole rows, still in cache) the largest magnitude's bits per row
 * into `row_out` (uint32, one per row) and, accumulated across calls, per column into
 * `column_out` (uint32) bits that are zero exactly where every value of the column is ±0
 * (NaN is not). With `mode` other than NO_AXES, also the axis squares of reduce_range into
 * `out` (COLUMNS: 2 x columns, the second half stages each piece's sums), so a tensor the
 * symmetry rules need is read once; the totals are the same as without them. Returns
 * (sum_squares, l1, max_abs, nonfinite). */
static const char *DETAILS_RANGE_KEYWORDS[] = {
    "fd", "offset", "scratch", "dtype_code", "count", "row_width", "columns", "row_out",
    "column_out", "mode", "out", NULL};
static PyObject *details_range(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer scratch, row_out, column_out;
    Py_buffer out = {0};
    int fd, dtype, mode = NO_AXES;
    long long offset;
    Py_ssize_t count, row_width, columns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iLw*innnw*w*|iw*",
                                     (char **)DETAILS_RANGE_KEYWORDS, &fd, &offset, &scratch,
                                     &dtype, &count, &row_width, &columns, &row_out, &column_out,
                                     &mode, &out))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = NULL;
    if (dtype != FLOAT32 && dtype != BFLOAT16) problem = "details_range reads float32 or bfloat16";
    else if (count < 0 || row_width <= 0 || count % row_width || columns <= 0 ||
             row_width % columns)
        problem = "rows must be whole and columns must divide the row width";
    else if (mode < NO_AXES || mode > MATRIX) problem = "unknown mode";
    Py_ssize_t rows = problem ? 0 : count / row_width;
    Py_ssize_t per_piece = PIECE_BYTES / (row_width * itemsize);
    per_piece = per_piece < 1 ? 1 : per_piece;
    Py_ssize_t needed = mode == ROWS ? rows : mode == COLUMNS ? 2 * columns
                      : mode == MATRIX ? rows * columns : 0;
    if (!problem && (row_out.len < rows * 4 || column_out.len < columns * 4 ||
                     (needed && (out.buf == NULL || out.len < needed * (Py_ssize_t)sizeof(double)))))
        problem = "output too small";
    if (!problem && scratch.len < per_piece * row_width * itemsize)
        problem = "scratch smaller than a row";
    Totals totals = {0.0, 0.0, 0.0f, 0};
    int error = 0;
    if (!problem) {
        Py_BEGIN_ALLOW_THREADS
        uint32_t *marks = (uint32_t *)column_out.buf;
        void *column_bits = row_width == columns ? calloc((size_t)columns, (size_t)itemsize) : NULL;
        for (Py_ssize_t row = 0; row < rows; row += per_piece) {
            Py_ssize_t n = rows - row < per_piece ? rows - row : per_piece;
            error = read_fully(fd, (char *)scratch.buf, (size_t)(n * row_width * itemsize),
                               offset + (long long)row * row_width * itemsize);
            if (error) break;
            Totals piece = details_block(scratch.buf, dtype, n, row_width, columns,
                                         (uint32_t *)row_out.buf + row, marks, column_bits);
            if (mode != NO_AXES) {
                /* The squares from a second pass over the piece, still in cache; the totals
                 * stay those of the pass without axes, which sums in another order. */
                double *sums = (double *)out.buf;
                double *target = mode == ROWS     ? sums + row
                                 : mode == MATRIX ? sums + row * columns
                                 : row == 0       ? sums
                                                  : sums + columns;
                reduce_block(scratch.buf, dtype, n * row_width, row_width, columns, mode, target);
                if (mode == COLUMNS && row > 0)
                    for (Py_ssize_t c = 0; c < columns; c++) sums[c] += sums[columns + c];
            }
            add_totals(&totals, piece);
        }
        for (Py_ssize_t c = 0; column_bits && c < columns; c++)
            marks[c] |= dtype == FLOAT32 ? ((uint32_t *)column_bits)[c]
                                         : ((uint16_t *)column_bits)[c];
        free(column_bits);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&scratch);
    PyBuffer_Release(&row_out);
    PyBuffer_Release(&column_out);
    if (out.buf != NULL) PyBuffer_Release(&out);
    if (raise_failure(problem, error)) return NULL;
    return totals_tuple(totals);
}

/* float16 headroom (see headroom.py): per 16-bit pattern, tables give the largest exact
 * shift down and up; this takes their minima over each row, and min-accumulates them over
 * each column (the caller fills every output with its "no limit" value first). */
static void shift_minima_generic(const uint16_t *bits, Py_ssize_t rows, Py_ssize_t row_width,
                                 Py_ssize_t columns, const int8_t *down_table,
                                 const int8_t *up_table, int8_t *rows_down, int8_t *rows_up,
                                 int8_t *columns_down, int8_t *columns_up) {
    Py_ssize_t inner = row_width / columns;
    for (Py_ssize_t row = 0; row < rows; row++) {
        const uint16_t *values = bits + row * row_width;
        int8_t row_down = rows_down[row], row_up = rows_up[row];
        for (Py_ssize_t column = 0; column < columns; column++) {
            int8_t down = columns_down[column], up = columns_up[column];
            for (Py_ssize_t k = 0; k < inner; k++) {
                uint16_t value = values[column * inner + k];
                int8_t d = down_table[value], u = up_table[value];
                row_down = d < row_down ? d : row_down;
                row_up = u < row_up ? u : row_up;
                down = d < down ? d : down;
                up = u < up ? u : up;
            }
            columns_down[column] = down;
            columns_up[column] = up;
        }
        rows_down[row] = row_down;
        rows_up[row] = row_up;
    }
}

/* Matrices (one value per row and column), the common case, without a table lookup per
 * value where it cannot matter. The up-shift falls as the magnitude grows, so it comes from
 * the largest magnitude (a max the compiler vectorises; ±inf and NaN, which scale to
 * themselves, count as 0). A down-shift is looked up only while its row or its column can
 * still go lower: a row is scanned until its minimum reaches 0, and after that only the
 * columns still above 0 (realistic float16 weights close a row within a few hundred values
 * and a column within a few hundred rows). */
static int shift_minima_matrix(const uint16_t *bits, Py_ssize_t rows, Py_ssize_t columns,
                               const int8_t *down_table, const int8_t *up_table,
                               int8_t *rows_down, int8_t *rows_up, int8_t *columns_down,
                               int8_t *columns_up) {
    int16_t *column_top = calloc((size_t)columns, sizeof(int16_t));
    Py_ssize_t *open = malloc((size_t)columns * sizeof(Py_ssize_t));
    if (column_top == NULL || open == NULL) {
        free(column_top);
        free(open);
        return -1;
    }
    Py_ssize_t open_count = 0;
    for (Py_ssize_t column = 0; column < columns; column++)
        if (columns_down[column] > 0) open[open_count++] = column;
    for (Py_ssize_t row = 0; row < rows; row++) {
        /* signed 16-bit lanes (magnitudes fit): SSE2 has their max, not the unsigned one */
        const int16_t *restrict values = (const int16_t *)(bits + row * columns);
        int16_t *restrict tops = column_top;
        int16_t row_top = 0;
        for (Py_ssize_t column = 0; column < columns; column++) {
            int16_t magnitude = (int16_t)(values[column] & 0x7FFF);
            magnitude = magnitude >= 0x7C00 ? 0 : magnitude;
            row_top = magnitude > row_top ? magnitude : row_top;
            tops[column] = magnitude > tops[column] ? magnitude : tops[column];
        }
        int8_t up = up_table[(uint16_t)row_top];
        rows_up[row] = up < rows_up[row] ? up : rows_up[row];
        int8_t row_down = rows_down[row];
        Py_ssize_t scanned = 0;
        for (; scanned < columns && row_down > 0; scanned++) {
            int8_t d = down_table[(uint16_t)values[scanned]];
            row_down = d < row_down ? d : row_down;
            columns_down[scanned] = d < columns_down[scanned] ? d : columns_down[scanned];
        }
        rows_down[row] = row_down;
        Py_ssize_t kept = 0;
        for (Py_ssize_t index = 0; index < open_count; index++) {
            Py_ssize_t column = open[index];
            if (column >= scanned) {
                int8_t d = down_table[(uint16_t)values[column]];
                columns_down[column] = d < columns_down[column] ? d : columns_down[column];
            }
            if (columns_down[column] > 0) open[kept++] = column;
        }
        open_count = kept;
    }
    for (Py_ssize_t column = 0; column < columns; column++) {
        int8_t up = up_table[(uint16_t)column_top[column]];
        columns_up[column] = up < columns_up[column] ? up : columns_up[column];
    }
    free(column_top);
    free(open);
    return 0;
}

static const char *SHIFT_MINIMA_KEYWORDS[] = {
    "bits", "count", "row_width", "columns", "down_table", "up_table", "rows_down", "rows_up",
    "columns_down", "columns_up", NULL};
static PyObject *shift_minima(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer data, down_table, up_table, rows_down, rows_up, columns_down, columns_up;
    Py_ssize_t count, row_width, columns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*nnny*y*w*w*w*w*",
                                     (char **)SHIFT_MINIMA_KEYWORDS,
                                     &data, &count, &row_width, &columns, &down_table, &up_table,
                                     &rows_down, &rows_up, &columns_down, &columns_up))
        return NULL;
    const char *problem = NULL;
    Py_ssize_t rows = 0;
    if (count < 0 || data.len < count * 2) problem = "buffer smaller than count";
    else if (row_width <= 0 || count % row_width || columns <= 0 || row_width % columns)
        problem = "rows must be whole and columns must divide the row width";
    else if (down_table.len < 65536 || up_table.len < 65536) problem = "tables too small";
    else {
        rows = count / row_width;
        if (rows_down.len < rows || rows_up.len < rows || columns_down.len < columns ||
            columns_up.len < columns)
            problem = "output too small";
    }
    int failed = 0;
    if (!problem) {
        Py_BEGIN_ALLOW_THREADS
        if (row_width == columns)
            failed = shift_minima_matrix(data.buf, rows, columns, down_table.buf, up_table.buf,
                                         rows_down.buf, rows_up.buf, columns_down.buf,
                                         columns_up.buf);
        else
            shift_minima_generic(data.buf, rows, row_width, columns, down_table.buf,
                                 up_table.buf, rows_down.buf, rows_up.buf, columns_down.buf,
                                 columns_up.buf);
        Py_END_ALLOW_THREADS
    }
    if (failed) problem = "out of memory";
    PyBuffer_Release(&data);
    PyBuffer_Release(&down_table);
    PyBuffer_Release(&up_table);
    PyBuffer_Release(&rows_down);
    PyBuffer_Release(&rows_up);
    PyBuffer_Release(&columns_down);
    PyBuffer_Release(&columns_up);
    if (raise_failure(problem, 0)) return NULL;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------
 * Comparing (`diff`): two tensors of the same shape, raw and after rebalancing both.
 *
 * The reference is diff's float64 numpy route, block by block: in double, o and n are the
 * stored values, ca = o·fa and cb = n·fb their canonical values (fa, fb each element's
 * factor on its side), and a block yields max |n − o|, max |o|, max |cb − ca|, max |ca| and
 * whether every o equals its n (two NaNs are equal). A maximum over values with a NaN is
 * NaN. Under the same factors on both sides a block whose values are all equal adds
 * nothing; it is recognised by its bytes first when both sides store the same dtype.
 * Every product and difference is rounded on its own, as numpy rounds it: the AVX2 code
 * is compiled without FMA so that none is fused.
 * --------------------------------------------------------------------------------------- */

/* One block's or one range's findings: maxima of the non-NaN values, and which of them
 * saw a NaN. */
typedef struct {
    double difference, largest, canonical, canonical_largest;
    int nan_difference, nan_largest, nan_canonical, nan_canonical_largest;
    int equal;
} Comparison;

static const Comparison NO_COMPARISON = {0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 1};

/* Factor of element (row r, k) on one side: row_factor(r) · pattern[k], where row_factor
 * is rows[r], or the scalar without rows; without a pattern, row_factor(r) alone. The
 * caller folds the scalar into whichever array numpy multiplies it with first, so that
 * this one product is the one numpy rounds. */
typedef struct {
    int fd;              /* -1: the values are in `memory` */
    long long offset;    /* byte offset of the range's first value in fd */
    const char *memory;  /* the range's values, without a file */
    char *scratch;       /* a piece read from fd */
    int dtype;
    Py_ssize_t itemsize;
    double scalar;
    const double *rows; /* the range's row factors, or NULL */
    const double *pattern;
} Side;

static inline double row_factor(const Side *side, Py_ssize_t row) {
    return side->rows ? side->rows[row] : side->scalar;
}

static inline void fold_max(double value, double *top, int *nan) {
    if (value != value) *nan = 1;
    else if (value > *top) *top = value;
}

/* Values [start, stop) of `a` and `b`, with factors row_a · pattern_a[k − start] (and for
 * b), into `found`. */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__x86_64__)
__attribute__((optimize("fp-contract=off"))) /* x86-64's baseline has no FMA to fuse into */
#endif
static void compare_values_portable(const void *a, int dtype_a, const void *b, int dtype_b,
                                    Py_ssize_t start, Py_ssize_t stop, double row_a,
                                    const double *pattern_a, double row_b,
                                    const double *pattern_b, Comparison *found) {
    for (Py_ssize_t k = start; k < stop; k++) {
        double o = value_at(a, dtype_a, k), n = value_at(b, dtype_b, k);
        double fa = pattern_a ? row_a * pattern_a[k - start] : row_a;
        double fb = pattern_b ? row_b * pattern_b[k - start] : row_b;
        found->equal &= (o == n) | ((o != o) & (n != n));
        double difference = n - o;
        fold_max(fabs(difference), &found->difference, &found->nan_difference);
        fold_max(fabs(o), &found->largest, &found->nan_largest);
        double canonical_a = o * fa;
        double canonical_b = n * fb;
        double canonical = canonical_b - canonical_a;
        fold_max(fabs(canonical), &found->canonical, &found->nan_canonical);
        fold_max(fabs(canonical_a), &found->canonical_largest, &found->nan_canonical_largest);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Four values from `index` on, widened to double (load4 for code without FMA). */
__attribute__((target("avx2"), always_inline)) static inline __m256d load4_plain(
    const void *data, int dtype, Py_ssize_t index) {
    if (dtype == FLOAT32) return _mm256_cvtps_pd(_mm_loadu_ps((const float *)data + index));
    __m128i narrow = _mm_loadl_epi64((const __m128i *)((const uint16_t *)data + index));
    __m128i wide = _mm_slli_epi32(_mm_cvtepu16_epi32(narrow), 16);
    return _mm256_cvtps_pd(_mm_castsi128_ps(wide));
}

static double lanes_max(__m256d lanes) {
    double values[4];
    memcpy(values, &lanes, sizeof values);
    double top = values[0];
    for (int j = 1; j < 4; j++) top = values[j] > top ? values[j] : top;
    return top;
}

/* compare_values_portable four values at a time, for ranges without a NaN anywhere in
 * what it measures: max_pd passes NaNs over and == calls two NaNs unequal, so at the first
 * NaN it returns 0 having changed nothing, and the caller runs the portable code. Targets
 * AVX2 without FMA: GCC would otherwise fuse a product into its difference. */
__attribute__((target("avx2")))
static int compare_values_avx2(const void *a, int dtype_a, const void *b, int dtype_b,
                               Py_ssize_t start, Py_ssize_t stop, double row_a,
                               const double *pattern_a, double row_b, const double *pattern_b,
                               Comparison *found) {
    const __m256d sign = _mm256_set1_pd(-0.0);
    const __m256d factor_a = _mm256_set1_pd(row_a), factor_b = _mm256_set1_pd(row_b);
    __m256d difference = _mm256_setzero_pd(), largest = difference, canonical = difference;
    __m256d canonical_largest = difference;
    __m256d equal = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    Py_ssize_t k = start;
    for (; k + 4 <= stop; k += 4) {
        __m256d o = load4_plain(a, dtype_a, k), n = load4_plain(b, dtype_b, k);
        __m256d fa = pattern_a ? _mm256_mul_pd(factor_a, _mm256_loadu_pd(pattern_a + (k - start)))
                               : factor_a;
        __m256d fb = pattern_b ? _mm256_mul_pd(factor_b, _mm256_loadu_pd(pattern_b + (k - start)))
                               : factor_b;
        equal = _mm256_and_pd(equal, _mm256_cmp_pd(o, n, _CMP_EQ_OQ));
        __m256d d = _mm256_andnot_pd(sign, _mm256_sub_pd(n, o));
        __m256d l = _mm256_andnot_pd(sign, o);
        __m256d ca = _mm256_mul_pd(o, fa);
        __m256d c = _mm256_andnot_pd(sign, _mm256_sub_pd(_mm256_mul_pd(n, fb), ca));
        __m256d cl = _mm256_andnot_pd(sign, ca);
        __m256d nan = _mm256_or_pd(_mm256_cmp_pd(d, c, _CMP_UNORD_Q),
                                   _mm256_cmp_pd(l, cl, _CMP_UNORD_Q));
        if (_mm256_movemask_pd(nan)) return 0;
        difference = _mm256_max_pd(d, difference);
        largest = _mm256_max_pd(l, largest);
        canonical = _mm256_max_pd(c, canonical);
        canonical_largest = _mm256_max_pd(cl, canonical_largest);
    }
    Comparison tail = NO_COMPARISON;
    compare_values_portable(a, dtype_a, b, dtype_b, k, stop, row_a,
                            pattern_a ? pattern_a + (k - start) : NULL, row_b,
                            pattern_b ? pattern_b + (k - start) : NULL, &tail);
    if (tail.nan_difference | tail.nan_largest | tail.nan_canonical | tail.nan_canonical_largest)
        return 0;
    fold_max(lanes_max(difference), &found->difference, &found->nan_difference);
    fold_max(tail.difference, &found->difference, &found->nan_difference);
    fold_max(lanes_max(largest), &found->largest, &found->nan_largest);
    fold_max(tail.largest, &found->largest, &found->nan_largest);
    fold_max(lanes_max(canonical), &found->canonical, &found->nan_canonical);
    fold_max(tail.canonical, &found->canonical, &found->nan_canonical);
    fold_max(lanes_max(canonical_largest), &found->canonical_largest,
             &found->nan_canonical_largest);
    fold_max(tail.canonical_largest, &found->canonical_largest, &found->nan_canonical_largest);
    found->equal &= tail.equal && _mm256_movemask_pd(equal) == 0xF;
    return 1;
}

static int has_avx2(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2");
    return known;
}
#endif

/* A span of values whose factors are row_x · pattern_x[k]. */
static void compare_values(const void *a, int dtype_a, const void *b, int dtype_b,
                           Py_ssize_t start, Py_ssize_t stop, double row_a,
                           const double *pattern_a, double row_b, const double *pattern_b,
                           Comparison *found) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (has_avx2() && compare_values_avx2(a, dtype_a, b, dtype_b, start, stop, row_a, pattern_a,
                                          row_b, pattern_b, found))
        return;
#endif
    compare_values_portable(a, dtype_a, b, dtype_b, start, stop, row_a, pattern_a, row_b,
                            pattern_b, found);
}

/* `rows` rows of a piece whose first row is row `first` of the range: one span where no
 * factor depends on the row, or where rows are one value wide and no side has a pattern
 * (the row factors then serve as the pattern); else row by row. */
static void compare_piece(const char *a, const char *b, const Side *side_a, const Side *side_b,
                          Py_ssize_t first, Py_ssize_t rows, Py_ssize_t row_width,
                          Comparison *found) {
    int by_row = side_a->rows || side_b->rows;
    int has_pattern = side_a->pattern || side_b->pattern;
    if (!by_row && !has_pattern) {
        compare_values(a, side_a->dtype, b, side_b->dtype, 0, rows * row_width, side_a->scalar,
                       NULL, side_b->scalar, NULL, found);
        return;
    }
    if (by_row && row_width == 1 && !has_pattern) {
        compare_values(a, side_a->dtype, b, side_b->dtype, 0, rows,
                       side_a->rows ? 1.0 : side_a->scalar,
                       side_a->rows ? side_a->rows + first : NULL,
                       side_b->rows ? 1.0 : side_b->scalar,
                       side_b->rows ? side_b->rows + first : NULL, found);
        return;
    }
    for (Py_ssize_t row = 0; row < rows; row++) {
        Py_ssize_t at = row * row_width;
        compare_values(a, side_a->dtype, b, side_b->dtype, at, at + row_width,
                       row_factor(side_a, first + row), side_a->pattern,
                       row_factor(side_b, first + row), side_b->pattern, found);
    }
}

/* Rows [row, row + n) of one side: read into its scratch, or where they are in memory. */
static const char *rows_of(const Side *side, Py_ssize_t row, Py_ssize_t n, Py_ssize_t row_width,
                           int *error) {
    long long skip = (long long)row * row_width * side->itemsize;
    if (side->fd < 0) return side->memory + skip;
    *error = read_fully(side->fd, side->scratch, (size_t)(n * row_width * side->itemsize),
                        side->offset + skip);
    return side->scratch;
}

static double nan_max(double first, int first_nan, double second) {
    if (first_nan || second != second) return NAN;
    return first > second ? first : second;
}

/* Blocks of `block_rows` rows (the last may be shorter) over `rows` rows, read in pieces of
 * `per_piece` rows, each block's findings added to `total` as diff's numpy route adds
 * them. Returns the errno of a failed read, -1 at an early end of file, else 0. */
static int compare_blocks(Side *side_a, Side *side_b, Py_ssize_t rows, Py_ssize_t row_width,
                          Py_ssize_t block_rows, Py_ssize_t per_piece, int same_scale,
                          double total[4], int *total_equal) {
    int error = 0;
    for (Py_ssize_t block = 0; block < rows; block += block_rows) {
        Py_ssize_t end = rows - block < block_rows ? rows : block + block_rows;
        Py_ssize_t loaded = -1; /* the piece the scratch buffers hold, if any */
        if (same_scale && side_a->dtype == side_b->dtype) {
            int same_bytes = 1;
            for (Py_ssize_t row = block; row < end && same_bytes; row += per_piece) {
                Py_ssize_t n = end - row < per_piece ? end - row : per_piece;
                const char *a = rows_of(side_a, row, n, row_width, &error);
                const char *b = error ? NULL : rows_of(side_b, row, n, row_width, &error);
                if (error) return error;
                same_bytes = memcmp(a, b, (size_t)(n * row_width * side_a->itemsize)) == 0;
                loaded = row;
            }
            if (same_bytes) continue;
        }
        Comparison found = NO_COMPARISON;
        for (Py_ssize_t row = block; row < end; row += per_piece) {
            Py_ssize_t n = end - row < per_piece ? end - row : per_piece;
            const char *a, *b;
            if (row == loaded && side_a->fd >= 0 && side_b->fd >= 0) {
                a = side_a->scratch;
                b = side_b->scratch;
            } else {
                a = rows_of(side_a, row, n, row_width, &error);
                b = error ? NULL : rows_of(side_b, row, n, row_width, &error);
                if (error) return error;
                loaded = row;
            }
            compare_piece(a, b, side_a, side_b, row, n, row_width, &found);
        }
        if (same_scale && found.equal) continue;
        total[0] = nan_max(found.difference, found.nan_difference, total[0]);
        total[1] = nan_max(found.largest, found.nan_largest, total[1]);
        total[2] = nan_max(found.canonical, found.nan_canonical, total[2]);
        total[3] = nan_max(found.canonical_largest, found.nan_canonical_largest, total[3]);
        *total_equal &= found.equal;
    }
    return 0;
}

/* The argument checks of compare_range and compare_chunk; NULL when they pass. */
static const char *comparison_problem(const Side *side, const Py_buffer *rows,
                                      const Py_buffer *pattern, Py_ssize_t count,
                                      Py_ssize_t row_width, Py_ssize_t block_rows) {
    if (side->dtype != FLOAT32 && side->dtype != BFLOAT16)
        return "the comparison reads float32 or bfloat16";
    if (count < 0 || row_width <= 0 || count % row_width || block_rows <= 0)
        return "rows must be whole and blocks at least a row";
    return factors_problem(rows, pattern, count / row_width, row_width);
}

static Side side_of(int fd, long long offset, const Py_buffer *data, int dtype, double scalar,
                    const Py_buffer *rows, const Py_buffer *pattern) {
    Side side = {fd,
                 offset,
                 fd < 0 ? (const char *)data->buf : NULL,
                 fd < 0 ? NULL : (char *)data->buf,
                 dtype,
                 dtype == FLOAT32 ? 4 : 2,
                 scalar,
                 rows->len ? (const double *)rows->buf : NULL,
                 pattern->len ? (const double *)pattern->buf : NULL};
    return side;
}

/* The comparison of both sides, releasing every buffer: `data_*` holds the values without
 * a file and the scratch with one. */
static PyObject *compare_sides(int fd_a, long long offset_a, Py_buffer *data_a, int dtype_a,
                               double scalar_a, Py_buffer *rows_a, Py_buffer *pattern_a,
                               int fd_b, long long offset_b, Py_buffer *data_b, int dtype_b,
                               double scalar_b, Py_buffer *rows_b, Py_buffer *pattern_b,
                               Py_ssize_t count, Py_ssize_t row_width, Py_ssize_t block_rows,
                               int same_scale) {
    Side a = side_of(fd_a, offset_a, data_a, dtype_a, scalar_a, rows_a, pattern_a);
    Side b = side_of(fd_b, offset_b, data_b, dtype_b, scalar_b, rows_b, pattern_b);
    const char *problem = comparison_problem(&a, rows_a, pattern_a, count, row_width, block_rows);
    if (!problem) problem = comparison_problem(&b, rows_b, pattern_b, count, row_width, block_rows);
    Py_ssize_t widest = a.itemsize > b.itemsize ? a.itemsize : b.itemsize;
    Py_ssize_t per_piece = PIECE_BYTES / (row_width * widest);
    per_piece = per_piece < 1 ? 1 : per_piece;
    if (fd_a < 0 && fd_b < 0) per_piece = block_rows; /* nothing to read: pieces are blocks */
    per_piece = per_piece < block_rows ? per_piece : block_rows;
    Py_ssize_t piece = per_piece * row_width;
    if (!problem && (fd_a < 0 ? data_a->len < count * a.itemsize : data_a->len < piece * a.itemsize))
        problem = fd_a < 0 ? "data smaller than count" : "scratch smaller than a piece";
    if (!problem && (fd_b < 0 ? data_b->len < count * b.itemsize : data_b->len < piece * b.itemsize))
        problem = fd_b < 0 ? "data smaller than count" : "scratch smaller than a piece";
    double total[4] = {0.0, 0.0, 0.0, 0.0};
    int equal = 1, error = 0;
    if (!problem) {
        Py_BEGIN_ALLOW_THREADS
        error = compare_blocks(&a, &b, count / row_width, row_width, block_rows, per_piece,
                               same_scale, total, &equal);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(data_a);
    PyBuffer_Release(rows_a);
    PyBuffer_Release(pattern_a);
    PyBuffer_Release(data_b);
    PyBuffer_Release(rows_b);
    PyBuffer_Release(pattern_b);
    if (raise_failure(problem, error)) return NULL;
    return Py_BuildValue("(ddddN)", total[0], total[1], total[2], total[3], PyBool_FromLong(equal));
}

/* diff's comparison of `count` values (whole rows of `row_width`, blocks of `block_rows`
 * rows) read from both files: per side a file descriptor, the byte offset of the first
 * value, a scratch buffer, the dtype code, and its factors (scalar, row factors, pattern;
 * an empty array stands for none). Returns (max |b − a|, max |a|, max |cb − ca|, max |ca|,
 * equal) over the blocks that count; 0.0 and True when none does. */
static const char *COMPARE_RANGE_KEYWORDS[] = {
    "fd_a", "offset_a", "scratch_a", "dtype_code_a", "scalar_a", "row_factors_a", "pattern_a",
    "fd_b", "offset_b", "scratch_b", "dtype_code_b", "scalar_b", "row_factors_b", "pattern_b",
    "count", "row_width", "block_rows", "same_scale", NULL};
static PyObject *compare_range(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer scratch_a, rows_a, pattern_a, scratch_b, rows_b, pattern_b;
    int fd_a, fd_b, dtype_a, dtype_b, same_scale;
    long long offset_a, offset_b;
    double scalar_a, scalar_b;
    Py_ssize_t count, row_width, block_rows;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iLw*idy*y*iLw*idy*y*nnnp",
                                     (char **)COMPARE_RANGE_KEYWORDS,
                                     &fd_a, &offset_a, &scratch_a, &dtype_a, &scalar_a, &rows_a,
                                     &pattern_a, &fd_b, &offset_b, &scratch_b, &dtype_b, &scalar_b,
                                     &rows_b, &pattern_b, &count, &row_width, &block_rows,
                                     &same_scale))
        return NULL;
    if (fd_a < 0 || fd_b < 0) {
        PyBuffer_Release(&scratch_a), PyBuffer_Release(&rows_a), PyBuffer_Release(&pattern_a);
        PyBuffer_Release(&scratch_b), PyBuffer_Release(&rows_b), PyBuffer_Release(&pattern_b);
        PyErr_SetString(PyExc_ValueError, "negative file descriptor");
        return NULL;
    }
    return compare_sides(fd_a, offset_a, &scratch_a, dtype_a, scalar_a, &rows_a, &pattern_a,
                         fd_b, offset_b, &scratch_b, dtype_b, scalar_b, &rows_b, &pattern_b,
                         count, row_width, block_rows, same_scale);
}

/* compare_range on values in memory: per side the raw values, the dtype code and factors. */
static const char *COMPARE_CHUNK_KEYWORDS[] = {
    "data_a", "dtype_code_a", "scalar_a", "row_factors_a", "pattern_a", "data_b", "dtype_code_b",
    "scalar_b", "row_factors_b", "pattern_b", "count", "row_width", "block_rows", "same_scale",
    NULL};
static PyObject *compare_chunk(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer data_a, rows_a, pattern_a, data_b, rows_b, pattern_b;
    int dtype_a, dtype_b, same_scale;
    double scalar_a, scalar_b;
    Py_ssize_t count, row_width, block_rows;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*idy*y*y*idy*y*nnnp",
                                     (char **)COMPARE_CHUNK_KEYWORDS,
                                     &data_a, &dtype_a, &scalar_a, &rows_a, &pattern_a, &data_b,
                                     &dtype_b, &scalar_b, &rows_b, &pattern_b, &count, &row_width,
                                     &block_rows, &same_scale))
        return NULL;
    return compare_sides(-1, 0, &data_a, dtype_a, scalar_a, &rows_a, &pattern_a, -1, 0, &data_b,
                         dtype_b, scalar_b, &rows_b, &pattern_b, count, row_width, block_rows,
                         same_scale);
}

/* --- The channel solver's products over streamed squares ------------------------------ */

/* The square the statistics pass stores for the entry of `inner` values at `first`: their
 * squares summed in double, non-finite values left out, rounded once to float. */
static inline double entry_square(const void *data, int dtype, Py_ssize_t first,
                                  Py_ssize_t inner) {
    double sum = 0.0;
    for (Py_ssize_t k = 0; k < inner; k++) {
        float value = value_at(data, dtype, first + k);
        if (isfinite(value)) sum += (double)value * (double)value;
    }
    return (double)(float)sum;
}

/* square_products without AVX2, and for float16 or several values per entry. */
static void square_products_portable(const void *data, int dtype, Py_ssize_t rows,
                                      Py_ssize_t columns, Py_ssize_t inner, int mode,
                                      const double *vector, double *out) {
    if (mode == COLUMNS) memset(out, 0, (size_t)columns * sizeof(double));
    for (Py_ssize_t row = 0; row < rows; row++) {
        Py_ssize_t first = row * columns * inner;
        double sum = 0.0;
        for (Py_ssize_t column = 0; column < columns; column++) {
            double square = entry_square(data, dtype, first + column * inner, inner);
            if (mode == ROWS) sum += square * vector[column];
            else out[column] += vector[row] * square;
        }
        if (mode == ROWS) out[row] = sum;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Eight float32 or bfloat16 values from data[k] as float32, and their squares with the
 * non-finite values' squares set to 0 (a float32 square is the double square rounded
 * once: what entry_square gives for one value). */
__attribute__((target("avx2,fma"), always_inline))
static inline __m256 squares8(const void *data, int dtype, Py_ssize_t k) {
    __m256i bits;
    if (dtype == FLOAT32) {
        bits = _mm256_loadu_si256((const __m256i *)((const float *)data + k));
    } else {
        __m128i narrow = _mm_loadu_si128((const __m128i *)((const uint16_t *)data + k));
        bits = _mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16);
    }
    __m256i magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
    __m256i finite = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7F800000), magnitude);
    __m256 value = _mm256_castsi256_ps(bits);
    return _mm256_and_ps(_mm256_mul_ps(value, value), _mm256_castsi256_ps(finite));
}

/* square_products for float32 or bfloat16 with one value per entry: eight entries a step,
 * widened to double for the products. */
__attribute__((target("avx2,fma")))
static void square_products_avx2(const void *data, int dtype, Py_ssize_t rows,
                                 Py_ssize_t columns, int mode, const double *vector,
                                 double *out) {
    Py_ssize_t whole = columns - columns % 8;
    if (mode == COLUMNS) memset(out, 0, (size_t)columns * sizeof(double));
    for (Py_ssize_t row = 0; row < rows; row++) {
        Py_ssize_t first = row * columns;
        if (mode == ROWS) {
            __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
            for (Py_ssize_t column = 0; column < whole; column += 8) {
                __m256 squares = squares8(data, dtype, first + column);
                low = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(squares)),
                                      _mm256_loadu_pd(vector + column), low);
                high = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(squares, 1)),
                                       _mm256_loadu_pd(vector + column + 4), high);
            }
            double lanes[4];
            _mm256_storeu_pd(lanes, _mm256_add_pd(low, high));
            double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            for (Py_ssize_t column = whole; column < columns; column++)
                sum += entry_square(data, dtype, first + column, 1) * vector[column];
            out[row] = sum;
        } else {
            __m256d weight = _mm256_set1_pd(vector[row]);
            for (Py_ssize_t column = 0; column < whole; column += 8) {
                __m256 squares = squares8(data, dtype, first + column);
                double *target = out + column;
                _mm256_storeu_pd(target,
                                 _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(squares)),
                                                 weight, _mm256_loadu_pd(target)));
                _mm256_storeu_pd(target + 4,
                                 _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(squares, 1)),
                                                 weight, _mm256_loadu_pd(target + 4)));
            }
            for (Py_ssize_t column = whole; column < columns; column++)
                out[column] += vector[row] * entry_square(data, dtype, first + column, 1);
        }
    }
}
#endif

/* The channel solver's products with the squares of `count` values in rows of `row_width`
 * (`columns` entries of row_width / columns values each), in double: ROWS out[r] =
 * sum_c Q[r, c] * vector[c]; COLUMNS out[c] = sum_r vector[r] * Q[r, c] (written, not
 * added), with Q the squares the statistics pass stores (see entry_square). One pass over
 * the values, which stay as stored: numpy squared and widened every chunk into two more
 * buffers first. Sums run in a different order from numpy's, so results differ from the
 * numpy backend's in the last bits. */
static const char *SQUARE_PRODUCTS_KEYWORDS[] = {
    "data", "dtype_code", "count", "row_width", "columns", "mode", "vector", "out", NULL};
static PyObject *square_products(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    Py_buffer data, vector, out;
    int dtype, mode;
    Py_ssize_t count, row_width, columns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*innniy*w*",
                                     (char **)SQUARE_PRODUCTS_KEYWORDS, &data, &dtype, &count,
                                     &row_width, &columns, &mode, &vector, &out))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = NULL;
    if (dtype < FLOAT32 || dtype > FLOAT16) problem = "unknown dtype code";
    else if (mode != ROWS && mode != COLUMNS) problem = "square_products takes ROWS or COLUMNS";
    else if (count < 0 || row_width <= 0 || count % row_width || columns <= 0 ||
             row_width % columns)
        problem = "rows must be whole and columns must divide the row width";
    else if (data.len < count * itemsize) problem = "buffer smaller than count";
    Py_ssize_t rows = problem ? 0 : count / row_width;
    Py_ssize_t want_in = mode == ROWS ? columns : rows, want_out = mode == ROWS ? rows : columns;
    if (!problem && (vector.len < want_in * (Py_ssize_t)sizeof(double) ||
                     out.len < want_out * (Py_ssize_t)sizeof(double)))
        problem = "vector or output too small";
    if (!problem) {
        Py_ssize_t inner = row_width / columns;
        const double *weights = (const double *)vector.buf;
        double *sums = (double *)out.buf;
        Py_BEGIN_ALLOW_THREADS
#if defined(__x86_64__) && defined(__GNUC__)
        if (inner == 1 && dtype != FLOAT16 && has_avx2_fma())
            square_products_avx2(data.buf, dtype, rows, columns, mode, weights, sums);
        else
#endif
            square_products_portable(data.buf, dtype, rows, columns, inner, mode, weights, sums);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&vector);
    PyBuffer_Release(&out);
    if (raise_failure(problem, 0)) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reduce_chunk", (PyCFunction)(void (*)(void))reduce_chunk, METH_VARARGS | METH_KEYWORDS,
     "reduce_chunk(data, dtype_code, count, row_width, columns, mode, out) -> "
     "(sum_squares, l1, max_abs, nonfinite)"},
    {"reduce_range", (PyCFunction)(void (*)(void))reduce_range, METH_VARARGS | METH_KEYWORDS,
     "reduce_range(fd, offset, scratch, dtype_code, count, row_width, columns, mode, out) -> "
     "(sum_squares, l1, max_abs, nonfinite): reduce_chunk over values read from a file"},
    {"check_values", (PyCFunction)(void (*)(void))check_values, METH_VARARGS | METH_KEYWORDS,
     "check_values(old, new, count, row_width, scalar, row_factors, pattern, unit, floor) -> "
     "(checked, bad, worst): check_range on float32 values in memory"},
    {"check_range", (PyCFunction)(void (*)(void))check_range, METH_VARARGS | METH_KEYWORDS,
     "check_range(old_fd, old_offset, new_fd, new_offset, old_scratch, new_scratch, "
     "dtype_code, count, row_width, scalar, row_factors, pattern, unit, floor) -> "
     "(checked, bad, worst, sum_squares, l1, max_abs, nonfinite)"},
    {"scale_chunk", (PyCFunction)(void (*)(void))scale_chunk, METH_VARARGS | METH_KEYWORDS,
     "scale_chunk(data, dtype_code, count, row_width, scalar, row_factors, pattern): scale in "
     "place, rounding once"},
    {"details_range", (PyCFunction)(void (*)(void))details_range, METH_VARARGS | METH_KEYWORDS,
     "details_range(fd, offset, scratch, dtype_code, count, row_width, columns, row_out, "
     "column_out, mode=0, out) -> (sum_squares, l1, max_abs, nonfinite), with maxima per row "
     "and column and, by mode, the axis squares"},
    {"square_products", (PyCFunction)(void (*)(void))square_products,
     METH_VARARGS | METH_KEYWORDS,
     "square_products(data, dtype_code, count, row_width, columns, mode, vector, out): the "
     "squares' products with a vector per row (ROWS) or per column (COLUMNS), in double"},
    {"maxima", (PyCFunction)(void (*)(void))maxima, METH_VARARGS | METH_KEYWORDS,
     "maxima(data, dtype_code, count, row_width, columns, row_out, column_out): the largest "
     "magnitude bits per row (uint32) and, max-accumulated, per column"},
    {"shift_minima", (PyCFunction)(void (*)(void))shift_minima, METH_VARARGS | METH_KEYWORDS,
     "shift_minima(bits, count, row_width, columns, down_table, up_table, rows_down, rows_up, "
     "columns_down, columns_up): table minima per row, min-accumulated per column (int8)"},
    {"compare_range", (PyCFunction)(void (*)(void))compare_range, METH_VARARGS | METH_KEYWORDS,
     "compare_range(fd_a, offset_a, scratch_a, dtype_a, scalar_a, rows_a, pattern_a, fd_b, "
     "offset_b, scratch_b, dtype_b, scalar_b, rows_b, pattern_b, count, row_width, block_rows, "
     "same_scale) -> (max_abs_diff, max_abs_a, canonical_diff, canonical_max_a, equal)"},
    {"compare_chunk", (PyCFunction)(void (*)(void))compare_chunk, METH_VARARGS | METH_KEYWORDS,
     "compare_chunk(data_a, dtype_a, scalar_a, rows_a, pattern_a, data_b, dtype_b, scalar_b, "
     "rows_b, pattern_b, count, row_width, block_rows, same_scale) -> what compare_range "
     "returns, for values in memory"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "The compiled statistics kernel.", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
