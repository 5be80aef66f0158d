//! The matrix products behind the convolution and linear ops: strided views over slices and one
//! safe entry to the `gemm` crate (the one candle's matmul uses, here with its AVX-512 kernels).

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

    /// The transpose, as a view.
    pub(crate) fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// `dst = (dst if accumulate) + a · b`, `dst` row-major `a.rows × b.cols`.
pub(crate) fn matmul<T: WithDType>(dst: &mut [T], a: Mat<T>, b: Mat<T>, accumulate: bool, par: Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && dst.len() >= m * n, "matmul {m}×{k} · {}×{n} into {}", b.rows, dst.len());
    let one = T::from_f64(1.0);
    // SAFETY: the views were bounds-checked when built (every index (r, c) < (rows, cols) lies in
    // `data`), dst holds m·n elements, and `dst` is borrowed mutably so nothing aliases it. gemm
    // supports f32 and f64, the only dtypes the ops pass.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, accumulate,
            a.data.as_ptr(), a.cs as isize, a.rs as isize,
            b.data.as_ptr(), b.cs as isize, b.rs as isize,
            one, one, false, false, false, par,
        )
    }
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
