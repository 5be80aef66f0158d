//! The matrix products behind the convolution and linear ops: strided views over slices and one
//! safe entry to the `gemm` crate (the one candle's matmul uses, here with its AVX-512 kernels).

use std::mem::MaybeUninit;

use candle_core::WithDType;
use gemm::Parallelism;

/// The parallelism for a product that runs alone: all of rayon's threads.
pub(crate) fn all_threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// A read-only matrix view: `rows × cols`, element `(r, c)` at `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows × cols` over the first `rows·cols` elements of `data`.
    pub(crate) fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix view {rows}×{cols} over {} elements", data.len());
        Self { data, rows, cols, rs: cols, cs: 1 }
    }

    /// `rows × cols` with row stride `rs` (columns contiguous) over `data`.
    pub(crate) fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        assert!(rows == 0 || cols == 0 || (rows - 1) * rs + cols <= data.len(), "matrix view {rows}×{cols}, row stride {rs}, over {} elements", data.len());
        Self { data, rows, cols, rs, cs: 1 }
    }

    /// The transpose, as a view.
    pub(crate) fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// `dst = (dst if accumulate) + a · b`, `dst` row-major `a.rows × b.cols`.
pub(crate) fn matmul<T: WithDType>(dst: &mut [T], a: Mat<T>, b: Mat<T>, accumulate: bool, par: Parallelism) {
    assert!(dst.len() >= a.rows * b.cols, "matmul {}×{} · {}×{} into {}", a.rows, a.cols, b.rows, b.cols, dst.len());
    // SAFETY: dst holds the m·n elements the product writes (and reads when accumulating; they
    // are initialized, being a `&mut [T]`), and is borrowed mutably so nothing aliases it.
    unsafe { gemm_raw(dst.as_mut_ptr(), a, b, accumulate, par) }
}

/// `a · b` into `dst`, whose elements need not be initialized (gemm writes every one without
/// reading it); returns the product as an initialized slice.
pub(crate) fn matmul_uninit<'d, T: WithDType>(dst: &'d mut [MaybeUninit<T>], a: Mat<T>, b: Mat<T>, par: Parallelism) -> &'d mut [T] {
    let len = a.rows * b.cols;
    assert!(dst.len() >= len, "matmul {}×{} · {}×{} into {}", a.rows, a.cols, b.rows, b.cols, dst.len());
    let dst = &mut dst[..len];
    // SAFETY: as in `matmul`; without `read_dst` gemm only writes dst, all m·n elements of it, so
    // afterwards the slice is initialized and may be viewed as `[T]` (same layout).
    unsafe {
        gemm_raw(dst.as_mut_ptr().cast::<T>(), a, b, false, par);
        &mut *(dst as *mut [MaybeUninit<T>] as *mut [T])
    }
}

/// # Safety
/// `dst` must be valid for writes (and, with `accumulate`, reads) of `a.rows·b.cols` elements
/// and alias neither operand.
unsafe fn gemm_raw<T: WithDType>(dst: *mut T, a: Mat<T>, b: Mat<T>, accumulate: bool, par: Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k, "matmul {m}×{k} · {}×{n}", b.rows);
    let one = T::from_f64(1.0);
    // SAFETY: the views were bounds-checked when built (every index (r, c) < (rows, cols) lies in
    // `data`); the caller vouches for dst. gemm supports f32 and f64, the only dtypes passed.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst, 1, n as isize, accumulate,
            a.data.as_ptr(), a.cs as isize, a.rs as isize,
            b.data.as_ptr(), b.cs as isize, b.rs as isize,
            one, one, false, false, false, par,
        )
    }
}

/// A vector of `n` elements written by `fill`, without zeroing them first (a zero fill cost as
/// much as the elementwise kernels that then overwrite it).
///
/// # Safety
/// `fill` must initialize every element of the slice it is given.
pub(crate) unsafe fn written_vec<T>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller's `fill` initialized all n elements within the capacity.
    unsafe { v.set_len(n) };
    v
}

/// Fails unless the operand laid out as `layout` has the shape `want` its op was built for.
pub(crate) fn expect_dims(layout: &candle_core::Layout, want: &[usize], what: &str) -> candle_core::Result<()> {
    if layout.shape().dims() != want {
        candle_core::bail!("{what}: operand {:?} is not the {want:?} this op was built for", layout.shape())
    }
    Ok(())
}

/// Dispatches a two-operand kernel on f32/f64 contiguous storages.
macro_rules! binary_kernel {
    ($name:expr, $s1:expr, $l1:expr, $s2:expr, $l2:expr, $f:expr) => {
        match ($s1, $s2) {
            (candle_core::CpuStorage::F32(a), candle_core::CpuStorage::F32(b)) => {
                candle_core::CpuStorage::F32($f($crate::pool::contiguous(a, $l1, $name)?, $crate::pool::contiguous(b, $l2, $name)?))
            },
            (candle_core::CpuStorage::F64(a), candle_core::CpuStorage::F64(b)) => {
                candle_core::CpuStorage::F64($f($crate::pool::contiguous(a, $l1, $name)?, $crate::pool::contiguous(b, $l2, $name)?))
            },
            (a, b) => candle_core::bail!(
                "{}: unsupported dtypes {:?} and {:?}",
                $name,
                candle_core::backend::BackendStorage::dtype(a),
                candle_core::backend::BackendStorage::dtype(b)
            ),
        }
    };
}
pub(crate) use binary_kernel;

/// One column-major BLAS call (`?gemmStridedBatched`): `C_i = op(A_i)·op(B_i)` for `i < batch`,
/// `C_i` `m × n`, with leading dimensions and batch strides in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct ColMajorCall {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

/// The column-major call computing row-major `C_i = op(A_i)·op(B_i)` (`C_i` `[m, n]`, inner size
/// `k`, each operand `(transposed, batch stride)`): a row-major matrix read column-major is its
/// transpose, so the call computes `C_iᵀ = op(B_i)ᵀ·op(A_i)ᵀ`, with the row-major **B** as the
/// call's A and the row-major **A** as its B.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn col_major_call((batch, m, n, k): (usize, usize, usize, usize), (a_t, a_stride): (bool, usize), (b_t, b_stride): (bool, usize), c_stride: usize) -> ColMajorCall {
    ColMajorCall {
        trans_a: b_t,
        trans_b: a_t,
        m: n,
        n: m,
        k,
        lda: if b_t { k } else { n },
        ldb: if a_t { m } else { k },
        ldc: n,
        batch,
        stride_a: b_stride,
        stride_b: a_stride,
        stride_c: c_stride,
    }
}

#[cfg(test)]
mod col_major_tests {
    use super::*;

    /// The BLAS definition, column-major: `C[i + j·ldc] = Σ_p op(A)[i, p]·op(B)[p, j]`.
    fn blas(call: &ColMajorCall, a: &[f64], b: &[f64], c: &mut [f64]) {
        let at = |i: usize, p: usize, off: usize| if call.trans_a { a[off + p + i * call.lda] } else { a[off + i + p * call.lda] };
        let bt = |p: usize, j: usize, off: usize| if call.trans_b { b[off + j + p * call.ldb] } else { b[off + p + j * call.ldb] };
        for s in 0..call.batch {
            for i in 0..call.m {
                for j in 0..call.n {
                    let v: f64 = (0..call.k).map(|p| at(i, p, s * call.stride_a) * bt(p, j, s * call.stride_b)).sum();
                    c[s * call.stride_c + i + j * call.ldc] = v;
                }
            }
        }
    }

    /// Every transposition and a batch with a shared operand: the call gives the row-major product.
    #[test]
    fn the_call_computes_the_row_major_product() {
        let (batch, m, n, k) = (3, 4, 5, 6);
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            for a_shared in [false, true] {
                let a_stride = if a_shared { 0 } else { m * k };
                let a: Vec<f64> = (0..(batch - 1) * a_stride + m * k).map(|i| (i as f64 * 0.37).sin()).collect();
                let b: Vec<f64> = (0..batch * k * n).map(|i| (i as f64 * 0.11).cos()).collect();
                let mut c = vec![0.0; batch * m * n];
                let call = col_major_call((batch, m, n, k), (a_t, a_stride), (b_t, k * n), m * n);
                blas(&call, &b, &a, &mut c);
                for s in 0..batch {
                    let (ao, bo) = (s * a_stride, s * k * n);
                    for i in 0..m {
                        for j in 0..n {
                            // Row-major op(A)[i, p]: stored [m, k], or [k, m] when transposed.
                            let ra = |p: usize| if a_t { a[ao + p * m + i] } else { a[ao + i * k + p] };
                            let rb = |p: usize| if b_t { b[bo + j * k + p] } else { b[bo + p * n + j] };
                            let want: f64 = (0..k).map(|p| ra(p) * rb(p)).sum();
                            let got = c[s * m * n + i * n + j];
                            assert!((got - want).abs() < 1e-12, "a_t {a_t} b_t {b_t} shared {a_shared}: [{s}, {i}, {j}] {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}
