//! CPU time of one DMM-CNN forward (eval mode) and one forward + backward (train-mode batch norm,
//! MSE on both heads) at batch 8, width 64 — the network the paper trains — at 112×112 and
//! 218×178. Prints the median over `DMM_BENCH_ITERS` runs (default 3) after one warm-up.
//!
//! Run: `cargo bench -p dmm-model --bench model`

use std::time::Instant;

use candle_core::{Device, Tensor};
use dmm_model::{DmmModel, ModelConfig};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    median((0..iters).map(|_| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    }).collect())
}

fn main() -> candle_core::Result<()> {
    let iters: usize = std::env::var("DMM_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dev = Device::Cpu;
    let cfg = ModelConfig::paper();
    let (model, varmap) = DmmModel::fresh(&cfg, &dev)?;
    let params: Vec<_> = varmap.all_vars();
    let batch = 8;
    println!("DMM-CNN width {} batch {batch}, median of {iters} (candle {} CPU threads)", cfg.width, candle_core::utils::get_num_threads());
    println!("{:<10} {:>12} {:>14} {:>12}", "input", "forward s", "fwd+bwd s", "train img/s");
    for (h, w) in [(112, 112), (218, 178)] {
        let xs = Tensor::randn(0f32, 1., (batch, 3, h, w), &dev)?;
        let fwd = time(iters, || {
            model.forward_t(&xs, false).expect("forward");
        });
        let train = time(iters, || {
            let out = model.forward_t(&xs, true).expect("forward");
            let loss = (out.attributes.sqr().unwrap().mean_all().unwrap()
                + out.landmarks.unwrap().sqr().unwrap().mean_all().unwrap())
            .expect("loss");
            let grads = loss.backward().expect("backward");
            assert!(grads.get(params[0].as_tensor()).is_some() || params.len() > 1);
        });
        println!("{:<10} {fwd:>12.3} {train:>14.3} {:>12.1}", format!("{h}x{w}"), batch as f64 / train);
    }
    Ok(())
}
