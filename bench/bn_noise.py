"""How much the validation loss moves between evaluations when only the batch norms' running
statistics change (docs/training.md, "The plateau rule"). Loads a dmm `subset` model (width 32,
109x89), evaluates it on the validation images with its thresholds, then, the weights held:
four times, ten random training batches of 32 (flipped as in training) through the network in
training mode at momentum 0.1, as ten training steps move the running averages, each followed by
an evaluation; then the running statistics recomputed as the cumulative average over 8, 32, 100
and 280 batches.

    python3 bench/bn_noise.py runs/subset/dmm-cnn/model.safetensors --root ../shared/data/celeba
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train import DmmCnn, evaluate, load, load_dmm, normalize, read_celeba, read_groups  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--root", required=True)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", default="109x89")
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    size = tuple(int(v) for v in a.size.split("x"))
    labels, split = read_celeba(a.root)
    started = time.time()
    xtr = load(a.root, "img_align_celeba", split[0], size)
    xva = load(a.root, "img_align_celeba", split[1], size)
    yva = torch.tensor([labels[n] for n in split[1]])
    print(f"loaded {len(xtr)} train and {len(xva)} val images in {time.time() - started:.0f} s", flush=True)
    model = DmmCnn(a.width, read_groups())
    load_dmm(model, a.model, False)
    tau = torch.tensor(json.loads(safe_open(a.model, "pt").metadata()["dmm"])["thresholds"])
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def report(tag):
        r = evaluate(model, xva, yva, tau, 64)
        print(f"{tag:44s} val loss {sum(r['losses']) / 40:.4f}  mean acc {r['acc']:.4f}  balanced {r['bal']:.4f}", flush=True)

    def refresh(batches, momentum):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = momentum
                if momentum is None:
                    m.reset_running_stats()
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                x = normalize(xtr[torch.randint(0, len(xtr), (32,))])
                model(torch.where(torch.rand(32, 1, 1, 1) < 0.5, x.flip(3), x))

    report("as saved")
    for k in range(4):
        model.load_state_dict(saved)
        refresh(10, 0.1)
        report(f"10 more batches at momentum 0.1 (#{k + 1})")
    for batches in (8, 32, 100, 280):
        model.load_state_dict(saved)
        refresh(batches, None)
        report(f"cumulative average over {batches} batches of 32")


if __name__ == "__main__":
    main()
