//! Seeded initialisation. candle's CPU random generator cannot be seeded, so a fresh network would
//! differ run to run; training needs `seed → identical network`. Every variable is drawn from a
//! SplitMix64 stream keyed by `(seed, variable name)`, so the result does not depend on the order
//! variables are visited:
//!
//! - convolutions: Kaiming normal, fan-out, ReLU gain (torchvision's ResNet initialisation);
//! - linear weights and biases: uniform on ±1/√fan_in (PyTorch's `nn.Linear` default, which the
//!   paper's PyTorch implementation used; candle-nn's Kaiming-normal weights give the linear
//!   outputs a scale of several units against ±1 targets);
//! - batch norm: weight 1, bias 0, running mean 0, running variance 1.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use dmm_data::SplitMix64;

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
        } else if dims.len() == 4 {
            let fan_out = dims[0] * dims[2] * dims[3];
            normals(&mut rng, n, (2.0 / fan_out as f64).sqrt())
        } else if dims.len() == 2 {
            let bound = 1.0 / (dims[1] as f64).sqrt();
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

/// `n` draws from N(0, std²) by Box–Muller.
fn normals(rng: &mut SplitMix64, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - uniform(rng); // (0, 1]
        let u2 = uniform(rng);
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
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
        // Kaiming fan-out for layer3.0.conv2 (16 → 16 channels, 3×3): std √(2/144).
        let w = get(&a, "layer3.0.conv2.weight");
        let var = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64;
        assert!((var / (2.0 / 144.0) - 1.0).abs() < 0.15, "variance {var}");
        assert!(get(&a, "layer1.0.bn1.weight").iter().all(|&x| x == 1.0));
        let bias = get(&a, "objective.fc1.bias");
        assert!(bias.iter().all(|&x| x.abs() <= 1.0 / (128f32).sqrt()));
        seeded(&b, 8)?;
        assert_ne!(get(&a, "layer2.0.conv2.weight"), get(&b, "layer2.0.conv2.weight"));
        Ok(())
    }
}
