//! Seeded initialisation. candle's CPU random generator cannot be seeded, so a fresh network would
//! differ run to run; training needs `seed → identical network`. Every variable is drawn from a
//! SplitMix64 stream keyed by `(seed, variable name)`, so the result does not depend on the order
//! variables are visited:
//!
//! - convolutions: uniform on ±1/√fan_in (PyTorch's `nn.Conv2d` default, Kaiming uniform with
//!   a = √5). torchvision's ResNet constructor overrides this with Kaiming normal (fan-out, ReLU
//!   gain), whose filters are 6× (3×3) to 24× (1×1 reduce) larger in squared norm. Every
//!   convolution is followed by batch norm, so a filter's scale does not change the function, only
//!   the effective step (lr/‖w‖²): with torchvision's init, the same learning rate trains the trunk
//!   6–24× more slowly, and measured side by side (docs/training.md, "What training reaches") both dmm and
//!   PyTorch then stall at the attribute priors from random initialisation;
//! - linear weights and biases: uniform on ±1/√fan_in (PyTorch's `nn.Linear` default, which the
//!   paper's PyTorch implementation used; candle-nn's Kaiming-normal weights give the linear
//!   outputs a scale of several units against ±1 targets);
//! - batch norm: weight 1, bias 0, running mean 0, running variance 1.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use dmm_core::SplitMix64;

/// Re-initialises every variable of `varmap` from `seed`.
pub fn seeded(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let mut rng = SplitMix64::new(seed ^ fnv1a(name));
        let is_bn = name.contains("bn") || name.contains("downsample.1");
        let values: Vec<f32> = if name.ends_with("running_var") || (is_bn && name.ends_with("weight")) {
            vec![1.0; n]
        } else if name.ends_with("running_mean") || (is_bn && name.ends_with("bias")) {
            vec![0.0; n]
        } else if dims.len() == 4 || dims.len() == 2 {
            // Fan-in: input channels × kernel area, or a linear layer's inputs.
            let fan_in: usize = dims[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| ((uniform(&mut rng) * 2.0 - 1.0) * bound) as f32).collect()
        } else {
            // A linear bias: its fan-in is the weight's second dimension.
            let weight = name.strip_suffix("bias").map(|p| format!("{p}weight"));
            let fan_in = weight.and_then(|w| data.get(&w)).map(|w| w.dims()[1]).unwrap_or(n);
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| ((uniform(&mut rng) * 2.0 - 1.0) * bound) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Uniform on [0, 1) with 53 random bits.
fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DmmModel, ModelConfig, Variant};
    use candle_core::Device;

    #[test]
    fn same_seed_same_network_and_sane_statistics() -> Result<()> {
        let cfg = ModelConfig { variant: Variant::DmmCnn, width: 4, n_points: 5, ..ModelConfig::paper() };
        let (_, a) = DmmModel::fresh(&cfg, &Device::Cpu)?;
        let (_, b) = DmmModel::fresh(&cfg, &Device::Cpu)?;
        seeded(&a, 7)?;
        seeded(&b, 7)?;
        let get = |m: &VarMap, k: &str| m.data().lock().unwrap()[k].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for k in ["layer2.0.conv2.weight", "subjective.fc1.bias", "layer1.0.bn1.weight"] {
            assert_eq!(get(&a, k), get(&b, k), "{k}");
        }
        // PyTorch's default for layer3.0.conv2 (16 → 16 channels, 3×3): uniform on ±1/√144,
        // variance 1/(3·144).
        let w = get(&a, "layer3.0.conv2.weight");
        let var = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64;
        assert!((var * 3.0 * 144.0 - 1.0).abs() < 0.15, "variance {var}");
        assert!(w.iter().all(|&x| x.abs() <= 1.0 / 12.0));
        assert!(get(&a, "layer1.0.bn1.weight").iter().all(|&x| x == 1.0));
        let bias = get(&a, "objective.fc1.bias");
        assert!(bias.iter().all(|&x| x.abs() <= 1.0 / (128f32).sqrt()));
        seeded(&b, 8)?;
        assert_ne!(get(&a, "layer2.0.conv2.weight"), get(&b, "layer2.0.conv2.weight"));
        Ok(())
    }
}
