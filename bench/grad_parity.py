"""dmm's gradients against PyTorch's at a real run's size (docs/training.md, "What training
reaches"): one training-mode forward and backward of a dmm checkpoint on a batch of real training
images, with the checkpoint's loss weights lambda (ones when it has none), through dmm
(crates/dmm-train/examples/gradient_dump.rs) and through bench/torch_train.py's network, each in
float32 and float64. Prints the loss, and per variable the relative error (||a - b|| / ||b||) of
PyTorch's float32 gradient and of dmm's float32 and float64 gradients against PyTorch's float64
one, worst first. The step-parity test (crates/dmm-train/tests/step_parity.rs) does this at width
2 and 64x48; this runs at the size and on the weights of a trained network.

    cargo build --release -p dmm-train --example gradient_dump
    python3 bench/grad_parity.py runs/subset/dmm-cnn/last.safetensors --root ../shared/data/celeba
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import torch_train as tt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--root", required=True, help="CelebA root")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--offset", type=int, default=0, help="first training image of the batch")
    p.add_argument("--dump", default=os.path.join(REPO, "target", "release", "examples", "gradient_dump"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--show", type=int, default=10, help="variables to list")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with safe_open(a.checkpoint, "pt") as f:
        meta = f.metadata()
    model_meta = json.loads(meta["dmm"])
    cfg, size = model_meta["model"], model_meta.get("input_size")
    train = json.loads(meta["dmm_train"]) if "dmm_train" in meta else None
    lam = torch.tensor(train["weighting"]["lambda"]) if train else torch.ones(40)
    labels, splits = tt.read_celeba(a.root)
    names = splits[0][a.offset:a.offset + a.batch]
    size = tuple(size) if size else (218, 178)
    xs = tt.normalize(tt.load(a.root, tt.IMAGES["celeba"], names, size))
    ys = torch.tensor([labels[n] for n in names]).float()

    def torch_grads(dtype):
        if cfg["variant"] == "baseline":
            m = tt.Baseline(cfg["width"])
        elif cfg["variant"] == "dmm-cnn":
            m = tt.DmmCnn(cfg["width"], tt.read_groups())
        else:
            sys.exit(f"{a.checkpoint}: variant {cfg['variant']}: only baseline and dmm-cnn have a PyTorch twin")
        tt.load_dmm(m, a.checkpoint, trunk_only=False)
        m = m.to(dtype).train()
        loss = (((m(xs.to(dtype)) - ys.to(dtype)) ** 2).mean(0) * lam.to(dtype)).sum()
        loss.backward()
        grads = {}
        for k, t in m.named_parameters():
            if t.grad is not None:  # None: the landmark head (no landmarks, no part in the loss)
                grads[tt.dmm_name(k)] = t.grad.double()
        return loss.item(), grads

    (l64, g64), (l32, g32) = torch_grads(torch.float64), torch_grads(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        batch = os.path.join(tmp, "batch.safetensors")
        save_file({"input": xs.contiguous(), "labels": ys.contiguous(), "lambda": lam.float()}, batch)
        dmm = {}
        for dt in ("f32", "f64"):
            out = os.path.join(tmp, f"{dt}.safetensors")
            subprocess.run([a.dump, a.checkpoint, batch, out, dt], check=True)
            dmm[dt] = load_file(out)
    print(f"{a.checkpoint}: {cfg['variant']} width {cfg['width']} at {size[0]}x{size[1]}, {len(names)} training images "
          f"from {a.offset}; loss PyTorch f64 {l64:.8f}, f32 {l32:.8f}; dmm f32 {dmm['f32']['loss'].item():.8f}, "
          f"f64 {dmm['f64']['loss'].item():.8f}")
    rows = []
    for k, ref in g64.items():
        if "grad." + k not in dmm["f32"]:
            sys.exit(f"dmm has no gradient for {k}")
        ours = [dmm[dt]["grad." + k].reshape(ref.shape) for dt in ("f32", "f64")]
        rows.append((k, rel(g32[k], ref), rel(ours[0], ref), rel(ours[1], ref)))
    extra = [k for k in dmm["f32"] if k.startswith("grad.") and k[5:] not in g64 and dmm["f32"][k].abs().max() > 0]
    if extra:
        sys.exit(f"dmm has non-zero gradients where PyTorch has none: {', '.join(extra)}")
    for title, col in (("dmm f32", 2), ("dmm f64", 3)):
        rows.sort(key=lambda r: -r[col])
        print(f"worst {a.show} of {len(rows)} variables by {title}'s error against PyTorch f64: PyTorch f32 / dmm f32 / dmm f64")
        for r in rows[:a.show]:
            print(f"  {r[0]:40s} {r[1]:.2e}  {r[2]:.2e}  {r[3]:.2e}")
    ratio = sorted(r[2] / max(r[1], 1e-30) for r in rows)
    print(f"dmm f32 error / PyTorch f32 error over the variables: median {ratio[len(ratio) // 2]:.2f}, largest {ratio[-1]:.2f}; "
          f"dmm f64 largest error {max(r[3] for r in rows):.1e}")


if __name__ == "__main__":
    main()
