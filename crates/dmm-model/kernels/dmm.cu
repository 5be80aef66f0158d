// dmm's CUDA kernels: the device half of the custom ops in src/conv.rs, src/norm.rs, src/pool.rs
// and src/trunk.rs (src/cuda.rs launches them). Each mirrors the CPU kernel of the same op, element
// for element; the matrix products themselves go to cuBLAS. Built to PTX by build.rs (nvcc), one
// f32 and one f64 entry point per kernel: f64 is what the gradient checks run in.
//
// Every kernel is a grid-stride loop over its outputs, so any launch size covers any tensor.

#include <stddef.h>

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n);                \
         i += (size_t)blockDim.x * gridDim.x)

// Unfolds a batch [n, c_in, h, w] into columns: image b, row (c, i, j), column (oy, ox) holds
// x[b, c, oy*s - p + i, ox*s - p + j], zero outside the image, and goes to
// b*img_stride + row*row_stride + oy*ow + ox. The forward's layout is [n, k, l] (img_stride k*l,
// row_stride l); the weight gradient's is [k, n*l] (img_stride l, row_stride n*l), one matrix for
// the whole batch.
template <typename T>
__device__ void im2col(const T *x, T *cols, size_t total, int c_in, int h, int w, int kh, int kw,
                       int stride, int pad, int oh, int ow, size_t img_stride, size_t row_stride) {
    const size_t l = (size_t)oh * ow;
    const size_t k = (size_t)c_in * kh * kw;
    GRID_STRIDE(idx, total) {
        const size_t p = idx % l;
        const size_t r = (idx / l) % k;
        const size_t b = idx / (l * k);
        const int ox = (int)(p % ow), oy = (int)(p / ow);
        const int j = (int)(r % kw), i = (int)((r / kw) % kh), c = (int)(r / ((size_t)kw * kh));
        const int y = oy * stride - pad + i, xx = ox * stride - pad + j;
        T v = 0;
        if (y >= 0 && y < h && xx >= 0 && xx < w) {
            v = x[((b * c_in + c) * h + y) * w + xx];
        }
        cols[b * img_stride + r * row_stride + p] = v;
    }
}

// The adjoint of im2col: every input element [n, c_in, h, w] gathers the column entries read from
// it, kernel rows then kernel columns in order (no atomics, the same sum order as the CPU fold).
template <typename T>
__device__ void col2im(const T *cols, T *x, size_t total, int c_in, int h, int w, int kh, int kw,
                       int stride, int pad, int oh, int ow) {
    const size_t l = (size_t)oh * ow;
    const size_t k = (size_t)c_in * kh * kw;
    GRID_STRIDE(idx, total) {
        const int xx = (int)(idx % w);
        const int y = (int)((idx / w) % h);
        const size_t bc = idx / ((size_t)h * w);
        const int c = (int)(bc % c_in);
        const size_t b = bc / c_in;
        T acc = 0;
        for (int i = 0; i < kh; ++i) {
            const int ty = y + pad - i;
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            const int oy = ty / stride;
            for (int j = 0; j < kw; ++j) {
                const int tx = xx + pad - j;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                const int ox = tx / stride;
                acc += cols[(b * k + ((size_t)c * kh + i) * kw + j) * l + (size_t)oy * ow + ox];
            }
        }
        x[idx] = acc;
    }
}

// In place on [n, c, l]: y = y*scale[ch] + shift[ch], clamped at 0 with relu. coef is
// [scale (c), shift (c)]. The eval-mode batch norm folded into a convolution, and the apply pass
// of the training-mode batch norm (out-of-place through x).
template <typename T>
__device__ void channel_affine(const T *x, T *y, const T *coef, size_t total, int c, size_t l,
                               int relu) {
    GRID_STRIDE(idx, total) {
        const int ch = (int)((idx / l) % c);
        T v = x[idx] * coef[ch] + coef[c + ch];
        y[idx] = (relu && v < (T)0) ? (T)0 : v;
    }
}

// Block-wide sum of two doubles per thread into thread 0 (blockDim.x a power of two, <= 256).
__device__ void block_sum2(double &a, double &b) {
    __shared__ double sa[256], sb[256];
    sa[threadIdx.x] = a;
    sb[threadIdx.x] = b;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            sa[threadIdx.x] += sa[threadIdx.x + s];
            sb[threadIdx.x] += sb[threadIdx.x + s];
        }
        __syncthreads();
    }
    a = sa[0];
    b = sb[0];
}

// One block per channel of x [n, c, hw]: sums[ch] = Σx, sums[c + ch] = Σx², in f64.
template <typename T>
__device__ void bn_sums(const T *x, double *sums, int n, int c, int hw) {
    const int ch = blockIdx.x;
    const size_t m = (size_t)n * hw;
    double s = 0, s2 = 0;
    for (size_t t = threadIdx.x; t < m; t += blockDim.x) {
        const double v = (double)x[((t / hw) * c + ch) * hw + t % hw];
        s += v;
        s2 += v * v;
    }
    block_sum2(s, s2);
    if (threadIdx.x == 0) {
        sums[ch] = s;
        sums[c + ch] = s2;
    }
}

// One block per channel: with d = dy, or 0 where the fused ReLU's output y is <= 0,
// sums[ch] = Σd and sums[c + ch] = Σd·(x − mean[ch]), in f64.
template <typename T>
__device__ void bn_backward_sums(const T *x, const T *dy, const T *y, const double *mean,
                                 double *sums, int n, int c, int hw, int relu) {
    const int ch = blockIdx.x;
    const size_t m = (size_t)n * hw;
    const double mu = mean[ch];
    double s = 0, sx = 0;
    for (size_t t = threadIdx.x; t < m; t += blockDim.x) {
        const size_t i = ((t / hw) * c + ch) * hw + t % hw;
        const double d = (relu && y[i] <= (T)0) ? 0.0 : (double)dy[i];
        s += d;
        sx += d * ((double)x[i] - mu);
    }
    block_sum2(s, sx);
    if (threadIdx.x == 0) {
        sums[ch] = s;
        sums[c + ch] = sx;
    }
}

// dx = a·d + b·(x − mean) + c0 per channel, coef = [a (c), b (c), c0 (c), mean (c)].
template <typename T>
__device__ void bn_backward_apply(const T *x, const T *dy, const T *y, const T *coef, T *dx,
                                  size_t total, int c, size_t hw, int relu) {
    GRID_STRIDE(idx, total) {
        const int ch = (int)((idx / hw) % c);
        const T d = (relu && y[idx] <= (T)0) ? (T)0 : dy[idx];
        dx[idx] = coef[ch] * d + coef[c + ch] * (x[idx] - coef[3 * c + ch]) + coef[2 * c + ch];
    }
}

// relu(a + b), or with relu_grad: dy (b) where y (a) > 0, else 0.
template <typename T>
__device__ void add_relu(const T *a, const T *b, T *out, size_t total, int relu_grad) {
    GRID_STRIDE(idx, total) {
        if (relu_grad) {
            out[idx] = a[idx] > (T)0 ? b[idx] : (T)0;
        } else {
            const T s = a[idx] + b[idx];
            out[idx] = s > (T)0 ? s : (T)0;
        }
    }
}

// The first maximum of window (oy, ox) of one plane (a NaN wins, as in PyTorch); windows are
// [start, end) pairs, rows[2*oy], rows[2*oy + 1].
template <typename T>
__device__ int window_argmax(const T *plane, int w, const int *rows, const int *cols, int oy,
                             int ox) {
    const int r0 = rows[2 * oy], r1 = rows[2 * oy + 1];
    const int c0 = cols[2 * ox], c1 = cols[2 * ox + 1];
    int best = r0 * w + c0;
    for (int y = r0; y < r1; ++y) {
        for (int xx = c0; xx < c1; ++xx) {
            const int i = y * w + xx;
            const T v = plane[i], m = plane[best];
            if (v > m || (isnan(v) && !isnan(m))) best = i;
        }
    }
    return best;
}

template <typename T>
__device__ void window_max_pool(const T *x, T *out, const int *rows, const int *cols,
                                size_t total, int h, int w, int oh, int ow) {
    GRID_STRIDE(idx, total) {
        const int ox = (int)(idx % ow), oy = (int)((idx / ow) % oh);
        const T *plane = x + (idx / ((size_t)oh * ow)) * h * w;
        out[idx] = plane[window_argmax(plane, w, rows, cols, oy, ox)];
    }
}

// dx (zero on entry) [planes, h, w] += grad at each window's first maximum. Windows may overlap
// (a 3×3/s2 pool), hence the atomics.
template <typename T>
__device__ void window_max_pool_backward(const T *x, const T *grad, T *dx, const int *rows,
                                         const int *cols, size_t total, int h, int w, int oh,
                                         int ow) {
    GRID_STRIDE(idx, total) {
        const int ox = (int)(idx % ow), oy = (int)((idx / ow) % oh);
        const size_t base = (idx / ((size_t)oh * ow)) * h * w;
        atomicAdd(dx + base + window_argmax(x + base, w, rows, cols, oy, ox), grad[idx]);
    }
}

#define ENTRY_POINTS(T, S)                                                                         \
    extern "C" __global__ void im2col_##S(const T *x, T *cols, size_t total, int c_in, int h,      \
                                          int w, int kh, int kw, int stride, int pad, int oh,      \
                                          int ow, size_t img_stride, size_t row_stride) {          \
        im2col<T>(x, cols, total, c_in, h, w, kh, kw, stride, pad, oh, ow, img_stride,             \
                  row_stride);                                                                     \
    }                                                                                              \
    extern "C" __global__ void col2im_##S(const T *cols, T *x, size_t total, int c_in, int h,      \
                                          int w, int kh, int kw, int stride, int pad, int oh,      \
                                          int ow) {                                                \
        col2im<T>(cols, x, total, c_in, h, w, kh, kw, stride, pad, oh, ow);                        \
    }                                                                                              \
    extern "C" __global__ void channel_affine_##S(const T *x, T *y, const T *coef, size_t total,  \
                                                  int c, size_t l, int relu) {                     \
        channel_affine<T>(x, y, coef, total, c, l, relu);                                          \
    }                                                                                              \
    extern "C" __global__ void channel_affine_inplace_##S(T *y, const T *coef, size_t total,      \
                                                          int c, size_t l, int relu) {             \
        channel_affine<T>(y, y, coef, total, c, l, relu);                                          \
    }                                                                                              \
    extern "C" __global__ void bn_sums_##S(const T *x, double *sums, int n, int c, int hw) {       \
        bn_sums<T>(x, sums, n, c, hw);                                                             \
    }                                                                                              \
    extern "C" __global__ void bn_backward_sums_##S(const T *x, const T *dy, const T *y,          \
                                                    const double *mean, double *sums, int n,       \
                                                    int c, int hw, int relu) {                     \
        bn_backward_sums<T>(x, dy, y, mean, sums, n, c, hw, relu);                                 \
    }                                                                                              \
    extern "C" __global__ void bn_backward_apply_##S(const T *x, const T *dy, const T *y,         \
                                                     const T *coef, T *dx, size_t total, int c,    \
                                                     size_t hw, int relu) {                        \
        bn_backward_apply<T>(x, dy, y, coef, dx, total, c, hw, relu);                              \
    }                                                                                              \
    extern "C" __global__ void add_relu_##S(const T *a, const T *b, T *out, size_t total,         \
                                            int relu_grad) {                                       \
        add_relu<T>(a, b, out, total, relu_grad);                                                  \
    }                                                                                              \
    extern "C" __global__ void window_max_pool_##S(const T *x, T *out, const int *rows,           \
                                                   const int *cols, size_t total, int h, int w,    \
                                                   int oh, int ow) {                               \
        window_max_pool<T>(x, out, rows, cols, total, h, w, oh, ow);                               \
    }                                                                                              \
    extern "C" __global__ void window_max_pool_backward_##S(                                       \
        const T *x, const T *grad, T *dx, const int *rows, const int *cols, size_t total, int h,   \
        int w, int oh, int ow) {                                                                   \
        window_max_pool_backward<T>(x, grad, dx, rows, cols, total, h, w, oh, ow);                 \
    }

ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)
