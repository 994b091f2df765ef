/* The statistics kernel: one pass over a chunk of float32, bfloat16 or float16 values for
 * the sum of squares, L1, max |x| and the count of non-finite values, and optionally the
 * sums of squares per row, per column, or per (row, column) that the channel solver needs.
 *
 * Why C: numpy needs five or six passes over a chunk for these (decode, abs, max, squares,
 * L1, axis sums), which left bfloat16 at a third of memory bandwidth. Here every value is
 * decoded once and every sum accumulates in double, so there is no float32 drift, no
 * overflow of squares, and no special path for huge or tiny values. Non-finite values are
 * counted and left out of every sum, as in the numpy reference (stats.reduce_float64).
 *
 * The module is optional: without a compiler weissi falls back to the numpy kernel, and the
 * tests check that both agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* Where float squares of every value can neither overflow nor underflow (as stats.SAFE_*):
 * inside it the block sums run in float vectors; outside, in double. */
#define SAFE_LOW 8.881784197001252e-16f  /* 2^-50 */
#define SAFE_HIGH 7.205759403792794e16f  /* 2^56 */

typedef float float8 __attribute__((vector_size(32)));
typedef uint32_t uint8x32 __attribute__((vector_size(32)));
typedef uint16_t uint8x16 __attribute__((vector_size(16)));

/* Eight magnitudes from `index` on, as a float vector (a macro, so that it is compiled
 * inside each target clone rather than called across them). */
#define MAGNITUDES8(out, data, dtype, index)                                          \
    do {                                                                              \
        uint8x32 wide_;                                                               \
        if ((dtype) == FLOAT32) {                                                     \
            memcpy(&wide_, (const float *)(data) + (index), sizeof wide_);            \
            wide_ &= 0x7FFFFFFFu;                                                     \
        } else {                                                                      \
            uint8x16 narrow_;                                                         \
            memcpy(&narrow_, (const uint16_t *)(data) + (index), sizeof narrow_);     \
            wide_ = __builtin_convertvector(narrow_ & 0x7FFF, uint8x32) << 16;        \
        }                                                                             \
        (out) = (float8)wide_;                                                        \
    } while (0)

/* Sum of squares and L1 of float32/bfloat16 values [start, stop), all finite and in the
 * safe range: blocks of 256 in float vectors (four accumulators of eight lanes), each
 * block's sums added to double totals. Compiled for AVX2 and for the baseline, picked at
 * run time. */
__attribute__((target_clones("avx2", "default")))
static void sums_finite_float(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                              double *squares, double *l1) {
    double total_s = 0.0, total_a = 0.0;
    Py_ssize_t i = start;
    for (; i + BLOCK <= stop; i += BLOCK) {
        float8 s0 = {0}, s1 = {0}, a0 = {0}, a1 = {0};
        for (Py_ssize_t k = i; k < i + BLOCK; k += 16) {
            float8 x0, x1;
            MAGNITUDES8(x0, data, dtype, k);
            MAGNITUDES8(x1, data, dtype, k + 8);
            s0 += x0 * x0;
            s1 += x1 * x1;
            a0 += x0;
            a1 += x1;
        }
        float8 s = s0 + s1, a = a0 + a1;
        double block_s = 0.0, block_a = 0.0;
        for (int j = 0; j < 8; j++) {
            block_s += s[j];
            block_a += a[j];
        }
        total_s += block_s;
        total_a += block_a;
    }
    for (; i < stop; i++) {
        double x = magnitude_at(data, dtype, i);
        total_s += x * x;
        total_a += x;
    }
    *squares += total_s;
    *l1 += total_a;
}

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

/* Sum of squares and L1 of values [start, stop), all finite, the largest being `largest`. */
static void sums_finite(const void *data, int dtype, Py_ssize_t start, Py_ssize_t stop,
                        double *squares, double *l1, float largest) {
    if (dtype != FLOAT16 && largest <= SAFE_HIGH && largest >= SAFE_LOW)
        sums_finite_float(data, dtype, start, stop, squares, l1);
    else
        sums_finite_double(data, dtype, start, stop, squares, l1);
}

typedef double double8 __attribute__((vector_size(64)));

/* sums[k] (+)= x[start + k]² for k < n: a linear layer's row gives its columns' squares.
 * The vector loop needs finite values in the safe range; the scalar one takes any. */
__attribute__((target_clones("avx2", "default")))
static void squares_into_fast(const void *data, int dtype, Py_ssize_t start, Py_ssize_t n,
                              double *sums, int add) {
    Py_ssize_t k = 0;
    for (; k + 8 <= n; k += 8) {
        float8 x;
        MAGNITUDES8(x, data, dtype, start + k);
        double8 squares = __builtin_convertvector(x * x, double8);
        if (add) {
            double8 current;
            memcpy(&current, sums + k, sizeof current);
            squares += current;
        }
        memcpy(sums + k, &squares, sizeof squares);
    }
    for (; k < n; k++) {
        double x = magnitude_at(data, dtype, start + k);
        sums[k] = add ? sums[k] + x * x : x * x;
    }
}

static void squares_into(const void *data, int dtype, Py_ssize_t start, Py_ssize_t n,
                         double *sums, int add, int fast) {
    if (fast) {
        squares_into_fast(data, dtype, start, n, sums, add);
        return;
    }
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

static PyObject *reduce_chunk(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data, out;
    int dtype, mode;
    Py_ssize_t count, row_width, columns;
    out.buf = NULL;
    if (!PyArg_ParseTuple(args, "y*innniw*", &data, &dtype, &count, &row_width, &columns, &mode,
                          &out))
        return NULL;
    Py_ssize_t itemsize = dtype == FLOAT32 ? 4 : 2;
    const char *problem = NULL;
    if (dtype < FLOAT32 || dtype > FLOAT16) problem = "unknown dtype code";
    else if (mode < NO_AXES || mode > MATRIX) problem = "unknown mode";
    else if (count < 0 || data.len < count * itemsize) problem = "buffer smaller than count";
    else if (mode != NO_AXES && (row_width <= 0 || count % row_width || columns <= 0 ||
                                 row_width % columns))
        problem = "rows must be whole and columns must divide the row width";
    Py_ssize_t rows = (problem || mode == NO_AXES) ? 0 : count / row_width;
    Py_ssize_t needed = mode == ROWS ? rows : mode == COLUMNS ? columns
                      : mode == MATRIX ? rows * columns : 0;
    if (!problem && out.len < needed * (Py_ssize_t)sizeof(double)) problem = "output too small";
    if (problem) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    double squares = 0.0, l1 = 0.0;
    float largest = 0.0f;
    Py_ssize_t nonfinite = 0;
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS
    largest = largest_magnitude(data.buf, dtype, count, &finite);
    if (!finite) largest = 0.0f;
    if (mode == NO_AXES) {
        if (finite) sums_finite(data.buf, dtype, 0, count, &squares, &l1, largest);
        else sums_checked(data.buf, dtype, 0, count, &squares, &l1, &largest, &nonfinite);
    } else {
        double *sums = (double *)out.buf;
        Py_ssize_t inner = row_width / columns;
        int fast = finite && dtype != FLOAT16 && largest <= SAFE_HIGH && largest >= SAFE_LOW;
        for (Py_ssize_t row = 0; row < rows; row++) {
            Py_ssize_t first = row * row_width;
            double s = 0.0, a = 0.0;
            if (finite) sums_finite(data.buf, dtype, first, first + row_width, &s, &a, largest);
            else sums_checked(data.buf, dtype, first, first + row_width, &s, &a, &largest,
                              &nonfinite);
            squares += s;
            l1 += a;
            if (mode == ROWS) {
                sums[row] += s;
            } else if (inner == 1) { /* the row's values are its columns' squares */
                double *target = mode == COLUMNS ? sums : sums + row * columns;
                squares_into(data.buf, dtype, first, columns, target, mode == COLUMNS, fast);
            } else {
                for (Py_ssize_t column = 0; column < columns; column++) {
                    Py_ssize_t start = first + column * inner;
                    double cs = 0.0, ca = 0.0;
                    Py_ssize_t ignored = 0;
                    float unused = 0.0f;
                    sums_checked(data.buf, dtype, start, start + inner, &cs, &ca, &unused,
                                 &ignored);
                    if (mode == COLUMNS) sums[column] += cs;
                    else sums[row * columns + column] = cs;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return Py_BuildValue("(dddn)", squares, l1, (double)largest, nonfinite);
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

static PyObject *maxima(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data, row_out, column_out;
    int dtype;
    Py_ssize_t count, row_width, columns;
    if (!PyArg_ParseTuple(args, "y*innnw*w*", &data, &dtype, &count, &row_width, &columns,
                          &row_out, &column_out))
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
    if (problem) {
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reduce_chunk", reduce_chunk, METH_VARARGS,
     "reduce_chunk(data, dtype_code, count, row_width, columns, mode, out) -> "
     "(sum_squares, l1, max_abs, nonfinite)"},
    {"maxima", maxima, METH_VARARGS,
     "maxima(data, dtype_code, count, row_width, columns, row_out, column_out): the largest "
     "magnitude bits per row (uint32) and, max-accumulated, per column"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "The compiled statistics kernel.", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
