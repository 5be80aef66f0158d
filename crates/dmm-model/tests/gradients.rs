//! Gradient checks against central finite differences in f64: the stem max-pool (3×3, stride 2,
//! padding 1), adaptive max-pool / 3-level SPP, and one bottleneck block with batch norm in
//! training mode (the configuration training uses), for the input; and for the parameters, what
//! the optimizer reads: every weight of a bottleneck block (convolutions, batch-norm scales and
//! shifts), and the convolutions, batch norms, linear weights and biases of whole networks
//! (DMM-CNN's three heads, Baseline's pooled FC) in training mode.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use dmm_model::pool::{adaptive_max_pool2d, max_pool2d, spp};
use dmm_model::trunk::Bottleneck;
use dmm_model::{DmmModel, ModelConfig, Variant};

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

/// Compares the autograd gradient of `objective()` with respect to the variables `names` of
/// `varmap` with central differences, on up to `per_tensor` coordinates spread over each.
fn check_params(varmap: &VarMap, names: &[&str], objective: impl Fn() -> Tensor, per_tensor: usize, tol: f64) {
    let grads = objective().backward().unwrap();
    let eps = 1e-6;
    for name in names {
        let var = varmap.data().lock().unwrap().get(*name).unwrap_or_else(|| panic!("no variable {name}")).clone();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient")).flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let at = |v: &[f64]| {
            var.set(&Tensor::from_slice(v, var.dims(), &Device::Cpu).unwrap()).unwrap();
            objective().to_scalar::<f64>().unwrap()
        };
        let mut worst = 0f64;
        for i in (0..base.len()).step_by((base.len() / per_tensor).max(1)) {
            let (mut plus, mut minus) = (base.clone(), base.clone());
            plus[i] += eps;
            minus[i] -= eps;
            let fd = (at(&plus) - at(&minus)) / (2.0 * eps);
            worst = worst.max((fd - g[i]).abs() / (1.0 + fd.abs()));
        }
        var.set(&Tensor::from_slice(&base, var.dims(), &Device::Cpu).unwrap()).unwrap();
        assert!(worst < tol, "{name}: worst gradient error {worst}");
    }
}

#[test]
fn bottleneck_parameter_gradients_train_mode() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let block = Bottleneck::new(4, 2, 2, vb).unwrap();
    let x = seeded_normals((2, 4, 6, 5), 4);
    let r = seeded_normals((2, 8, 3, 3), 5);
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().filter(|k| !k.contains("running")).cloned().collect();
    names.sort();
    assert_eq!(names.len(), 4 + 2 * 4, "four convolutions and four batch norms");
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    check_params(&varmap, &names, || (block.forward_t(&x, true).unwrap() * &r).unwrap().sum_all().unwrap(), 40, 1e-6);
}

/// Standard normal draws from a fixed seed, so that a run of the check is repeatable (with
/// random inputs, a difference now and then straddles a ReLU or max-pool kink).
fn seeded_normals(shape: impl Into<candle_core::Shape>, seed: u64) -> Tensor {
    let shape = shape.into();
    let mut rng = dmm_core::SplitMix64::new(seed);
    let mut uniform = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let v: Vec<f64> = (0..shape.elem_count()).map(|_| (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A width-2 network in f64 with the seeded initialisation (batch-norm shifts 1), and `sum(attributes · r) +
/// sum(landmarks · q)` on a random batch in training mode.
fn network_check(variant: Variant, names: &[&str]) {
    let cfg = ModelConfig { variant, width: 2, n_points: 5, ..ModelConfig::paper() };
    let varmap = VarMap::new();
    let model = DmmModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu)).unwrap();
    dmm_model::init::seeded(&varmap, 11).unwrap();
    // Batch-norm shifts of 1 keep most activations off the ReLU's kink: with shifts of 0, half are
    // exactly zero, max-pool windows of zeros tie, and the differences step across the kinks.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if (name.contains("bn") || name.contains("downsample.1")) && name.ends_with("bias") {
            var.set(&var.as_tensor().ones_like().unwrap()).unwrap();
        }
    }
    let x = seeded_normals((3, 3, 64, 48), 1);
    let r = seeded_normals((3, 40), 2);
    let q = seeded_normals((3, 10), 3);
    let objective = || {
        let out = model.forward_t(&x, true).unwrap();
        let mut total = (out.attributes * &r).unwrap().sum_all().unwrap();
        if let Some(lm) = out.landmarks {
            total = (total + (lm * &q).unwrap().sum_all().unwrap()).unwrap();
        }
        total
    };
    check_params(&varmap, names, objective, 12, 1e-5);
}

#[test]
fn dmm_cnn_parameter_gradients_train_mode() {
    network_check(
        Variant::DmmCnn,
        &[
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "layer1.0.downsample.0.weight",
            "layer2.1.conv2.weight",
            "layer3.3.bn2.weight",
            "layer4.2.conv3.weight",
            "layer4.2.bn3.bias",
            "objective.fc1.weight",
            "objective.fc1.bias",
            "objective.fc2.weight",
            "objective.fc2.bias",
            "subjective.fc1.weight",
            "subjective.fc2.bias",
            "subjective.fc3.weight",
            "subjective.fc3.bias",
            "landmarks.fc1.weight",
            "landmarks.fc2.bias",
        ],
    );
}

#[test]
fn baseline_parameter_gradients_train_mode() {
    network_check(Variant::Baseline, &["conv1.weight", "layer4.2.bn3.weight", "attributes.fc.weight", "attributes.fc.bias"]);
}
