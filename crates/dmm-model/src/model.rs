//! DMM-CNN (paper §3.2, Fig. 2): the trunk feeding an attribute head chosen by the [`Variant`] and,
//! for variants with the auxiliary task, the landmark (FLD) head.
//!
//! - Objective branch: SPP-1 → BN → FC 1024 → ReLU → FC 22 (§3.2.1).
//! - Subjective branch: SPP-3 → BN → FC 2048 → ReLU → FC 1024 → ReLU → FC 18 (§3.2.1).
//! - FLD branch: SPP-1 → BN → FC 1024 → ReLU → FC 2T (§3.2.3; T from the data, 68 for dlib).
//! - Baseline: global average pool → FC 40.
//!
//! The paper does not say what sits between SPP and the first FC layer. Here it is batch norm
//! over the pooled features (`<head>.bn`): they come after the trunk's last ReLU, all positive
//! and alike from image to image, so without centring one SGD step moves a hidden unit's input
//! by nearly the same amount for every image, and from scratch most hidden ReLUs die for every
//! image within a few dozen steps (measured: docs/training.md, "What training reaches so far").
//!
//! FC sizes scale with `width / 64` so reduced presets keep the topology. Outputs are linear;
//! attributes come back in CelebA order whatever the grouping.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use dmm_core::{AttributeGroups, N_ATTRS};

use crate::norm::BatchNorm2d;
use crate::pool::{spp, spp_bins};
use crate::trunk::{trunk_channels, Trunk};
use crate::variant::{AttributeHead, Variant};

/// What defines a network: everything needed to rebuild it before loading weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Which of Table 1's variants.
    pub variant: Variant,
    /// Channel width of the trunk (64 = standard ResNet-50); FC sizes scale with width / 64.
    pub width: usize,
    /// Landmarks per face, T (ignored by variants without FLD).
    pub n_points: usize,
    /// Which attributes the objective and subjective branches predict.
    pub groups: AttributeGroups,
}

impl ModelConfig {
    /// The paper's network: DMM-CNN, width 64, dlib's 68 points, the default grouping.
    pub fn paper() -> Self {
        Self { variant: Variant::DmmCnn, width: 64, n_points: 68, groups: AttributeGroups::default() }
    }

    /// An FC size of the paper scaled to this width (at least 1).
    pub fn scaled(&self, paper_size: usize) -> usize {
        (paper_size * self.width / 64).max(1)
    }
}

/// An SPP head: batch norm over the pooled features, then FC layers with ReLU between them (not
/// after the last).
#[derive(Debug, Clone)]
struct Mlp {
    norm: BatchNorm2d,
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(sizes: &[usize], vb: VarBuilder) -> Result<Self> {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, io)| linear(io[0], io[1], vb.pp(format!("fc{}", i + 1))))
            .collect::<Result<_>>()?;
        Ok(Self { norm: BatchNorm2d::new(sizes[0], vb.pp("bn"))?, layers })
    }

    /// The output and the post-ReLU activations of each hidden layer (`[b, units]`, first first);
    /// `train` selects batch-norm mode.
    fn forward_hidden(&self, xs: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, n) = xs.dims2()?;
        let mut xs = self.norm.forward_t(&xs.reshape((b, n, 1, 1))?, train)?.reshape((b, n))?;
        let mut hidden = Vec::with_capacity(self.layers.len().saturating_sub(1));
        for (i, layer) in self.layers.iter().enumerate() {
            xs = crate::linear::forward(layer, &xs)?;
            if i + 1 < self.layers.len() {
                xs = xs.relu()?;
                hidden.push(xs.clone());
            }
        }
        Ok((xs, hidden))
    }
}

#[derive(Debug, Clone)]
enum Head {
    GlobalPool(Linear),
    Grouped { objective: Mlp, subjective: Mlp, to_celeba: Tensor },
    SingleSpp(Mlp),
}

/// Outputs of one forward pass.
#[derive(Debug, Clone)]
pub struct DmmOutput {
    /// `[b, 40]` attribute scores in CelebA order (compare with τ to predict).
    pub attributes: Tensor,
    /// `[b, 2T]` landmark coordinates normalized to [0, 1] (`x / w`, `y / h`), for FLD variants.
    pub landmarks: Option<Tensor>,
    /// The post-ReLU activations `[b, units]` of every hidden FC layer of the heads, named by
    /// variable prefix (`objective.fc1`, `subjective.fc2`, `landmarks.fc1`, …): what the
    /// collapse diagnostics read (a unit that is zero for every image is dead).
    pub hidden: Vec<(String, Tensor)>,
}

/// The network.
#[derive(Debug, Clone)]
pub struct DmmModel {
    config: ModelConfig,
    trunk: Trunk,
    head: Head,
    landmarks: Option<Mlp>,
}

impl DmmModel {
    /// Builds the network with trunk variables at the root of `vb` (torchvision names) and heads
    /// under `attributes.*`, `objective.*`, `subjective.*` and `landmarks.*`.
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let c = trunk_channels(config.width);
        let groups = &config.groups;
        let head = match config.variant.attribute_head() {
            AttributeHead::GlobalPool => Head::GlobalPool(linear(c, N_ATTRS, vb.pp("attributes.fc"))?),
            AttributeHead::SingleSpp => Head::SingleSpp(Mlp::new(
                &[spp_bins(3) * c, config.scaled(2048), config.scaled(1024), N_ATTRS],
                vb.pp("attributes"),
            )?),
            AttributeHead::Grouped => {
                let (n_obj, n_subj) = (groups.objective.len(), groups.subjective.len());
                if n_obj + n_subj != N_ATTRS {
                    candle_core::bail!("attribute groups cover {} attributes, expected {N_ATTRS}", n_obj + n_subj)
                }
                // Position of each CelebA attribute in cat([objective, subjective]).
                let mut to_celeba = vec![0u32; N_ATTRS];
                for (pos, &attr) in groups.objective.iter().chain(&groups.subjective).enumerate() {
                    to_celeba[attr] = pos as u32;
                }
                Head::Grouped {
                    objective: Mlp::new(&[c, config.scaled(1024), n_obj], vb.pp("objective"))?,
                    subjective: Mlp::new(
                        &[spp_bins(3) * c, config.scaled(2048), config.scaled(1024), n_subj],
                        vb.pp("subjective"),
                    )?,
                    to_celeba: Tensor::new(to_celeba, vb.device())?,
                }
            }
        };
        let landmarks = if config.variant.uses_landmarks() {
            if config.n_points == 0 {
                candle_core::bail!("{} needs landmarks but n_points is 0", config.variant)
            }
            Some(Mlp::new(&[c, config.scaled(1024), 2 * config.n_points], vb.pp("landmarks"))?)
        } else {
            None
        };
        Ok(Self { config: config.clone(), trunk: Trunk::new(config.width, vb.clone())?, head, landmarks })
    }

    /// A freshly initialised network and the [`VarMap`] holding its variables (the optimizer's
    /// parameters, the running statistics, and what checkpoints save).
    pub fn fresh(config: &ModelConfig, device: &Device) -> Result<(Self, VarMap)> {
        if !device.is_cpu() {
            return Self::fresh_from_cpu(config, device);
        }
        let varmap = VarMap::new();
        let model = Self::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        Ok((model, varmap))
    }

    /// [`Self::fresh`] with the initial values drawn on the CPU and copied to `device`, so a GPU
    /// run needs no device random-number library (cuRAND; PyTorch's CUDA 13 wheels lack it).
    fn fresh_from_cpu(config: &ModelConfig, device: &Device) -> Result<(Self, VarMap)> {
        let on_cpu = VarMap::new();
        Self::new(config, VarBuilder::from_varmap(&on_cpu, DType::F32, &Device::Cpu))?;
        Self::from_copy(config, &on_cpu, DType::F32, device)
    }

    /// The network over a copy of `src`'s variables converted to `dtype` on `device`, and the
    /// [`VarMap`] holding the copies (never sharing storage with `src`, even where the dtype and
    /// device are the same); `src` must hold every variable of `config`'s network.
    pub fn from_copy(config: &ModelConfig, src: &VarMap, dtype: DType, device: &Device) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for (name, var) in src.data().lock().expect("varmap lock").iter() {
                // Detached, the tensor is no longer a variable, so `Var::from_tensor` copies it
                // (it would keep a variable as it is where the dtype and device already match).
                data.insert(name.clone(), Var::from_tensor(&var.as_tensor().detach().to_dtype(dtype)?.to_device(device)?)?);
            }
        }
        // Every variable exists, so the builder hands the copies to the layers.
        let model = Self::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
        Ok((model, varmap))
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// An eval-mode copy for many forwards with weights that no longer change: the trunk's
    /// [`Trunk::for_inference`]. Stale once the weights change (make a new one).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self { trunk: self.trunk.for_inference()?, ..self.clone() })
    }

    /// Each attribute head by variable prefix, with the CelebA indices of the attributes it
    /// predicts: `attributes` (all 40) for Baseline and DMM-SPP, else `objective` and `subjective`.
    pub fn attribute_heads(&self) -> Vec<(&'static str, Vec<usize>)> {
        match self.head {
            Head::GlobalPool(_) | Head::SingleSpp(_) => vec![("attributes", (0..N_ATTRS).collect())],
            Head::Grouped { .. } => {
                let groups = &self.config.groups;
                vec![("objective", groups.objective.clone()), ("subjective", groups.subjective.clone())]
            }
        }
    }

    /// The trunk alone.
    pub fn trunk(&self) -> &Trunk {
        &self.trunk
    }

    /// Runs trunk and heads; `train` selects batch-norm mode.
    ///
    /// # Shapes
    /// `[b, 3, h, w] → attributes [b, 40], landmarks [b, 2T]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<DmmOutput> {
        let features = self.trunk.forward_t(xs, train)?; // [b, 32·width, h', w']
        self.heads(&features, train)
    }

    /// The heads on a trunk feature map; `train` selects batch-norm mode.
    pub fn heads(&self, features: &Tensor, train: bool) -> Result<DmmOutput> {
        // SPP-1 is the first level of the 3-level pyramid (its first `c` columns): pooled once.
        let level1 = |pyramid: &Tensor| pyramid.narrow(1, 0, features.dim(1)?); // [b, c]
        let mut hidden = Vec::new();
        let mut keep = |prefix: &str, layers: Vec<Tensor>| {
            hidden.extend(layers.into_iter().enumerate().map(|(i, h)| (format!("{prefix}.fc{}", i + 1), h)));
        };
        let (attributes, spp1) = match &self.head {
            Head::GlobalPool(fc) => (crate::linear::forward(fc, &features.mean((2, 3))?)?, None),
            Head::SingleSpp(mlp) => {
                let pyramid = spp(features, 3)?; // [b, 14·c]
                let (out, h) = mlp.forward_hidden(&pyramid, train)?;
                keep("attributes", h);
                (out, Some(level1(&pyramid)?))
            }
            Head::Grouped { objective, subjective, to_celeba } => {
                let pyramid = spp(features, 3)?;
                let spp1 = level1(&pyramid)?;
                let (obj, h) = objective.forward_hidden(&spp1, train)?; // [b, 22]
                keep("objective", h);
                let (subj, h) = subjective.forward_hidden(&pyramid, train)?; // [b, 18]
                keep("subjective", h);
                (Tensor::cat(&[obj, subj], 1)?.index_select(to_celeba, 1)?, Some(spp1)) // [b, 40], CelebA order
            }
        };
        let landmarks = match &self.landmarks {
            Some(mlp) => {
                let input = match spp1 {
                    Some(spp1) => spp1,
                    None => spp(features, 1)?,
                };
                let (out, h) = mlp.forward_hidden(&input, train)?; // [b, 2T]
                keep("landmarks", h);
                Some(out)
            }
            None => None,
        };
        Ok(DmmOutput { attributes, landmarks, hidden })
    }
}

/// Whether a variable name belongs to the trunk (torchvision key) rather than a head.
pub fn is_trunk_key(name: &str) -> bool {
    name.starts_with("conv1.") || name.starts_with("bn1.") || name.starts_with("layer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(variant: Variant) -> ModelConfig {
        ModelConfig { variant, width: 4, n_points: 5, ..ModelConfig::paper() }
    }

    #[test]
    fn every_variant_runs_on_odd_sizes() -> Result<()> {
        let xs = Tensor::randn(0f32, 1., (2, 3, 70, 45), &Device::Cpu)?;
        let smallest = Tensor::randn(0f32, 1., (1, 3, 32, 32), &Device::Cpu)?;
        for v in Variant::ALL {
            let (model, varmap) = DmmModel::fresh(&config(v), &Device::Cpu)?;
            assert_eq!(model.forward_t(&smallest, false)?.attributes.dims(), [1, 40], "{v} at 32×32");
            let out = model.forward_t(&xs, true)?;
            assert_eq!(out.attributes.dims(), [2, 40], "{v}");
            assert_eq!(out.landmarks.as_ref().map(|l| l.dims().to_vec()), v.uses_landmarks().then(|| vec![2, 10]), "{v}");
            let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
            assert!(names.iter().any(|n| n == "layer4.2.bn3.running_var"), "{v}");
            assert_eq!(names.iter().any(|n| n.starts_with("landmarks.")), v.uses_landmarks(), "{v}");
        }
        Ok(())
    }

    /// The GPU's construction (values drawn on the CPU, then copied) builds the same network
    /// over the same variables: with the same seeded values, the outputs agree exactly.
    #[test]
    fn building_through_the_cpu_wires_the_copies_into_the_layers() -> Result<()> {
        let xs = Tensor::randn(0f32, 1., (2, 3, 64, 48), &Device::Cpu)?;
        let (direct, vm_direct) = DmmModel::fresh(&config(Variant::DmmCnn), &Device::Cpu)?;
        let (copied, vm_copied) = DmmModel::fresh_from_cpu(&config(Variant::DmmCnn), &Device::Cpu)?;
        assert_eq!(vm_direct.all_vars().len(), vm_copied.all_vars().len());
        crate::init::seeded(&vm_direct, 3)?;
        crate::init::seeded(&vm_copied, 3)?;
        let (a, b) = (direct.forward_t(&xs, true)?, copied.forward_t(&xs, true)?);
        assert_eq!(a.attributes.to_vec2::<f32>()?, b.attributes.to_vec2::<f32>()?);
        assert_eq!(a.landmarks.unwrap().to_vec2::<f32>()?, b.landmarks.unwrap().to_vec2::<f32>()?);
        Ok(())
    }

    /// A copy on the same device in the same dtype is still a copy: changing the source's
    /// variables afterwards leaves it alone.
    #[test]
    fn a_copy_on_the_same_device_shares_no_storage() -> Result<()> {
        let (_, src) = DmmModel::fresh(&config(Variant::DmmCnn), &Device::Cpu)?;
        let (_, copy) = DmmModel::from_copy(&config(Variant::DmmCnn), &src, DType::F32, &Device::Cpu)?;
        let name = "objective.fc1.weight";
        let var = |vm: &VarMap| vm.data().lock().unwrap()[name].clone();
        let before = var(&copy).as_tensor().flatten_all()?.to_vec1::<f32>()?;
        var(&src).set(&var(&src).as_tensor().ones_like()?)?;
        assert_eq!(var(&copy).as_tensor().flatten_all()?.to_vec1::<f32>()?, before);
        assert!(before.iter().any(|&v| v != 1.0));
        Ok(())
    }

    #[test]
    fn grouped_outputs_land_in_celeba_order() -> Result<()> {
        let (model, _) = DmmModel::fresh(&config(Variant::DmmCnn), &Device::Cpu)?;
        let features = Tensor::randn(0f32, 1., (3, 128, 4, 3), &Device::Cpu)?;
        let out = model.heads(&features, false)?.attributes;
        let Head::Grouped { objective, subjective, .. } = &model.head else { unreachable!() };
        let obj = objective.forward_hidden(&spp(&features, 1)?, false)?.0;
        let subj = subjective.forward_hidden(&spp(&features, 3)?, false)?.0;
        let groups = &model.config.groups;
        // "Male" (CelebA 20) is objective, "Young" (39) is subjective.
        let male_pos = groups.objective.iter().position(|&a| a == 20).unwrap();
        let young_pos = groups.subjective.iter().position(|&a| a == 39).unwrap();
        let diff = (out.narrow(1, 20, 1)? - obj.narrow(1, male_pos, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let diff = (out.narrow(1, 39, 1)? - subj.narrow(1, young_pos, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
