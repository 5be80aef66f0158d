//! CPU time of one DMM-CNN forward (eval mode) and one forward + backward (train-mode batch norm,
//! MSE on both heads) at batch 8, width 64 — the network the paper trains — at 112×112 and
//! 218×178. Prints the median over `DMM_BENCH_ITERS` runs (default 3) after one warm-up.
//!
//! It also times the two ways of getting differentiable pooling that candle allows — our custom
//! ops (`dmm_model::pool`) and exact compositions of candle's differentiable ops — forward +
//! backward at the sizes the network sees for a 218×178 batch of 8.
//!
//! Run: `cargo bench -p dmm-model --bench model`

use std::time::Instant;

use candle_core::{Device, Tensor};
use dmm_model::pool::{adaptive_windows, max_pool2d, spp};
use dmm_model::{DmmModel, ModelConfig};

/// 3×3/s2/p1 max-pool from differentiable candle ops: pad with −∞, take the nine stride-2
/// sub-grids by narrow + reshape, and fold them with `maximum`.
fn composed_stem_pool(xs: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let neg = |rows: usize, cols: usize| Tensor::full(f32::NEG_INFINITY, (b, c, rows, cols), xs.device());
    // One row/column of −∞ on top/left (the padding), enough on the bottom/right for 2·o + 2.
    let (hp, wp) = (2 * oh + 2, 2 * ow + 2);
    let xs = Tensor::cat(&[&neg(1, w)?, xs, &neg(hp - h - 1, w)?], 2)?;
    let xs = Tensor::cat(&[&neg(hp, 1)?, &xs, &neg(hp, wp - w - 1)?], 3)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        for dx in 0..3 {
            let grid = xs.narrow(2, dy, 2 * oh)?.narrow(3, dx, 2 * ow)?.reshape((b, c, oh, 2, ow, 2))?;
            let grid = grid.narrow(3, 0, 1)?.narrow(5, 0, 1)?.reshape((b, c, oh, ow))?;
            out = Some(match out {
                None => grid,
                Some(m) => m.maximum(&grid)?,
            });
        }
    }
    Ok(out.expect("nine windows"))
}

/// n-level SPP from narrow + max per bin + cat.
fn composed_spp(xs: &Tensor, levels: usize) -> candle_core::Result<Tensor> {
    let (b, _, h, w) = xs.dims4()?;
    let mut parts = Vec::new();
    for n in 1..=levels {
        let mut rows = Vec::new();
        for (r0, r1) in adaptive_windows(h, n) {
            let cells = adaptive_windows(w, n)
                .into_iter()
                .map(|(c0, c1)| xs.narrow(2, r0, r1 - r0)?.narrow(3, c0, c1 - c0)?.max_keepdim(2)?.max_keepdim(3))
                .collect::<candle_core::Result<Vec<_>>>()?;
            rows.push(Tensor::cat(&cells, 3)?);
        }
        parts.push(Tensor::cat(&rows, 2)?.reshape((b, ()))?);
    }
    Tensor::cat(&parts, 1)
}

fn fwd_bwd(xs: &Tensor, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) {
    let x = candle_core::Var::from_tensor(xs).expect("var");
    let out = f(x.as_tensor()).expect("forward");
    out.sum_all().expect("sum").backward().expect("backward");
}

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

    println!("\npooling forward+backward, batch {batch} at 218x178 (median of {iters})");
    println!("{:<34} {:>12} {:>14}", "op", "custom op s", "composition s");
    let stem = Tensor::randn(0f32, 1., (batch, 64, 109, 89), &dev)?;
    let top = Tensor::randn(0f32, 1., (batch, 2048, 7, 6), &dev)?;
    let a = (max_pool2d(&stem, 3, 2, 1)? - composed_stem_pool(&stem)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let b = (spp(&top, 3)? - composed_spp(&top, 3)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(a == 0.0 && b == 0.0, "compositions must agree with the custom ops ({a}, {b})");
    for (label, x, ours, composed) in [
        ("stem max-pool [8,64,109,89]", &stem, &(|x: &Tensor| max_pool2d(x, 3, 2, 1)) as &dyn Fn(&Tensor) -> candle_core::Result<Tensor>, &composed_stem_pool as &dyn Fn(&Tensor) -> candle_core::Result<Tensor>),
        ("SPP-3 [8,2048,7,6]", &top, &|x: &Tensor| spp(x, 3), &|x: &Tensor| composed_spp(x, 3)),
    ] {
        let t_ours = time(iters, || fwd_bwd(x, ours));
        let t_comp = time(iters, || fwd_bwd(x, composed));
        println!("{label:<34} {t_ours:>12.4} {t_comp:>14.4}");
    }
    Ok(())
}
