//! Gradient checks against central finite differences in f64: the stem max-pool (3×3, stride 2,
//! padding 1), adaptive max-pool / 3-level SPP, and one bottleneck block with batch norm in
//! training mode (the configuration training uses).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use dmm_model::pool::{adaptive_max_pool2d, max_pool2d, spp};
use dmm_model::trunk::Bottleneck;

/// Compares the autograd gradient of `sum(f(x) · r)` (r fixed random) with central differences.
fn check(shape: (usize, usize, usize, usize), f: impl Fn(&Tensor) -> candle_core::Result<Tensor>, tol: f64) {
    let dev = Device::Cpu;
    // Distinct values (a random permutation scaled) so max-pool arg-maxes are unambiguous.
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let x0 = Tensor::randn(0f64, 1., shape, &dev).unwrap();
    let x = Var::from_tensor(&x0).unwrap();
    let out = f(x.as_tensor()).unwrap();
    let r = Tensor::randn(0f64, 1., out.shape(), &dev).unwrap();
    let loss = (out * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-6;
    let objective = |v: &[f64]| -> f64 {
        let t = Tensor::from_slice(v, shape, &dev).unwrap();
        (f(&t).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    // Every coordinate for small inputs, a spread sample for larger ones.
    let step = (n / 400).max(1);
    let mut worst = 0f64;
    for i in (0..n).step_by(step) {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let fd = (objective(&plus) - objective(&minus)) / (2.0 * eps);
        let err = (fd - g[i]).abs() / (1.0 + fd.abs());
        worst = worst.max(err);
    }
    assert!(worst < tol, "worst gradient error {worst}");
}

#[test]
fn stem_max_pool_gradient() {
    check((2, 3, 11, 9), |x| max_pool2d(x, 3, 2, 1), 1e-6);
}

#[test]
fn adaptive_max_pool_gradient() {
    check((2, 2, 7, 6), |x| adaptive_max_pool2d(x, 3, 4), 1e-6);
}

#[test]
fn spp_gradient() {
    check((1, 3, 7, 6), |x| spp(x, 3), 1e-6);
}

#[test]
fn bottleneck_gradient_train_mode() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    // Stride 2 with a downsample shortcut: every path of the block.
    let block = Bottleneck::new(4, 2, 2, vb).unwrap();
    check((2, 4, 6, 5), |x| block.forward_t(x, true), 1e-5);
}
