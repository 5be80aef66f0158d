//! Fully connected layers as one graph node: `y = x·Wᵀ + b` with the weight gradient `∂Yᵀ·x`
//! computed straight into W's `[out, in]` layout. candle's `Linear` multiplies by the view `Wᵀ`,
//! so its weight gradient comes back transposed and is copied element by element into place;
//! for the subjective branch's first layer (43,008 × 2,048 at width 64) that copy cost more than
//! the layer's products. The variables are still candle-nn's `Linear` (names, init, checkpoints).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_nn::Linear;

use crate::gemm::{all_threads, binary_kernel, expect_dims, matmul_uninit, written_vec, Mat};

/// `layer` applied to `xs` `[b, in] → [b, out]`, differentiable in the input, weight and bias.
pub fn forward(layer: &Linear, xs: &Tensor) -> candle_core::Result<Tensor> {
    let (b, n_in) = xs.dims2()?;
    let (n_out, w_in) = layer.weight().dims2()?;
    if w_in != n_in {
        candle_core::bail!("linear: input {:?} does not fit weight {:?}", xs.dims(), layer.weight().dims())
    }
    let ys = xs.contiguous()?.apply_op2(&layer.weight().contiguous()?, Dense { b, n_in, n_out })?;
    match layer.bias() {
        Some(bias) => ys.broadcast_add(bias),
        None => Ok(ys),
    }
}

/// Sizes of one product: a batch of `b` rows, `n_in → n_out`.
#[derive(Debug, Clone, Copy)]
struct Dense {
    b: usize,
    n_in: usize,
    n_out: usize,
}

/// `∂Y, W → ∂x = ∂Y·W`.
struct InputGrad(Dense);

/// `∂Y, x → ∂W = ∂Yᵀ·x`.
struct WeightGrad(Dense);

impl CustomOp2 for Dense {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dense { b, n_in, n_out } = *self;
        expect_dims(l1, &[b, n_in], "linear")?;
        expect_dims(l2, &[n_out, n_in], "linear")?;
        let out = binary_kernel!("linear", s1, l1, s2, l2, |x, w| {
            // SAFETY: the product writes all b·n_out elements.
            unsafe { written_vec(b * n_out, |y| _ = matmul_uninit(y, Mat::rows(x, b, n_in), Mat::rows(w, n_out, n_in).t(), all_threads())) }
        });
        Ok((out, Shape::from((b, n_out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Dense { b, n_in, n_out } = *self;
        expect_dims(l1, &[b, n_in], "linear")?;
        expect_dims(l2, &[n_out, n_in], "linear")?;
        let out = crate::cuda::product("linear", (s1, l1, false), (s2, l2, true), (b, n_out, n_in))?;
        Ok((out, Shape::from((b, n_out))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &InputGrad(*self))?) } else { None };
        let gw = if w.track_op() { Some(grad.apply_op2_no_bwd(x, &WeightGrad(*self))?) } else { None };
        Ok((gx, gw))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "linear-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-input-grad")?;
        expect_dims(l2, &[n_out, n_in], "linear-input-grad")?;
        let out = binary_kernel!("linear-input-grad", s1, l1, s2, l2, |dy, w| {
            // SAFETY: the product writes all b·n_in elements.
            unsafe { written_vec(b * n_in, |gx| _ = matmul_uninit(gx, Mat::rows(dy, b, n_out), Mat::rows(w, n_out, n_in), all_threads())) }
        });
        Ok((out, Shape::from((b, n_in))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-input-grad")?;
        expect_dims(l2, &[n_out, n_in], "linear-input-grad")?;
        let out = crate::cuda::product("linear-input-grad", (s1, l1, false), (s2, l2, false), (b, n_in, n_out))?;
        Ok((out, Shape::from((b, n_in))))
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "linear-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-weight-grad")?;
        expect_dims(l2, &[b, n_in], "linear-weight-grad")?;
        let out = binary_kernel!("linear-weight-grad", s1, l1, s2, l2, |dy, x| {
            // SAFETY: the product writes all n_out·n_in elements.
            unsafe { written_vec(n_out * n_in, |gw| _ = matmul_uninit(gw, Mat::rows(dy, b, n_out).t(), Mat::rows(x, b, n_in), all_threads())) }
        });
        Ok((out, Shape::from((n_out, n_in))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Dense { b, n_in, n_out } = self.0;
        expect_dims(l1, &[b, n_out], "linear-weight-grad")?;
        expect_dims(l2, &[b, n_in], "linear-weight-grad")?;
        let out = crate::cuda::product("linear-weight-grad", (s1, l1, true), (s2, l2, false), (n_out, n_in, b))?;
        Ok((out, Shape::from((n_out, n_in))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};

    /// Output and all three gradients equal candle's `Linear` (f64), with and without bias.
    #[test]
    fn matches_candle_linear() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for bias in [true, false] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1., (3, 5), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f64, 1., (4, 5), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f64, 1., 4, &dev)?)?;
            let layer = Linear::new(w.as_tensor().clone(), bias.then(|| b.as_tensor().clone()));
            let up = Tensor::randn(0f64, 1., (3, 4), &dev)?;
            let ours = forward(&layer, x.as_tensor())?;
            let plain = layer.forward(x.as_tensor())?;
            let go = (&ours * &up)?.sum_all()?.backward()?;
            let gp = (&plain * &up)?.sum_all()?.backward()?;
            let diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> { (a - b)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar() };
            assert!(diff(&ours, &plain)? < 1e-12);
            for v in [&x, &w] {
                assert!(diff(go.get(v).unwrap(), gp.get(v).unwrap())? < 1e-12);
                assert!(go.get(v).unwrap().is_contiguous());
            }
            assert_eq!(go.get(&b).is_some(), bias);
            if bias {
                assert!(diff(go.get(&b).unwrap(), gp.get(&b).unwrap())? < 1e-12);
            }
        }
        Ok(())
    }
}
