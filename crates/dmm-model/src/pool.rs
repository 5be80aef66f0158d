//! Max pooling with a correct backward: the ResNet stem's 3×3/s2/p1 max-pool and the adaptive
//! max-pool behind spatial pyramid pooling (paper §3.2.2).
//!
//! candle 0.11 cannot train either: its `max_pool2d` backward refuses kernel ≠ stride and, where it
//! runs, multiplies by the pooled mask instead of routing the gradient to the arg-max; it has no
//! adaptive pooling at all. Both poolings here are one custom op, [`WindowMaxPool`], over per-axis
//! window lists: output cell `(oy, ox)` is the max over rows `rows[oy]` × columns `cols[ox]`.
//! Ties go to the first maximum in row-major order and NaN propagates, as in PyTorch, and the
//! backward sends each output gradient to that one arg-max (accumulating where windows overlap).
//!
//! Gradient checks against finite differences are in `tests/gradients.rs`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::simd::multiversion;
#[cfg(feature = "cuda")]
use {
    crate::cuda::float_dispatch,
    candle_core::cuda_backend::cudarc::driver::CudaSlice,
    candle_core::CudaStorage,
};

/// Half-open index range `[start, end)` along one axis.
type Window = (usize, usize);

/// Windows of a standard max-pool (`kernel`, `stride`, `padding`; padding acts as −∞), clipped to
/// the input. Output length `⌊(len + 2·padding − kernel) / stride⌋ + 1`, as PyTorch without
/// `ceil_mode`.
pub fn pool_windows(len: usize, kernel: usize, stride: usize, padding: usize) -> Vec<Window> {
    let n_out = (len + 2 * padding).saturating_sub(kernel) / stride + 1;
    (0..n_out)
        .map(|o| {
            let start = (o * stride) as isize - padding as isize;
            let end = (start + kernel as isize).min(len as isize);
            (start.max(0) as usize, end.max(0) as usize)
        })
        .collect()
}

/// PyTorch's adaptive pooling bins: bin `i` of `n` spans `⌊i·len/n⌋ .. ⌈(i+1)·len/n⌉`.
pub fn adaptive_windows(len: usize, n: usize) -> Vec<Window> {
    (0..n).map(|i| (i * len / n, ((i + 1) * len).div_ceil(n))).collect()
}

/// Max over explicit row × column windows of each `[h, w]` plane of an `[n, c, h, w]` tensor.
#[derive(Debug, Clone)]
pub struct WindowMaxPool {
    rows: Vec<Window>,
    cols: Vec<Window>,
}

/// Scalar types the pooling kernels run on.
trait Elem: candle_core::WithDType + PartialOrd + std::ops::AddAssign {
    fn is_nan(self) -> bool;
}

impl Elem for f32 {
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Elem for f64 {
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// Whether `v` replaces the maximum `m` found so far: it is larger, or NaN where `m` is not (NaN
/// propagates; of equal values the earlier stays).
#[inline(always)]
#[allow(clippy::eq_op)] // x != x: NaN, in a form the vectorizer keeps.
fn beats<T: Elem>(v: T, m: T) -> bool {
    v > m || (v != v && m == m)
}

multiversion! {
    /// `acc[i] ← max(acc[i], row[i])` by [`beats`].
    fn max_into<T: Elem>(acc: &mut [T], row: &[T]) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a = if beats(v, *a) { v } else { *a };
        }
    }
}

multiversion! {
    /// [`max_into`], recording in `from` the row `y` of each element taken from `row`.
    fn max_with_row<T: Elem>(acc: &mut [T], from: &mut [u32], row: &[T], y: u32) {
        for ((a, f), &v) in acc.iter_mut().zip(from.iter_mut()).zip(row) {
            let take = beats(v, *a);
            *a = if take { v } else { *a };
            *f = if take { y } else { *f };
        }
    }
}

impl WindowMaxPool {
    /// Pooling over the given windows. Every window must be non-empty.
    pub fn new(rows: Vec<Window>, cols: Vec<Window>) -> Self {
        Self { rows, cols }
    }

    /// Index within the plane of the first maximum of window `(oy, ox)`, by the definition: the
    /// tests' reference for the separable kernels.
    #[cfg(test)]
    fn argmax<T: Elem>(&self, plane: &[T], w: usize, oy: usize, ox: usize) -> usize {
        let (r0, r1) = self.rows[oy];
        let (c0, c1) = self.cols[ox];
        let mut best = r0 * w + c0;
        for y in r0..r1 {
            for x in c0..c1 {
                let i = y * w + x;
                let v = plane[i];
                if v > plane[best] || (v.is_nan() && !plane[best].is_nan()) {
                    best = i;
                }
            }
        }
        best
    }

    /// The kernels' arguments for an `h × w` input: the row and column windows as `[start, end)`
    /// pairs on the device, and `[h, w, oh, ow]` as kernel ints.
    #[cfg(feature = "cuda")]
    fn cuda_args(&self, dev: &candle_core::CudaDevice, h: usize, w: usize) -> candle_core::Result<(CudaSlice<i32>, CudaSlice<i32>, [i32; 4])> {
        let flat = |ws: &[Window]| -> candle_core::Result<Vec<i32>> { ws.iter().flat_map(|&(a, b)| [a, b]).map(crate::cuda::int).collect() };
        let [h, w, oh, ow] = [h, w, self.rows.len(), self.cols.len()].map(crate::cuda::int);
        Ok((dev.clone_htod(&flat(&self.rows)?)?, dev.clone_htod(&flat(&self.cols)?)?, [h?, w?, oh?, ow?]))
    }

    fn check(&self, layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let fits = |ws: &[Window], len: usize| ws.iter().all(|&(a, b)| a < b && b <= len);
        if !fits(&self.rows, h) || !fits(&self.cols, w) || self.rows.is_empty() || self.cols.is_empty() {
            candle_core::bail!("window max-pool: windows do not fit an input of {h}×{w} (empty or out of range)")
        }
        Ok((n, c, h, w))
    }

    /// The maxima, separably: each output row's window of rows folded into one row (whole rows
    /// at a time, vectorized), then each column window of that row. The value is the first
    /// arg-max's: the same number, or NaN where the window has one (a tie between −0 and +0 may
    /// come out with either sign).
    fn fwd<T: Elem>(&self, xs: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
        let (oh, ow) = (self.rows.len(), self.cols.len());
        let mut out = vec![T::zero(); planes * oh * ow];
        out.par_chunks_mut(oh * ow).zip(xs.par_chunks(h * w)).for_each_init(Vec::new, |folded, (o, plane)| {
            for (&(r0, r1), o) in self.rows.iter().zip(o.chunks_mut(ow)) {
                folded.clear();
                folded.extend_from_slice(&plane[r0 * w..(r0 + 1) * w]);
                for y in r0 + 1..r1 {
                    max_into(folded, &plane[y * w..(y + 1) * w]);
                }
                for (&(c0, c1), o) in self.cols.iter().zip(o.iter_mut()) {
                    let mut m = folded[c0];
                    for &v in &folded[c0 + 1..c1] {
                        if beats(v, m) {
                            m = v;
                        }
                    }
                    *o = m;
                }
            }
        });
        out
    }

    /// Each output gradient added at its window's first arg-max, found separably as in
    /// [`Self::fwd`]: each column's first maximum over the window's rows (value and row, whole
    /// rows at a time), then over the column window the largest value, ties going to the smaller
    /// row and then the smaller column — the first in row-major order.
    fn bwd_kernel<T: Elem>(&self, xs: &[T], grad: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
        let (oh, ow) = (self.rows.len(), self.cols.len());
        let mut dx = vec![T::zero(); planes * h * w];
        dx.par_chunks_mut(h * w)
            .zip(xs.par_chunks(h * w))
            .zip(grad.par_chunks(oh * ow))
            .for_each_init(|| (Vec::new(), Vec::new()), |(folded, from), ((d, plane), g)| {
                for (&(r0, r1), g) in self.rows.iter().zip(g.chunks(ow)) {
                    folded.clear();
                    folded.extend_from_slice(&plane[r0 * w..(r0 + 1) * w]);
                    from.clear();
                    from.resize(w, r0 as u32);
                    for y in r0 + 1..r1 {
                        max_with_row(folded, from, &plane[y * w..(y + 1) * w], y as u32);
                    }
                    for (&(c0, c1), &g) in self.cols.iter().zip(g) {
                        let (mut m, mut my, mut mx) = (folded[c0], from[c0], c0);
                        for x in c0 + 1..c1 {
                            let (v, vy) = (folded[x], from[x]);
                            let tie = v == m || (v.is_nan() && m.is_nan());
                            if beats(v, m) || (tie && vy < my) {
                                (m, my, mx) = (v, vy, x);
                            }
                        }
                        d[my as usize * w + mx] += g;
                    }
                }
            });
        dx
    }
}

/// The elements of a contiguous CPU tensor; custom-op kernels of this crate index them directly.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

impl CustomOp1 for WindowMaxPool {
    fn name(&self) -> &'static str {
        "window-max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.check(layout)?;
        let shape = Shape::from((n, c, self.rows.len(), self.cols.len()));
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.fwd(contiguous(v, layout, "window max-pool: input")?, n * c, h, w)),
            CpuStorage::F64(v) => CpuStorage::F64(self.fwd(contiguous(v, layout, "window max-pool: input")?, n * c, h, w)),
            s => candle_core::bail!("window max-pool: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = self.check(layout)?;
        let (oh, ow) = (self.rows.len(), self.cols.len());
        let dev = &storage.device;
        let total = n * c * oh * ow;
        let (rows, cols, [h, w, ohi, owi]) = self.cuda_args(dev, h, w)?;
        let out = float_dispatch!("window max-pool", storage.dtype(), |T| {
            let x = crate::cuda::view::<T>(storage, layout, "window max-pool: input")?;
            let mut out = crate::cuda::uninit::<T>(dev, total)?;
            crate::cuda::launch!(dev, T, "window_max_pool", crate::cuda::grid(total); &x, &mut out, &rows, &cols; total, h, w, ohi, owi);
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &WindowMaxPoolBackward(self.clone()))?;
        Ok(Some(grad))
    }
}

/// The backward of [`WindowMaxPool`]: `(input, grad_output) → grad_input`.
struct WindowMaxPoolBackward(WindowMaxPool);

impl CustomOp2 for WindowMaxPoolBackward {
    fn name(&self) -> &'static str {
        "window-max-pool-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let pool = &self.0;
        let (n, c, h, w) = pool.check(l1)?;
        if l2.shape().dims() != [n, c, pool.rows.len(), pool.cols.len()] {
            candle_core::bail!("window max-pool backward: gradient shape {:?} does not match the output", l2.shape())
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(pool.bwd_kernel(contiguous(x, l1, "window max-pool: input")?, contiguous(g, l2, "window max-pool: gradient")?, n * c, h, w))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(pool.bwd_kernel(contiguous(x, l1, "window max-pool: input")?, contiguous(g, l2, "window max-pool: gradient")?, n * c, h, w))
            }
            _ => candle_core::bail!("window max-pool backward: unsupported or mixed dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let pool = &self.0;
        let (n, c, h, w) = pool.check(l1)?;
        let (oh, ow) = (pool.rows.len(), pool.cols.len());
        if l2.shape().dims() != [n, c, oh, ow] {
            candle_core::bail!("window max-pool backward: gradient shape {:?} does not match the output", l2.shape())
        }
        let dev = &s1.device;
        let total = n * c * oh * ow;
        let (rows, cols, [hi, wi, ohi, owi]) = pool.cuda_args(dev, h, w)?;
        let out = float_dispatch!("window max-pool backward", s1.dtype(), |T| {
            let x = crate::cuda::view::<T>(s1, l1, "window max-pool: input")?;
            let g = crate::cuda::view::<T>(s2, l2, "window max-pool: gradient")?;
            let mut dx = dev.alloc_zeros::<T>(n * c * h * w)?;
            crate::cuda::launch!(dev, T, "window_max_pool_backward", crate::cuda::grid(total); &x, &g, &mut dx, &rows, &cols; total, hi, wi, ohi, owi);
            CudaStorage::wrap_cuda_slice(dx, dev.clone())
        });
        Ok((out, l1.shape().clone()))
    }
}

/// 2-D max pooling with a square `kernel`, `stride` and `padding` (padding never wins: it acts as
/// −∞), differentiable.
///
/// # Shapes
/// `[n, c, h, w] → [n, c, ⌊(h + 2p − k)/s⌋ + 1, ⌊(w + 2p − k)/s⌋ + 1]`
pub fn max_pool2d(xs: &Tensor, kernel: usize, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if kernel == 0 || stride == 0 || 2 * padding > kernel {
        candle_core::bail!("max_pool2d: invalid kernel {kernel}, stride {stride}, padding {padding}")
    }
    let pool = WindowMaxPool::new(pool_windows(h, kernel, stride, padding), pool_windows(w, kernel, stride, padding));
    xs.contiguous()?.apply_op1(pool)
}

/// Adaptive max pooling to an `out_h × out_w` grid with PyTorch's bin edges, differentiable.
///
/// # Shapes
/// `[n, c, h, w] → [n, c, out_h, out_w]`
pub fn adaptive_max_pool2d(xs: &Tensor, out_h: usize, out_w: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    // More bins than rows is allowed, as in PyTorch: bins then overlap (a 32×32 image gives a 1×1
    // trunk map, which every SPP level still pools).
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        candle_core::bail!("adaptive_max_pool2d: cannot pool {h}×{w} to {out_h}×{out_w}")
    }
    xs.contiguous()?.apply_op1(WindowMaxPool::new(adaptive_windows(h, out_h), adaptive_windows(w, out_w)))
}

/// n-level spatial pyramid pooling: adaptive max-pools to 1×1, 2×2, …, n×n, each flattened
/// channel-major and concatenated (He et al. 2015; paper §3.2.2).
///
/// # Shapes
/// `[b, c, h, w] → [b, c·(1² + 2² + … + n²)]` (n = 3: 14·c)
pub fn spp(xs: &Tensor, levels: usize) -> candle_core::Result<Tensor> {
    let parts = (1..=levels)
        .map(|n| adaptive_max_pool2d(xs, n, n)?.flatten_from(1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
}

/// Features per channel of an n-level pyramid: 1² + 2² + … + n².
pub fn spp_bins(levels: usize) -> usize {
    (1..=levels).map(|n| n * n).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adaptive_bins_follow_pytorch() {
        // PyTorch: start = floor(i*7/3), end = ceil((i+1)*7/3) → [0,3) [2,5) [4,7).
        assert_eq!(adaptive_windows(7, 3), [(0, 3), (2, 5), (4, 7)]);
        assert_eq!(adaptive_windows(6, 1), [(0, 6)]);
        assert_eq!(adaptive_windows(5, 2), [(0, 3), (2, 5)]);
        assert_eq!(adaptive_windows(2, 3), [(0, 1), (0, 2), (1, 2)]);
    }

    #[test]
    fn stem_pool_windows() {
        // 112 → 56 with kernel 3, stride 2, padding 1; the first window is clipped to [0, 2).
        let w = pool_windows(112, 3, 2, 1);
        assert_eq!(w.len(), 56);
        assert_eq!((w[0], w[1], w[55]), ((0, 2), (1, 4), (109, 112)));
        assert_eq!(pool_windows(109, 3, 2, 1).len(), 55);
    }

    #[test]
    fn forward_values_by_hand() -> candle_core::Result<()> {
        let xs = Tensor::new(&[[[[1f32, 5., 2., 0.], [3., 4., 9., 1.], [7., 0., 2., 8.]]]], &Device::Cpu)?;
        let p = max_pool2d(&xs, 3, 2, 1)?; // rows [0,2) [1,3); cols [0,2) [1,4)
        assert_eq!(p.flatten_all()?.to_vec1::<f32>()?, [5., 9., 7., 9.]);
        let s = spp(&xs, 2)?;
        // Level 1: max 9. Level 2 (rows [0,2) [1,3), cols [0,2) [2,4)): 5 9 / 7 9.
        assert_eq!(s.to_vec2::<f32>()?, [[9., 5., 9., 7., 9.]]);
        Ok(())
    }

    /// The separable forward gives each window's first arg-max value, NaN included, for the stem's
    /// overlapping windows and for adaptive bins, on data with ties and NaNs.
    #[test]
    fn separable_forward_is_the_first_argmax_value() {
        let (h, w) = (11, 9);
        let mut x: Vec<f64> = (0..3 * h * w).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
        for i in [5, 40, 41, 150, 260] {
            x[i] = f64::NAN;
        }
        for pool in [WindowMaxPool::new(pool_windows(h, 3, 2, 1), pool_windows(w, 3, 2, 1)), WindowMaxPool::new(adaptive_windows(h, 4), adaptive_windows(w, 3))] {
            let got = pool.fwd(&x, 3, h, w);
            let (oh, ow) = (pool.rows.len(), pool.cols.len());
            for (p, plane) in x.chunks(h * w).enumerate() {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (g, want) = (got[(p * oh + oy) * ow + ox], plane[pool.argmax(plane, w, oy, ox)]);
                        assert!(g == want || (g.is_nan() && want.is_nan()), "plane {p} ({oy}, {ox}): {g} vs {want}");
                    }
                }
            }
        }
    }

    /// The separable backward sends each gradient to the first arg-max in row-major order, with
    /// ties across rows and columns and NaNs.
    #[test]
    fn separable_backward_is_the_first_argmax() {
        let (h, w) = (11, 9);
        let mut x: Vec<f64> = (0..3 * h * w).map(|i| ((i * 7919) % 5) as f64).collect();
        for i in [5, 40, 41, 150, 158, 260] {
            x[i] = f64::NAN;
        }
        for pool in [WindowMaxPool::new(pool_windows(h, 3, 2, 1), pool_windows(w, 3, 2, 1)), WindowMaxPool::new(adaptive_windows(h, 4), adaptive_windows(w, 3))] {
            let (oh, ow) = (pool.rows.len(), pool.cols.len());
            let g: Vec<f64> = (0..3 * oh * ow).map(|i| 1.0 + i as f64).collect();
            let got = pool.bwd_kernel(&x, &g, 3, h, w);
            let mut want = vec![0.0; x.len()];
            for (p, plane) in x.chunks(h * w).enumerate() {
                for oy in 0..oh {
                    for ox in 0..ow {
                        want[p * h * w + pool.argmax(plane, w, oy, ox)] += g[(p * oh + oy) * ow + ox];
                    }
                }
            }
            assert_eq!(got, want);
        }
    }

    #[test]
    fn backward_routes_to_first_argmax_only() -> candle_core::Result<()> {
        let xs = candle_core::Var::new(&[[[[1f32, 3., 3.], [0., 2., 1.]]]], &Device::Cpu)?;
        // One 2×3 window: the max 3 is tied at (0,1) and (0,2); PyTorch sends the gradient to (0,1).
        let out = adaptive_max_pool2d(xs.as_tensor(), 1, 1)?;
        let grads = (out * 2.0)?.sum_all()?.backward()?;
        let g = grads.get(&xs).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(g, [0., 2., 0., 0., 0., 0.]);
        Ok(())
    }
}

/// The CUDA kernels of this op, compiled for the host (`crate::emulated`), against the CPU code.
#[cfg(test)]
mod emulated_tests {
    use super::*;
    use crate::emulated::{data, kernels, max_diff};

    type Pool = unsafe extern "C" fn(*const f64, *mut f64, *const i32, *const i32, usize, i32, i32, i32, i32);
    type PoolBackward = unsafe extern "C" fn(*const f64, *const f64, *mut f64, *const i32, *const i32, usize, i32, i32, i32, i32);

    /// The stem pool and every SPP level (overlapping bins included), forward and backward.
    #[test]
    fn pool_kernels_match_the_cpu() {
        let k = kernels();
        // SAFETY: the kernels' C signatures.
        let (fwd, bwd) = unsafe { (k.get::<Pool>("window_max_pool_f64"), k.get::<PoolBackward>("window_max_pool_backward_f64")) };
        let (planes, h, w) = (6, 11, 9);
        let mut x = data(planes * h * w, 5);
        x[7] = f64::NAN; // a NaN wins its windows, as on the CPU
        let pools = [
            WindowMaxPool::new(pool_windows(h, 3, 2, 1), pool_windows(w, 3, 2, 1)),
            WindowMaxPool::new(adaptive_windows(h, 1), adaptive_windows(w, 1)),
            WindowMaxPool::new(adaptive_windows(h, 2), adaptive_windows(w, 2)),
            WindowMaxPool::new(adaptive_windows(h, 3), adaptive_windows(w, 3)),
            WindowMaxPool::new(adaptive_windows(2, 3), adaptive_windows(1, 3)),
        ];
        for (i, pool) in pools.iter().enumerate() {
            let (ph, pw) = (pool.rows.last().unwrap().1, pool.cols.last().unwrap().1);
            let x = &x[..planes * ph * pw];
            let flat = |ws: &[Window]| -> Vec<i32> { ws.iter().flat_map(|&(a, b)| [a as i32, b as i32]).collect() };
            let (rows, cols) = (flat(&pool.rows), flat(&pool.cols));
            let (oh, ow) = (pool.rows.len(), pool.cols.len());
            let total = planes * oh * ow;
            let want = pool.fwd(x, planes, ph, pw);
            let mut got = vec![f64::NAN; total];
            // SAFETY: x holds planes·ph·pw elements, got total, the windows 2·oh and 2·ow.
            unsafe { fwd(x.as_ptr(), got.as_mut_ptr(), rows.as_ptr(), cols.as_ptr(), total, ph as i32, pw as i32, oh as i32, ow as i32) };
            assert_eq!(max_diff(&got, &want), 0.0, "forward, pool {i}");
            let grad = data(total, 6 + i as u64);
            let want = pool.bwd_kernel(x, &grad, planes, ph, pw);
            let mut dx = vec![0.0; x.len()];
            // SAFETY: as above, dx zero on entry.
            unsafe { bwd(x.as_ptr(), grad.as_ptr(), dx.as_mut_ptr(), rows.as_ptr(), cols.as_ptr(), total, ph as i32, pw as i32, oh as i32, ow as i32) };
            assert!(max_diff(&dx, &want) < 1e-12, "backward, pool {i}");
        }
    }
}
