#!/usr/bin/env python3
"""PyTorch counterpart of `cargo bench -p dmm-model --bench conv_layers`: the same ResNet-50
convolutions (width 64, batch 8, f32, unless --width/--batch say otherwise), layer by layer, with GFLOP/s.

forward: eval mode, conv + batch norm + ReLU as PyTorch eager runs them (no folding), 224x224.
train: forward and both gradients through autograd, seeded by sum(up * y), at 112x112; the stem's
input needs no gradient. Median of ITERS calls after one warm-up, on torch.get_num_threads()
threads (set OMP_NUM_THREADS or --threads to match dmm's).

Usage: python3 bench/torch_conv_layers.py forward|train [--size HxW] [--width W] [--batch N] [--iters N] [--threads T]
"""
import argparse
import time

import torch


def resnet50(h, w, width=64):
    o = lambda x, k, s, p: (x + 2 * p - k) // s + 1
    layers = [(1, 3, width, 7, 2, 3, h, w)]
    h, w = o(o(h, 7, 2, 3), 3, 2, 1), o(o(w, 7, 2, 3), 3, 2, 1)
    c_in = width
    for blocks, mid, stride in [(3, width, 1), (4, 2 * width, 2), (6, 4 * width, 2), (3, 8 * width, 2)]:
        out = 4 * mid
        h2, w2 = o(h, 3, stride, 1), o(w, 3, stride, 1)
        layers += [(1, c_in, mid, 1, 1, 0, h, w), (1, mid, mid, 3, stride, 1, h, w),
                   (1, mid, out, 1, 1, 0, h2, w2), (1, c_in, out, 1, stride, 0, h, w)]
        h, w, c_in = h2, w2, out
        layers += [(blocks - 1, out, mid, 1, 1, 0, h, w), (blocks - 1, mid, mid, 3, 1, 1, h, w),
                   (blocks - 1, mid, out, 1, 1, 0, h, w)]
    return layers


def median(iters, f):
    f()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["forward", "train"])
    ap.add_argument("--size")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    train = a.mode == "train"
    h, w = map(int, (a.size or ("112x112" if train else "224x224")).split("x"))
    n = a.batch
    mode = "forward + both gradients" if train else "eval conv + batch norm + ReLU"
    print(f"ResNet-50 convolutions in PyTorch {torch.__version__}, {mode}, {h}x{w} input, width {a.width}, batch {n}, f32, "
          f"median of {a.iters} ({torch.get_num_threads()} threads)")
    print("| count | conv | input | ms | GFLOP/s | ms × count |")
    print("|---|---|---|---|---|---|")
    total = flops = 0.0
    for i, (count, ci, co, k, s, p, lh, lw) in enumerate(resnet50(h, w, a.width)):
        conv = torch.nn.Conv2d(ci, co, k, s, p, bias=False)
        x = torch.randn(n, ci, lh, lw)
        oh, ow = (lh + 2 * p - k) // s + 1, (lw + 2 * p - k) // s + 1
        if train:
            x.requires_grad_(i > 0)
            up = torch.randn(n, co, oh, ow)
            sec = median(a.iters, lambda: (conv(x) * up).sum().backward())
        else:
            bn = torch.nn.BatchNorm2d(co).eval()
            with torch.no_grad():
                sec = median(a.iters, lambda: torch.relu(bn(conv.eval()(x))))
        f = 2.0 * n * co * oh * ow * ci * k * k * ((2 if i == 0 else 3) if train else 1)
        total += sec * count
        flops += f * count
        print(f"| {count} | {ci}→{co} {k}×{k}/{s} | {lh}×{lw} | {sec * 1e3:.2f} | {f / sec / 1e9:.0f} | {sec * 1e3 * count:.1f} |")
    print(f"all convolutions: {total:.3f} s, {flops / total / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
