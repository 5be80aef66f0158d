//! CPU time of every distinct convolution of the ResNet-50 trunk (width 64, batch 8, f32), layer by
//! layer, with the achieved GFLOP/s: where the products stand against the machine and against
//! PyTorch (`bench/torch_conv_layers.py` times the same shapes). The per-layer view is what a
//! change to the products (grouping, packing, Winograd) has to move.
//!
//! - `forward`: eval mode, the batch norm folded into the product (`conv2d_affine` with ReLU), at
//!   224×224 (`DMM_BENCH_SIZE=HxW` for another input).
//! - `train`: forward and both gradients through candle's backward, at 112×112; the stem's input
//!   needs no gradient, as in the network. The backward is seeded by `Σ up·y`, whose two small
//!   ops are included.
//!
//! `DMM_BENCH_WIDTH` and `DMM_BENCH_BATCH` pick another trunk width and batch (the `subset` preset:
//! 32 and 32, at 109x89); `DMM_BENCH_ROW=N` times only the table's row N (0 is the stem), for a
//! profile of one convolution. Median of `DMM_BENCH_ITERS` calls (default 5) after one warm-up, freed buffers kept by
//! mimalloc as in `dmm`. Run: `cargo bench -p dmm-model --bench conv_layers -- forward|train`.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use dmm_model::conv::{conv2d, conv2d_affine};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (see dmm-cli's main): keep freed memory in the process.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// One distinct convolution: how often the trunk runs it, channels, kernel, stride, padding and
/// its input size.
struct Layer {
    count: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
}

impl Layer {
    fn out(&self) -> (usize, usize) {
        ((self.h + 2 * self.padding - self.k) / self.stride + 1, (self.w + 2 * self.padding - self.k) / self.stride + 1)
    }

    /// Multiply-adds of one forward over a batch of `n`, times 2.
    fn flops(&self, n: usize) -> f64 {
        let (oh, ow) = self.out();
        2.0 * (n * self.c_out * oh * ow * self.c_in * self.k * self.k) as f64
    }
}

/// The convolutions of torchvision's ResNet-50 (stride on the 3×3) at trunk width `width` (64 is
/// ResNet-50's) for an `h × w` input.
fn resnet50(h: usize, w: usize, width: usize) -> Vec<Layer> {
    let o = |x: usize, k: usize, s: usize, p: usize| (x + 2 * p - k) / s + 1;
    let mut layers = vec![Layer { count: 1, c_in: 3, c_out: width, k: 7, stride: 2, padding: 3, h, w }];
    let (mut h, mut w) = (o(o(h, 7, 2, 3), 3, 2, 1), o(o(w, 7, 2, 3), 3, 2, 1));
    let mut c_in = width;
    for (blocks, mid, stride) in [(3, width, 1), (4, 2 * width, 2), (6, 4 * width, 2), (3, 8 * width, 2)] {
        let out = 4 * mid;
        let (h2, w2) = (o(h, 3, stride, 1), o(w, 3, stride, 1));
        layers.push(Layer { count: 1, c_in, c_out: mid, k: 1, stride: 1, padding: 0, h, w });
        layers.push(Layer { count: 1, c_in: mid, c_out: mid, k: 3, stride, padding: 1, h, w });
        layers.push(Layer { count: 1, c_in: mid, c_out: out, k: 1, stride: 1, padding: 0, h: h2, w: w2 });
        layers.push(Layer { count: 1, c_in, c_out: out, k: 1, stride, padding: 0, h, w });
        (h, w, c_in) = (h2, w2, out);
        layers.push(Layer { count: blocks - 1, c_in: out, c_out: mid, k: 1, stride: 1, padding: 0, h, w });
        layers.push(Layer { count: blocks - 1, c_in: mid, c_out: mid, k: 3, stride: 1, padding: 1, h, w });
        layers.push(Layer { count: blocks - 1, c_in: mid, c_out: out, k: 1, stride: 1, padding: 0, h, w });
    }
    layers
}

fn median(iters: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

fn main() -> candle_core::Result<()> {
    // SAFETY: setting an option is a plain store in mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let train = std::env::args().skip(1).any(|a| a == "train");
    let iters: usize = std::env::var("DMM_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let default = if train { (112, 112) } else { (224, 224) };
    let (h, w) = std::env::var("DMM_BENCH_SIZE").ok().and_then(|s| {
        let (a, b) = s.split_once('x')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }).unwrap_or(default);
    let env = |key: &str, default: usize| std::env::var(key).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (width, n, dev) = (env("DMM_BENCH_WIDTH", 64), env("DMM_BENCH_BATCH", 8), Device::Cpu);
    let mode = if train { "forward + both gradients" } else { "eval forward (batch norm folded, ReLU)" };
    println!("ResNet-50 convolutions, {mode}, {h}x{w} input, width {width}, batch {n}, f32, median of {iters} ({} threads)", rayon::current_num_threads());
    println!("| count | conv | input | ms | GFLOP/s | ms × count |");
    println!("|---|---|---|---|---|---|");
    let (mut total, mut flops) = (0.0, 0.0);
    let only = std::env::var("DMM_BENCH_ROW").ok().and_then(|s| s.parse::<usize>().ok());
    for (i, l) in resnet50(h, w, width).iter().enumerate() {
        if only.is_some_and(|r| r != i) {
            continue;
        }
        let x = Tensor::randn(0f32, 1., (n, l.c_in, l.h, l.w), &dev)?;
        let wt = Tensor::randn(0f32, 0.05, (l.c_out, l.c_in, l.k, l.k), &dev)?;
        let (scale, shift) = (vec![1.0; l.c_out], vec![0.0; l.c_out]);
        let s = if train {
            let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&wt)?);
            let input = if i == 0 { x.clone() } else { xv.as_tensor().clone() };
            let (oh, ow) = l.out();
            let up = Tensor::randn(0f32, 1., (n, l.c_out, oh, ow), &dev)?;
            median(iters, || {
                conv2d(&input, wv.as_tensor(), l.stride, l.padding)?.mul(&up)?.sum_all()?.backward()?;
                Ok(())
            })?
        } else {
            median(iters, || {
                conv2d_affine(&x, &wt, l.stride, l.padding, scale.clone(), shift.clone(), true)?;
                Ok(())
            })?
        };
        // Forward, weight gradient and (but for the stem) input gradient: one forward's flops each.
        let f = l.flops(n) * if !train { 1.0 } else if i == 0 { 2.0 } else { 3.0 };
        total += s * l.count as f64;
        flops += f * l.count as f64;
        println!("| {} | {}→{} {}×{}/{} | {}×{} | {:.2} | {:.0} | {:.1} |", l.count, l.c_in, l.c_out, l.k, l.k, l.stride, l.h, l.w, s * 1e3, f / s / 1e9, s * 1e3 * l.count as f64);
    }
    println!("all convolutions: {:.3} s, {:.0} GFLOP/s", total, flops / total / 1e9);
    Ok(())
}
