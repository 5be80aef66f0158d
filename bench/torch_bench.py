"""PyTorch reference for `dmm bench`: the same DMM-CNN (the definition in
crates/dmm-model/tests/fixtures/make_fixtures.py, which the parity tests check against ours), the
same step (forward, MSE on attributes and landmarks, backward, SGD with momentum 0.9 and weight decay
5e-4) or eval-mode forward, same width, input size and batch. Prints the median seconds per call.

    python3 bench/torch_bench.py train-step --width 64 --size 112x112 --batch 8 --iters 5 --json

`cargo xtask bench` runs it interleaved with `dmm bench` and prints the ratios (PyTorch's default
NCHW layout; --channels-last times its opt-in NHWC one); `scripts/gpu-check.sh`
runs it with --device cuda (f32, TF32 off, as dmm computes).
"""
import argparse
import importlib.util
import json
import resource
import os
import statistics
import time

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_spec = importlib.util.spec_from_file_location("fixtures", os.path.join(ROOT, "crates/dmm-model/tests/fixtures/make_fixtures.py"))
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["train-step", "forward"])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--size", default="112x112")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--channels-last", action="store_true", help="model and input in PyTorch's opt-in NHWC memory format (faster on CPU for some sizes)")
    a = p.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    dev = torch.device(a.device)
    if dev.type == "cuda":
        # Plain f32 products, as dmm's cuBLAS calls (TF32 would trade precision for speed).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = fixtures.Dmm(a.width, 68, fixtures.read_groups()).to(dev)
    x = torch.randn(a.batch, 3, h, w, device=dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if a.mode == "train-step":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        t_attr = torch.randn(a.batch, 40, device=dev).sign()
        t_lm = torch.rand(a.batch, 136, device=dev)

        def step():
            _, attrs, lms = model(x)
            loss = F.mse_loss(attrs, t_attr) + F.mse_loss(lms, t_lm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step()  # warm-up
    sync()
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    # Peak resident set of the whole process (KiB on Linux), model and interpreter included.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"median_s": median, "images_per_s": a.batch / median, "peak_rss_mib": peak}
    if dev.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if a.json:
        print(json.dumps(out))
    else:
        print(f"torch {a.mode} width {a.width} {h}x{w} batch {a.batch} on {dev}: median {median:.3f} s, {out['images_per_s']:.1f} images/s, peak RSS {peak:.0f} MiB ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
