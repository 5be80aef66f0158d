//! One pass of the network over an evaluation loader: attribute scores against targets with the
//! thresholds τ, landmark predictions against targets, and the heads' hidden activations and
//! output spreads for the collapse diagnostics (see [`crate::metrics`]).

use candle_core::{Device, Tensor};
use dmm_data::{Batch, Loader, N_ATTRS};
use dmm_model::DmmModel;

use crate::metrics::Evaluation;
use crate::Result;

/// The batch's images as a `[b, 3, h, w]` tensor on `device`.
pub fn images(batch: &Batch, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(&batch.images, batch.shape.to_vec(), device)?)
}

/// Evaluates `model` (eval-mode batch norm) on every batch of `loader`.
pub fn evaluate(model: &DmmModel, loader: &Loader, tau: &[f64], device: &Device) -> Result<Evaluation> {
    // The weights stay fixed for the whole pass: the 3×3 filters are transformed once for it.
    let model = model.for_inference()?;
    let mut eval = Evaluation::default();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let out = model.forward_t(&images(&batch, device)?, false)?;
        let scores = out.attributes.flatten_all()?.to_vec1::<f32>()?;
        debug_assert_eq!(scores.len(), batch.len() * N_ATTRS);
        eval.add_attributes(&scores, &batch.labels, tau);
        for (layer, h) in &out.hidden {
            eval.add_hidden(layer, &h.flatten_all()?.to_vec1::<f32>()?, h.dim(1)?);
        }
        if let Some(lm) = &out.landmarks {
            // Copied to the host once: for the outputs' spread, and against the targets.
            let (pred, d) = (lm.flatten_all()?.to_vec1::<f32>()?, lm.dim(1)?);
            eval.add_landmark_outputs(&pred, d);
            if batch.n_points > 0 && d == 2 * batch.n_points {
                let [_, _, h, w] = batch.shape;
                eval.add_landmarks(&pred, &batch.landmarks, &batch.landmark_mask, batch.n_points, (h, w));
            }
        }
    }
    Ok(eval)
}
