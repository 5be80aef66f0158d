//! The CUDA half of this crate's custom ops (feature `cuda`): the kernels of `kernels/dmm.cu`
//! (PTX built by `build.rs`, loaded once per device) and row-major matrix products on cuBLAS, all
//! on candle's stream. Each op's `cuda_fwd` sits next to its `cpu_fwd` and mirrors it element for
//! element; `dmm gpu-check` runs both on the same inputs and compares.

use candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t;
use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, ValidAsZeroBits};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, WithDType};

use crate::gemm::col_major_call;

/// The kernels, compiled for `CUDA_COMPUTE_CAP` at build time.
pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dmm.ptx"));

/// Threads per block of the elementwise kernels; the reductions use exactly this many too (their
/// shared arrays are sized for it).
pub(crate) const BLOCK: u32 = 256;

/// Element types the kernels and products run on: f32, and f64 for the gradient checks.
pub(crate) trait Float: WithDType + CudaDType + DeviceRepr + ValidAsZeroBits {
    /// The kernel-name suffix, `f32` or `f64`.
    const SUFFIX: &'static str;

    /// cuBLAS `?gemmStridedBatched` in this type.
    ///
    /// # Safety
    /// The configuration must describe buffers at least as large as the views.
    unsafe fn gemm(blas: &CudaBlas, cfg: StridedBatchedConfig<Self>, a: &CudaView<Self>, b: &CudaView<Self>, c: &mut CudaViewMut<Self>) -> Result<()>;
}

/// The two element types, each with its kernel suffix and cuBLAS routine.
macro_rules! float_impl {
    ($t:ty, $suffix:literal) => {
        impl Float for $t {
            const SUFFIX: &'static str = $suffix;

            unsafe fn gemm(blas: &CudaBlas, cfg: StridedBatchedConfig<Self>, a: &CudaView<Self>, b: &CudaView<Self>, c: &mut CudaViewMut<Self>) -> Result<()> {
                // SAFETY: forwarded to the caller.
                unsafe { blas.gemm_strided_batched(cfg, a, b, c) }.w()
            }
        }
    };
}
float_impl!(f32, "f32");
float_impl!(f64, "f64");

/// Runs `$body` with the type alias `$t` set to the element type of `$dtype` (f32 or f64).
macro_rules! float_dispatch {
    ($name:expr, $dtype:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            d => candle_core::bail!("{}: unsupported dtype {d:?} on CUDA", $name),
        }
    };
}
pub(crate) use float_dispatch;

/// Launches kernel `$name` (for element type `$t`) over `$total` outputs: the buffer arguments
/// (references to slices or views) first, then the scalars, in the kernel's order. Scalars must
/// have the kernel's C types: `usize` for `size_t`, `i32` for `int`.
macro_rules! launch {
    ($dev:expr, $t:ty, $name:expr, $cfg:expr; $($buf:expr),+ ; $($scalar:expr),*) => {{
        // Loaded into the device on first use.
        let func = $dev.get_or_load_custom_func(&$crate::cuda::kernel_name::<$t>($name), "dmm", $crate::cuda::PTX)?;
        let mut builder = func.builder();
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        $( builder.arg($buf); )+
        $( let scalar = $scalar; builder.arg(&scalar); )*
        // SAFETY: the caller passes the kernel's argument list, with buffers of the sizes the
        // scalars describe.
        candle_core::cuda_backend::WrapErr::w(unsafe { builder.launch($cfg) })?;
    }};
}
pub(crate) use launch;

/// The entry point of kernel `name` for element type `T`.
pub(crate) fn kernel_name<T: Float>(name: &str) -> String {
    format!("{name}_{}", T::SUFFIX)
}

/// A grid-stride launch covering `total` elements.
pub(crate) fn grid(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One block of [`BLOCK`] threads per channel, for the per-channel reductions.
pub(crate) fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (c as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// `v` as a kernel `int`.
pub(crate) fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{v} does not fit a CUDA kernel's int")))
}

/// The elements of a contiguous operand laid out as `layout`.
pub(crate) fn view<'a, T: Float>(s: &'a CudaStorage, layout: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(T::as_cuda_slice(s)?.slice(start..end)),
        None => candle_core::bail!("{what}: operand must be contiguous"),
    }
}

/// A fresh buffer of `len` elements that the caller's kernel or product writes in full.
pub(crate) fn uninit<T: Float>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: callers write every element before the buffer is read.
    unsafe { dev.alloc::<T>(len) }
}

/// `values` cast to `T`, on the device.
pub(crate) fn upload<T: Float>(dev: &CudaDevice, values: impl IntoIterator<Item = f64>) -> Result<CudaSlice<T>> {
    let host: Vec<T> = values.into_iter().map(T::from_f64).collect();
    dev.clone_htod(&host)
}

/// One operand of [`gemm`]: a batch of row-major matrices `stride` elements apart (0: the same
/// matrix for every batch entry), used as stored or transposed.
pub(crate) struct Operand<'v, 'a, T> {
    pub data: &'v CudaView<'a, T>,
    pub transposed: bool,
    pub stride: usize,
}

/// Row-major `C_i = op(A_i)·op(B_i)` for `i < batch`, `C_i` `[m, n]` at `c_stride` apart, added to
/// `C_i` with `accumulate`: one cuBLAS call, mapped by [`col_major_call`].
pub(crate) fn gemm<T: Float>(
    dev: &CudaDevice,
    (batch, m, n, k): (usize, usize, usize, usize),
    a: Operand<T>,
    b: Operand<T>,
    c: &mut CudaViewMut<T>,
    c_stride: usize,
    accumulate: bool,
) -> Result<()> {
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let need = |stride: usize, size: usize| (batch - 1) * stride + size;
    if batch == 0 || a.data.len() < need(a.stride, m * k) || b.data.len() < need(b.stride, k * n) || c.len() < need(c_stride, m * n) {
        candle_core::bail!("gemm: buffers of {}, {} and {} elements for {batch} products of {m}×{k}·{k}×{n}", a.data.len(), b.data.len(), c.len())
    }
    let call = col_major_call((batch, m, n, k), (a.transposed, a.stride), (b.transposed, b.stride), c_stride);
    let gemm = GemmConfig {
        transa: op(call.trans_a),
        transb: op(call.trans_b),
        m: int(call.m)?,
        n: int(call.n)?,
        k: int(call.k)?,
        alpha: T::from_f64(1.0),
        lda: int(call.lda)?,
        ldb: int(call.ldb)?,
        beta: T::from_f64(if accumulate { 1.0 } else { 0.0 }),
        ldc: int(call.ldc)?,
    };
    let cfg = StridedBatchedConfig { gemm, batch_size: int(call.batch)?, stride_a: call.stride_a as i64, stride_b: call.stride_b as i64, stride_c: call.stride_c as i64 };
    // SAFETY: the sizes were checked against the views above; the row-major B is the call's A.
    unsafe { T::gemm(&dev.cublas_handle(), cfg, b.data, a.data, c) }
}

/// `op(A)·op(B)` of two contiguous operands, a new `[m, n]` buffer (`k` the inner size).
pub(crate) fn product(name: &str, (s1, l1, a_t): (&CudaStorage, &Layout, bool), (s2, l2, b_t): (&CudaStorage, &Layout, bool), (m, n, k): (usize, usize, usize)) -> Result<CudaStorage> {
    use candle_core::backend::BackendStorage;
    float_dispatch!(name, s1.dtype(), |T| {
        let dev = &s1.device;
        let (a, b) = (view::<T>(s1, l1, name)?, view::<T>(s2, l2, name)?);
        let mut c = uninit::<T>(dev, m * n)?;
        let (a, b) = (Operand { data: &a, transposed: a_t, stride: 0 }, Operand { data: &b, transposed: b_t, stride: 0 });
        gemm(dev, (1, m, n, k), a, b, &mut c.slice_mut(..), 0, false)?;
        Ok(CudaStorage::wrap_cuda_slice(c, dev.clone()))
    })
}
