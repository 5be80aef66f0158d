//! The shared trunk: ResNet-50 v1.5 (He et al. 2016; torchvision layout, stride on the 3×3 conv)
//! with the global pool and classifier removed, so the heads see the last feature map (paper
//! §3.2, Fig. 2).
//!
//! Variable names equal torchvision's and timm's checkpoint keys (`conv1.weight`, `bn1.*`,
//! `layer{1..4}.{i}.conv{1,2,3}.weight`, `…downsample.{0,1}.*`), so ImageNet weights load unchanged.
//! `width` scales every channel count (64 = the standard network); candle's own ResNet cannot be
//! used because it hard-codes eval-mode batch norm and its stem max-pool cannot be differentiated.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_nn::{conv2d_no_bias, Conv2d, Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::gemm::{binary_kernel, written_vec};
use crate::norm::BatchNorm2d as BatchNorm;
use crate::pool::max_pool2d;
use crate::simd::multiversion;

/// Blocks per stage of ResNet-50.
pub const RESNET50_BLOCKS: [usize; 4] = [3, 4, 6, 3];

/// Output channels of the trunk at `width`: 32·width (2048 at 64).
pub fn trunk_channels(width: usize) -> usize {
    32 * width
}

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    BatchNorm::new(c, vb)
}

fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig { stride, padding: k / 2, ..Default::default() };
    conv2d_no_bias(c_in, c_out, k, cfg, vb)
}

/// A bias-free convolution through [`crate::conv::conv2d`]: forward and both gradients as matrix
/// products, right for any input shape.
///
/// (candle 0.11's own conv2d backward derives one `output_padding` from the height and applies it
/// to both axes, so a strided conv whose height and width leave different remainders — 218×178
/// CelebA crops reach layer3 as 28×23 — fails with a shape error; it is also several times slower.
/// The test below notices when candle fixes the first.)
pub fn conv2d(xs: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    let cfg = conv.config();
    if cfg.dilation != 1 || cfg.groups != 1 {
        candle_core::bail!("conv2d: dilation and groups are not used by ResNet-50")
    }
    crate::conv::conv2d(xs, conv.weight(), cfg.stride, cfg.padding)
}

/// `conv` then `bn`, then ReLU with `relu`. Training runs the convolution and the fused batch
/// norm (+ ReLU) op; eval mode folds the batch norm into the convolution's output pass, through
/// `filters`, the convolution's Winograd-transformed filters, when given.
fn conv_bn(xs: &Tensor, conv: &Conv2d, bn: &BatchNorm, relu: bool, train: bool, filters: Option<&Tensor>) -> Result<Tensor> {
    if train {
        let ys = conv2d(xs, conv)?;
        return if relu { bn.forward_relu_t(&ys, true) } else { bn.forward_t(&ys, true) };
    }
    let cfg = conv.config();
    let (scale, shift) = bn.eval_affine()?;
    match filters {
        Some(filters) => crate::conv::conv2d_affine_winograd(xs, conv.weight(), filters, scale, shift, relu),
        None => crate::conv::conv2d_affine(xs, conv.weight(), cfg.stride, cfg.padding, scale, shift, relu),
    }
}

/// `relu(a + b)` as one op, the end of every block: one pass forward, one backward (the gradient
/// where the output is positive, for both operands).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

struct AddRelu;

/// `dy` where `y > 0`, else 0.
struct ReluGrad;

multiversion! {
    /// `relu(a + b)`, or with `relu_grad` `b` where `a > 0`, else 0, element by element.
    fn add_relu_chunk<T: WithDType>(out: &mut [MaybeUninit<T>], a: &[T], b: &[T], relu_grad: bool) {
        let zero = T::zero();
        if relu_grad {
            for ((o, &y), &d) in out.iter_mut().zip(a).zip(b) {
                o.write(if y > zero { d } else { zero });
            }
        } else {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                let s = a + b;
                o.write(if s > zero { s } else { zero });
            }
        }
    }
}

/// [`add_relu_chunk`] over whole operands, in parallel chunks.
fn add_relu_cpu<T: WithDType>(a: &[T], b: &[T], relu_grad: bool) -> Vec<T> {
    let fill = |out: &mut [MaybeUninit<T>]| {
        out.par_chunks_mut(1 << 14).zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14))).for_each(|(o, (a, b))| add_relu_chunk(o, a, b, relu_grad))
    };
    // SAFETY: the chunks cover the vector (a and b have its length) and each is written in full.
    unsafe { written_vec(a.len(), fill) }
}

fn elementwise(name: &str, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, relu_grad: bool) -> Result<(CpuStorage, Shape)> {
    let out = binary_kernel!(name, s1, l1, s2, l2, |a, b| add_relu_cpu(a, b, relu_grad));
    Ok((out, l1.shape().clone()))
}

/// [`elementwise`] on the GPU, one kernel for both.
#[cfg(feature = "cuda")]
fn cuda_elementwise(name: &str, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, relu_grad: bool) -> Result<(CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let dev = &s1.device;
    let total = l1.shape().elem_count();
    let out = crate::cuda::float_dispatch!(name, s1.dtype(), |T| {
        let (a, b) = (crate::cuda::view::<T>(s1, l1, name)?, crate::cuda::view::<T>(s2, l2, name)?);
        if b.len() != total {
            candle_core::bail!("{name}: operands of {total} and {} elements", b.len())
        }
        let mut out = crate::cuda::uninit::<T>(dev, total)?;
        let flag = i32::from(relu_grad);
        crate::cuda::launch!(dev, T, "add_relu", crate::cuda::grid(total); &a, &b, &mut out; total, flag);
        CudaStorage::wrap_cuda_slice(out, dev.clone())
    });
    Ok((out, l1.shape().clone()))
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        elementwise(self.name(), s1, l1, s2, l2, false)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda_elementwise(self.name(), s1, l1, s2, l2, false)
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        elementwise(self.name(), s1, l1, s2, l2, true)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda_elementwise(self.name(), s1, l1, s2, l2, true)
    }
}

/// A bottleneck block: 1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, plus the shortcut.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Conv2d,
    bn3: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
    /// `conv2`'s Winograd-transformed filters, in copies made by [`Trunk::for_inference`].
    filters: Option<Tensor>,
}

impl Bottleneck {
    /// A block taking `c_in` channels to `4·planes`, with `stride` on the 3×3 conv.
    pub fn new(c_in: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let c_out = 4 * planes;
        let downsample = if stride != 1 || c_in != c_out {
            Some((conv(c_in, c_out, 1, stride, vb.pp("downsample.0"))?, bn(c_out, vb.pp("downsample.1"))?))
        } else {
            None
        };
        Ok(Self {
            conv1: conv(c_in, planes, 1, 1, vb.pp("conv1"))?,
            bn1: bn(planes, vb.pp("bn1"))?,
            conv2: conv(planes, planes, 3, stride, vb.pp("conv2"))?,
            bn2: bn(planes, vb.pp("bn2"))?,
            conv3: conv(planes, c_out, 1, 1, vb.pp("conv3"))?,
            bn3: bn(c_out, vb.pp("bn3"))?,
            downsample,
            filters: None,
        })
    }

    /// # Shapes
    /// `[b, c_in, h, w] → [b, 4·planes, ⌈h/stride⌉, ⌈w/stride⌉]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = conv_bn(xs, &self.conv1, &self.bn1, true, train, None)?;
        let ys = conv_bn(&ys, &self.conv2, &self.bn2, true, train, self.filters.as_ref())?;
        let shortcut = match &self.downsample {
            Some((c, b)) => conv_bn(xs, c, b, false, train, None)?,
            None => xs.clone(),
        };
        if !train && xs.device().is_cpu() {
            // Eval mode on the CPU: the batch norm, the add and the ReLU in the product's pass.
            let cfg = self.conv3.config();
            let (scale, shift) = self.bn3.eval_affine()?;
            return crate::conv::conv2d_affine_add_relu(&ys, self.conv3.weight(), cfg.stride, cfg.padding, scale, shift, &shortcut);
        }
        let ys = conv_bn(&ys, &self.conv3, &self.bn3, false, train, None)?;
        add_relu(&ys, &shortcut)
    }
}

/// ResNet-50 without global pooling and classifier.
#[derive(Debug, Clone)]
pub struct Trunk {
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<Bottleneck>>,
    width: usize,
}

impl Trunk {
    /// Builds the trunk with variables at the root of `vb` (torchvision names).
    pub fn new(width: usize, vb: VarBuilder) -> Result<Self> {
        if width == 0 {
            candle_core::bail!("trunk width must be at least 1")
        }
        let mut c_in = width;
        let mut stages = Vec::with_capacity(4);
        for (i, &n_blocks) in RESNET50_BLOCKS.iter().enumerate() {
            let planes = width << i;
            let stride = if i == 0 { 1 } else { 2 };
            let vb = vb.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::with_capacity(n_blocks);
            for b in 0..n_blocks {
                blocks.push(Bottleneck::new(c_in, planes, if b == 0 { stride } else { 1 }, vb.pp(b))?);
                c_in = 4 * planes;
            }
            stages.push(blocks);
        }
        Ok(Self { conv1: conv(3, width, 7, 2, vb.pp("conv1"))?, bn1: bn(width, vb.pp("bn1"))?, stages, width })
    }

    /// An eval-mode copy whose stride-1 3×3 filters are Winograd-transformed once, for many
    /// eval-mode forwards with weights that no longer change (prediction, one evaluation pass).
    /// The copy shares the weights; its train-mode forwards ignore the transformed filters, and
    /// once the weights change it is stale: make a new copy.
    pub fn for_inference(&self) -> Result<Self> {
        let mut copy = self.clone();
        for block in copy.stages.iter_mut().flatten() {
            if block.conv2.config().stride == 1 {
                block.filters = crate::conv::winograd_filters(block.conv2.weight())?;
            }
        }
        Ok(copy)
    }

    /// The width this trunk was built with.
    pub fn width(&self) -> usize {
        self.width
    }

    /// # Shapes
    /// `[b, 3, h, w] → [b, 32·width, h', w']` with h' = ⌈h/32⌉-ish (218×178 → 7×6; 224×224 → 7×7)
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, h, w) = xs.dims4()?;
        if c != 3 || h < 32 || w < 32 {
            candle_core::bail!("trunk: expected input [b, 3, h ≥ 32, w ≥ 32], got {:?}", xs.dims())
        }
        let xs = conv_bn(xs, &self.conv1, &self.bn1, true, train, None)?;
        let mut xs = max_pool2d(&xs, 3, 2, 1)?;
        for block in self.stages.iter().flatten() {
            xs = block.forward_t(&xs, train)?;
        }
        Ok(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    #[test]
    fn strided_conv_backward_works_when_axes_disagree() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let c = conv(2, 3, 3, 2, vb)?;
        // 28×23 with 3×3/s2/p1: remainders 1 and 0 (what layer3 sees for a 218×178 image).
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 28, 23), &Device::Cpu)?)?;
        let plain = x.as_tensor().conv2d(c.weight(), 1, 2, 1, 1)?;
        let ours = conv2d(x.as_tensor(), &c)?;
        assert_eq!(ours.dims(), [1, 3, 14, 12]);
        // Same sums in another order: f32 rounding differences only.
        assert!((ours.clone() - &plain)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        assert!(plain.sum_all()?.backward().is_err(), "candle's own backward still fails here; drop the workaround once it does not");
        let g = ours.sum_all()?.backward()?;
        assert_eq!(g.get(&x).unwrap().dims(), [1, 2, 28, 23]);
        Ok(())
    }

    /// Output and both gradients equal candle's `(a + b).relu()`.
    #[test]
    fn add_relu_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, 4, 5), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, 4, 5), &dev)?)?;
        let up = Tensor::randn(0f64, 1., (2, 3, 4, 5), &dev)?;
        let ours = add_relu(a.as_tensor(), b.as_tensor())?;
        let plain = (a.as_tensor() + b.as_tensor())?.relu()?;
        let diff = |x: &Tensor, y: &Tensor| -> Result<f64> { (x - y)?.abs()?.max_all()?.to_scalar::<f64>() };
        assert!(diff(&ours, &plain)? < 1e-15);
        let (go, gp) = ((ours * &up)?.sum_all()?.backward()?, (plain * &up)?.sum_all()?.backward()?);
        for v in [&a, &b] {
            assert!(diff(go.get(v).unwrap(), gp.get(v).unwrap())? < 1e-15);
        }
        Ok(())
    }

    #[test]
    fn trunk_trains_at_celeba_size() -> Result<()> {
        let varmap = VarMap::new();
        let trunk = Trunk::new(2, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        let xs = Tensor::randn(0f32, 1., (2, 3, 218, 178), &Device::Cpu)?;
        let out = trunk.forward_t(&xs, true)?;
        assert_eq!(out.dims(), [2, 64, 7, 6]);
        let grads = out.sqr()?.sum_all()?.backward()?;
        let missing: Vec<_> = varmap.data().lock().unwrap().iter()
            .filter(|(k, v)| !k.contains("running") && grads.get(v.as_tensor()).is_none())
            .map(|(k, _)| k.clone()).collect();
        assert!(missing.is_empty(), "no gradient for {missing:?}");
        Ok(())
    }
}

/// The add + ReLU kernel, compiled for the host (`crate::emulated`), against the CPU code.
#[cfg(test)]
mod emulated_tests {
    use crate::emulated::{data, kernels, max_diff};

    type AddRelu = unsafe extern "C" fn(*const f64, *const f64, *mut f64, usize, i32);

    #[test]
    fn add_relu_and_its_gradient_match_the_cpu() {
        // SAFETY: the kernel's C signature.
        let kernel = unsafe { kernels().get::<AddRelu>("add_relu_f64") };
        let (a, b) = (data(50, 1), data(50, 2));
        for relu_grad in [false, true] {
            let formula: Vec<f64> = a.iter().zip(&b).map(|(&u, &v)| match relu_grad {
                true if u > 0.0 => v,
                true => 0.0,
                false => (u + v).max(0.0),
            }).collect();
            let want = super::add_relu_cpu(&a, &b, relu_grad);
            assert_eq!(max_diff(&want, &formula), 0.0, "CPU, relu_grad {relu_grad}");
            let mut got = vec![f64::NAN; a.len()];
            // SAFETY: three buffers of a.len() elements.
            unsafe { kernel(a.as_ptr(), b.as_ptr(), got.as_mut_ptr(), a.len(), i32::from(relu_grad)) };
            assert_eq!(max_diff(&got, &want), 0.0, "relu_grad {relu_grad}");
        }
    }
}
